"""MD change fields that do not respect the app's ROI boundaries (``--effect-model blobs``).

With the default effect model (``roi``) every grey-matter (GM) sub-sample of ROI ``k`` has the
ROI's MD, so the change fills the app's own ROIs exactly: a pipeline that averages exactly those
voxels is rewarded by construction.  The ``blobs`` model (issue 20) places the change as a
smooth field in template space::

    change(x) = g_s + sum_r a_sr exp(-|x - c_r - o_sr|^2 / (2 sigma^2)) + (x - centre) . w_s

in percent of MD, for subject ``s`` and follow-up visit: a global GM change ``g_s`` (the
subject's latent change), Gaussian blobs of width ``sigma`` (mm) near each ROI's centre ``c_r``
but displaced by ``o_sr`` (``N(0, offset_sd)`` per axis), and a linear gradient ``w_s`` across the
brain.  Baseline MD is as in the ``roi`` model (per ROI and outside the ROIs); the GM MD of the
template point ``x`` at visit ``k`` is ``MD_0(x) * prod (1 + change_k(x) / 100)``.  An optional
scanner drift multiplies every diffusivity (GM, WM, CSF) of a follow-up session.

The truth is the field itself (its parameters are written per participant to
``sourcedata/simulation/sub-*/sub-*_effects.json``): :func:`ideal_label_change` gives, for *any*
label image in template space, the change an ideal pipeline would report for each label, the
mean of the true GM MD change over the label's GM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["draw_effects", "gm_md_field", "ideal_label_change", "effects_path"]

#: Defaults of the blobs model (recorded in each participant's effects file).
BLOB_SIGMA_MM = 6.0
BLOB_OFFSET_SD_MM = 6.0
#: SD (percent of MD per 100 mm) of each component of the linear gradient.
GRADIENT_SD_PCT_PER_100MM = 1.0


def effects_path(truth_dir: Path, label: str) -> Path:
    """The effects file of participant ``label`` (no ``sub-``) in the truth folder."""
    return Path(truth_dir) / f"sub-{label}" / f"sub-{label}_effects.json"


def roi_centres(codes: np.ndarray, affine: np.ndarray, n_rois: int) -> np.ndarray:
    """Centre of mass (template mm) of each ROI's voxels in the packed code image."""
    roi = codes // 4
    centres = np.zeros((n_rois, 3))
    for k in range(1, n_rois + 1):
        ijk = np.argwhere(roi == k)
        if ijk.size:
            centres[k - 1] = affine[:3, :3] @ ijk.mean(axis=0) + affine[:3, 3]
    return centres


def draw_effects(rng: np.random.Generator, centres: np.ndarray, brain_centre, global_change,
                 roi_amplitudes, *, sigma_mm: float = BLOB_SIGMA_MM,
                 offset_sd_mm: float = BLOB_OFFSET_SD_MM,
                 gradient_sd: float = GRADIENT_SD_PCT_PER_100MM, null: bool = False) -> dict:
    """Parameters of one follow-up visit's change field.

    Parameters
    ----------
    rng : numpy.random.Generator
    centres : ndarray (n_rois, 3)
        ROI centres (template mm).
    brain_centre : array-like (3,)
    global_change : float
        Percent change of all grey matter.
    roi_amplitudes : array-like (n_rois,)
        Percent change at the centre of each ROI's blob (on top of the global change).
    sigma_mm, offset_sd_mm, gradient_sd : float
        Blob width, SD of the blob displacement per axis, SD of the gradient (percent per 100 mm).
    null : bool
        Everything zero (the offsets are still drawn, so a null and a non-null trial with one
        seed share their geometry).

    Returns
    -------
    dict
        JSON-ready parameters (see :func:`change_field`).
    """
    centres = np.asarray(centres, float)
    offsets = rng.normal(0.0, offset_sd_mm, size=centres.shape)
    gradient = rng.normal(0.0, gradient_sd / 100.0, size=3)
    scale = 0.0 if null else 1.0
    return {
        "global_pct": float(global_change) * scale,
        "blob_centres_mm": (centres + offsets).round(4).tolist(),
        "blob_amplitudes_pct": (np.asarray(roi_amplitudes, float) * scale).round(6).tolist(),
        "blob_sigma_mm": float(sigma_mm),
        "gradient_pct_per_mm": (gradient * scale).round(8).tolist(),
        "gradient_origin_mm": np.asarray(brain_centre, float).round(4).tolist(),
    }


def change_field(params: dict, points: np.ndarray) -> np.ndarray:
    """Percent MD change of one visit at template points (array (..., 3), mm)."""
    points = np.asarray(points, float)
    out = np.full(points.shape[:-1], float(params["global_pct"]))
    sigma2 = 2.0 * float(params["blob_sigma_mm"]) ** 2
    for centre, amplitude in zip(params["blob_centres_mm"], params["blob_amplitudes_pct"]):
        if amplitude:
            out += amplitude * np.exp(-np.sum((points - np.asarray(centre)) ** 2, axis=-1) / sigma2)
    out += (points - np.asarray(params["gradient_origin_mm"])) @ np.asarray(params["gradient_pct_per_mm"])
    return out


