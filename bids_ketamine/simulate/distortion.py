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

__all__ = ["SUSCEPTIBILITY_SOURCES", "Distortion", "DistortionMap", "GreFieldmap", "susceptibility_field",
           "distortion_map", "distort", "gre_grid", "simulate_gre_fieldmap"]

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


#: Echo times (s) of the simulated GRE field map (a common 3 T protocol).
GRE_ECHO_TIMES = (0.00492, 0.00738)
#: GRE magnitude by tissue (a T1-ish contrast unlike the b=0's: CSF is dark here, bright there).
GRE_MAGNITUDE = {"gm": 0.8, "wm": 1.0, "csf": 0.35}


@dataclass(frozen=True)
class GreFieldmap:
    """A simulated GRE field map (BIDS ``phasediff`` case) on its own grid.

    Attributes
    ----------
    phase_difference : ndarray, shape (X, Y, Z)
        ``phase(TE2) - phase(TE1)``, radians in ``[-pi, pi)`` (wrapped where the field exceeds
        ``1 / (2 dTE)``), with the noise of the two echoes.
    magnitude : ndarray, shape (X, Y, Z)
        The first echo's magnitude.
    affine : ndarray (4, 4)
        Its grid: 4/3 of the DWI's voxel size, the first axis stored the other way round (LAS
        for an RAS DWI), so that a pipeline cannot assume the DWI's grid or orientation.
    echo_times : (float, float)
    """

    phase_difference: np.ndarray
    magnitude: np.ndarray
    affine: np.ndarray
    echo_times: tuple[float, float] = GRE_ECHO_TIMES


def gre_grid(shape, affine) -> tuple[tuple[int, int, int], np.ndarray]:
    """The GRE field map's grid for a DWI grid: the same field of view and centre, voxels 4/3
    as large, the first axis stored the other way round."""
    shape = np.asarray(shape[:3], dtype=float)
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    new_shape = np.maximum(np.round(shape * 3 / 4), 2).astype(int)
    new_zooms = zooms * shape / new_shape
    centre = np.asarray(affine)[:3, :3] @ ((shape - 1) / 2) + np.asarray(affine)[:3, 3]
    directions = np.asarray(affine)[:3, :3] / zooms
    linear = directions @ np.diag(new_zooms * np.array([-1.0, 1.0, 1.0]))
    new_affine = np.eye(4)
    new_affine[:3, :3] = linear
    new_affine[:3, 3] = centre - linear @ ((new_shape - 1) / 2)
    return tuple(int(n) for n in new_shape), new_affine


def simulate_gre_fieldmap(fractions: dict, field_hz: np.ndarray, affine: np.ndarray, rng: np.random.Generator,
                          *, snr: float | None = 40.0, echo_times=GRE_ECHO_TIMES) -> GreFieldmap:
    """A GRE field map from tissue fractions and the field on the field map's grid.

    Two echoes ``m exp(i (phi0 + 2 pi f TE_k))`` with a smooth background phase ``phi0`` (it
    cancels in the difference) and complex Gaussian noise of SD ``max(m) / snr``; the phase
    difference is the angle of ``s2 conj(s1)``, wrapped as a scanner writes it.
    """
    shape = field_hz.shape
    magnitude = sum(GRE_MAGNITUDE[t] * np.asarray(fractions[t], dtype=float) for t in GRE_MAGNITUDE)
    index = np.indices(shape, dtype=float)
    background = 0.3 * index[0] / shape[0] + 0.2 * index[2] / shape[2]  # radians
    sigma = 0.0 if snr is None else float(magnitude.max()) / float(snr)
    echoes = []
    for te in echo_times:
        signal = magnitude * np.exp(1j * (background + 2 * np.pi * field_hz * te))
        if sigma:
            signal = signal + sigma * (rng.normal(size=shape) + 1j * rng.normal(size=shape))
        echoes.append(signal)
    return GreFieldmap(phase_difference=np.angle(echoes[1] * np.conj(echoes[0])).astype(np.float32),
                       magnitude=np.abs(echoes[0]).astype(np.float32), affine=np.asarray(affine, dtype=float),
                       echo_times=tuple(echo_times))
