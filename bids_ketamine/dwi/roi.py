"""ROI statistics of diffusion maps in a session's native DWI space.

The atlas is warped into each session's grid (nearest neighbour), so that diffusion maps are
never interpolated before their ROI statistics are taken.  Voxels are kept when they are
inside the brain mask and, unless disabled,

- when their MD is at most ``csf_md_threshold`` (um^2/ms): partial volume with CSF (MD about
  3.0) inflates grey-matter MD (about 0.8);
- when the template's grey-matter probability, warped into the session, is at least
  ``gm_threshold``: atlas labels drawn on a population (Brodmann areas) also cover white
  matter and sulcal CSF, and the quantity of interest is grey-matter MD.

The same rules are applied to every session.  With ``md`` (the CSF exclusion's MD) and the
brain mask taken from the participant's shared selection
(:func:`bids_ketamine.dwi.shared_selection.participant_selection_maps`), the decisions are also
made on the same anatomical points in every session: a voxel never enters one session's value
and not the other's because of that session's noise.

Beside the mean and median of the kept voxels, :data:`ROISTATS_PV_COLUMNS` hold partial-volume
aware values (:mod:`bids_ketamine.dwi.partial_volume`) and per-ROI quality measures, when tissue
fractions are given.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bids_ketamine.dwi.partial_volume import (
    gm_weighted_mean,
    grey_matter_md,
    relative_s0,
    tissue_md,
    weighted_median,
)

LOGGER = logging.getLogger(__name__)

ROISTATS_COLUMNS = ["roi", "param", "mean", "median", "std", "n_voxels", "coverage"]

#: Columns added by issue 20, after the contract columns (NaN without tissue fractions):
#:
#: - ``gm_weighted_mean``: grey-matter-fraction-weighted mean over the ROI's voxels that pass the
#:   brain mask and CSF exclusion (no grey-matter threshold: the weights replace it);
#: - ``pv_gm``: grey-matter MD of the tissue-mixture least squares over the same voxels
#:   (:func:`bids_ketamine.dwi.partial_volume.grey_matter_md`, the tissues' signals mixed at the
#:   fit's b-value; MD only, NaN for other maps and without the b-value);
#: - ``roi_gm_weighted_mean``: mean weighted by each voxel's volume fraction of the ROI's grey
#:   matter (``roi_weights``, soft: no nearest-neighbour label, no grey-matter threshold) over the
#:   voxels that pass the brain mask and CSF exclusion;
#: - ``roi_gm_weighted_median``: the weighted median with the same weights and voxels
#:   (:func:`bids_ketamine.dwi.partial_volume.weighted_median`): soft like the weighted mean,
#:   robust like the median to the few voxels that noise or CSF push far off;
#: - ``gm_fraction``: mean grey-matter fraction of those voxels;
#: - ``excluded_fraction``: share of the ROI's voxels inside the brain mask that the CSF and
#:   grey-matter rules exclude (the rules the ``mean``/``median`` use);
#: - ``own_excluded_fraction``: the same share had the CSF exclusion used this session's own MD
#:   (differs from ``excluded_fraction`` by the voxels that noise alone would have moved).
ROISTATS_PV_COLUMNS = ["gm_weighted_mean", "pv_gm", "roi_gm_weighted_mean", "roi_gm_weighted_median",
                       "gm_fraction", "excluded_fraction", "own_excluded_fraction"]


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
    tissue_fractions: dict[str, np.ndarray] | None = None,
    roi_weights: np.ndarray | None = None,
    b_value: float | None = None,
    b0: np.ndarray | None = None,
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
    tissue_fractions : dict, optional
        ``"gm"``, ``"wm"``, ``"csf"`` -> fraction maps on the native grid (the template's
        probabilities warped in); enables :data:`ROISTATS_PV_COLUMNS`.
    roi_weights : ndarray (X, Y, Z, n_labels), optional
        Per ROI (in the order of ``labels``) each voxel's volume fraction of the ROI's grey
        matter (:func:`bids_ketamine.dwi.partial_volume.roi_grey_matter_volume_fractions`,
        warped in); enables ``roi_gm_weighted_mean``.
    b_value : float, optional
        b-value of the MD map (s/mm^2: the mean of the fitted diffusion-weighted volumes);
        with ``tissue_fractions`` enables ``pv_gm``.
    b0 : ndarray, optional
        Mean b=0 image on the native grid: each tissue's b=0 signal for ``pv_gm``'s mixture
        (:func:`bids_ketamine.dwi.partial_volume.relative_s0`); default equal signals.

    Returns
    -------
    DataFrame
        One row per ROI and parameter, columns :data:`ROISTATS_COLUMNS` then
        :data:`ROISTATS_PV_COLUMNS`.  A ROI with no voxel left has NaN statistics and
        ``n_voxels`` 0.
    """
    if not maps:
        raise ValueError("no parameter maps given")
    shape = labels_native.shape
    on_the_grid = {**{f"map '{name}'": values for name, values in maps.items()}, "mask": mask, "MD map": md,
                   "grey-matter probability": gm_probability, "mean b=0": b0,
                   **{f"{name} fraction map": values for name, values in (tissue_fractions or {}).items()}}
    for name, values in on_the_grid.items():
        if values is not None and np.shape(values) != shape:
            raise ValueError(f"{name} has shape {np.shape(values)}, labels {shape}")
    inside = mask.astype(bool)
    md_map = maps.get("md") if md is None else md
    own_md = maps.get("md")
    not_csf = np.ones(shape, dtype=bool)
    own_not_csf = np.ones(shape, dtype=bool)
    if csf_md_threshold is not None:
        if md_map is None:
            raise ValueError("an MD map is needed for the CSF exclusion")
        not_csf = np.isfinite(md_map) & (md_map <= csf_md_threshold)
        if own_md is not None:
            own_not_csf = np.isfinite(own_md) & (own_md <= csf_md_threshold)
    is_gm = np.ones(shape, dtype=bool)
    if gm_probability is not None and gm_threshold is not None:
        is_gm = gm_probability >= gm_threshold
    keep = inside & not_csf & is_gm
    fractions = None
    wm_md = np.nan
    if tissue_fractions is not None:
        fractions = {name: np.asarray(tissue_fractions[name], dtype=float) for name in ("gm", "wm", "csf")}
        if own_md is not None:
            wm_md = tissue_md(own_md, fractions["wm"], inside)
    mixture = None
    if fractions is not None and b_value is not None:
        try:
            s0 = relative_s0(b0, fractions, inside) if b0 is not None else None
        except ValueError as err:
            LOGGER.warning("pv_gm left empty (n/a): %s", err)
        else:
            mixture = {"wm_md": wm_md, "b_value": float(b_value), "s0": s0}
    if roi_weights is not None and roi_weights.shape != shape + (len(labels),):
        raise ValueError(f"ROI weights have shape {roi_weights.shape}, expected {shape + (len(labels),)}")
    rows = []
    for position, (index, name) in enumerate(zip(labels["index"], labels["name"])):
        in_roi = inside & (labels_native == int(index))
        voxels = keep & (labels_native == int(index))
        n_voxels = int(voxels.sum())
        n_roi = int(in_roi.sum())
        pv_voxels = in_roi & not_csf
        quality = {
            "gm_fraction": np.nan,
            "excluded_fraction": float(1 - n_voxels / n_roi) if n_roi else np.nan,
            "own_excluded_fraction": float(1 - (in_roi & own_not_csf & is_gm).sum() / n_roi) if n_roi else np.nan,
        }
        if fractions is not None and pv_voxels.any():
            quality["gm_fraction"] = float(fractions["gm"][pv_voxels].mean())
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
                **_partial_volume_values(param, values, pv_voxels, fractions, mixture),
                **_soft_roi_values(values, inside & not_csf, roi_weights, position),
                **quality,
            })
    return pd.DataFrame(rows, columns=ROISTATS_COLUMNS + ROISTATS_PV_COLUMNS)


