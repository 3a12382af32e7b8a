"""Tests of bids_ketamine.dwi.motion on a simulated moving head.

The simulation is analytic: a tensor field D(x) and S0(x) defined in the head's
reference frame; in volume i the head has moved by H_i (rotation R_i), the scanner
applies the gradient g_i (world frame), so the image is
``S_i(y) = S0(x) exp(-b (R_i^T g_i)^T D(x) (R_i^T g_i))`` with ``x = H_i^-1 y``, sampled
exactly at every voxel.  The bvec file holds g_i in FSL's voxel convention, NOT rotated.
The first volume (a b=0) has no motion; the corrected series shows the head at the series'
mean pose (log-Euclidean mean of the H_i about the brain's centre).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import linalg
from scipy.spatial.transform import Rotation

from bids_ketamine.dwi.motion import PARAM_COLUMNS, correct_motion, framewise_displacement, rotate_bvecs
from bids_ketamine.dwi.rigid import matrix_to_params, params_to_matrix, resample, rotation_angle
from test_rigid import BlobPhantom, grid_points

FLIP_X = np.diag([-1.0, 1.0, 1.0])


class TensorPhantom:
    """S0 and a smoothly varying anisotropic tensor field (mm^2/s), in world mm."""

    def __init__(self, seed=0):
        self.s0_field = BlobPhantom(seed=seed)
        self.anisotropy = BlobPhantom(seed=seed + 1, n_blobs=25, width_mm=(8.0, 14.0))
        self.csf = BlobPhantom(seed=seed + 2, n_blobs=6, width_mm=(6.0, 10.0))

    def s0(self, points):
        return 1000.0 * (self.s0_field(points) + 0.2 * self.s0_field.envelope(points))

    def tensors(self, points):
        weight = np.clip(self.anisotropy(points), 0.0, 1.0)
        free_water = np.clip(self.csf(points), 0.0, 1.0)
        angle_a = points[..., 0] / 25.0 + points[..., 2] / 40.0
        angle_b = points[..., 1] / 30.0
        direction = np.stack(
            [np.cos(angle_a) * np.cos(angle_b), np.sin(angle_a) * np.cos(angle_b), np.sin(angle_b)],
            axis=-1,
        )
        outer = direction[..., :, None] * direction[..., None, :]
        eye = np.eye(3)
        return (0.8e-3 + 2.0e-3 * free_water)[..., None, None] * eye + (
            1.2e-3 * weight
        )[..., None, None] * (outer - eye / 3)

    def signal(self, points, bval, gradient_world):
        if bval == 0:
            return self.s0(points)
        quad = np.einsum("i,...ij,j->...", gradient_world, self.tensors(points), gradient_world)
        return self.s0(points) * np.exp(-bval * quad)


def simulate_series(*, seed=0, n_dirs=30, b0_every=6, voxel=4.0, drift=(3.0, 3.0),
                    jitter=(0.3, 0.3), jitter_b0=False, noise=0.0):
    """A moving head: slow drift (``drift`` mm and degrees over the run, sampled by the
    interleaved b=0s) plus independent jitter of every DW volume (``jitter`` mm and
    degrees, uniform)."""
    rng = np.random.default_rng(seed)
    phantom = TensorPhantom(seed)
    fov = np.array([168.0, 204.0, 152.0])
    shape = tuple(int(np.ceil(f / voxel)) for f in fov)
    # RAS+, slightly oblique (the caller's reoriented data may still be tilted).
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [8.0, 0.0, -5.0], degrees=True).as_matrix() * voxel
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    bvals = []
    for k in range(n_dirs):
        if k % b0_every == 0:
            bvals.append(0.0)
        bvals.append(1000.0)
    bvals = np.asarray(bvals)
    n_vol = bvals.size
    gradients_world = rng.normal(size=(n_vol, 3))
    gradients_world /= np.linalg.norm(gradients_world, axis=1, keepdims=True)
    gradients_world[bvals == 0] = 0.0
    time_fraction = np.linspace(0.0, 1.0, n_vol)[:, None]  # 0 at the first b=0
    direction = rng.normal(size=(2, 3))
    direction /= np.abs(direction).max(axis=1, keepdims=True)
    trans = drift[0] * direction[0] * (time_fraction + 0.3 * np.sin(3 * np.pi * time_fraction))
    rots = np.radians(drift[1]) * direction[1] * time_fraction**2
    is_dwi = (bvals > 0)[:, None] | jitter_b0
    trans = trans + is_dwi * rng.uniform(-jitter[0], jitter[0], (n_vol, 3))
    rots = rots + is_dwi * np.radians(rng.uniform(-jitter[1], jitter[1], (n_vol, 3)))
    trans[0], rots[0] = 0.0, 0.0  # the first b=0 defines the reference position
    motions = [params_to_matrix(np.concatenate([t, r])) for t, r in zip(trans, rots)]
    points = grid_points(shape, affine)
    data = np.empty(shape + (n_vol,), dtype=np.float32)
    for i, (motion, bval, grad) in enumerate(zip(motions, bvals, gradients_world)):
        inverse = np.linalg.inv(motion)
        head_points = points @ inverse[:3, :3].T + inverse[:3, 3]
        head_gradient = motion[:3, :3].T @ grad  # the gradient as the moved head sees it
        data[..., i] = phantom.signal(head_points, bval, head_gradient)
    if noise:
        data += rng.normal(0, noise, data.shape).astype(np.float32)
        np.abs(data, out=data)
    # Written bvecs: scanner gradients in voxel axes, FSL x flip (det > 0): not rotated.
    axes = affine[:3, :3] / voxel
    bvecs = (FLIP_X @ axes.T @ gradients_world.T).T
    # The truth after correction: the gradients the head saw, in the same convention.
    head_gradients = np.array([m[:3, :3].T @ g for m, g in zip(motions, gradients_world)])
    true_bvecs = (FLIP_X @ axes.T @ head_gradients.T).T
    mask = phantom.s0_field.envelope(points) > 0.5
    return dict(data=data, affine=affine, bvals=bvals, bvecs=bvecs, motions=np.array(motions),
                true_bvecs=true_bvecs, mask=mask, phantom=phantom)


@pytest.fixture(scope="module")
def simulated():
    # A realistic protocol: 60 directions at b=1000, a b=0 every 10 volumes.
    return simulate_series(n_dirs=60, b0_every=10, noise=5.0)


@pytest.fixture(scope="module")
def corrected(simulated):
    s = simulated
    start = time.process_time()
    result = correct_motion(s["data"], s["affine"], s["bvals"], s["bvecs"], mask=s["mask"])
    result.cpu_seconds = time.process_time() - start
    return result


@pytest.fixture(scope="module")
def true_reference(simulated):
    """The head's pose in the corrected series: the log-Euclidean mean of the true motions, with
    rotations about the brain mask's centre (computed here with SciPy's logm/expm)."""
    centre = grid_points(simulated["data"].shape[:3], simulated["affine"])[simulated["mask"]].mean(axis=0)
    shift = np.eye(4)
    shift[:3, 3] = centre
    logs = [np.real(linalg.logm(np.linalg.inv(shift) @ motion @ shift)) for motion in simulated["motions"]]
    return shift @ linalg.expm(np.mean(logs, axis=0)) @ np.linalg.inv(shift)


def _relative_to_first(transforms):
    """Transforms relative to the first volume's, whose true motion is the identity."""
    return np.array([matrix @ np.linalg.inv(transforms[0]) for matrix in transforms])


