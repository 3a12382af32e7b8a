"""The one label normaliser: BIDS labels without their entity prefix (``sub-01`` -> ``01``)."""

from __future__ import annotations


def bare_label(value: object, prefix: str) -> str:
    """Return a label without its BIDS entity prefix (``sub-01`` -> ``01``).

    Parameters
    ----------
    value : object
        The label as found in a table or typed (``"sub-01"``, ``"01"``, ``1``).
    prefix : str
        The entity prefix without its dash (``"sub"`` or ``"ses"``).

    Returns
    -------
    str
        The label, stripped of white space and of the prefix (not checked).
    """
    text = str(value).strip()
    return text[len(prefix) + 1:] if text.startswith(f"{prefix}-") else text


def strip_label(label: str, prefix: str) -> str:
    """Return a BIDS label without its entity prefix, checked (``sub-01`` -> ``01``).

    Raises
    ------
    ValueError
        If the bare label is empty or holds characters BIDS labels cannot hold.
    """
    text = bare_label(label, prefix)
    if not text or not (text.isascii() and text.isalnum()):
        raise ValueError(
            f"'{label}' is not a valid {prefix} label: BIDS labels are letters and digits "
            f"only, given with or without the '{prefix}-' prefix"
        )
    return text
