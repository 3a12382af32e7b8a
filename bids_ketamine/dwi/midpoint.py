"""The within-subject midpoint space, unbiased between sessions (the algorithm is described
at the top of :mod:`bids_ketamine.dwi.registration`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import linalg

from bids_ketamine.dwi.rigid import log_euclidean_mean, register, resample
from bids_ketamine.dwi.transforms import real_logm
from bids_ketamine.dwi.worldgrid import (as_volume, centre_of_mass, float_data, fov_corners,
                                         translation_matrix, world_image)
from bids_ketamine.utils.images import as_image

__all__ = ["MidpointResult", "midpoint_space"]


# ---------------------------------------------------------------------------------------
# Midpoint space
# ---------------------------------------------------------------------------------------
@dataclass
class MidpointResult:
    """The within-subject midpoint space.

    Attributes
    ----------
    transforms : list of ndarray (4, 4)
        Midpoint-world to session-world transform of every input (input order).
    shape : tuple of int
        Shape of the midpoint grid.
    affine : ndarray (4, 4)
        Voxel-to-world affine of the midpoint grid.
    template : nibabel.Nifti1Image
        Mean of the inputs resampled into the midpoint grid.
    mask : nibabel.Nifti1Image or None
        Voxels inside at least half of the resampled input masks (when masks were given).
    pairwise : dict
        ``(i, j) -> S_ij``: the inverse-consistent rigid transform from session ``i``'s
        world to session ``j``'s world.
    """

    transforms: list
    shape: tuple
    affine: np.ndarray
    template: nib.Nifti1Image
    mask: nib.Nifti1Image | None = None
    pairwise: dict = field(default_factory=dict)

    def to_midpoint(self, img, index: int, *, order: int = 3) -> nib.Nifti1Image:
        """Resample an image of session ``index`` (any grid of it) into the midpoint grid."""
        img = as_image(img)
        data = np.asanyarray(img.dataobj)
        out = resample(data, img.affine, self.shape, self.affine, self.transforms[index],
                       order=order)
        return world_image(out, self.affine)

    def from_midpoint(self, img, index: int, ref_img, *, order: int = 0) -> nib.Nifti1Image:
        """Resample a midpoint-space image onto a grid of session ``index`` (``ref_img``)."""
        img, ref_img = as_image(img), as_image(ref_img)
        data = np.asanyarray(img.dataobj)
        out = resample(data, img.affine, ref_img.shape[:3], ref_img.affine,
                       np.linalg.inv(self.transforms[index]), order=order)
        return world_image(out, ref_img.affine)


def _symmetric_pair(images, masks, i, j, factors):
    """Inverse-consistent rigid transform from image i's world to image j's world.

    Each direction starts both from the scanner coordinates (identity) and from the
    centres of mass (unreliable when the fields of view cover different parts of the
    head) and keeps the better fit; then each direction is registered once more from the
    inverse of the other's result, and again the better fit is kept.  Without this
    exchange, one direction caught in a local minimum (large head rotations between
    series, as in sub-canon's 2020 acquisitions, 38 degrees apart) would pull the log-mean
    of the two half-way to it.
    """
    (data_i, aff_i), (data_j, aff_j) = images[i], images[j]
    shift = translation_matrix(
        centre_of_mass(data_j, aff_j, masks[j]) - centre_of_mass(data_i, aff_i, masks[i])
    )

    def _best(fixed, fixed_aff, fixed_mask, moving, moving_aff, starts, incumbent=None):
        fits = [
            register(fixed, fixed_aff, moving, moving_aff, fixed_mask=fixed_mask, init=start,
                     metric="ncc", factors=factors)
            for start in starts
        ]
        return min(fits + ([] if incumbent is None else [incumbent]), key=lambda fit: fit.cost)

    forward = _best(data_i, aff_i, masks[i], data_j, aff_j, [np.eye(4), shift])
    backward = _best(data_j, aff_j, masks[j], data_i, aff_i, [np.eye(4), np.linalg.inv(shift)])
    forward, backward = (
        _best(data_i, aff_i, masks[i], data_j, aff_j, [np.linalg.inv(backward.matrix)], forward),
        _best(data_j, aff_j, masks[j], data_i, aff_i, [np.linalg.inv(forward.matrix)], backward),
    )
    return linalg.expm((real_logm(forward.matrix) - real_logm(backward.matrix)) / 2.0)


def midpoint_space(images, masks=None, *, factors=(4, 2, 1), voxel_size=None) -> MidpointResult:
    """Unbiased within-subject midpoint space of two or more images of one subject.

    Parameters
    ----------
    images : sequence of nibabel images (or paths), 3-D
        E.g. each session's mean b=0, each with its own affine.
    masks : sequence of images or None, optional
        Brain masks on the images' grids (recommended); registrations measure the
        residual inside the fixed image's mask.
    factors : sequence of int
        Pyramid factors of the rigid registrations.
    voxel_size : float, optional
        Voxel size of the midpoint grid; the finest input voxel size by default.

    Returns
    -------
    MidpointResult
        Permuting the inputs permutes ``transforms`` and leaves the grid and the
        template unchanged (to floating-point precision).

    Raises
    ------
    ValueError
        On fewer than two images, masks that do not match, or empty images.
    """
    images = [as_volume(img, f"images[{k}]") for k, img in enumerate(images)]
    if len(images) < 2:
        raise ValueError("midpoint_space needs at least two images of the same subject")
    if masks is None:
        mask_data = [None] * len(images)
    else:
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images: give one per image")
        mask_data = []
        for k, (mask, img) in enumerate(zip(masks, images)):
            mask = as_volume(mask, f"masks[{k}]")
            if mask.shape != img.shape or not np.allclose(mask.affine, img.affine, atol=1e-4):
                raise ValueError(f"masks[{k}] is not on the grid of images[{k}]")
            mask_data.append(np.asarray(mask.dataobj) > 0)
    arrays = [(float_data(img), np.asarray(img.affine, dtype=float)) for img in images]
    n = len(images)
    pairwise = {}
    for i in range(n):
        for j in range(i + 1, n):
            pairwise[(i, j)] = _symmetric_pair(arrays, mask_data, i, j, factors)
            pairwise[(j, i)] = np.linalg.inv(pairwise[(i, j)])
    transforms = []
    per_reference = []
    for r in range(n):
        to_sessions = [np.eye(4) if i == r else pairwise[(r, i)] for i in range(n)]
        centre_inv = np.linalg.inv(log_euclidean_mean(to_sessions))
        per_reference.append([t @ centre_inv for t in to_sessions])
    transforms = [log_euclidean_mean([per_reference[r][i] for r in range(n)]) for i in range(n)]

    vox = voxel_size or min(
        float(np.sqrt((a[:3, :3] ** 2).sum(axis=0)).min()) for _, a in arrays
    )
    corners = np.concatenate(
        [
            fov_corners(img.shape, a) @ np.linalg.inv(m)[:3, :3].T + np.linalg.inv(m)[:3, 3]
            for img, (_, a), m in zip(images, arrays, transforms)
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(np.ceil((hi - lo) / vox)) for lo, hi in zip(low, high))
    grid = np.diag([vox, vox, vox, 1.0])
    grid[:3, 3] = low + vox / 2.0
    resampled = [
        resample(data, a, shape, grid, m, order=3) for (data, a), m in zip(arrays, transforms)
    ]
    template = world_image(np.mean(resampled, axis=0).astype(np.float32), grid)
    mask_img = None
    if masks is not None:
        fractions = [
            resample(md.astype(np.float32), a, shape, grid, m, order=1)
            for md, (_, a), m in zip(mask_data, arrays, transforms)
        ]
        mask_img = world_image((np.mean(fractions, axis=0) >= 0.5).astype(np.uint8), grid)
    return MidpointResult(
        transforms=transforms, shape=shape, affine=grid, template=template, mask=mask_img,
        pairwise=pairwise,
    )