def _errors(found, truth):
    """Per volume: largest translation error (mm), rotation error (deg)."""
    trans = np.array(
        [np.abs(matrix_to_params(f)[:3] - matrix_to_params(t)[:3]).max() for f, t in zip(found, truth)]
    )
    angle = np.array(
        [np.degrees(rotation_angle(f @ np.linalg.inv(t))) for f, t in zip(found, truth)]
    )
    return trans, angle


@pytest.mark.slow
def test_motion_parameters_recovered(simulated, corrected):
    s = simulated
    print(f"\nmotion correction of {s['data'].shape}: {corrected.cpu_seconds:.1f} s CPU")
    is_b0 = s["bvals"] == 0
    trans, angle = _errors(_relative_to_first(corrected.transforms), s["motions"])
    before_trans, before_angle = _errors(np.tile(np.eye(4), (len(trans), 1, 1)), s["motions"])
    # b=0 volumes: same contrast, registered directly.
    assert trans[is_b0].max() < 0.1 and angle[is_b0].max() < 0.1
    # DW volumes: registered to leave-one-out tensor predictions.  The motion components
    # the tensor model cannot see (see correct_motion's Notes) stay at their b=0
    # interpolated values, so the per-volume jitter is recovered only up to them.
    assert trans.max() < 0.2, trans.max()
    assert angle.max() < 0.3, angle.max()
    assert np.sqrt(np.mean(angle**2)) < 0.15
    assert before_trans.max() > 2.0 and before_angle.max() > 2.0  # there was motion
    # the table holds the transforms' parameters: relative to the first volume, the truth's
    rows = corrected.params[list(PARAM_COLUMNS)].to_numpy()
    table = _relative_to_first([params_to_matrix(row) for row in rows])
    table_trans, table_angle = _errors(table, s["motions"])
    assert table_trans.max() < 0.25 and table_angle.max() < 0.3