def _grid_points(shape, affine) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    return (ijk @ np.asarray(affine[:3, :3], np.float32).T + np.asarray(affine[:3, 3], np.float32))


def gm_md_field(codes: np.ndarray, affine: np.ndarray, md_groups, visits: list,
                drift_pct: float = 0.0) -> np.ndarray:
    """True GM MD (um^2/ms) on the template grid at one session.

    Parameters
    ----------
    codes : ndarray of uint8
        Packed template codes (``tissue + 4 * roi``).
    affine : ndarray (4, 4)
    md_groups : array-like (n_rois + 1,)
        Baseline GM MD outside the ROIs, then per ROI.
    visits : list of dict
        Change parameters of every follow-up visit up to this session (empty at baseline).
    drift_pct : float
        Scanner drift of this session (percent, multiplies the measured MD).

    Returns
    -------
    ndarray float32 (codes.shape)
        Zero outside grey matter.
    """
    md_groups = np.asarray(md_groups, float)
    roi = (codes // 4).astype(np.intp)
    gm = (codes % 4) == 2
    field = np.zeros(codes.shape, dtype=np.float32)
    points = _grid_points(codes.shape, affine).reshape(codes.shape + (3,))[gm]
    values = md_groups[roi[gm]]
    for params in visits:
        values = values * (1.0 + change_field(params, points) / 100.0)
    field[gm] = values * (1.0 + drift_pct / 100.0)
    return field


def ideal_label_change(truth_dir, label_img, *, session_index: int = 1) -> pd.DataFrame:
    """Ideal change of each label of a template-space label image, per participant.

    The true GM MD change between the baseline and session ``session_index`` averaged over the
    label's grey matter (template GM sub-voxels under the label, the simulator's anatomy), as an
    ideal pipeline would measure it in that label: nothing of the app's ROI shapes enters.

    Parameters
    ----------
    truth_dir : path
        ``sourcedata/simulation`` of a simulated dataset written with ``--effect-model blobs``.
    label_img : path or nibabel image
        Integer labels (0 = background) on any grid of the simulation's template space.
    session_index : int
        Follow-up session (1 = the first after baseline).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``label``, ``md_baseline``, ``md_followup``, ``md_change``,
        ``md_change_pct`` (mean over the label's GM; MD in um^2/ms).
    """
    import pandas as pd
    from scipy import ndimage

    from bids_ketamine.simulate.anatomy import load_template_anatomy

    truth_dir = Path(truth_dir)
    truth = json.loads((truth_dir / "truth.json").read_text())
    if truth.get("md_model", {}).get("effect_model") != "blobs":
        raise ValueError(f"{truth_dir}: not simulated with --effect-model blobs (no change fields); "
                         "simulate again with --effect-model blobs")
    img = label_img if isinstance(label_img, nib.spatialimages.SpatialImage) else nib.load(str(label_img))
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int64)
    anatomy = load_template_anatomy()
    # each template GM voxel takes the label found at its position (nearest label voxel)
    roi = anatomy.codes
    gm_index = np.argwhere((roi % 4) == 2)
    points = gm_index @ anatomy.affine[:3, :3].T + anatomy.affine[:3, 3]
    label_voxels = np.linalg.solve(img.affine, np.c_[points, np.ones(len(points))].T)[:3]
    gm_labels = ndimage.map_coordinates(labels.astype(float), label_voxels, order=0, mode="constant",
                                        cval=0).astype(np.int64)
    keep = gm_labels > 0
    gm_index, points, gm_labels = gm_index[keep], points[keep], gm_labels[keep]
    roi_of_point = roi[tuple(gm_index.T)] // 4
    rows = []
    for path in sorted(truth_dir.glob("sub-*/sub-*_effects.json")):
        effects = json.loads(path.read_text())
        sessions = effects["sessions"]
        baseline = np.asarray(sessions[0]["md_groups"], float)[roi_of_point]
        md = [baseline * (1 + sessions[0]["drift_pct"] / 100.0)]
        values = baseline
        for params in effects["visits"][:session_index]:
            values = values * (1.0 + change_field(params, points) / 100.0)
        md.append(values * (1 + sessions[session_index]["drift_pct"] / 100.0))
        for label in np.unique(gm_labels):
            inside = gm_labels == label
            before, after = float(md[0][inside].mean()), float(md[1][inside].mean())
            rows.append({"participant_id": f"sub-{effects['label']}", "label": int(label),
                         "md_baseline": before, "md_followup": after, "md_change": after - before,
                         "md_change_pct": 100.0 * (after - before) / before})
    return pd.DataFrame(rows, columns=["participant_id", "label", "md_baseline", "md_followup",
                                       "md_change", "md_change_pct"])
