"""Functions applied on connections between nodes (nipype evaluates them from their source:
each must be self-contained)."""


def pick(items, index):
    """Item ``index`` of a per-series list output.

    nipype hands a one-element output list over as its element (a participant with one
    series), so a plain path is taken as a list of one.
    """
    if isinstance(items, str):
        items = [items]
    return items[index]
