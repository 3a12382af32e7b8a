"""Susceptibility distortion of simulated EPI (issue 19): a B0 field and its displacement.

The field (Hz) is a sum of Gaussian sources placed in *template* space where air and bone meet
tissue: the frontal sinus, above and in front of the frontal pole (BA10), and both temporal
bones, below the amygdala and hippocampus.  Each source's peak is ``peak_hz``; the field inside
the brain is its tail (tens of Hz near the orbitofrontal cortex and the temporal poles, little
elsewhere).  Sampled through the head's pose, the field moves with the head, so a head
repositioned between sessions gets a different field in scanner space, as on a scanner.

The EPI forward model (:func:`distort`), along the phase-encoding axis of the image grid:
signal at position ``x`` (voxels) is seen at ``x + d(x)`` with ``d = sign * field_hz *
total_readout_time`` (voxels), and its intensity is divided by ``1 + d'(x)`` (the Jacobian:
a stretched region is darker, a compressed one brighter; the signal summed along each line is
kept).  This is what an error-free correction inverts: the truth is the undistorted image and the
field in Hz, written to the truth folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SUSCEPTIBILITY_SOURCES", "Distortion", "DistortionMap", "susceptibility_field",
           "distortion_map", "distort"]

#: Sources of the field: (centre in template mm RAS, SD in mm).
SUSCEPTIBILITY_SOURCES = (
    ((0.0, 64.0, -20.0), 15.0),     # frontal sinus
    ((-44.0, -10.0, -36.0), 12.0),  # left temporal bone (petrous / mastoid)
    ((44.0, -10.0, -36.0), 12.0),   # right temporal bone
)


@dataclass(frozen=True)
class Distortion:
    """How one simulated series is distorted.

    Attributes
    ----------
    peak_hz : float
        Peak field of each source (Hz).
    total_readout_time : float
        BIDS ``TotalReadoutTime`` (s): the displacement is ``field * total_readout_time`` voxels.
    axis : int
        Voxel axis of the phase encoding (0, 1 or 2).
    sign : int
        +1 or -1: the BIDS polarity (``j`` or ``j-``); the reverse phase encoding flips it.
    """

    peak_hz: float
    total_readout_time: float = 0.05
    axis: int = 1
    sign: int = -1

    def __post_init__(self):
        if not np.isfinite(self.peak_hz) or self.peak_hz < 0:
            raise ValueError(f"peak_hz must be >= 0 Hz, got {self.peak_hz}")
        if not 0 < self.total_readout_time < 1:
            raise ValueError(f"total_readout_time must lie in (0, 1) s, got {self.total_readout_time}")
        if self.axis not in (0, 1, 2) or self.sign not in (-1, 1):
            raise ValueError(f"axis must be 0-2 and sign +-1, got {self.axis}, {self.sign}")

    @property
    def phase_encoding_direction(self) -> str:
        """The BIDS ``PhaseEncodingDirection`` (``i``, ``j-``...)."""
        return "ijk"[self.axis] + ("-" if self.sign < 0 else "")

    def reversed(self) -> "Distortion":
        """The same field read out with the opposite polarity (a reverse phase-encoded series)."""
        return Distortion(self.peak_hz, self.total_readout_time, self.axis, -self.sign)


def susceptibility_field(points, peak_hz: float) -> np.ndarray:
    """The field (Hz) at template-space points (mm, ``(..., 3)``)."""
    points = np.asarray(points, dtype=float)
    field = np.zeros(points.shape[:-1])
    for centre, sd in SUSCEPTIBILITY_SOURCES:
        squared = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
        field += float(peak_hz) * np.exp(-0.5 * squared / sd**2)
    return field


@dataclass(frozen=True)
class DistortionMap:
    """Where each voxel of a distorted image reads the undistorted one (:func:`distortion_map`)."""

    coordinates: np.ndarray  # (3, X, Y, Z) voxel coordinates in the undistorted image
    jacobian: np.ndarray     # 1 + d'(x) at those coordinates
    inside: np.ndarray       # the source lies inside the grid

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """One 3-D volume, distorted."""
        sampled = ndimage.map_coordinates(np.asarray(volume, dtype=float), self.coordinates, order=1,
                                          mode="constant")
        return np.where(self.inside, sampled / self.jacobian, 0.0)


def distortion_map(field_hz: np.ndarray, distortion: Distortion) -> DistortionMap:
    """The EPI forward model of a field on an acquisition grid.

    Signal at ``x`` (voxels along the phase-encoding axis) is seen at ``x + d(x)``, ``d = sign *
    field * total_readout_time``, with intensity divided by ``1 + d'(x)``; each line is
    inverted by interpolation (``x + d(x)`` is monotonic when ``1 + d' > 0``).

    Raises
    ------
    ValueError
        If the field folds the image (``1 + d'`` <= 0.1 somewhere: a real scan would pile signal
        up; lower ``peak_hz`` or ``total_readout_time``).
    """
    field_hz = np.asarray(field_hz, dtype=float)
    if field_hz.ndim != 3:
        raise ValueError(f"the field must be 3-D, got shape {field_hz.shape}")
    axis = distortion.axis
    shift = distortion.sign * field_hz * distortion.total_readout_time  # voxels
    stretch = 1.0 + np.gradient(shift, axis=axis)
    if np.any(stretch <= 0.1):
        raise ValueError(f"the field folds the image (1 + d' down to {stretch.min():.2f}): lower the peak "
                         "field or the readout time")
    moved = np.moveaxis(shift, axis, -1)
    n = moved.shape[-1]
    grid = np.arange(n, dtype=float)
    lines = moved.reshape(-1, n)
    source = np.empty_like(lines)
    for index, line in enumerate(lines):
        source[index] = np.interp(grid, grid + line, grid, left=-1.0, right=float(n))
    source = np.moveaxis(source.reshape(moved.shape), -1, axis)
    coordinates = np.indices(field_hz.shape, dtype=float)
    coordinates[axis] = source
    jacobian = ndimage.map_coordinates(stretch, coordinates, order=1, mode="nearest")
    return DistortionMap(coordinates, jacobian, (source >= 0) & (source <= n - 1))


def distort(volumes: np.ndarray, field_hz: np.ndarray, distortion: Distortion) -> np.ndarray:
    """Apply the EPI forward model (:func:`distortion_map`) to a 3-D or 4-D image.

    Parameters
    ----------
    volumes : ndarray, 3-D or 4-D
        Undistorted image(s) on the acquisition grid.
    field_hz : ndarray, 3-D
        The field on the same grid (Hz).
    distortion : Distortion

    Returns
    -------
    ndarray
        The distorted image(s), float64, same shape.
    """
    volumes = np.asarray(volumes, dtype=float)
    if np.shape(field_hz) != volumes.shape[:3]:
        raise ValueError(f"field shape {np.shape(field_hz)} differs from the image's {volumes.shape[:3]}")
    mapping = distortion_map(field_hz, distortion)
    if volumes.ndim == 3:
        return mapping.apply(volumes)
    return np.stack([mapping.apply(volumes[..., k]) for k in range(volumes.shape[3])], axis=-1)
