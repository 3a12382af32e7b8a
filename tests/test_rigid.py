"""Tests of bids_ketamine.dwi.rigid: transforms, means, resampling and registration.

The phantom is an analytic function of world coordinates (a sum of smooth Gaussian
blobs inside a head-like ellipsoid), so a moved copy on any grid (oblique, anisotropic)
is sampled EXACTLY at the moved points, independently of the resampling code under test.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.transform import Rotation

from bids_ketamine.dwi import rigid
from bids_ketamine.dwi.rigid import (
    log_euclidean_mean,
    matrix_power_half,
    matrix_to_params,
    params_to_matrix,
    register,
    resample,
)


# --------------------------------------------------------------------------------------
# Phantom (also imported by test_motion.py)
# --------------------------------------------------------------------------------------
class BlobPhantom:
    """A smooth 3-D function of world coordinates (mm), about 150 x 180 x 130 mm."""

    def __init__(self, seed: int = 0, n_blobs: int = 40, width_mm=(7.0, 14.0)):
        rng = np.random.default_rng(seed)
        self.radii = np.array([62.0, 78.0, 58.0])
        directions = rng.normal(size=(n_blobs, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.centres = directions * rng.uniform(0, 0.8, (n_blobs, 1)) ** (1 / 3) * self.radii
        self.widths = rng.uniform(*width_mm, n_blobs)
        self.amplitudes = rng.uniform(0.3, 1.0, n_blobs)

    def envelope(self, points: np.ndarray) -> np.ndarray:
        """Smooth head mask in [0, 1] (edge width ~5 mm)."""
        rho = np.linalg.norm(points / self.radii, axis=-1)
        return 1.0 / (1.0 + np.exp((rho - 1.0) * 12.0))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        out = 0.5 * self.envelope(points)
        for centre, width, amp in zip(self.centres, self.widths, self.amplitudes):
            sq = ((points - centre) ** 2).sum(axis=-1)
            out = out + amp * np.exp(-sq / (2 * width**2))
        return out * self.envelope(points)


def grid_points(shape, affine) -> np.ndarray:
    """World coordinates (X, Y, Z, 3) of every voxel of a grid."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def sample_moved(phantom, shape, affine, motion) -> np.ndarray:
    """The phantom after the head moved by ``motion`` (image(motion @ x) = phantom(x))."""
    points = grid_points(shape, affine)
    return phantom(points @ np.linalg.inv(motion)[:3, :3].T + np.linalg.inv(motion)[:3, 3])


def iso_grid(voxel_mm: float, fov_mm=(168.0, 204.0, 152.0)):
    shape = tuple(int(np.ceil(f / voxel_mm)) for f in fov_mm)
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * voxel_mm
    return shape, affine


def oblique_grid(voxel_mm=(3.5, 3.0, 4.0), angles_deg=(12.0, -8.0, 15.0)):
    fov = np.array([168.0, 204.0, 152.0])
    shape = tuple(int(np.ceil(f / v)) for f, v in zip(fov, voxel_mm))
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel_mm)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + [3.0, -4.0, 2.0]
    return shape, affine


def random_motion(rng, max_mm=5.0, max_deg=5.0) -> np.ndarray:
    params = np.concatenate(
        [rng.uniform(-max_mm, max_mm, 3), np.radians(rng.uniform(-max_deg, max_deg, 3))]
    )
    return params_to_matrix(params)


# --------------------------------------------------------------------------------------
# Parameters and transforms
# --------------------------------------------------------------------------------------
def test_params_match_scipy_rotation_convention():
    rng = np.random.default_rng(1)
    for _ in range(5):
        params = np.concatenate([rng.uniform(-10, 10, 3), rng.uniform(-0.5, 0.5, 3)])
        matrix = params_to_matrix(params)
        # Extrinsic x, then y, then z rotations (scipy's lower-case "xyz").
        expected = Rotation.from_euler("xyz", params[3:]).as_matrix()
        np.testing.assert_allclose(matrix[:3, :3], expected, atol=1e-12)
        np.testing.assert_allclose(matrix[:3, 3], params[:3])
        np.testing.assert_allclose(matrix_to_params(matrix), params, atol=1e-12)


