"""Brain masks of DWI series: the analysis mask and the (wider) region worth denoising."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["brain_mask", "denoising_mask"]


def brain_mask(b0, valid=None):
    """Brain mask by Otsu thresholding of the median-filtered mean b=0.

    :func:`dipy.segment.mask.median_otsu` (median radius 2, one pass), holes filled, restricted to
    ``valid`` voxels, largest connected component kept (specks of background dropped).

    Parameters
    ----------
    b0 : ndarray, shape (x, y, z)
        Mean b=0 image.
    valid : ndarray of bool, shape (x, y, z), optional
        Voxels allowed in the mask (e.g. finite and non-zero in every volume).

    Returns
    -------
    mask : ndarray of bool, shape (x, y, z)
    """
    from dipy.segment.mask import median_otsu

    b0 = np.asarray(b0, dtype=np.float32)
    if b0.ndim != 3:
        raise ValueError(f"b0 must be a 3-D image, got shape {b0.shape}")
    _, mask = median_otsu(np.nan_to_num(b0), median_radius=2, numpass=1)
    mask = ndimage.binary_fill_holes(mask)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    labels, n_labels = ndimage.label(mask)
    if n_labels > 1:
        sizes = ndimage.sum(mask, labels, range(1, n_labels + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask


def denoising_mask(b0, voxel_size, margin_mm=10.0):
    """The brain mask of the raw series widened by ``margin_mm``: the voxels worth denoising.

    MP-PCA is the costliest step of the participant level and its cost is per denoised voxel;
    about three quarters of a typical field of view is air. Denoising the brain plus a margin
    that covers head motion during the series and the later (motion-corrected) brain mask gives
    the same result inside that mask at a fraction of the time (patches still read every voxel).

    Parameters
    ----------
    b0 : ndarray, shape (x, y, z)
        Mean b=0 image of the raw series.
    voxel_size : sequence of 3 floats
        Voxel size in mm.
    margin_mm : float
        Width of the margin added around the brain mask.

    Returns
    -------
    mask : ndarray of bool, shape (x, y, z)
        Every voxel when no brain is found (nothing is skipped then).
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"margin_mm must be a non-negative number, got {margin_mm!r}")
    mask = brain_mask(b0)
    if not mask.any():
        return np.ones(np.shape(b0), dtype=bool)
    distance = ndimage.distance_transform_edt(~mask, sampling=np.asarray(voxel_size, dtype=float))
    return distance <= margin_mm
