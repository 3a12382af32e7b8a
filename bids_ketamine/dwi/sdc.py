"""Susceptibility field from two b=0 images of opposite phase-encoding polarity (PEPOLAR).

A feature at ``u`` (voxels along the phase-encoding axis) appears at ``u + s d(u)`` in the
first image and at ``u - s d(u)`` in the second, ``d = field x TotalReadoutTime`` (voxels) and
``s`` the first image's polarity (+1 for ``j``, -1 for ``j-``).  The two images are registered
to each other with ANTs' SyN restricted to the phase-encoding axis (``antsRegistration
--restrict-deformation``; the same idea as AFNI's ``3dQwarp -plusminus``, without FSL's TOPUP),
in the images' index space so that the axis is the voxel axis whatever the obliquity.  The
forward warp ``w`` (second image sampled at ``x + w(x)`` matches the first at ``x``) is
``-2 s d`` at the first image's positions; the field on the undistorted grid follows by a
fixed-point inversion.

Not yet in the participant workflow (issue 19): this module estimates the field; applying it to
every DWI volume (with the Jacobian) and choosing the method from the dataset come next.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["pepolar_field"]


def _index_space_image(ants, data: np.ndarray, zooms):
    """An ANTs image whose physical axes are the voxel axes (spacing = voxel size, no rotation)."""
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=(0.0, 0.0, 0.0),
                           spacing=tuple(float(z) for z in zooms))


def pepolar_field(b0, reverse_b0, *, axis: int, sign: int, total_readout_time: float,
                  mask=None, seed: int = 1) -> nib.Nifti1Image:
    """The B0 field (Hz) from a b=0 image and its reverse phase-encoded twin.

    Parameters
    ----------
    b0, reverse_b0 : nibabel images, 3-D
        Mean b=0 of each polarity, on the same grid.
    axis : {0, 1, 2}
        Voxel axis of the phase encoding.
    sign : {+1, -1}
        Polarity of ``b0`` (``j`` is +1, ``j-`` is -1).
    total_readout_time : float
        BIDS ``TotalReadoutTime`` (s), the same for both.
    mask : nibabel image, optional
        Brain mask (same grid): the metric is computed inside it, dilated by 2 voxels.
    seed : int
        ANTs' random seed (:func:`bids_ketamine.anat.antsimage.seeded`).

    Returns
    -------
    nibabel.Nifti1Image
        The field in Hz on the undistorted grid (the images' grid).
    """
    from bids_ketamine.anat.antsimage import require_ants, seeded

    ants = require_ants()
    if axis not in (0, 1, 2) or sign not in (-1, 1):
        raise ValueError(f"axis must be 0, 1 or 2 and sign +1 or -1, got {axis}, {sign}")
    if not 0 < total_readout_time < 1:
        raise ValueError(f"total_readout_time must lie in (0, 1) s, got {total_readout_time}")
    first, second = (np.asanyarray(img.dataobj, dtype=np.float32) for img in (b0, reverse_b0))
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(f"the two b=0 images must be 3-D on one grid, got {first.shape} and {second.shape}")
    zooms = np.sqrt((b0.affine[:3, :3] ** 2).sum(axis=0))
    fixed = _index_space_image(ants, first, zooms)
    moving = _index_space_image(ants, second, zooms)
    kwargs = {}
    if mask is not None:
        inside = ndimage.binary_dilation(np.asanyarray(mask.dataobj) > 0, iterations=2)
        kwargs["mask"] = _index_space_image(ants, inside.astype(np.float32), zooms)
    restrict = tuple(1 if k == axis else 0 for k in range(3))
    with tempfile.TemporaryDirectory() as scratch, seeded(seed):
        result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNOnly",
                                   initial_transform="identity", restrict_transformation=restrict,
                                   syn_metric="CC", syn_sampling=2, reg_iterations=(100, 70, 40, 20),
                                   outprefix=f"{scratch}/pepolar_", **kwargs)
        warp = [f for f in result["fwdtransforms"] if f.endswith(".nii.gz")][0]
        displacement = np.asarray(nib.load(warp).dataobj, dtype=np.float64).reshape(first.shape + (3,))
    # the images have no rotation: ANTs' physical components are the voxel axes (mm)
    component = displacement[..., axis] / zooms[axis]  # voxels
    shift_at_first = -component / 2.0  # s * d at the first image's positions x = u + s d(u)
    # fixed point: s d(u) = shift_at_first(u + s d(u))
    coordinates = np.indices(first.shape, dtype=float)
    shift = shift_at_first.copy()
    for _ in range(10):
        sample = coordinates.copy()
        sample[axis] = coordinates[axis] + shift
        shift = ndimage.map_coordinates(shift_at_first, sample, order=1, mode="nearest")
    field = shift * sign / total_readout_time
    return nib.Nifti1Image(field.astype(np.float32), b0.affine)