def _partial_volume_values(param, values, voxels, fractions, mixture):
    """``gm_weighted_mean`` and ``pv_gm`` of one ROI and map (NaN without fractions; ``pv_gm``
    also without ``mixture``: the WM MD, b-value and tissue b=0 signals)."""
    out = {"gm_weighted_mean": np.nan, "pv_gm": np.nan}
    if fractions is None or not voxels.any():
        return out
    selected = values[voxels]
    out["gm_weighted_mean"] = gm_weighted_mean(selected, fractions["gm"][voxels])
    if param == "md" and mixture is not None and np.isfinite(mixture["wm_md"]):
        out["pv_gm"] = grey_matter_md(selected, {k: v[voxels] for k, v in fractions.items()}, **mixture)
    return out


def _soft_roi_values(values, voxels, roi_weights, position):
    """``roi_gm_weighted_mean`` and ``roi_gm_weighted_median`` of one ROI (NaN without weights)."""
    if roi_weights is None:
        return {"roi_gm_weighted_mean": np.nan, "roi_gm_weighted_median": np.nan}
    selected, weights = values[voxels], roi_weights[..., position][voxels]
    return {"roi_gm_weighted_mean": gm_weighted_mean(selected, weights),
            "roi_gm_weighted_median": weighted_median(selected, weights)}
