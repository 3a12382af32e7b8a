"""Resampling of 3-D and 4-D images through a world-space transform (pull convention of
:mod:`bids_ketamine.dwi.rigid`): at points, onto a grid, or for a nibabel image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_ketamine.dwi.transforms import check_matrix

__all__ = ["check_affine", "resample", "resample_image", "sample_at_points", "sample_at_voxels"]


# ---------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------
def check_affine(affine, name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name} must be an invertible 4x4 voxel-to-world affine")
    return affine


def _checked_input(data, affine, transform, order: int):
    """The image data, its affine and the transform (identity if None), checked."""
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"data must be 3-D or 4-D, got shape {data.shape}")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0 (labels), 1 or 3, got {order}")
    affine = check_affine(affine, "affine")
    transform = np.eye(4) if transform is None else check_matrix(transform, "transform")
    return data, affine, transform


def inside_field_of_view(coords, shape) -> np.ndarray:
    """Whether each voxel coordinate (3, n) lies in a grid of ``shape``: within its voxels'
    extent, i.e. a half-voxel margin around the edge voxels' centres (as a scanner grid's)."""
    extent = np.asarray(shape[:3])[:, None]
    return np.all((coords >= -0.5) & (coords <= extent - 0.5), axis=0)


def sample_at_voxels(data, coords, order: int, cval: float = 0.0) -> np.ndarray:
    """Sample one 3-D volume at voxel coordinates ``coords`` (3, n); outside the field of view
    (:func:`inside_field_of_view`) gives ``cval``.  Order 3 is a cubic B-spline (prefiltered)."""
    inside = inside_field_of_view(coords, data.shape)
    if order <= 1:
        values = ndimage.map_coordinates(data, coords, order=order, mode="nearest")
    else:
        source = ndimage.spline_filter(np.asarray(data, dtype=float), order=order, mode="nearest")
        values = ndimage.map_coordinates(
            source, coords, order=order, mode="nearest", prefilter=False
        )
    values = np.where(inside, values, cval)
    return values


def sample_at_points(data, affine, points, transform=None, *, order: int = 1, cval=0.0):
    """Values of a 3-D or 4-D image at world points (the point version of :func:`resample`).

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z) or (X, Y, Z, N)
    affine : array-like, shape (4, 4)
        Voxel-to-world affine of ``data``.
    points : array-like, shape (n, 3)
        World coordinates (mm) of the points, in the reference space.
    transform : array-like, shape (4, 4), optional
        Reference-world to image-world transform (identity by default).
    order : {0, 1, 3}
    cval : float
        Value outside the field of view.

    Returns
    -------
    ndarray, shape (n,) or (n, N)
    """
    data, affine, transform = _checked_input(data, affine, transform, order)
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    to_voxel = np.linalg.inv(affine) @ transform
    coords = to_voxel[:3, :3] @ points.T + to_voxel[:3, 3:4]
    volumes = data[..., None] if data.ndim == 3 else data
    out_dtype = data.dtype if order == 0 else np.result_type(data.dtype, np.float32)
    out = np.empty((points.shape[0], volumes.shape[3]), dtype=out_dtype)
    for n in range(volumes.shape[3]):
        vol = volumes[..., n] if order == 0 else np.asarray(volumes[..., n], dtype=float)
        out[:, n] = sample_at_voxels(vol, coords, order, cval)
    return out[:, 0] if data.ndim == 3 else out


def resample(
    data,
    affine,
    ref_shape,
    ref_affine,
    transform=None,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a 3-D or 4-D image onto a grid through a world transform.

    ``out[i] = data(affine^-1 @ transform @ ref_affine @ i)`` for every voxel index ``i``
    of the reference grid: ``transform`` maps reference-world points to the image's world
    (the convention of :func:`register`).

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z) or (X, Y, Z, N)
        The image (4-D: every volume is resampled the same way).
    affine : array-like, shape (4, 4)
        Voxel-to-world affine of ``data``.
    ref_shape : tuple of 3 int
        Shape of the output grid.
    ref_affine : array-like, shape (4, 4)
        Voxel-to-world affine of the output grid.
    transform : array-like, shape (4, 4), optional
        Reference-world to image-world transform; identity by default.
    order : {0, 1, 3}
        0: nearest neighbour (labels, masks: the dtype is kept), 1: trilinear, 3: cubic
        B-spline.
    cval : float
        Value outside the image's field of view.

    Returns
    -------
    ndarray, shape ref_shape (+ (N,))
    """
    data, affine, transform = _checked_input(data, affine, transform, order)
    ref_affine = check_affine(ref_affine, "ref_affine")
    ref_shape = tuple(int(n) for n in ref_shape)[:3]
    index_map = np.linalg.inv(affine) @ transform @ ref_affine  # output index -> input voxel
    index_map[3] = [0.0, 0.0, 0.0, 1.0]  # exact, as affine_transform requires
    volumes = data[..., None] if data.ndim == 3 else data
    # Output voxels whose source lies outside the input (half-voxel margin) get cval.  (Not
    # ndimage's order-0 "constant" mode on a volume of ones: that drops an edge slice as soon
    # as its source lies beyond the edge voxel's centre by any amount.)
    grid = np.indices(ref_shape, dtype=float).reshape(3, -1)
    inside = inside_field_of_view(index_map[:3, :3] @ grid + index_map[:3, 3:4], volumes.shape).reshape(ref_shape)
    out_dtype = data.dtype if order == 0 else np.result_type(data.dtype, np.float32)
    out = np.empty(ref_shape + (volumes.shape[3],), dtype=out_dtype)
    for n in range(volumes.shape[3]):
        vol = volumes[..., n] if order == 0 else np.asarray(volumes[..., n], dtype=float)
        if order == 3:
            vol = ndimage.spline_filter(vol, order=3, mode="nearest")
        values = ndimage.affine_transform(
            vol, index_map, output_shape=ref_shape, order=order, mode="nearest",
            prefilter=False,
        )
        out[..., n] = np.where(inside, values, cval)
    return out[..., 0] if data.ndim == 3 else out


def resample_image(img, ref_shape, ref_affine, transform=None, *, order: int = 1, cval=0.0):
    """:func:`resample` for a nibabel image; returns a ``Nifti1Image`` on the grid."""
    import nibabel as nib

    data = np.asanyarray(img.dataobj)
    out = resample(data, img.affine, ref_shape, ref_affine, transform, order=order, cval=cval)
    header = img.header.copy() if hasattr(img, "header") else None
    result = nib.Nifti1Image(out, np.asarray(ref_affine, dtype=float), header)
    result.set_qform(ref_affine, code=2)
    result.set_sform(ref_affine, code=2)
    return result
