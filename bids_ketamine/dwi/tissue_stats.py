"""Tissue-wide statistics of diffusion maps: a series' brain, white matter and grey matter.

An ROI's MD can change between sessions for reasons that belong to no ROI: a scanner software
upgrade, another gradient calibration or parallel imaging move the MD of every voxel.  On the
real retest of ``sub-canon`` (the same acquisition a year apart, docs/participant.md, "Real
retest") MD rose by 4-5 % in every tissue, and that global shift is most of each ROI's
difference between the years.  The medians of large tissue classes measure such a change beside
the ROI values, so that a user can see it and the group level can adjust for it
(``--covariates md_wm_change``, docs/group.md).

They use the ROI tables' voxel selection (:mod:`bids_ketamine.dwi.roi`): the participant's
shared brain mask and, for the tissues, the CSF rule on the participant's MD, so the same
anatomical points count in every session; the tissue fractions are those of the ROI values
(the participant's T1w segmentation, or the template's probabilities warped in).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_ketamine.dwi.partial_volume import PURE_TISSUE_FRACTION

#: Tissue rows of the table, in order, and the fraction a voxel needs to count.  ``brain`` is
#: every voxel of the brain mask, without the CSF rule: the "median MD over a brain mask" that
#: datasets quote.  White matter: nearly pure voxels (as for the white-matter MD of ``pv_gm``'s
#: mixture, :func:`bids_ketamine.dwi.partial_volume.tissue_md`); grey matter, thinner than a DWI
#: voxel in most of the cortex: voxels that are mostly grey matter.
TISSUE_MIN_FRACTION: dict[str, float | None] = {"brain": None, "wm": PURE_TISSUE_FRACTION, "gm": 0.6}

#: Columns of the tissue table (``*_model-tensor_tissuestats.tsv``), in order.
TISSUESTATS_COLUMNS = ["tissue", "param", "median", "n_voxels"]


def tissue_statistics(
    maps: dict[str, np.ndarray],
    mask: np.ndarray,
    *,
    tissue_fractions: dict[str, np.ndarray] | None = None,
    md: np.ndarray | None = None,
    csf_md_threshold: float | None = 1.1,
) -> pd.DataFrame:
    """Median of each map over the brain and over its white and grey matter.

    Medians, not means: a brain mask holds voxels whose tensor fit is far off (on real sub-canon,
    whose scanner zeroed the background, 0.2 % of the mask above 3.5 um^2/ms, at its surface, a
    few at 10^5), and one of them moves a mean more than a global change does.

    Parameters
    ----------
    maps : dict
        Parameter name (``fa``, ``md``, ...) -> 3-D map on the native grid.
    mask : ndarray of bool
        Brain mask on the same grid (the participant's shared mask in the pipeline).
    tissue_fractions : dict, optional
        ``"wm"`` and ``"gm"`` -> fraction maps on the same grid.  Without them (or without one)
        that tissue's rows are NaN with ``n_voxels`` 0.
    md : ndarray, optional
        MD map (um^2/ms) of the CSF rule (default ``maps["md"]``; in the pipeline the
        participant's MD, the mean of the sessions).
    csf_md_threshold : float or None
        White- and grey-matter voxels with MD above this are left out; None keeps them.

    Returns
    -------
    DataFrame
        Columns :data:`TISSUESTATS_COLUMNS`, one row per tissue of :data:`TISSUE_MIN_FRACTION`
        and parameter, in that order.

    Raises
    ------
    ValueError
        If no map is given, a map is not on the mask's grid, or the CSF rule has no MD map.
    """
    if not maps:
        raise ValueError("no parameter maps given")
    inside = np.asarray(mask, dtype=bool)
    fractions = tissue_fractions or {}
    for name, values in {**maps, "md (CSF rule)": md, **fractions}.items():
        if values is not None and np.shape(values) != inside.shape:
            raise ValueError(f"map '{name}' has shape {np.shape(values)}, the mask {inside.shape}")
    not_csf = np.ones(inside.shape, dtype=bool)
    if csf_md_threshold is not None:
        csf_md = maps.get("md") if md is None else md
        if csf_md is None:
            raise ValueError("an MD map is needed for the CSF rule")
        not_csf = np.isfinite(csf_md) & (csf_md <= csf_md_threshold)
    rows = []
    for tissue, min_fraction in TISSUE_MIN_FRACTION.items():
        if min_fraction is None:
            voxels = inside
        elif tissue in fractions:
            voxels = inside & not_csf & (np.asarray(fractions[tissue]) >= min_fraction)
        else:
            voxels = np.zeros(inside.shape, dtype=bool)
        for param, values in maps.items():
            selected = values[voxels]
            selected = selected[np.isfinite(selected)]
            rows.append({"tissue": tissue, "param": param,
                         "median": float(np.median(selected)) if selected.size else np.nan,
                         "n_voxels": int(selected.size)})
    return pd.DataFrame(rows, columns=TISSUESTATS_COLUMNS)