def test_matrix_to_params_rejects_non_rigid():
    with pytest.raises(ValueError, match="not rigid"):
        matrix_to_params(np.diag([1.1, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="4x4"):
        matrix_to_params(np.eye(3))


def test_half_power_and_log_euclidean_mean():
    rng = np.random.default_rng(2)
    transform = random_motion(rng, 10, 20)
    half = matrix_power_half(transform)
    np.testing.assert_allclose(half @ half, transform, atol=1e-10)
    # The half rotation turns by half the angle about the same axis (Rodrigues).
    rotvec = Rotation.from_matrix(transform[:3, :3]).as_rotvec()
    np.testing.assert_allclose(
        Rotation.from_matrix(half[:3, :3]).as_rotvec(), rotvec / 2, atol=1e-10
    )
    # Mean of T and T^-1 is the identity; mean of I and T is T^(1/2); order does not matter.
    np.testing.assert_allclose(
        log_euclidean_mean([transform, np.linalg.inv(transform)]), np.eye(4), atol=1e-10
    )
    np.testing.assert_allclose(log_euclidean_mean([np.eye(4), transform]), half, atol=1e-10)
    others = [random_motion(rng) for _ in range(3)]
    np.testing.assert_allclose(
        log_euclidean_mean(others), log_euclidean_mean(others[::-1]), atol=1e-12
    )
    expected = linalg.expm(sum(linalg.logm(m).real for m in others) / 3)
    np.testing.assert_allclose(log_euclidean_mean(others), expected, atol=1e-10)


#: A rigid transform (a heavy-motion session's start transform of one DW volume, about the
#: brain's centre) whose SciPy logarithm takes one of two values in its last bits, depending on
#: the state of NumPy's global generator.
LOGM_SENSITIVE = np.array([
    [9.9689984083678251e-01, -2.4261158308464354e-03, -7.8643634844620072e-02, 1.6850742988404388e+00],
    [5.9077477807026844e-04, 9.9972712307728218e-01, -2.3352309709796498e-02, 5.7447266532834718e-01],
    [7.8678830219826079e-02, 2.3233453156945735e-02, 9.9662924316399826e-01, -2.7224795180223724e+00],
    [0.0, 0.0, 0.0, 1.0]])


def test_real_logm_is_the_same_whatever_the_global_generator():
    """scipy.linalg.logm draws random vectors (onenormest) from NumPy's global generator;
    ``real_logm`` gives one result whatever that generator's state, equal to SciPy's to 1e-12,
    and leaves the state as it found it."""
    from bids_ketamine.dwi.transforms import real_logm

    scipy_results, ours = set(), set()
    for seed in range(12):
        np.random.seed(seed)
        scipy_results.add(linalg.logm(LOGM_SENSITIVE).real.tobytes())
        np.random.seed(seed)
        before = np.random.get_state()[1].copy()
        log = real_logm(LOGM_SENSITIVE)
        np.testing.assert_array_equal(np.random.get_state()[1], before)
        ours.add(log.tobytes())
        np.testing.assert_allclose(log, linalg.logm(LOGM_SENSITIVE).real, rtol=0, atol=1e-12)
    assert len(scipy_results) > 1, "SciPy's logm no longer depends on the generator: the test is moot"
    assert len(ours) == 1
    np.testing.assert_allclose(linalg.expm(log), LOGM_SENSITIVE, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------
def test_resample_matches_analytic_function_through_a_transform():
    phantom = BlobPhantom(seed=3, width_mm=(10.0, 16.0))
    shape, affine = iso_grid(2.0)
    data = phantom(grid_points(shape, affine))
    ref_shape, ref_affine = oblique_grid()
    motion = random_motion(np.random.default_rng(4))
    # out(x) = data(motion @ x) = phantom(motion @ x)
    expected = phantom(grid_points(ref_shape, motion @ ref_affine))
    inside = expected > 0.05
    for order, tol in ((1, 0.03), (3, 0.005)):
        out = resample(data, affine, ref_shape, ref_affine, motion, order=order)
        err = np.abs(out - expected)[inside].max() / expected.max()
        assert err < tol, (order, err)


def test_resample_labels_nearest_keeps_dtype_and_values():
    labels = np.zeros((20, 20, 20), dtype=np.int16)
    labels[5:10, 5:10, 5:10] = 3
    labels[12:16, 4:8, 10:18] = 7
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = [4.0, 0.0, -2.0]  # whole voxels: nearest neighbour must be exact
    out = resample(labels, affine, labels.shape, affine, shift, order=0)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[3:8, 5:10, 6:11], 3)
    assert set(np.unique(out)) == {0, 3, 7}
    expected = np.zeros_like(labels)
    expected[:-2, :, 1:] = labels[2:, :, :-1]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_keeps_the_edge_slice_within_half_a_voxel(order):
    """A voxel whose source lies within the input's half-voxel margin keeps the edge value (a
    scanner voxel covers its whole extent); beyond it, ``cval``.  The top slice of a series
    whose head moved by 0.1 voxel was once zeroed (ndimage's order-0 "constant" mode)."""
    data = np.full((6, 6, 10), 7.0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for shift_voxels, top in ((0.1, 7.0), (0.45, 7.0), (-0.45, 7.0), (0.55, -1.0)):
        motion = np.eye(4)
        motion[2, 3] = 3.0 * shift_voxels
        out = resample(data, affine, data.shape, affine, motion, order=order, cval=-1.0)
        assert np.allclose(out[..., -1], top), (shift_voxels, order)
        bottom = -1.0 if shift_voxels < -0.5 else 7.0
        assert np.allclose(out[..., 0], bottom), (shift_voxels, order)
        assert np.allclose(out[..., 1:-1], 7.0)


def test_resample_checks_input():
    with pytest.raises(ValueError, match="order"):
        resample(np.zeros((4, 4, 4)), np.eye(4), (4, 4, 4), np.eye(4), order=2)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        resample(np.zeros((4, 4)), np.eye(4), (4, 4, 4), np.eye(4))


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------
def _errors(found: np.ndarray, truth: np.ndarray):
    """Largest displacement (mm) over a 60 mm-radius head, and rotation error (deg)."""
    diff = found @ np.linalg.inv(truth)
    angle = np.degrees(rigid.rotation_angle(diff))
    trans = np.abs(matrix_to_params(found)[:3] - matrix_to_params(truth)[:3]).max()
    return trans, angle


@pytest.mark.parametrize("metric", ["ls", "ncc"])
def test_register_recovers_random_rigid_motion_same_grid(metric):
    phantom = BlobPhantom(seed=5)
    shape, affine = iso_grid(4.0)
    fixed = phantom(grid_points(shape, affine))
    mask = fixed > 0.1
    rng = np.random.default_rng(6)
    for _ in range(3):
        motion = random_motion(rng)
        moving = sample_moved(phantom, shape, affine, motion)
        if metric == "ncc":
            moving = 2.5 * moving + 0.3  # gain and offset are fitted
        result = register(fixed, affine, moving, affine, fixed_mask=mask, metric=metric)
        trans, angle = _errors(result.matrix, motion)
        assert trans < 0.1 and angle < 0.1, (trans, angle, result.n_iter)
        # Sub-degree agreement of the parameters themselves (within 0.1 deg).
        np.testing.assert_allclose(
            np.degrees(result.params[3:]), np.degrees(matrix_to_params(motion)[3:]), atol=0.1
        )


def test_register_oblique_anisotropic_grids_both_directions():
    phantom = BlobPhantom(seed=7)
    fixed_shape, fixed_affine = iso_grid(3.0)
    moving_shape, moving_affine = oblique_grid()
    fixed = phantom(grid_points(fixed_shape, fixed_affine))
    rng = np.random.default_rng(8)
    for _ in range(2):
        motion = random_motion(rng)
        moving = sample_moved(phantom, moving_shape, moving_affine, motion)
        result = register(fixed, fixed_affine, moving, moving_affine, fixed_mask=fixed > 0.1)
        trans, angle = _errors(result.matrix, motion)
        assert trans < 0.1 and angle < 0.1, (trans, angle)
        # And with the oblique image as the fixed one: the inverse motion.
        back = register(moving, moving_affine, fixed, fixed_affine, fixed_mask=moving > 0.1)
        trans, angle = _errors(back.matrix, np.linalg.inv(motion))
        assert trans < 0.1 and angle < 0.1, (trans, angle)


def test_register_intensity_scale_and_affine():
    phantom = BlobPhantom(seed=9)
    shape, affine = iso_grid(4.0)
    fixed = phantom(grid_points(shape, affine))
    truth = params_to_matrix([2.0, -3.0, 1.0, 0.03, -0.05, 0.04, 0.05, -0.04, 0.03, 0.02, -0.03, 0.01])
    moving = 0.7 * sample_moved(phantom, shape, affine, truth)
    result = register(
        fixed, affine, moving, affine, fixed_mask=fixed > 0.1, dof=12, intensity_scale=True,
        factors=(4, 2, 1), max_iter=(40, 30, 20),
    )
    points = grid_points(shape, affine)[fixed > 0.1]
    displacement = (points @ (result.matrix - truth)[:3, :3].T + (result.matrix - truth)[:3, 3])
    assert np.abs(displacement).max() < 0.1
    # (trilinear interpolation of 4 mm voxels flattens the peaks by ~1 %)
    assert result.intensity[0] == pytest.approx(1 / 0.7, rel=0.02)


def test_register_checks_input():
    img = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match="3-D"):
        register(np.zeros((8, 8)), np.eye(4), img, np.eye(4))
    with pytest.raises(ValueError, match="metric"):
        register(img, np.eye(4), img, np.eye(4), metric="mi")
    with pytest.raises(ValueError, match="empty"):
        register(img, np.eye(4), img, np.eye(4), fixed_mask=np.zeros((8, 8, 8), bool))


@pytest.mark.slow
def test_as_accurate_as_dipy():
    """One realistic 2 mm b=0 pair: ours vs DIPY's AffineRegistration (MI, rigid), both within
    0.1 mm / 0.1 deg of the true motion. CPU times are printed, not asserted (speed belongs to
    the benchmarks; about 1:8 here)."""
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    phantom = BlobPhantom(seed=10)
    shape, affine = iso_grid(2.0, fov_mm=(216.0, 252.0, 180.0))  # 108 x 126 x 90
    fixed = phantom(grid_points(shape, affine))
    motion = params_to_matrix([3.0, -2.0, 1.5, *np.radians([3.0, -2.0, 2.5])])
    rng = np.random.default_rng(11)
    moving = sample_moved(phantom, shape, affine, motion) + rng.normal(0, 0.02, shape)
    fixed = fixed + rng.normal(0, 0.02, shape)
    mask = fixed > 0.1

    start = time.process_time()
    ours = register(fixed, affine, moving, affine, fixed_mask=mask)
    ours_s = time.process_time() - start

    dipy_reg = AffineRegistration(
        metric=MutualInformationMetric(nbins=32), level_iters=[100, 50, 20],
        sigmas=[3.0, 1.0, 0.0], factors=[4, 2, 1], verbosity=0,
    )
    start = time.process_time()
    theirs = dipy_reg.optimize(
        fixed, moving, RigidTransform3D(), None, static_grid2world=affine,
        moving_grid2world=affine, static_mask=mask.astype(np.int32),
    )
    dipy_s = time.process_time() - start
    print(f"\nrigid 2 mm pair, CPU s: ours {ours_s:.2f}, DIPY MI {dipy_s:.2f}")
    for found in (ours.matrix, theirs.affine):
        trans, angle = _errors(found, motion)
        assert trans < 0.1 and angle < 0.1
