"""ROI statistics of diffusion maps in a session's native DWI space.

The atlas is warped into each session's grid (nearest neighbour), so that diffusion maps are
never interpolated before their ROI statistics are taken.  Voxels are kept when they are
inside the brain mask and, unless disabled,

- when their MD is at most ``csf_md_threshold`` (um^2/ms): partial volume with CSF (MD about
  3.0) inflates grey-matter MD (about 0.8);
- when the template's grey-matter probability, warped into the session, is at least
  ``gm_threshold``: atlas labels drawn on a population (Brodmann areas) also cover white
  matter and sulcal CSF, and the quantity of interest is grey-matter MD.

The same rules are applied to every session.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ROISTATS_COLUMNS = ["roi", "param", "mean", "median", "std", "n_voxels", "coverage"]


def roi_coverage(atlas_template: np.ndarray, mask_in_template: np.ndarray,
                 labels: pd.DataFrame) -> dict[str, float]:
    """Fraction of each ROI's template voxels that land inside the session's brain mask.

    Parameters
    ----------
    atlas_template : ndarray of int
        The atlas on the template grid.
    mask_in_template : ndarray of float
        The session's brain mask resampled onto the template grid (values in [0, 1];
        linear interpolation gives partial values at the edge, counted as such).
    labels : DataFrame
        Columns ``index`` and ``name``.

    Returns
    -------
    dict
        ROI name -> coverage in [0, 1] (0 for a ROI absent from the atlas).
    """
    if atlas_template.shape != mask_in_template.shape:
        raise ValueError(
            f"atlas grid {atlas_template.shape} and mask grid {mask_in_template.shape} differ"
        )
    coverage = {}
    for index, name in zip(labels["index"], labels["name"]):
        inside = atlas_template == int(index)
        n_roi = int(inside.sum())
        coverage[str(name)] = float(np.clip(mask_in_template[inside], 0, 1).sum() / n_roi) if n_roi else 0.0
    return coverage


def roi_statistics(
    maps: dict[str, np.ndarray],
    labels_native: np.ndarray,
    labels: pd.DataFrame,
    mask: np.ndarray,
    *,
    md: np.ndarray | None = None,
    csf_md_threshold: float | None = 1.1,
    gm_probability: np.ndarray | None = None,
    gm_threshold: float | None = 0.5,
    coverage: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Mean, median and standard deviation of each map inside each ROI.

    Parameters
    ----------
    maps : dict
        Parameter name (``fa``, ``md``, ...) -> 3-D map on the native grid.
    labels_native : ndarray of int
        The atlas warped into the native grid.
    labels : DataFrame
        Columns ``index`` and ``name``: the ROIs to report, in order.
    mask : ndarray of bool
        Brain mask on the native grid.
    md : ndarray, optional
        MD map (um^2/ms) used for the CSF exclusion (default: ``maps["md"]``).
    csf_md_threshold : float or None
        Exclude voxels with MD above this; None keeps all voxels of the mask.
    gm_probability : ndarray, optional
        Grey-matter probability on the native grid (the template's, warped in).
    gm_threshold : float or None
        With ``gm_probability``: keep voxels at or above this probability; None keeps all.
    coverage : dict, optional
        ROI name -> coverage, copied into the table (NaN when not given).

    Returns
    -------
    DataFrame
        One row per ROI and parameter, columns :data:`ROISTATS_COLUMNS`.  A ROI with no
        voxel left has NaN statistics and ``n_voxels`` 0.
    """
    if not maps:
        raise ValueError("no parameter maps given")
    shape = labels_native.shape
    for name, values in maps.items():
        if values.shape != shape:
            raise ValueError(f"map '{name}' has shape {values.shape}, labels {shape}")
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}, labels {shape}")
    keep = mask.astype(bool)
    md_map = maps.get("md") if md is None else md
    if csf_md_threshold is not None:
        if md_map is None:
            raise ValueError("an MD map is needed for the CSF exclusion")
        keep &= np.isfinite(md_map) & (md_map <= csf_md_threshold)
    if gm_probability is not None and gm_threshold is not None:
        if gm_probability.shape != shape:
            raise ValueError(f"grey-matter probability has shape {gm_probability.shape}, labels {shape}")
        keep &= gm_probability >= gm_threshold
    rows = []
    for index, name in zip(labels["index"], labels["name"]):
        voxels = keep & (labels_native == int(index))
        n_voxels = int(voxels.sum())
        for param, values in maps.items():
            selected = values[voxels]
            selected = selected[np.isfinite(selected)]
            rows.append({
                "roi": str(name),
                "param": param,
                "mean": float(selected.mean()) if selected.size else np.nan,
                "median": float(np.median(selected)) if selected.size else np.nan,
                "std": float(selected.std(ddof=1)) if selected.size > 1 else np.nan,
                "n_voxels": n_voxels,
                "coverage": float((coverage or {}).get(str(name), np.nan)),
            })
    return pd.DataFrame(rows, columns=ROISTATS_COLUMNS)
