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
(normalised convolution), lightly smoothed, and put on the DWI grid by scanner coordinates
(trilinear): the field map and the DWI come from one session, and head motion between them is
not corrected.

Phase images are taken in radians; images in scanner units (e.g. 0-4095) are rescaled from
their range to ``[-pi, pi)``, as SDCflows does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["field_from_phase_difference", "fieldmap_on_grid", "phase_in_radians", "wrapped_difference"]

#: Smoothing (voxels of the field map) of the field before it is put on the DWI grid: the phase
#: difference is noisy at the voxel scale and the field is smooth.
FIELD_SIGMA = 1.0
#: Width (voxels) of the normalised convolution that fills the field outside the brain.
FILL_SIGMA = 3.0


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


def fieldmap_on_grid(field_img, target) -> np.ndarray:
    """A field map (Hz, any orientation) on a target image's grid (RAS+ DWI), by scanner
    coordinates (trilinear; nearest edge value outside the field map's field of view)."""
    field = np.asarray(field_img.dataobj, dtype=float)
    if field.ndim == 4 and field.shape[3] == 1:
        field = field[..., 0]
    if field.ndim != 3:
        raise ValueError(f"a field map is a 3-D image, got shape {field.shape}")
    index_map = np.linalg.inv(field_img.affine) @ target.affine
    grid = np.indices(target.shape[:3], dtype=float).reshape(3, -1)
    coords = index_map[:3, :3] @ grid + index_map[:3, 3:4]
    values = ndimage.map_coordinates(field, coords, order=1, mode="nearest")
    return values.reshape(target.shape[:3]).astype(np.float32)


def gre_field(method: str, images, magnitude, target, *, echo_times=(), units: str = "Hz") -> np.ndarray:
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

    Returns
    -------
    ndarray
        The field (Hz) on the target's grid, float32.
    """
    from bids_ketamine.dwi.mask import brain_mask

    if method not in ("phasediff", "phases", "fieldmap"):
        raise ValueError(f"unknown GRE field-map method {method!r}")
    reference = images[0]
    if method == "fieldmap":
        field = np.asarray(reference.dataobj, dtype=float)
        scale = {"hz": 1.0, "rad/s": 1.0 / (2 * np.pi)}.get(units.lower())
        if scale is None:
            raise ValueError(f"field-map Units {units!r} is neither 'Hz' nor 'rad/s': fix the sidecar")
        smooth = ndimage.gaussian_filter(field * scale, FIELD_SIGMA).astype(np.float32)
        return fieldmap_on_grid(_like(smooth, reference), target)
    if len(echo_times) != 2:
        raise ValueError("a phase field map needs its two echo times (EchoTime1/EchoTime2 or the phase images' EchoTime)")
    if method == "phasediff":
        difference = phase_in_radians(np.asarray(reference.dataobj, dtype=float))
    else:
        first, second = (phase_in_radians(np.asarray(img.dataobj, dtype=float)) for img in images[:2])
        difference = wrapped_difference(first, second)
    mask = brain_mask(np.asarray(magnitude.dataobj, dtype=float).reshape(difference.shape[:3] + (-1,))[..., 0])
    field = field_from_phase_difference(difference.reshape(mask.shape), echo_times[1] - echo_times[0], mask)
    return fieldmap_on_grid(_like(field, reference), target)


def _like(data: np.ndarray, img):
    import nibabel as nib

    return nib.Nifti1Image(data, img.affine)