@pytest.mark.slow
def test_output_is_at_the_mean_pose(simulated, corrected, true_reference):
    """No volume is privileged: the corrected series shows the head at the mean of its poses,
    not at the first b=0's (which is 1-2 mm away here: the test can fail)."""
    points = grid_points(simulated["data"].shape[:3], simulated["affine"])[simulated["mask"]]
    shown = np.linalg.inv(corrected.transforms[0])  # the first volume's true motion is the identity

    def distance(pose):
        """RMS displacement (mm) between the pose and the true mean pose over the brain."""
        difference = pose - true_reference
        return np.sqrt(np.mean(np.sum((points @ difference[:3, :3].T + difference[:3, 3]) ** 2, axis=1)))

    print(f"output pose {distance(shown):.3f} mm from the true mean pose, the first b=0's "
          f"{distance(np.eye(4)):.2f} mm")
    assert distance(shown) < 0.1  # the estimates' errors (DW volumes up to 0.2 mm), averaged
    assert distance(np.eye(4)) > 1.0


@pytest.mark.slow
def test_rotated_bvecs_match_truth(simulated, corrected, true_reference):
    dwi = simulated["bvals"] > 0
    # the gradients the head saw, turned with the head to its pose in the corrected series
    axes = simulated["affine"][:3, :3] / np.linalg.norm(simulated["affine"][:3, :3], axis=0)
    seen = (FLIP_X @ axes.T @ true_reference[:3, :3] @ axes @ FLIP_X @ simulated["true_bvecs"].T).T
    angle = np.degrees(np.arccos(np.clip(np.sum(corrected.bvecs[dwi] * seen[dwi], axis=1), -1, 1)))
    assert angle.max() < 0.3
    # The uncorrected bvecs are off by the motion (a few degrees): the test can fail.
    before = np.degrees(np.arccos(np.clip(np.sum(simulated["bvecs"][dwi] * seen[dwi], axis=1), -1, 1)))
    assert before.max() > 1.0
    np.testing.assert_array_equal(corrected.bvecs[~dwi], 0.0)


