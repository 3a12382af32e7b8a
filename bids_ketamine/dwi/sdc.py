"""Susceptibility-distortion correction from two b=0 images of opposite polarity (PEPOLAR).

A feature at ``u`` (voxels along the phase-encoding axis) appears at ``u + s d(u)`` in the
first image and at ``u - s d(u)`` in the second, ``d = field x TotalReadoutTime`` (voxels) and
``s`` the first image's polarity (+1 for ``j``, -1 for ``j-``).  The two images are registered
to each other with ANTs' SyN restricted to the phase-encoding axis (``antsRegistration
--restrict-deformation``; the same idea as AFNI's ``3dQwarp -plusminus``, without FSL's TOPUP),
in the images' index space so that the axis is the voxel axis whatever the obliquity.  The
forward warp ``w`` (second image sampled at ``x + w(x)`` matches the first at ``x``) is
``-2 s d`` at the first image's positions; the field on the undistorted grid follows by a
fixed-point inversion.

Registration settings (:data:`PEPOLAR_SETTINGS`): cross-correlation radius 1, stopping at half
resolution (the field is smooth; the warp is upsampled), gradient step 0.3 and the total field
smoothed by 0.5 voxel.  Measured 2026-12-05 on six simulated sessions (small preset, 3 mm, 100 Hz,
seeds 5 and 8, the raw series' mean b=0; error against the true field inside the true brain) and
on the two real pairs of ``../shared/data/real-sdc`` (Pearson r of the two polarities' b=0 inside
the brain after correcting both, Jacobian included, raw uih 0.798, elition 0.716):

=================================  ==========  ==============  ===============  =========  ============
SyN step / total sigma             field r     median err      err |d|>1 (vx)   uih b=0 r  elition b=0 r
=================================  ==========  ==============  ===============  =========  ============
0.2 / 0 (the setting until then)   0.78-0.93   0.012-0.030     0.38-0.75        0.810      0.669
0.2 / 0.5 (4 of the sessions)      0.72-0.91   0.006-0.007     0.76-1.24        0.875      0.727
0.3 / 0.5 (the default)            0.88-0.97   0.006-0.007     0.22-0.61        0.876      0.723
0.4 / 0.5                          0.83-0.96   0.022-0.070     0.25-0.78        0.873      0.720
0.3 / 0.75                         0.73-0.93   0.006           0.69-1.23        0.875      0.727
0.3 / 1                            0.69-0.90   0.005-0.006     1.02-1.43        0.872      0.730
=================================  ==========  ==============  ===============  =========  ============

Without smoothing of the total field the estimate follows the noise where the field is weak (on
elition the corrected b=0 pair, Jacobian included, agreed worse than uncorrected; on uih the
corrected MD maps did); smoothing it at SyN's
default step stops the update before the steep field next to the sources is reached; the larger
step reaches it in the same iterations.  Beyond 0.3 the weak-field error grows (step 0.4-0.5).
Earlier measurements on the first simulated session (one thread): CC radius 2 at four levels,
82 s, r 0.74; CC radius 1 to full resolution, 43 s, r 0.91; stopping at half resolution, 9.7 s.

The correction (:func:`unwarp`) inverts the EPI forward model: the undistorted image at ``u`` is
the distorted one at ``u + s d(u)``, times the Jacobian ``1 + s d'(u)`` (signal compressed into
a bright pile-up is spread out again, stretched signal is brightened).  The phase-encoding
axis and polarity are those of the image as the workflow holds it (RAS+ voxel order,
:func:`ras_phase_encoding`).  In the workflow the displacement is composed with each volume's head
motion (:class:`DisplacementField`), so every volume is resampled once.  GRE field maps give the
field directly (:mod:`bids_ketamine.dwi.gre_fieldmap`); without either, ``--use-syn-sdc`` estimates
it from the T1w (:mod:`bids_ketamine.dwi.syn_sdc`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["DisplacementField", "JACOBIAN_SIGMA", "PEPOLAR_SETTINGS", "displacement_voxels", "index_space_image",
           "mean_reference_b0", "pepolar_field", "phase_encoding_vector", "ras_phase_encoding", "unwarp"]

#: ANTs SyN settings of :func:`pepolar_field` (module docstring: measurements).
PEPOLAR_SETTINGS = {"syn_metric": "CC", "syn_sampling": 1, "reg_iterations": (100, 50, 0),
                    "grad_step": 0.3, "flow_sigma": 3.0, "total_sigma": 0.5}


#: Smoothing (voxels) of the estimated displacement before its Jacobian is taken (:func:`unwarp`):
#: none, the exact Jacobian.  Measured on the simulated 3 mm subject (100 Hz, seed 5, ses-pre) and
#: real philips-elition, Pearson r of the two polarities' b=0 inside the brain after correction
#: (raw 0.684 / 0.716), with the field of :data:`PEPOLAR_SETTINGS`: exact 0.869 / 0.723, smoothed
#: by 3 voxels 0.856 / 0.738, no Jacobian 0.724 / 0.755.  (With the unsmoothed field used until
#: 2026-12-05, exact 0.766 / 0.669 and smoothed 0.865 / 0.717, but the simulated subject's
#: largest ROI MD error was 2.3 % exact and 3.2 % smoothed.)
JACOBIAN_SIGMA = 0.0


def _stored_phase_encoding(direction: str) -> tuple[int, int]:
    """A BIDS ``PhaseEncodingDirection`` as (voxel axis of the stored image, +1 or -1)."""
    if direction not in ("i", "j", "k", "i-", "j-", "k-"):
        raise ValueError(f"PhaseEncodingDirection must be one of i, j, k, i-, j-, k-; got {direction!r}")
    return "ijk".index(direction[0]), -1 if direction.endswith("-") else 1


def ras_phase_encoding(direction: str, affine) -> tuple[int, int]:
    """The phase-encoding axis and polarity in the RAS+ voxel order of an image.

    The workflow reorients every image to RAS+ (:func:`bids_ketamine.dwi.gradients.reorient_to_ras`),
    which permutes and flips voxel axes; BIDS ``PhaseEncodingDirection`` refers to the stored
    image's axes.

    Parameters
    ----------
    direction : str
        BIDS ``PhaseEncodingDirection`` of the stored image: ``i``, ``j``, ``k``, ``i-``, ``j-``, ``k-``.
    affine : array, shape (4, 4)
        The stored image's affine.

    Returns
    -------
    axis : int
        Voxel axis of the phase encoding in the RAS+ image.
    sign : int
        +1 or -1: its polarity there.
    """
    from nibabel.orientations import io_orientation

    stored_axis, sign = _stored_phase_encoding(direction)
    new_axis, flip = io_orientation(np.asarray(affine, dtype=float))[stored_axis]
    return int(new_axis), int(sign * flip)


def phase_encoding_vector(direction: str, affine) -> np.ndarray:
    """The unit world-space (RAS mm) vector of a BIDS ``PhaseEncodingDirection`` in an image."""
    stored_axis, sign = _stored_phase_encoding(direction)
    column = np.asarray(affine, dtype=float)[:3, stored_axis]
    return sign * column / np.linalg.norm(column)


def displacement_voxels(field_hz, *, sign: int, total_readout_time: float) -> np.ndarray:
    """The displacement (voxels, along the phase-encoding axis) of a field: ``sign * field *
    TotalReadoutTime``."""
    return sign * np.asarray(field_hz, dtype=float) * float(total_readout_time)


@dataclass(frozen=True)
class DisplacementField:
    """The EPI distortion of a series, on its undistorted grid: the signal of voxel ``u`` was
    recorded at ``u + shift(u)`` along ``axis`` (voxels), scaled by ``1 / modulation(u)``.

    :meth:`sample` inverts it at any undistorted positions, so that motion correction can
    compose the two and resample every volume once (:func:`bids_ketamine.dwi.motion.correct_motion`).

    Attributes
    ----------
    shift : ndarray, shape (X, Y, Z)
        ``s d(u)``: polarity times the displacement (voxels) of :func:`displacement_voxels`.
    axis : int
        Phase-encoding voxel axis.
    modulation : ndarray, shape (X, Y, Z)
        The Jacobian ``1 + d shift / du`` (clipped at 0), or ones.
    """

    shift: np.ndarray
    axis: int
    modulation: np.ndarray

    @classmethod
    def from_field(cls, field_hz, *, axis: int, sign: int, total_readout_time: float,
                   jacobian: bool = True, jacobian_sigma: float = 0.0) -> "DisplacementField":
        """The distortion of an image of phase-encoding ``axis`` and polarity ``sign`` in a field
        (Hz, undistorted grid); ``jacobian`` and ``jacobian_sigma`` as in :func:`unwarp`."""
        if axis not in (0, 1, 2) or sign not in (-1, 1):
            raise ValueError(f"axis must be 0, 1 or 2 and sign +1 or -1, got {axis}, {sign}")
        shift = displacement_voxels(field_hz, sign=sign, total_readout_time=total_readout_time)
        if shift.ndim != 3:
            raise ValueError(f"the field must be 3-D, got shape {shift.shape}")
        smooth = ndimage.gaussian_filter(shift, jacobian_sigma) if jacobian_sigma > 0 else shift
        modulation = (np.clip(1.0 + np.gradient(smooth, axis=axis), 0.0, None) if jacobian
                      else np.ones_like(shift))
        return cls(shift=shift, axis=axis, modulation=modulation)

    def positions(self, coords) -> np.ndarray:
        """The distorted image's voxel coordinates (3, n) that :meth:`sample` reads for the
        undistorted positions ``coords``: each moved along the phase-encoding axis by the shift."""
        coords = np.asarray(coords, dtype=float)
        shifted = coords.copy()
        shifted[self.axis] += ndimage.map_coordinates(self.shift, coords, order=1, mode="nearest")
        return shifted

    def sample(self, volumes, coords, *, order: int = 1, shifted=None) -> np.ndarray:
        """The corrected image's values at undistorted voxel positions.

        Parameters
        ----------
        volumes : ndarray, shape (X, Y, Z) or (X, Y, Z, N)
            Distorted volume(s), on the grid of :attr:`shift`; every volume is sampled at the
            same positions (the shift and the Jacobian there are interpolated once).
        coords : ndarray, shape (3, n)
            Voxel coordinates of the positions (e.g. a reference grid moved by head motion).
        order : {1, 3}
            Interpolation of the volumes (the shift and the Jacobian are interpolated linearly).
        shifted : ndarray, shape (3, n), optional
            :meth:`positions` of ``coords``, when the caller has them already.

        Returns
        -------
        ndarray, float32, shape (n,) or (n, N)
        """
        from bids_ketamine.dwi.resample import sample_at_voxels

        coords = np.asarray(coords, dtype=float)
        shifted = self.positions(coords) if shifted is None else shifted
        modulation = ndimage.map_coordinates(self.modulation, coords, order=1, mode="nearest")
        volumes = np.asarray(volumes)
        stack = volumes[..., None] if volumes.ndim == 3 else volumes
        values = np.empty((coords.shape[1], stack.shape[3]), dtype=np.float32)
        for k in range(stack.shape[3]):
            volume = np.asarray(stack[..., k], dtype=float)
            values[:, k] = sample_at_voxels(volume, shifted, order) * modulation
        return values[:, 0] if volumes.ndim == 3 else values


def unwarp(volumes, field_hz, *, axis: int, sign: int, total_readout_time: float,
           jacobian: bool = True, jacobian_sigma: float = 0.0) -> np.ndarray:
    """Correct a distorted image (3-D or 4-D) with a field on its undistorted grid.

    The corrected value at ``u`` is the distorted image at ``u + s d(u)`` (linear
    interpolation along the phase-encoding axis) times the Jacobian ``1 + s d'(u)``: the inverse
    of :func:`bids_ketamine.simulate.distortion.distort` (:class:`DisplacementField` on the
    image's own grid).

    Parameters
    ----------
    volumes : ndarray, 3-D or 4-D
        The distorted image(s).
    field_hz : ndarray, 3-D
        The field (Hz) on the same grid, undistorted positions (:func:`pepolar_field`).
    axis, sign : int
        Phase-encoding voxel axis and polarity of ``volumes``.
    total_readout_time : float
        BIDS ``TotalReadoutTime`` (s).
    jacobian : bool
        Modulate the intensities by the Jacobian (False: displacement only).
    jacobian_sigma : float
        Gaussian smoothing (voxels) of the displacement the Jacobian is taken from; 0: exact.
        An *estimated* field is noisy at the voxel scale and the Jacobian, its derivative,
        amplifies that noise; the workflow uses :data:`JACOBIAN_SIGMA` (measurements there).  The Jacobian scales
        every volume of a voxel alike, so it cancels in a voxel's tensor metrics; it changes
        the b=0 images, hence the registrations that place the ROIs.

    Returns
    -------
    ndarray
        float32, the shape of ``volumes``.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim not in (3, 4) or np.shape(field_hz) != volumes.shape[:3]:
        raise ValueError(f"need a 3-D or 4-D image and a 3-D field on its grid, got {volumes.shape} "
                         f"and {np.shape(field_hz)}")
    displacement = DisplacementField.from_field(field_hz, axis=axis, sign=sign,
                                                total_readout_time=total_readout_time,
                                                jacobian=jacobian, jacobian_sigma=jacobian_sigma)
    values = displacement.sample(volumes, np.indices(volumes.shape[:3], dtype=float).reshape(3, -1))
    return values.reshape(volumes.shape)


def mean_reference_b0(images, target, volumes=None) -> nib.Nifti1Image:
    """The mean of reverse phase-encoded b=0 images, in RAS+ voxel order on ``target``'s grid.

    Parameters
    ----------
    images : sequence of nibabel images, 3-D or 4-D
        The references as stored (any voxel order); every volume is averaged.
    target : nibabel image
        The DWI (RAS+) whose grid the mean is put on: as is when the grids match (the usual
        case: one protocol), else by linear interpolation through the affines.
    volumes : sequence of (boolean array or None), optional
        Per image, the volumes to average (e.g. the b=0 volumes of a DWI run); None: all.

    Returns
    -------
    nibabel.Nifti1Image
        3-D, float32.
    """
    from bids_ketamine.dwi.resample import resample

    shape, affine = target.shape[:3], target.affine
    means = []
    for img, chosen in zip(images, volumes if volumes is not None else [None] * len(images)):
        ras = nib.as_closest_canonical(img)
        data = np.asanyarray(ras.dataobj, dtype=np.float32)
        stack = data.reshape(data.shape[:3] + (-1,))
        if chosen is not None:
            chosen = np.asarray(chosen, dtype=bool)
            if chosen.shape != (stack.shape[3],) or not chosen.any():
                raise ValueError(f"volume selection {chosen.shape} does not fit an image of {stack.shape[3]} "
                                 "volumes, or selects none")
            stack = stack[..., chosen]
        mean = stack.mean(axis=-1)
        if mean.shape != tuple(shape) or not np.allclose(ras.affine, affine, atol=1e-3):
            mean = resample(mean, ras.affine, shape, affine, order=1)
        means.append(np.asarray(mean, dtype=np.float32))
    if not means:
        raise ValueError("no reference image given")
    return nib.Nifti1Image(np.mean(means, axis=0).astype(np.float32), affine)


def index_space_image(ants, data: np.ndarray, zooms):
    """An ANTs image whose physical axes are the voxel axes (spacing = voxel size, no rotation)."""
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=(0.0, 0.0, 0.0),
                           spacing=tuple(float(z) for z in zooms))


def pepolar_field(b0, reverse_b0, *, axis: int, sign: int, total_readout_time: float,
                  mask=None, seed: int = 1, settings: dict | None = None) -> nib.Nifti1Image:
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
    settings : dict, optional
        ``ants.registration`` keywords replacing those of :data:`PEPOLAR_SETTINGS`.

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
    fixed = index_space_image(ants, first, zooms)
    moving = index_space_image(ants, second, zooms)
    kwargs = {}
    if mask is not None:
        inside = ndimage.binary_dilation(np.asanyarray(mask.dataobj) > 0, iterations=2)
        kwargs["mask"] = index_space_image(ants, inside.astype(np.float32), zooms)
    restrict = tuple(1 if k == axis else 0 for k in range(3))
    with tempfile.TemporaryDirectory() as scratch, seeded(seed):
        result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNOnly",
                                   initial_transform="identity", restrict_transformation=restrict,
                                   outprefix=f"{scratch}/pepolar_", **kwargs,
                                   **{**PEPOLAR_SETTINGS, **(settings or {})})
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
