"""Where things are: scanner grids, rigid and affine matrices, the subject's deformation.

Frames used by the simulator (all in millimetres):

- *template*: the template's world coordinates (MNI), where anatomy and ROIs are defined;
- *head*: the subject's own anatomy; ``head -> template`` is the subject's affine
  (scaling, rotation, translation) followed by a smooth non-linear displacement;
- *scanner*: the scanner's world coordinates, where the head sits at the session's pose
  (a rigid transform ``head -> scanner``, drawn per session) and the image grid lives
  (an axis-aligned or slightly oblique affine centred on the isocentre).

Every function works on plain numpy arrays; matrices are 4 x 4 homogeneous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "rotation_matrix",
    "rigid_matrix",
    "acquisition_affine",
    "SmoothDisplacement",
    "SubjectTransform",
    "random_subject_transform",
    "grid_centres",
]


def rotation_matrix(angles_deg) -> np.ndarray:
    """Return the 3 x 3 rotation ``Rz @ Ry @ Rx`` for angles about x, y and z.

    Parameters
    ----------
    angles_deg : array-like of shape (3,)
        Rotations about the x, y and z axes, in degrees (right-hand rule).

    Returns
    -------
    numpy.ndarray of shape (3, 3)
    """
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float).reshape(3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_matrix(translation_mm, rotation_deg) -> np.ndarray:
    """Return the 4 x 4 rigid transform ``x -> R x + t``.

    Parameters
    ----------
    translation_mm : array-like of shape (3,)
    rotation_deg : array-like of shape (3,)
        See :func:`rotation_matrix`.

    Returns
    -------
    numpy.ndarray of shape (4, 4)
    """
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(rotation_deg)
    matrix[:3, 3] = np.asarray(translation_mm, dtype=float).reshape(3)
    return matrix


def acquisition_affine(
    shape, voxel_size: float, orientation: str = "LAS", oblique_deg: float = 0.0
) -> np.ndarray:
    """Return a scanner image affine centred on the isocentre.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid size in voxels.
    voxel_size : float
        Isotropic voxel size in mm.
    orientation : {"LAS", "RAS"}
        Direction of increasing voxel index along the three axes (``LAS``: the first axis
        runs right to left, a negative-determinant affine as dcm2niix usually writes;
        ``RAS``: positive determinant, where FSL's bvec convention flips x).
    oblique_deg : float
        Tilt of the slab about the left-right axis, in degrees (0: axis-aligned).

    Returns
    -------
    numpy.ndarray of shape (4, 4)
    """
    if orientation not in ("LAS", "RAS"):
        raise ValueError(f"orientation must be 'LAS' or 'RAS', got {orientation!r}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    sign_x = -1.0 if orientation == "LAS" else 1.0
    linear = np.diag([sign_x * voxel_size, voxel_size, voxel_size])
    linear = rotation_matrix([oblique_deg, 0.0, 0.0]) @ linear
    centre_index = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ centre_index
    return affine


def grid_centres(shape, affine: np.ndarray) -> np.ndarray:
    """World coordinates of every voxel centre, shape ``shape + (3,)``."""
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True)
class SmoothDisplacement:
    """A smooth displacement field, a sum of random plane waves.

    ``d(x) = sum_k amplitude_k * sin(wavevector_k . x + phase_k)``: low spatial frequencies
    only (wavelengths of several centimetres), so the field is smooth, invertible and cheap
    to evaluate anywhere.

    Attributes
    ----------
    amplitudes : ndarray of shape (K, 3)
        Displacement amplitude of each wave along x, y, z (mm).
    wavevectors : ndarray of shape (K, 3)
        Angular wave vectors (rad / mm).
    phases : ndarray of shape (K, 3)
        Phase of each wave for each component (rad).
    """

    amplitudes: np.ndarray
    wavevectors: np.ndarray
    phases: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Displacement (mm) at ``points`` (array of shape (..., 3))."""
        points = np.asarray(points, dtype=float)
        out = np.zeros_like(points)
        for amplitude, wavevector, phase in zip(self.amplitudes, self.wavevectors, self.phases):
            argument = points @ wavevector
            for axis in range(3):
                out[..., axis] += amplitude[axis] * np.sin(argument + phase[axis])
        return out

    def max_gradient(self) -> float:
        """An upper bound of the displacement's Jacobian norm (below 1: invertible)."""
        return float(
            np.sum(np.linalg.norm(self.amplitudes, axis=1) * np.linalg.norm(self.wavevectors, axis=1))
        )

    def to_dict(self) -> dict:
        return {
            "amplitudes_mm": self.amplitudes.round(6).tolist(),
            "wavevectors_rad_per_mm": self.wavevectors.round(8).tolist(),
            "phases_rad": self.phases.round(6).tolist(),
        }


@dataclass(frozen=True)
class SubjectTransform:
    """The map from a subject's head frame to template space.

    ``template = displacement(linear @ head + offset) + (linear @ head + offset)``

    Attributes
    ----------
    linear : ndarray of shape (3, 3)
        Rotation times scaling (head mm -> template mm).
    offset : ndarray of shape (3,)
        Template point of the head frame's origin (mm).
    displacement : SmoothDisplacement
    """

    linear: np.ndarray
    offset: np.ndarray
    displacement: SmoothDisplacement

    def __call__(self, head_points: np.ndarray) -> np.ndarray:
        """Template coordinates of head-frame points (array of shape (..., 3))."""
        affine_points = head_points @ self.linear.T + self.offset
        return affine_points + self.displacement(affine_points)

    def matrix(self) -> np.ndarray:
        """The affine part as a 4 x 4 matrix (head -> template)."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.linear
        matrix[:3, 3] = self.offset
        return matrix


def random_subject_transform(
    rng: np.random.Generator,
    brain_centre: np.ndarray,
    scale_range=(0.92, 1.08),
    rotation_sd_deg: float = 3.0,
    translation_sd_mm: float = 3.0,
    deformation_mm: float = 2.0,
    n_waves: int = 4,
    wavelength_range_mm=(70.0, 140.0),
) -> SubjectTransform:
    """Draw a subject's head -> template transform.

    Parameters
    ----------
    rng : numpy.random.Generator
    brain_centre : ndarray of shape (3,)
        Template coordinates of the brain's centre: the head frame's origin maps near it,
        so a head centred on the scanner's isocentre holds the brain in the middle of the
        field of view.
    scale_range : tuple of float
        Head size relative to the template, drawn uniformly per axis.
    rotation_sd_deg, translation_sd_mm : float
        Standard deviation of the rotations and translations (clipped at 2.5 SD).
    deformation_mm : float
        Root-mean-square amplitude of the non-linear displacement per axis (mm).
    n_waves : int
        Number of plane waves in the displacement field.
    wavelength_range_mm : tuple of float
        Range of the waves' wavelengths.

    Returns
    -------
    SubjectTransform
    """
    scales = rng.uniform(*scale_range, size=3)
    rotation = rotation_matrix(np.clip(rng.normal(0, rotation_sd_deg, 3), -2.5 * rotation_sd_deg,
                                       2.5 * rotation_sd_deg))
    translation = np.clip(rng.normal(0, translation_sd_mm, 3), -2.5 * translation_sd_mm,
                          2.5 * translation_sd_mm)
    # A head larger than the template (scale > 1) maps to the template shrunk.
    linear = rotation @ np.diag(1.0 / scales)
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(*wavelength_range_mm, size=n_waves)
    wavevectors = directions * (2 * np.pi / wavelengths)[:, None]
    # Each sine has RMS amplitude / sqrt(2); n_waves of them add in quadrature.
    amplitudes = rng.normal(0, 1, size=(n_waves, 3))
    amplitudes *= deformation_mm * np.sqrt(2.0 / n_waves) / max(np.sqrt(np.mean(amplitudes**2)), 1e-12)
    phases = rng.uniform(0, 2 * np.pi, size=(n_waves, 3))
    displacement = SmoothDisplacement(amplitudes, wavevectors, phases)
    return SubjectTransform(linear, np.asarray(brain_centre, float) + translation, displacement)
