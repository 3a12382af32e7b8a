"""The B0 field (Hz) from a gradient-echo field map (BIDS "phase difference", "two phase images"
and "direct field map" cases), on a DWI series' grid.

A GRE field map is not distorted the way an EPI is (its readout is short), so the field it
gives is at undistorted positions, the grid :func:`bids_ketamine.dwi.sdc.unwarp` expects.  The
phase accrued between two echo times is ``2 pi f (TE2 - TE1)``; it is wrapped to ``[-pi, pi)``,
so it is unwrapped in 3-D inside the brain (:func:`skimage.restoration.unwrap_phase`, the
reliability-sorting algorithm of Abdul-Rahman et al. 2007; FSL's PRELUDE is not available), its
2 pi ambiguity resolved so that the brain's median phase lies within pi of the wrapped phase's
circular mean, and divided by
``2 pi (TE2 - TE1)``.  Outside the field map's brain the field is filled in smoothly from its edge
(normalised convolution), lightly smoothed, and put on the DWI grid (trilinear) through a rigid
registration of the field map's magnitude image to the DWI's mean b=0 (:func:`magnitude_to_dwi`:
ANTs, Mattes mutual information, from the scanner coordinates, each image inside its brain), so
that the head may move between the two series, as SDCflows does.  Without a magnitude image, or
with ``register=False``, the field is placed by scanner coordinates alone.

Phase images are taken in radians; images in scanner units (e.g. 0-4095) are rescaled from
their range to ``[-pi, pi)``, as SDCflows does.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger("bids_ketamine")

__all__ = ["field_from_phase_difference", "fieldmap_on_grid", "gre_field", "magnitude_to_dwi", "phase_in_radians",
           "wrapped_difference"]

#: Smoothing (voxels of the field map) of the field before it is put on the DWI grid: the phase
#: difference is noisy at the voxel scale and the field is smooth.
FIELD_SIGMA = 1.0
#: Width (voxels) of the normalised convolution that fills the field outside the brain.
FILL_SIGMA = 3.0
#: Mean displacement (mm) of the DWI brain's voxels beyond which the magnitude-to-b=0 registration
#: is taken to have failed and the field is placed by scanner coordinates (with a warning): the
#: field map and the DWI come from one session, and a head that moved this far between them is
#: rarer than a registration that went wrong (the same guard as fMRIPrep's fallback from BBR).
MAX_FIELDMAP_SHIFT_MM = 10.0


def phase_in_radians(phase) -> np.ndarray:
    """A phase image in radians: as is when it lies within ``[-pi, pi]`` (with a small tolerance)
    or ``[0, 2 pi]``; otherwise (scanner units) its range rescaled to ``[-pi, pi)``."""
    phase = np.asarray(phase, dtype=float)
    low, high = float(np.nanmin(phase)), float(np.nanmax(phase))
    if low >= -np.pi - 1e-3 and high <= 2 * np.pi + 1e-3:
        return phase
    if high <= low:
        raise ValueError("the phase image is constant: it carries no field")
    return (phase - low) / (high - low) * 2 * np.pi - np.pi


def wrapped_difference(phase1, phase2) -> np.ndarray:
    """``phase2 - phase1`` wrapped to ``[-pi, pi)`` (radians)."""
    return np.angle(np.exp(1j * (np.asarray(phase2, dtype=float) - np.asarray(phase1, dtype=float))))


def field_from_phase_difference(phase_difference, delta_te: float, mask) -> np.ndarray:
    """The field (Hz) from a wrapped phase difference.

    Parameters
    ----------
    phase_difference : ndarray, shape (X, Y, Z)
        Radians, wrapped (``phase(TE2) - phase(TE1)``).
    delta_te : float
        ``TE2 - TE1`` (s), positive.
    mask : ndarray of bool, shape (X, Y, Z)
        The brain: unwrapped inside, filled in outside.

    Returns
    -------
    ndarray
        The field (Hz), float32, defined everywhere.
    """
    from skimage.restoration import unwrap_phase

    phase_difference = np.asarray(phase_difference, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if delta_te <= 0:
        raise ValueError(f"the echo-time difference must be positive, got {delta_te} s: check "
                         "EchoTime1/EchoTime2 (or the two phase images' EchoTime) in the sidecars")
    if mask.shape != phase_difference.shape or not mask.any():
        raise ValueError("the field-map mask must be a non-empty image of the phase's shape")
    unwrapped = unwrap_phase(np.ma.masked_array(phase_difference, mask=~mask), rng=0)
    unwrapped = np.asarray(unwrapped.filled(0.0), dtype=float)
    # the unwrapping is defined up to 2 pi: put the brain's median within pi of the wrapped
    # phase's circular mean
    wrapped_centre = np.angle(np.mean(np.exp(1j * phase_difference[mask])))
    offset = np.round((np.median(unwrapped[mask]) - wrapped_centre) / (2 * np.pi))
    unwrapped -= 2 * np.pi * offset
    field = np.where(mask, unwrapped / (2 * np.pi * delta_te), 0.0)
    weight = ndimage.gaussian_filter(mask.astype(float), FILL_SIGMA)
    filled = ndimage.gaussian_filter(field, FILL_SIGMA) / np.maximum(weight, 1e-6)
    # beyond the normalised convolution's reach, the nearest filled value
    reached = weight > 1e-3
    if not reached.all():
        nearest = ndimage.distance_transform_edt(~reached, return_distances=False, return_indices=True)
        filled = filled[tuple(nearest)]
    field = np.where(mask, field, filled)
    return ndimage.gaussian_filter(field, FIELD_SIGMA).astype(np.float32)


def fieldmap_on_grid(field_img, target, target_to_fieldmap=None) -> np.ndarray:
    """A field map (Hz, any orientation) on a target image's grid (RAS+ DWI), trilinear, the
    nearest edge value outside the field map's field of view.

    ``target_to_fieldmap`` (4x4, world mm) maps a point of the target's world to the field map's
    (:func:`magnitude_to_dwi`); without it, scanner coordinates (the identity)."""
    field = np.asarray(field_img.dataobj, dtype=float)
    if field.ndim == 4 and field.shape[3] == 1:
        field = field[..., 0]
    if field.ndim != 3:
        raise ValueError(f"a field map is a 3-D image, got shape {field.shape}")
    world = np.eye(4) if target_to_fieldmap is None else np.asarray(target_to_fieldmap, dtype=float)
    index_map = np.linalg.inv(field_img.affine) @ world @ target.affine
    grid = np.indices(target.shape[:3], dtype=float).reshape(3, -1)
    coords = index_map[:3, :3] @ grid + index_map[:3, 3:4]
    values = ndimage.map_coordinates(field, coords, order=1, mode="nearest")
    return values.reshape(target.shape[:3]).astype(np.float32)


def magnitude_to_dwi(magnitude, magnitude_mask, b0, b0_mask, *, seed: int = 1) -> np.ndarray:
    """Rigid registration of a field map's magnitude image to the DWI's mean b=0.

    :func:`~bids_ketamine.anat.dwi_to_t1w.register_rigid_mi` (Mattes mutual information: the GRE
    magnitude and the b=0 differ in contrast), started from the scanner coordinates (one session:
    the head has moved little), each image inside its own brain mask.  The b=0 is still distorted; the rigid fit
    sees that as a small bias against the undistorted magnitude (on simulated data the brain moved
    0.25 mm where the field map had not: docs/anatomy.md, "Susceptibility-distortion correction").

    Parameters
    ----------
    magnitude : nibabel image
        The (first) magnitude image, 3-D, on the field map's grid.
    magnitude_mask : ndarray of bool
        Its brain mask (:func:`~bids_ketamine.dwi.mask.brain_mask`, as for the unwrapping).
    b0 : nibabel image
        The DWI's mean b=0.
    b0_mask : ndarray of bool
        Its brain mask (the b=0's grid).
    seed : int
        ANTs' random seed.

    Returns
    -------
    ndarray (4, 4)
        DWI world (RAS mm) -> field-map world: a field-map image on the DWI grid is
        ``fieldmap(matrix @ x)`` (:func:`fieldmap_on_grid`).
    """
    import nibabel as nib

    from bids_ketamine.anat.dwi_to_t1w import register_rigid_mi

    return register_rigid_mi(magnitude, nib.Nifti1Image(np.asarray(magnitude_mask, dtype=np.uint8), magnitude.affine),
                             b0, nib.Nifti1Image(np.asarray(b0_mask, dtype=np.uint8), b0.affine),
                             names=("field-map magnitude", "DWI mean b=0"), initial="identity", seed=seed)


def gre_field(method: str, images, magnitude, target, *, echo_times=(), units: str = "Hz",
              b0=None, b0_mask=None, seed: int = 1) -> np.ndarray:
    """The field (Hz) of a GRE field map on a target's grid (the whole path of this module).

    Parameters
    ----------
    method : {"phasediff", "phases", "fieldmap"}
        BIDS case: one phase-difference image, two phase images, or a field map.
    images : sequence of nibabel images
        ``[phasediff]``, ``[phase1, phase2]`` or ``[fieldmap]``.
    magnitude : nibabel image
        The (first) magnitude image, on the field map's grid: its brain is where the phase is
        unwrapped.
    target : nibabel image
        The DWI (RAS+) whose grid the field is put on.
    echo_times : (float, float)
        ``(TE1, TE2)`` in s (``phasediff``, ``phases``).
    units : {"Hz", "rad/s"}
        Of a ``fieldmap`` image.
    b0, b0_mask : nibabel image, ndarray of bool, optional
        The DWI's mean b=0 and its brain mask: with them (and a magnitude image) the field is
        placed through :func:`magnitude_to_dwi`; without, by scanner coordinates.
    seed : int
        ANTs' random seed of that registration.

    Returns
    -------
    ndarray
        The field (Hz) on the target's grid, float32.
    """
    from bids_ketamine.dwi.mask import brain_mask

    if method not in ("phasediff", "phases", "fieldmap"):
        raise ValueError(f"unknown GRE field-map method {method!r}")
    reference = images[0]
    register = b0 is not None and magnitude is not None
    if register or method != "fieldmap":  # the magnitude's brain: where the phase is unwrapped
        magnitude_volume = np.asarray(magnitude.dataobj, dtype=float).reshape(magnitude.shape[:3] + (-1,))[..., 0]
        magnitude_mask = brain_mask(magnitude_volume)
    target_to_fieldmap = None
    if register:
        target_to_fieldmap = _checked_registration(
            magnitude_to_dwi(_like(magnitude_volume, magnitude), magnitude_mask, b0, b0_mask, seed=seed), b0, b0_mask)
    if method == "fieldmap":
        field = np.asarray(reference.dataobj, dtype=float)
        scale = {"hz": 1.0, "rad/s": 1.0 / (2 * np.pi)}.get(units.lower())
        if scale is None:
            raise ValueError(f"field-map Units {units!r} is neither 'Hz' nor 'rad/s': fix the sidecar")
        smooth = ndimage.gaussian_filter(field * scale, FIELD_SIGMA).astype(np.float32)
        return fieldmap_on_grid(_like(smooth, reference), target, target_to_fieldmap)
    if len(echo_times) != 2:
        raise ValueError("a phase field map needs its two echo times (EchoTime1/EchoTime2 or the phase images' EchoTime)")
    if method == "phasediff":
        difference = phase_in_radians(np.asarray(reference.dataobj, dtype=float))
    else:
        first, second = (phase_in_radians(np.asarray(img.dataobj, dtype=float)) for img in images[:2])
        difference = wrapped_difference(first, second)
    field = field_from_phase_difference(difference.reshape(magnitude_mask.shape), echo_times[1] - echo_times[0],
                                        magnitude_mask)
    return fieldmap_on_grid(_like(field, reference), target, target_to_fieldmap)


def _checked_registration(target_to_fieldmap, b0, b0_mask):
    """The registration, or None (scanner coordinates, with a warning) where it moves the DWI
    brain's voxels by more than :data:`MAX_FIELDMAP_SHIFT_MM` on average."""
    voxels = np.argwhere(np.asarray(b0_mask, dtype=bool)).T
    world = b0.affine[:3, :3] @ voxels + b0.affine[:3, 3:4]
    moved = target_to_fieldmap[:3, :3] @ world + target_to_fieldmap[:3, 3:4]
    shift = float(np.linalg.norm(moved - world, axis=0).mean())
    if shift > MAX_FIELDMAP_SHIFT_MM:
        logger.warning("the field-map magnitude's registration to the DWI b=0 moves the brain by %.1f mm on "
                       "average (more than %.0f mm): taken as failed, the field map is placed by its scanner "
                       "coordinates; check that the field map belongs to this DWI series (IntendedFor / "
                       "B0FieldSource)", shift, MAX_FIELDMAP_SHIFT_MM)
        return None
    logger.info("field-map magnitude registered to the DWI b=0: the brain moved %.2f mm on average from the "
                "scanner coordinates", shift)
    return target_to_fieldmap


def _like(data: np.ndarray, img):
    import nibabel as nib

    return nib.Nifti1Image(data, img.affine)
