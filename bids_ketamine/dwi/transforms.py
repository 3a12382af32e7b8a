"""Rigid and affine transforms as 4x4 matrices: parameters, powers, means, points.

Conventions (world coordinates, the pull direction, the order of the rotations) are those
stated at the top of :mod:`bids_ketamine.dwi.rigid`.
"""

from __future__ import annotations

import threading

import numpy as np
from scipy import linalg

__all__ = [
    "apply_transform_to_points",
    "check_matrix",
    "log_euclidean_mean",
    "matrix_power",
    "matrix_power_half",
    "matrix_to_params",
    "params_to_matrix",
    "real_logm",
    "rotation_angle",
]


# ---------------------------------------------------------------------------------------
# Parameters <-> matrices, means of transforms
# ---------------------------------------------------------------------------------------
def _rotation_xyz(rot_x: float, rot_y: float, rot_z: float) -> np.ndarray:
    cx, sx = np.cos(rot_x), np.sin(rot_x)
    cy, sy = np.cos(rot_y), np.sin(rot_y)
    cz, sz = np.cos(rot_z), np.sin(rot_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def params_to_matrix(params) -> np.ndarray:
    """4x4 world transform from rigid (6) or affine (12) parameters.

    Parameters
    ----------
    params : array-like, shape (6,) or (12,)
        ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)`` in mm and radians (see the
        module docstring for the convention), optionally followed by ``(scale_x,
        scale_y, scale_z, shear_xy, shear_xz, shear_yz)`` (scales as log-factors, 0 =
        no scaling), which give ``T @ x = R @ S @ Z @ x + t`` with ``S`` the upper
        triangular shear matrix and ``Z`` the diagonal scaling.

    Returns
    -------
    ndarray, shape (4, 4)
    """
    params = np.asarray(params, dtype=float).ravel()
    if params.size not in (6, 12):
        raise ValueError(
            f"params must have 6 (rigid) or 12 (affine) values, got {params.size}"
        )
    matrix = np.eye(4)
    linear = _rotation_xyz(*params[3:6])
    if params.size == 12:
        zoom = np.diag(np.exp(params[6:9]))
        shear = np.array(
            [[1.0, params[9], params[10]], [0.0, 1.0, params[11]], [0.0, 0.0, 1.0]]
        )
        linear = linear @ shear @ zoom
    matrix[:3, :3] = linear
    matrix[:3, 3] = params[:3]
    return matrix


def check_matrix(matrix, name: str = "matrix") -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError(
            f"{name} must be a 4x4 homogeneous world transform with last row [0 0 0 1]"
        )
    return matrix


def matrix_to_params(matrix, *, atol: float = 1e-4) -> np.ndarray:
    """Rigid parameters of a 4x4 world transform (inverse of :func:`params_to_matrix`).

    Parameters
    ----------
    matrix : array-like, shape (4, 4)
        A rigid transform (proper rotation plus translation).
    atol : float
        Largest tolerated deviation of ``R.T @ R`` from the identity.

    Returns
    -------
    ndarray, shape (6,)
        ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)`` (mm, rad); ``rot_y`` is in
        [-pi/2, pi/2].

    Raises
    ------
    ValueError
        If the matrix is not rigid (scaling, shear or reflection); take the rotation
        part first (e.g. with :func:`scipy.linalg.polar`).
    """
    matrix = check_matrix(matrix)
    rot = matrix[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=atol) or np.linalg.det(rot) < 0:
        raise ValueError(
            "matrix is not rigid (its 3x3 part is not a proper rotation); "
            "extract the rotation with scipy.linalg.polar before converting"
        )
    rot_y = -np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    rot_x = np.arctan2(rot[2, 1], rot[2, 2])
    rot_z = np.arctan2(rot[1, 0], rot[0, 0])
    return np.array([*matrix[:3, 3], rot_x, rot_y, rot_z])


def rotation_angle(matrix) -> float:
    """Angle (radians) of the rotation part of a rigid 4x4 transform."""
    rot = check_matrix(matrix)[:3, :3]
    return float(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))


#: Seed of NumPy's global generator while :func:`scipy.linalg.logm` runs (:func:`real_logm`).
LOGM_SEED = 0
_LOGM_LOCK = threading.Lock()


def real_logm(matrix) -> np.ndarray:
    """Real principal logarithm of a 4x4 transform, the same to the last bit in every run.

    SciPy's :func:`~scipy.linalg.logm` (inverse scaling and squaring) estimates matrix 1-norms
    with :func:`scipy.sparse.linalg.onenormest`, which draws random sign vectors from NumPy's
    global generator; the estimates steer the algorithm's choices, so the last bits of the
    logarithm depend on that generator's state.  Unseeded, two runs of the same data then
    differ: on 2026-12-05 the motion correction of one heavy-motion session gave DW volumes
    one float32 ulp apart in about half of its runs.  The generator is seeded with
    :data:`LOGM_SEED` for the call and given back its state afterwards (under a lock, for
    callers in threads).

    Raises
    ------
    ValueError
        If the logarithm is not real (a rotation of 180 degrees or a reflection).
    """
    with _LOGM_LOCK:
        state = np.random.get_state()
        np.random.seed(LOGM_SEED)
        try:
            log = linalg.logm(np.asarray(matrix, dtype=float))
        finally:
            np.random.set_state(state)
    if np.iscomplexobj(log):
        if np.abs(log.imag).max() > 1e-8:
            raise ValueError(
                "transform has no real matrix logarithm (a rotation of 180 degrees or a "
                "reflection?): registrations of the same subject should not produce one"
            )
        log = log.real
    return log


def matrix_power(matrix, power: float) -> np.ndarray:
    """``matrix ** power`` of a 4x4 transform, through the principal matrix logarithm.

    ``matrix_power(T, 0.5) @ matrix_power(T, 0.5) == T`` and ``matrix_power(T, -p)`` is
    the inverse of ``matrix_power(T, p)``; a rigid transform stays rigid.
    """
    matrix = check_matrix(matrix)
    result = linalg.expm(power * real_logm(matrix))
    result[3] = [0.0, 0.0, 0.0, 1.0]
    return result


def matrix_power_half(matrix) -> np.ndarray:
    """The half-way transform ``T ** (1/2)`` (the midpoint between identity and ``T``)."""
    return matrix_power(matrix, 0.5)


def log_euclidean_mean(matrices, weights=None) -> np.ndarray:
    """Log-Euclidean mean ``expm(sum_i w_i logm(T_i))`` of 4x4 transforms.

    Parameters
    ----------
    matrices : sequence of array-like, shape (4, 4)
    weights : array-like, optional
        Non-negative weights (normalised to sum 1); equal weights by default.

    Returns
    -------
    ndarray, shape (4, 4)
        The mean transform; it does not depend on the order of ``matrices``, and the
        mean of ``T`` and ``T^-1`` is the identity.
    """
    mats = [check_matrix(m, "each transform") for m in matrices]
    if not mats:
        raise ValueError("log_euclidean_mean needs at least one transform")
    if weights is None:
        weights = np.full(len(mats), 1.0 / len(mats))
    else:
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(mats),) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("weights must be one non-negative number per transform")
        weights = weights / weights.sum()
    log_mean = sum(w * real_logm(m) for w, m in zip(weights, mats))
    result = linalg.expm(log_mean)
    result[3] = [0.0, 0.0, 0.0, 1.0]
    return result


def apply_transform_to_points(matrix, points) -> np.ndarray:
    """Apply a 4x4 transform to points of shape (..., 3)."""
    matrix = check_matrix(matrix)
    points = np.asarray(points, dtype=float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]
