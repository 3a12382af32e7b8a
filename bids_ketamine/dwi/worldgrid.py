"""3-D volumes on world grids, shared by the midpoint space and the template registration:
checked inputs, float data, images on a grid, centres of mass, field-of-view corners."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.utils.images import as_image

__all__ = ["as_volume", "centre_of_mass", "float_data", "fov_corners", "translation_matrix",
           "world_image"]


def as_volume(img, name: str) -> nib.Nifti1Image:
    return as_image(img, name, ndim=3, require_data=True)


def float_data(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float64)


def world_image(data, affine) -> nib.Nifti1Image:
    out = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    out.set_qform(affine, code=2)
    out.set_sform(affine, code=2)
    out.header.set_xyzt_units("mm")
    return out


def centre_of_mass(data: np.ndarray, affine: np.ndarray, mask=None) -> np.ndarray:
    weights = np.clip(data, 0, None) if mask is None else np.clip(data, 0, None) * mask
    if weights.sum() <= 0:
        raise ValueError("image is empty (no positive intensity inside the mask)")
    return affine[:3, :3] @ np.asarray(ndimage.center_of_mass(weights)) + affine[:3, 3]


def translation_matrix(vector) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = vector
    return out


def fov_corners(shape, affine) -> np.ndarray:
    corners = np.array(
        [[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5)
         for c in (-0.5, shape[2] - 0.5)]
    )
    return corners @ affine[:3, :3].T + affine[:3, 3]
