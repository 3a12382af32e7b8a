"""Quality flags of a participant's outputs: motion, ROI coverage, implausible ROI MD.

The thresholds are module constants so that the report, its documentation and its tests
quote the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.config import Config
from bids_ketamine.derivatives import ROISTATS_COLUMNS

#: Largest acceptable framewise displacement of any volume (mm).
MAX_FD_MM = 2.0
#: Largest acceptable mean framewise displacement of a series (mm).
MEAN_FD_MM = 0.5
#: Lowest acceptable ROI coverage (fraction of template voxels inside the brain mask).
MIN_COVERAGE = Config.default("min_coverage")
#: Plausible range of grey-matter ROI mean MD (um^2/ms); healthy adult GM is ~0.7-0.9.
MD_PLAUSIBLE = (0.5, 1.5)


def check_roistats(table: pd.DataFrame, source: str = "roistats table") -> pd.DataFrame:
    """Check a ``roistats.tsv`` table has the contract's columns; return it.

    Raises
    ------
    ValueError
        Naming the missing columns and the file.
    """
    missing = [c for c in ROISTATS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source} lacks the columns {missing} (expected {list(ROISTATS_COLUMNS)}); "
            "rerun the participant level to rewrite it"
        )
    return table


def motion_summary(motion: pd.DataFrame) -> dict[str, float]:
    """Summary numbers of a motion table (``desc-motion_timeseries.tsv``).

    Returns
    -------
    dict
        ``n_volumes``; ``mean_fd`` and ``max_fd`` (mm, NaN-safe; NaN without an FD
        column); ``max_translation`` (mm) and ``max_rotation`` (degrees): the largest
        absolute value over axes and volumes, NaN when the columns are absent.
    """
    summary: dict[str, float] = {"n_volumes": float(len(motion))}
    fd = pd.to_numeric(motion.get("framewise_displacement", pd.Series(dtype=float)),
                       errors="coerce").to_numpy(dtype=float)
    finite = fd[np.isfinite(fd)]
    summary["mean_fd"] = float(finite.mean()) if finite.size else float("nan")
    summary["max_fd"] = float(finite.max()) if finite.size else float("nan")
    trans = [c for c in ("trans_x", "trans_y", "trans_z") if c in motion]
    rots = [c for c in ("rot_x", "rot_y", "rot_z") if c in motion]
    summary["max_translation"] = (
        float(np.nanmax(np.abs(motion[trans].to_numpy(dtype=float)))) if trans else float("nan")
    )
    summary["max_rotation"] = (
        float(np.degrees(np.nanmax(np.abs(motion[rots].to_numpy(dtype=float)))))
        if rots else float("nan")
    )
    return summary


def motion_warnings(
    motion: pd.DataFrame,
    *,
    max_fd: float = MAX_FD_MM,
    mean_fd: float = MEAN_FD_MM,
) -> list[str]:
    """Warnings for large motion: any volume's FD above ``max_fd`` or mean FD above ``mean_fd``."""
    summary = motion_summary(motion)
    warnings = []
    if summary["max_fd"] > max_fd:
        worst = int(np.nanargmax(pd.to_numeric(motion["framewise_displacement"], errors="coerce")))
        warnings.append(
            f"large motion: maximum framewise displacement {summary['max_fd']:.2f} mm "
            f"(volume {worst}) exceeds {max_fd:g} mm"
        )
    if summary["mean_fd"] > mean_fd:
        warnings.append(
            f"large motion: mean framewise displacement {summary['mean_fd']:.2f} mm "
            f"exceeds {mean_fd:g} mm"
        )
    return warnings


def roi_flags(
    row: dict[str, Any],
    *,
    min_coverage: float = MIN_COVERAGE,
    md_range: tuple[float, float] = MD_PLAUSIBLE,
) -> dict[str, bool]:
    """Which values of one ROI's row are suspect.

    Parameters
    ----------
    row : mapping
        ``coverage`` and ``md_mean`` (um^2/ms) of one ROI; absent values are not flagged.

    Returns
    -------
    dict
        ``low_coverage`` and ``implausible_md``.
    """
    coverage = row.get("coverage")
    md = row.get("md_mean")
    return {
        "low_coverage": coverage is not None and np.isfinite(coverage) and coverage < min_coverage,
        "implausible_md": md is not None and np.isfinite(md)
        and not (md_range[0] <= md <= md_range[1]),
    }


def roi_warnings(
    roistats: pd.DataFrame,
    *,
    min_coverage: float = MIN_COVERAGE,
    md_range: tuple[float, float] = MD_PLAUSIBLE,
) -> list[str]:
    """Warnings for ROIs with low coverage or implausible mean MD.

    Parameters
    ----------
    roistats : DataFrame
        A ``roistats.tsv`` table (contract columns).
    min_coverage : float
        Coverage below this is flagged.
    md_range : (low, high)
        Mean MD (um^2/ms) outside this range is flagged.

    Returns
    -------
    list of str
    """
    check_roistats(roistats)
    warnings = []
    coverage = roistats.groupby("roi", sort=False)["coverage"].min()
    for roi, value in coverage.items():
        if np.isfinite(value) and value < min_coverage:
            warnings.append(
                f"low coverage: ROI {roi} has coverage {value:.2f} (below {min_coverage:g}); "
                "part of it lies outside the brain mask"
            )
    md_rows = roistats[roistats["param"].astype(str).str.lower() == "md"]
    for roi, value in zip(md_rows["roi"], pd.to_numeric(md_rows["mean"], errors="coerce")):
        if not np.isfinite(value):
            warnings.append(f"implausible MD: ROI {roi} has no finite mean MD (no voxel kept?)")
        elif not md_range[0] <= value <= md_range[1]:
            warnings.append(
                f"implausible MD: ROI {roi} mean MD {value:.3f} um^2/ms lies outside "
                f"{md_range[0]:g}-{md_range[1]:g} um^2/ms"
            )
    return warnings
