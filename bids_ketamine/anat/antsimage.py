"""Conversion between nibabel images and ANTsPy images, and the checks every anatomical
function applies to its input image at the door."""

from __future__ import annotations

import os
from contextlib import contextmanager

import nibabel as nib
import numpy as np

from bids_ketamine.utils.images import as_image

__all__ = ["require_ants", "set_threads", "seeded", "checked_volume", "to_ants", "to_nibabel"]


def require_ants():
    """The ``ants`` module, or one clear error saying how to install it."""
    try:
        import ants
    except ImportError:
        raise ImportError(
            "the anatomical (T1w) workflow needs ANTsPy, a dependency of bids_ketamine: "
            "pip install antspyx (or --ignore t1w for the DWI-only path)"
        ) from None
    return ants


def set_threads(n_threads: int | None) -> None:
    """Number of ITK threads of the ANTsPy calls that follow in this process."""
    if n_threads:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n_threads))


@contextmanager
def seeded(seed: int):
    """ANTs' random seed for the calls inside the block (restored after).

    ANTsPy 0.6.3 ignores the ``random_seed`` argument of ``ants.registration``; it reads
    ``ants.config._random_seed`` and passes it as ``--random-seed``.  Without it two runs of
    the same registration differ (0.6 mm of warp here); with it, and one ITK thread, they are
    bit-identical.  With several threads they still differ (0.24 mm): ITK fixes its thread
    count once per process, from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` at its first use
    (:func:`set_threads`), so repeatable runs need ``--omp-nthreads 1``, as in fMRIPrep.
    """
    ants = require_ants()
    previous = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


def checked_volume(img, name: str = "T1w image") -> nib.Nifti1Image:
    """A 3-D image with finite voxels and some positive signal (``ValueError`` otherwise).

    Parameters
    ----------
    img : path or nibabel image
    name : str
        How the image is named in the error message.

    Returns
    -------
    nibabel.Nifti1Image
        3-D float32 image (a trailing axis of length 1 is dropped).
    """
    img = as_image(img, name, require_data=True)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} must be a 3-D image, got shape {img.shape}")
    if min(data.shape) < 8:
        raise ValueError(f"{name} is too small to process (shape {data.shape})")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} has non-finite voxels; fix or re-convert the image")
    if not np.any(data > 0):
        raise ValueError(f"{name} has no positive voxel (empty image?)")
    return nib.Nifti1Image(data, img.affine)


def to_ants(img):
    """An ANTsPy image of a nibabel image (float32, same world coordinates)."""
    ants = require_ants()
    img = as_image(img, require_data=True)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    converted = nib.Nifti1Image(data, img.affine)
    converted.header.set_xyzt_units("mm", "sec")  # else ITK warns for every image it reads
    return ants.from_nibabel_nifti(converted)


def to_nibabel(image, dtype=np.float32) -> nib.Nifti1Image:
    """A nibabel image of an ANTsPy image, with ``dtype`` voxels."""
    ants = require_ants()
    out = ants.to_nibabel_nifti(image)
    return nib.Nifti1Image(np.asanyarray(out.dataobj).astype(dtype), out.affine)