@pytest.mark.slow
def test_corrected_data_match_the_reference_position(simulated, corrected, true_reference):
    """A corrected volume equals the same volume simulated with the head at the mean pose."""
    s = simulated
    inverse = np.linalg.inv(true_reference)
    points = grid_points(s["data"].shape[:3], s["affine"]) @ inverse[:3, :3].T + inverse[:3, 3]
    index = int(np.argmax(s["bvals"] > 0)) + 3
    axes = s["affine"][:3, :3] / np.linalg.norm(s["affine"][:3, :3], axis=0)
    grad_world = s["motions"][index][:3, :3].T @ (axes @ FLIP_X @ s["bvecs"][index])
    expected = s["phantom"].signal(points, s["bvals"][index], grad_world)
    inner = s["phantom"].s0_field.envelope(points) > 0.9
    moved_error = np.abs(s["data"][..., index] - expected)[inner].mean()
    fixed_error = np.abs(corrected.data[..., index] - expected)[inner].mean()
    # The best any correction can do: resample with the TRUE motion (interpolation error).
    ideal = resample(s["data"][..., index], s["affine"], s["data"].shape[:3], s["affine"],
                     s["motions"][index] @ inverse, order=3)
    ideal_error = np.abs(ideal - expected)[inner].mean()
    assert fixed_error < 1.2 * ideal_error + 0.002 * expected[inner].mean()
    assert fixed_error < moved_error / 1.5


@pytest.mark.slow
def test_covered_voxels_are_those_every_volume_saw(simulated, corrected, true_reference):
    """``covered`` is where every volume's true position (its true motion from the output's true
    pose) lies in the acquired field of view, up to the motion estimates' error (0.1 voxel, 0.4 mm,
    at the edge); each voxel left out holds a volume sampled outside it (0, no measurement)."""
    s = simulated
    shape = s["data"].shape[:3]
    homogeneous = np.vstack([np.indices(shape).reshape(3, -1), np.ones((1, int(np.prod(shape))))])
    margin = np.full(homogeneous.shape[1], np.inf)  # how far inside every volume's view (voxels)
    for motion in s["motions"]:
        coords = (np.linalg.inv(s["affine"]) @ motion @ np.linalg.inv(true_reference) @ s["affine"]
                  @ homogeneous)[:3]
        inside = np.minimum(coords + 0.5, np.asarray(shape)[:, None] - 0.5 - coords).min(axis=0)
        margin = np.minimum(margin, inside)
    margin = margin.reshape(shape)
    assert (margin < -0.1).sum() > 1000  # the drift takes edge voxels out of some volumes' view
    assert corrected.covered[margin > 0.1].all()
    assert not corrected.covered[margin < -0.1].any()
    assert (corrected.data[~corrected.covered].min(axis=-1) == 0).all()


@pytest.mark.slow
def test_framewise_displacement_of_the_result_by_hand(corrected):
    params = corrected.params
    row1, row2 = params.iloc[1], params.iloc[2]
    by_hand = (
        abs(row2.trans_x - row1.trans_x) + abs(row2.trans_y - row1.trans_y)
        + abs(row2.trans_z - row1.trans_z)
        + 50.0 * (abs(row2.rot_x - row1.rot_x) + abs(row2.rot_y - row1.rot_y)
                  + abs(row2.rot_z - row1.rot_z))
    )
    assert params.framewise_displacement.iloc[2] == pytest.approx(by_hand)
    assert params.framewise_displacement.iloc[0] == 0.0


def test_framewise_displacement_by_hand():
    table = pd.DataFrame(
        [[0, 0, 0, 0, 0, 0], [1.0, -0.5, 0.25, 0.01, 0.0, -0.02]],
        columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"],
    )
    # 1.75 mm of translation + 50 mm * 0.03 rad = 3.25 mm
    np.testing.assert_allclose(framewise_displacement(table), [0.0, 3.25])
    np.testing.assert_allclose(framewise_displacement(table, radius=80.0), [0.0, 1.75 + 2.4])


