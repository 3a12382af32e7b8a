"""Head motion: the session's repositioning and each volume's small rigid motion.

The session's repositioning is a rigid ``head -> scanner`` transform drawn per session.
Within a series the head moves a little from volume to volume: volume ``v`` shows the
session's (static) head moved by the rigid transform ``M_v`` (rotation about the
isocentre, then translation).  The moved image is the static image resampled at
``M_v^-1(x)``; the diffusion signal of that volume is computed with the gradient expressed
in the static head's frame (``R_v^T g``), because the tissue turned with the head while the
scanner's gradient did not.  The bvecs written to disk are *not* rotated, as on a scanner.

Per-volume parameters follow a first-order autoregressive process (slow drift plus
jitter) whose marginal standard deviation is ``scale`` (mm for translations, degrees for
rotations).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_ketamine.simulate.geometry import rigid_matrix

__all__ = ["session_repositioning", "volume_motion", "motion_matrices", "apply_motion"]

#: Columns of the motion parameter tables (truth).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def session_repositioning(rng: np.random.Generator, translation_sd_mm: float = 3.0,
                          rotation_sd_deg: float = 3.0) -> np.ndarray:
    """Draw a session's ``head -> scanner`` rigid transform (4 x 4).

    Parameters
    ----------
    rng : numpy.random.Generator
    translation_sd_mm, rotation_sd_deg : float
        Standard deviations, clipped at 2.5 SD.

    Returns
    -------
    ndarray (4, 4)
    """
    translation = np.clip(rng.normal(0, translation_sd_mm, 3), -2.5 * translation_sd_mm,
                          2.5 * translation_sd_mm)
    rotation = np.clip(rng.normal(0, rotation_sd_deg, 3), -2.5 * rotation_sd_deg,
                       2.5 * rotation_sd_deg)
    return rigid_matrix(translation, rotation)


def volume_motion(rng: np.random.Generator, n_volumes: int, scale: float,
                  autocorrelation: float = 0.8) -> np.ndarray:
    """Per-volume rigid motion parameters.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_volumes : int
    scale : float
        Marginal standard deviation of each translation (mm) and rotation (degrees);
        0 gives no motion.
    autocorrelation : float
        AR(1) coefficient between consecutive volumes, in [0, 1).

    Returns
    -------
    ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (degrees).
    """
    if scale < 0:
        raise ValueError(f"motion scale must be >= 0, got {scale}")
    if not 0 <= autocorrelation < 1:
        raise ValueError(f"autocorrelation must lie in [0, 1), got {autocorrelation}")
    innovations = rng.normal(size=(int(n_volumes), 6))
    params = np.empty_like(innovations)
    params[0] = innovations[0]
    innovation_sd = np.sqrt(1.0 - autocorrelation**2)
    for v in range(1, int(n_volumes)):
        params[v] = autocorrelation * params[v - 1] + innovation_sd * innovations[v]
    return scale * params


def motion_matrices(params: np.ndarray) -> np.ndarray:
    """4 x 4 rigid matrices of per-volume parameters (see :func:`volume_motion`)."""
    params = np.atleast_2d(np.asarray(params, dtype=float))
    return np.stack([rigid_matrix(p[:3], p[3:]) for p in params])


def apply_motion(image: np.ndarray, affine: np.ndarray, motion: np.ndarray, order: int = 3) -> np.ndarray:
    """Resample a static image as the scanner sees it after the head moved by ``motion``.

    Parameters
    ----------
    image : ndarray, 3D
        The image of the static head on the grid ``affine``.
    affine : ndarray (4, 4)
        Voxel -> scanner mm.
    motion : ndarray (4, 4)
        The head's rigid motion in scanner mm.
    order : int
        Spline order of the interpolation.

    Returns
    -------
    ndarray, 3D, non-negative
        ``image`` evaluated at ``motion^-1`` of every voxel centre (zero outside).
    """
    if np.allclose(motion, np.eye(4)):
        return np.asarray(image, dtype=float).copy()
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine
    moved = ndimage.affine_transform(np.asarray(image, dtype=float), voxel_map[:3, :3],
                                     offset=voxel_map[:3, 3], order=order, mode="constant",
                                     cval=0.0)
    return np.maximum(moved, 0.0)
