"""Grey matter, white matter and CSF partial-volume maps of a brain-extracted T1w image.

Two steps:

1. ANTs Atropos (k-means initialised, Markov random field prior) classifies the brain
   voxels into three classes; on a T1w the class of lowest mean intensity is CSF, then GM,
   then WM.  The classes' mean intensities are measured over the voxels each class holds
   with posterior probability >= 0.9 (nearly pure tissue).
2. Each voxel's tissue *fractions* come from a two-compartment linear mixture of the two
   adjacent pure intensities that bracket its intensity (CSF-GM below the GM mean, GM-WM
   above it), the model FSL FAST's partial-volume estimate is built on.  Voxels that
   Atropos classifies with posterior >= ``pure_posterior`` keep a pure fraction of 1: the
   noise of a pure voxel's intensity is not turned into spurious partial volume.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np

from bids_ketamine.anat.antsimage import checked_volume, require_ants, to_ants, to_nibabel
from bids_ketamine.utils.images import as_image

__all__ = ["TISSUE_NAMES", "atropos_posteriors", "mixture_fractions", "tissue_fractions"]

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
            result = ants.atropos(a=image, x=brain, i="kmeans[3]", m=f"[{float(mrf_weight)},1x1x1]",
                                  c=f"[{int(iterations)},0]", verbose=0)
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


def tissue_fractions(t1w, mask, *, pure_posterior: float = 0.9,
                     mrf_weight: float = 0.1) -> dict[str, nib.Nifti1Image]:
    """GM, WM and CSF partial-volume maps of a brain-extracted, bias-corrected T1w.

    Parameters
    ----------
    t1w : path or nibabel image
    mask : path or nibabel image
        Brain mask on the T1w grid.
    pure_posterior : float
        Voxels whose Atropos posterior for one class reaches this value count as pure
        tissue: they define the class means and keep a fraction of 1.
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
    means = {}
    for name in TISSUE_NAMES:
        pure = inside & (posteriors[name] >= pure_posterior)
        if pure.sum() < 10:
            pure = inside & (posteriors[name] >= 0.5)
        if not pure.any():
            raise ValueError(f"no {name.upper()} found in the brain mask: check the brain mask and "
                             "that the image is T1-weighted")
        means[name] = float(np.median(data[pure]))
    fractions = mixture_fractions(data[inside], means)
    stacked = np.stack([posteriors[name][inside] for name in TISSUE_NAMES], axis=1)
    confident = stacked.max(axis=1) >= pure_posterior
    winner = np.argmax(stacked, axis=1)
    out = {}
    for index, name in enumerate(TISSUE_NAMES):
        values = np.where(confident, (winner == index).astype(np.float32), fractions[name])
        volume = np.zeros(img.shape, dtype=np.float32)
        volume[inside] = values
        out[name] = volume
    labels = np.zeros(img.shape, dtype=np.uint8)
    labels[inside] = 1 + np.argmax(np.stack([out[n][inside] for n in TISSUE_NAMES], axis=1), axis=1)
    result = {name: nib.Nifti1Image(out[name], img.affine) for name in TISSUE_NAMES}
    result["labels"] = nib.Nifti1Image(labels, img.affine)
    return result