def test_rotate_bvecs_conventions():
    """FSL and plain voxel conventions give the same physical rotation."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS+: FSL negates x
    motion = params_to_matrix([0, 0, 0, 0.0, 0.0, np.radians(30)])
    world = np.array([[1.0, 0.0, 0.0]])
    fsl = rotate_bvecs(world @ FLIP_X, motion[None], affine)
    voxel = rotate_bvecs(world, motion[None], affine, bvec_convention="voxel")
    rotated = (motion[:3, :3].T @ world[0])  # (cos 30, -sin 30, 0)
    np.testing.assert_allclose(voxel[0], rotated, atol=1e-12)
    np.testing.assert_allclose(fsl[0], FLIP_X @ rotated, atol=1e-12)


def test_correct_motion_checks_input():
    s = simulate_series(n_dirs=4, b0_every=10, voxel=12.0)
    with pytest.raises(ValueError, match="no b=0"):
        correct_motion(s["data"][..., :3], s["affine"], np.full(3, 1000.0), s["bvecs"][:3])
    with pytest.raises(ValueError, match="b-values"):
        correct_motion(s["data"], s["affine"], s["bvals"][:-1], s["bvecs"])
    with pytest.raises(ValueError, match="4-D"):
        correct_motion(s["data"][..., 0], s["affine"], s["bvals"], s["bvecs"])
    with pytest.raises(ValueError, match="reference"):
        correct_motion(s["data"], s["affine"], s["bvals"], s["bvecs"], reference="last")


@pytest.mark.slow
def test_heavy_motion_dw_volumes_placed_with_the_b0s(tmp_path):
    """Heavy motion (the precision benchmark's heavy level: AR(1) per-volume motion of SD
    1.25 mm / deg, a b=0 every 6 volumes; seed 20, sub-01's follow-up) moves the DW volumes as a
    block away from the b=0s' interpolation in time, by 1.2 mm here: a position the tensor model
    cannot see (correct_motion's Notes).  Measured: the true b=0 motion interpolated in time puts
    the block 1.23 mm off; the previous rule (held there) left it 1.21 mm off, RMS 1.36 mm /
    0.81 deg per volume; smoothness in time and the mean DW image's alignment to the mean b=0:
    0.11 mm, RMS 0.60 mm / 0.31 deg."""
    import nibabel as nib

    from bids_ketamine.dwi.motion import _centred_log, _interpolate_between_b0s
    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.geometry import rigid_matrix

    bids = simulate_trial(tmp_path / "bids", n_subjects=1, seed=20, preset="small", progress=False,
                          motion=1.25, effect_model="blobs", session_translation_mm=2.0,
                          session_rotation_deg=2.0)
    dwi = bids / "sub-01" / "ses-post" / "dwi" / "sub-01_ses-post_dwi"
    img = nib.load(f"{dwi}.nii.gz")
    bvals, bvecs = np.loadtxt(f"{dwi}.bval"), np.loadtxt(f"{dwi}.bvec")
    true = pd.read_csv(bids / "sourcedata" / "simulation" / "sub-01" / "ses-post" /
                       "sub-01_ses-post_desc-motion_timeseries.tsv", sep="\t").to_numpy()
    moved = [rigid_matrix(p[:3], p[3:]) for p in true]
    truth = np.array([m @ np.linalg.inv(moved[0]) for m in moved])  # relative to the first b=0
    result = correct_motion(np.asarray(img.dataobj, dtype=np.float32), img.affine, bvals, bvecs)
    centre = (np.argwhere(result.mask) @ img.affine[:3, :3].T + img.affine[:3, 3]).mean(axis=0)
    is_dw = bvals > 50

    def errors(found):
        """Per DW volume, the centred rigid log of found relative to the truth."""
        return np.array([_centred_log(np.linalg.inv(t) @ f, centre)
                         for t, f in zip(truth[is_dw], found[is_dw])])

    interpolated = errors(_interpolate_between_b0s(truth, np.flatnonzero(~is_dw)))
    found = errors(_relative_to_first(result.transforms))
    block_before, block_after = (np.linalg.norm(e[:, :3].mean(axis=0)) for e in (interpolated, found))
    rms_translation = np.sqrt(np.mean(np.sum(found[:, :3] ** 2, axis=1)))
    rms_rotation = np.degrees(np.sqrt(np.mean(np.sum(found[:, 3:] ** 2, axis=1))))
    print(f"DW block off by {block_before:.2f} mm (b=0 interpolation) -> {block_after:.2f} mm; "
          f"RMS per volume {rms_translation:.2f} mm, {rms_rotation:.2f} deg")
    assert block_before > 1.0  # the case is hard: the b=0s alone misplace the block
    assert block_after < 0.3
    assert rms_translation < 0.8 and rms_rotation < 0.5
