"""Grey matter, white matter and CSF partial-volume maps of a brain-extracted T1w image.

Two steps:

1. ANTs Atropos (k-means initialised, Markov random field prior) classifies the brain
   voxels into three classes; on a T1w the class of lowest mean intensity is CSF, then GM,
   then WM.  Each class's pure intensity is measured where the tissue is surely pure
   (:func:`pure_intensities`): CSF and WM in the interior of their class (the voxels whose six
   neighbours share their class: the ventricles, deep white matter), GM over the voxels it
   holds with posterior >= 0.9 (the cortex is too thin to have an interior at a T1w's
   resolution).
2. Each voxel's tissue *fractions* come from a two-compartment linear mixture of the two
   adjacent pure intensities that bracket its intensity (CSF-GM below the GM intensity, GM-WM
   above it), the model FSL FAST's partial-volume estimate is built on.  Voxels that Atropos
   calls GM with posterior >= ``pure_posterior`` stay pure GM: GM is the middle class, so a
   confident GM voxel off the GM intensity is noise, residual bias or a deep grey nucleus
   (brighter than cortex on real T1w: without this rule the GM fraction of sub-elition's
   amygdalae fell from 0.94 to 0.78), not partial volume.  Voxels confidently CSF or WM keep
   their mixture: at the cortex' edges, where the ROIs are, the Markov random field makes most
   of them confident.

Until 2026-12-05 the CSF and WM intensities were also taken from posteriors >= 0.9, and every
voxel with a posterior >= 0.9 for any class kept a pure fraction.  With the Markov random field
91 % of the brain's voxels reach that posterior, sulcal partial volume included, so the CSF
intensity came out a third of the way to GM's and the GM fraction 0.05-0.06 low on the
simulator (docs/anatomy.md, "Pure intensities").
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.anat.antsimage import checked_volume, require_ants, to_ants, to_nibabel
from bids_ketamine.utils.images import as_image

__all__ = ["TISSUE_NAMES", "atropos_posteriors", "mixture_fractions", "pure_intensities", "tissue_fractions"]

#: Tissue classes in order of increasing T1w intensity.
TISSUE_NAMES = ("csf", "gm", "wm")


def atropos_posteriors(t1w, mask, *, mrf_weight: float = 0.1,
                       iterations: int = 5) -> dict[str, np.ndarray]:
    """Three-class Atropos posteriors of the brain voxels, named by intensity order.

    Parameters
    ----------
    t1w : path or nibabel image
        Bias-corrected T1w.
    mask : path or nibabel image
        Brain mask on the T1w grid.
    mrf_weight : float
        Weight of Atropos' Markov random field (``-m [weight,1x1x1]``).
    iterations : int
        Atropos EM iterations.

    Returns
    -------
    dict
        ``"csf"``, ``"gm"``, ``"wm"`` -> float32 posterior probability arrays (0 outside
        the mask).
    """
    ants = require_ants()
    img = checked_volume(t1w)
    mask_data = _mask_array(mask, img)
    # Atropos runs on the mask's bounding box (a third of a head-sized T1w's voxels)
    box = _bounding_box(mask_data, margin=2)
    corner = np.array([b.start for b in box] + [1.0])
    box_affine = img.affine.copy()
    box_affine[:3, 3] = (img.affine @ corner)[:3]
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    image = to_ants(nib.Nifti1Image(np.ascontiguousarray(data[box]), box_affine))
    brain = to_ants(nib.Nifti1Image(mask_data[box].astype(np.float32), box_affine))
    # ANTsPy's atropos leaves its probability images in the temporary folder: give it one of
    # ours, removed afterwards
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory() as scratch:
        tempfile.tempdir = scratch
        try:
            # r=0: Atropos' constant random seed (its default draws one per run, and two runs on
            # the same T1w differed by up to 0.025 of GM posterior)
            result = ants.atropos(a=image, x=brain, i="kmeans[3]", m=f"[{float(mrf_weight)},1x1x1]",
                                  c=f"[{int(iterations)},0]", r=0, verbose=0)
        finally:
            tempfile.tempdir = previous
    posteriors = []
    for probability in result["probabilityimages"]:
        full = np.zeros(img.shape, dtype=np.float32)
        full[box] = np.asanyarray(to_nibabel(probability).dataobj, dtype=np.float32)
        posteriors.append(full * mask_data)
    means = [float(np.sum(p * data) / max(float(np.sum(p)), 1e-12)) for p in posteriors]
    order = np.argsort(means)
    return {name: posteriors[index] for name, index in zip(TISSUE_NAMES, order)}


def _bounding_box(mask: np.ndarray, margin: int) -> tuple:
    """Slices of the smallest block holding ``mask``, widened by ``margin`` voxels."""
    index = np.argwhere(mask)
    low = np.maximum(index.min(axis=0) - margin, 0)
    high = np.minimum(index.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _mask_array(mask, img) -> np.ndarray:
    mask_img = as_image(mask, "brain mask", require_data=True)
    if mask_img.shape[:3] != img.shape[:3]:
        raise ValueError(f"brain mask shape {mask_img.shape} differs from the T1w's {img.shape}")
    data = np.asanyarray(mask_img.dataobj) > 0
    if data.sum() < 100:
        raise ValueError(f"brain mask has {int(data.sum())} voxels: too few to classify tissue")
    return data


def mixture_fractions(intensity: np.ndarray, means: dict[str, float]) -> dict[str, np.ndarray]:
    """Two-compartment linear-mixture tissue fractions of T1w intensities.

    Parameters
    ----------
    intensity : ndarray
        T1w intensities (brain voxels).
    means : dict
        Pure-tissue mean intensities ``"csf" < "gm" < "wm"``.

    Returns
    -------
    dict
        ``"csf"``, ``"gm"``, ``"wm"`` -> fractions in [0, 1] summing to 1, same shape as
        ``intensity``.
    """
    csf, gm, wm = (float(means[name]) for name in TISSUE_NAMES)
    if not csf < gm < wm:
        raise ValueError(f"pure-tissue means must increase CSF < GM < WM, got {csf}, {gm}, {wm}")
    value = np.asarray(intensity, dtype=np.float64)
    low = np.clip((value - csf) / (gm - csf), 0.0, 1.0)   # GM share of a CSF-GM mixture
    high = np.clip((value - gm) / (wm - gm), 0.0, 1.0)    # WM share of a GM-WM mixture
    below = value < gm
    fractions = {
        "csf": np.where(below, 1.0 - low, 0.0),
        "gm": np.where(below, low, 1.0 - high),
        "wm": np.where(below, 0.0, high),
    }
    return {name: f.astype(np.float32) for name, f in fractions.items()}


def pure_intensities(data: np.ndarray, inside: np.ndarray, posteriors: dict, *,
                     pure_posterior: float = 0.9) -> dict[str, float]:
    """Each tissue's pure T1w intensity, measured where it is surely pure.

    CSF and WM: the median over the interior of the class (voxels whose most probable class
    and their six neighbours' is that tissue); GM, and a class with fewer than 10 interior
    voxels: over the voxels it holds with posterior >= ``pure_posterior`` (>= 0.5 when fewer
    than 10 do).

    Parameters
    ----------
    data : ndarray
        Bias-corrected T1w intensities.
    inside : ndarray of bool
        Brain mask.
    posteriors : dict
        ``"csf"``, ``"gm"``, ``"wm"`` -> posterior maps (:func:`atropos_posteriors`).
    pure_posterior : float

    Returns
    -------
    dict
        ``"csf"``, ``"gm"``, ``"wm"`` -> intensity.

    Raises
    ------
    ValueError
        If a class holds no voxel of the mask.
    """
    stacked = np.stack([posteriors[name] for name in TISSUE_NAMES], axis=-1)
    hard = np.where(inside, np.argmax(stacked, axis=-1), -1)
    means = {}
    for index, name in enumerate(TISSUE_NAMES):
        pure = ndimage.binary_erosion(hard == index) if name != "gm" else np.zeros_like(inside)
        if pure.sum() < 10:
            pure = inside & (posteriors[name] >= pure_posterior)
        if pure.sum() < 10:
            pure = inside & (posteriors[name] >= 0.5)
        if not pure.any():
            raise ValueError(f"no {name.upper()} found in the brain mask: check the brain mask and "
                             "that the image is T1-weighted")
        means[name] = float(np.median(data[pure]))
    return means


def tissue_fractions(t1w, mask, *, pure_posterior: float = 0.9,
                     mrf_weight: float = 0.1) -> dict[str, nib.Nifti1Image]:
    """GM, WM and CSF partial-volume maps of a brain-extracted, bias-corrected T1w.

    Parameters
    ----------
    t1w : path or nibabel image
    mask : path or nibabel image
        Brain mask on the T1w grid.
    pure_posterior : float
        Voxels whose Atropos GM posterior reaches this value define the pure GM intensity
        (:func:`pure_intensities`) and stay pure GM.
    mrf_weight : float
        Atropos' Markov random field weight.

    Returns
    -------
    dict
        ``"csf"``, ``"gm"``, ``"wm"`` -> float32 fraction images on the T1w grid (summing
        to 1 inside the mask, 0 outside), plus ``"labels"``: uint8 hard segmentation
        (1 CSF, 2 GM, 3 WM; the largest fraction).
    """
    if not 0.5 < pure_posterior <= 1.0:
        raise ValueError(f"pure_posterior must lie in (0.5, 1], got {pure_posterior}")
    img = checked_volume(t1w)
    inside = _mask_array(mask, img)
    posteriors = atropos_posteriors(img, nib.Nifti1Image(inside.astype(np.uint8), img.affine),
                                    mrf_weight=mrf_weight)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    fractions = mixture_fractions(data[inside], pure_intensities(data, inside, posteriors,
                                                                 pure_posterior=pure_posterior))
    confident_gm = posteriors["gm"][inside] >= pure_posterior
    out = {}
    for name in TISSUE_NAMES:
        volume = np.zeros(img.shape, dtype=np.float32)
        volume[inside] = np.where(confident_gm, float(name == "gm"), fractions[name])
        out[name] = volume
    labels = np.zeros(img.shape, dtype=np.uint8)
    labels[inside] = 1 + np.argmax(np.stack([out[n][inside] for n in TISSUE_NAMES], axis=1), axis=1)
    result = {name: nib.Nifti1Image(out[name], img.affine) for name in TISSUE_NAMES}
    result["labels"] = nib.Nifti1Image(labels, img.affine)
    return result
