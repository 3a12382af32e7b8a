"""The benchmarks' rule for reusing a participant level already run into an output folder."""

from __future__ import annotations

from pathlib import Path


def participant_level_done(bids: Path, out: Path, participant: str = "*") -> bool:
    """Whether ``out`` holds an ROI table for every DWI series of ``participant`` in ``bids``.

    An interrupted participant level leaves the tables of the participants it finished: such a
    folder is not done, and the benchmark runs the participant level again (its work folder's
    cache makes that quick).
    """
    pattern = f"sub-{participant}/ses-*/dwi/*"
    series = len(list(Path(bids).glob(f"{pattern}_dwi.nii.gz")))
    return series > 0 and len(list(Path(out).glob(f"{pattern}_roistats.tsv"))) >= series
