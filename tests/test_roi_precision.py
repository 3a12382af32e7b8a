"""Issue 20: voxel selection shared by a participant's sessions, partial-volume-aware ROI values,
and the simulator's ideal label change (small arrays, fast)."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.dwi.partial_volume import gm_weighted_mean, grey_matter_md, relative_s0, tissue_md
from bids_ketamine.dwi.roi import ROISTATS_COLUMNS, ROISTATS_PV_COLUMNS, roi_statistics
from bids_ketamine.dwi.shared_selection import participant_selection_maps, sample_sessions_on_grid


def _two_sessions(shift_voxels=2, shape=(12, 12, 12), seed=0):
    """Two sessions of one head: session 1's grid is shifted by whole voxels (2 mm voxels), so
    that voxel (i, j, k) of session 0 is voxel (i - shift, j, k) of session 1."""
    rng = np.random.default_rng(seed)
    head = 1.0 + 0.15 * rng.standard_normal((shape[0] + shift_voxels,) + shape[1:])
    affine0 = np.diag([2.0, 2.0, 2.0, 1.0])
    affine1 = affine0.copy()
    affine1[0, 3] = 2.0 * shift_voxels
    noise = [0.05 * rng.standard_normal(shape) for _ in range(2)]
    md0 = head[:shape[0]] + noise[0]
    md1 = head[shift_voxels:] + noise[1]
    masks = [np.ones(shape, bool), np.ones(shape, bool)]
    return [md0, md1], masks, [affine0, affine1], [np.eye(4), np.eye(4)]


def test_shared_selection_excludes_a_voxel_in_every_session_or_none():
    maps, masks, affines, rigids = _two_sessions()
    threshold = 1.0
    shared = [participant_selection_maps(maps, masks, affines, rigids, i) for i in range(2)]
    # the same anatomical point: voxel (i, j, k) of session 1 is (i + 2, j, k) of session 0
    excluded0 = shared[0][0][2:] > threshold
    excluded1 = shared[1][0][:-2] > threshold
    np.testing.assert_array_equal(excluded0, excluded1)
    # the shared MD is the mean of the two sessions' MD at that point (closed form)
    np.testing.assert_allclose(shared[0][0][2:], (maps[0][2:] + maps[1][:-2]) / 2, rtol=1e-6)
    # each session's own MD disagrees on some voxels: the noise-driven selection removed
    own_disagree = (maps[0][2:] > threshold) != (maps[1][:-2] > threshold)
    assert own_disagree.any()
    # outside the other session's field of view there is no shared MD (NaN: never kept)
    assert np.isnan(shared[0][0][:2]).all()


def test_shared_selection_does_not_depend_on_session_order():
    maps, masks, affines, rigids = _two_sessions(seed=3)
    rotation = np.eye(4)
    angle = np.deg2rad(4.0)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rigids = [rotation, np.linalg.inv(rotation)]
    forward = participant_selection_maps(maps, masks, affines, rigids, 0)
    backward = participant_selection_maps(maps[::-1], masks[::-1], affines[::-1], rigids[::-1], 1)
    np.testing.assert_array_equal(forward[0], backward[0])
    np.testing.assert_array_equal(forward[1], backward[1])


def test_sample_sessions_keeps_own_values_exactly():
    maps, _, affines, rigids = _two_sessions()
    stack = sample_sessions_on_grid(maps, affines, rigids, 1)
    np.testing.assert_array_equal(stack[1], maps[1])
    with pytest.raises(ValueError, match="one map, affine and transform"):
        sample_sessions_on_grid(maps, affines[:1], rigids, 0)


def _mixture_md(fractions, md_by_tissue, s0, b_value):
    """Voxel MD of isotropic compartments as DIPY's tensor fit reads it from their summed signal."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.sims.voxel import multi_tensor

    directions = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.7071, 0.7071, 0], [0.7071, 0, 0.7071],
                           [0, 0.7071, 0.7071]])
    gtab = gradient_table(np.r_[0.0, np.full(6, b_value)], bvecs=np.r_[[[0, 0, 0]], directions])
    signal_fractions = fractions * np.asarray(s0) / (fractions @ np.asarray(s0))[:, None]
    evals = [np.full(3, md * 1e-3) for md in md_by_tissue]  # mm^2/s
    signals = np.array([multi_tensor(gtab, evals, S0=100.0, angles=[(0, 0)] * 3, fractions=100 * row, snr=None)[0]
                        for row in signal_fractions])
    return TensorModel(gtab, fit_method="OLS").fit(signals).md * 1e3  # um^2/ms


def test_grey_matter_md_recovers_the_mixture_dipys_tensor_fit_sees():
    """Isotropic GM, WM and CSF compartments mixed by their signal (CSF brighter at b=0), the
    voxels' MD from DIPY's tensor fit: the least squares in the attenuation gives the GM MD back
    exactly, where a mixture of MD values (sum f MD) would be far off."""
    rng = np.random.default_rng(1)
    fractions = rng.dirichlet([4.0, 2.0, 0.5], size=200)
    gm_md, wm_md, csf_md = 0.83, 0.71, 3.0
    s0 = {"gm": 1.0, "wm": 0.8, "csf": 1.4}
    md = _mixture_md(fractions, (gm_md, wm_md, csf_md), list(s0.values()), 1000.0)
    f = {"gm": fractions[:, 0], "wm": fractions[:, 1], "csf": fractions[:, 2]}
    assert grey_matter_md(md, f, wm_md=wm_md, csf_md=csf_md, b_value=1000.0, s0=s0) == pytest.approx(gm_md, rel=1e-6)
    # fractions that do not sum to 1 are rescaled (a probability map scaled by 0.9)
    scaled = {k: 0.9 * v for k, v in f.items()}
    assert grey_matter_md(md, scaled, wm_md=wm_md, csf_md=csf_md, b_value=1000.0, s0=s0) == pytest.approx(gm_md, rel=1e-6)
    # the MD-value mixture's least squares, sum f_gm (MD - f_wm MD_wm - f_csf MD_csf) / sum f_gm^2
    linear = np.dot(f["gm"], md - f["wm"] * wm_md - f["csf"] * csf_md) / np.dot(f["gm"], f["gm"])
    assert linear < 0.95 * gm_md  # 0.75: 10 % low
    # ignoring CSF's brighter b=0 (equal signals) biases it, at the wrong b-value too
    assert abs(grey_matter_md(md, f, wm_md=wm_md, b_value=1000.0) - gm_md) > 0.01
    assert abs(grey_matter_md(md, f, wm_md=wm_md, b_value=2000.0, s0=s0) - gm_md) > 0.01
    # the weighted mean is the closed form sum(f md) / sum(f), biased by the mixture
    expected = np.sum(f["gm"] * md) / np.sum(f["gm"])
    assert gm_weighted_mean(md, f["gm"]) == pytest.approx(expected, rel=1e-12)
    assert abs(gm_weighted_mean(md, f["gm"]) - gm_md) > 0.05
    with pytest.raises(ValueError, match="'csf' is missing"):
        grey_matter_md(md, {"gm": f["gm"], "wm": f["wm"]}, wm_md=wm_md, b_value=1000.0)
    with pytest.raises(ValueError, match="b_value must be a positive"):
        grey_matter_md(md, f, wm_md=wm_md, b_value=0.0)
    # too little grey matter: n/a
    assert np.isnan(grey_matter_md(md[:1], {k: v[:1] for k, v in f.items()}, wm_md=wm_md, b_value=1000.0))


def test_relative_s0_is_the_tissues_b0_signal_least_squares():
    rng = np.random.default_rng(4)
    fractions = rng.dirichlet([3.0, 3.0, 1.0], size=(6, 7, 8))
    f = {name: fractions[..., i] for i, name in enumerate(("gm", "wm", "csf"))}
    b0 = 500.0 * (1.0 * f["gm"] + 0.8 * f["wm"] + 1.5 * f["csf"])
    mask = np.ones(b0.shape, bool)
    assert relative_s0(b0, f, mask) == pytest.approx({"gm": 1.0, "wm": 0.8, "csf": 1.5}, rel=1e-9)
    # an image darker where the CSF map says CSF (maps from another head): a clear error
    with pytest.raises(ValueError, match="not all positive"):
        relative_s0(500.0 * (f["gm"] + 0.8 * f["wm"]) - 100.0 * f["csf"], f, mask)
    with pytest.raises(ValueError, match="differ"):
        relative_s0(b0, f, mask[:-1])


def test_tissue_md_is_the_median_of_pure_voxels():
    md = np.array([0.7, 0.72, 0.74, 2.0, 0.9])
    wm = np.array([1.0, 0.95, 0.92, 0.5, 0.1])
    assert tissue_md(md, wm, np.ones(5, bool)) == pytest.approx(0.72)


def test_roi_table_pv_columns_follow_the_contract_columns():
    rng = np.random.default_rng(2)
    shape = (10, 10, 10)
    labels_native = np.zeros(shape, int)
    labels_native[2:8, 2:8, 2:8] = 1
    gm = np.clip(rng.uniform(0.3, 1.0, shape), 0, 1)
    csf = np.where(rng.uniform(size=shape) < 0.1, 0.3, 0.0) * (1 - gm)
    wm = 1 - gm - csf
    wm[0] = 1.0
    gm[0] = csf[0] = 0.0
    s0 = np.array([1.0, 0.8, 1.4])  # b=0 signal of GM, WM, CSF
    fractions = np.stack([gm, wm, csf], axis=-1)
    md = -np.log((fractions * s0) @ np.exp(-np.array([0.8, 0.7, 3.0])) / (fractions @ s0))  # b = 1000 s/mm^2
    shared_md = md.copy()
    noisy = md + np.where(rng.uniform(size=shape) < 0.2, 0.5, 0.0)  # own noise pushes some over 1.1
    table = roi_statistics({"md": noisy}, labels_native, pd.DataFrame({"index": [1], "name": ["a"]}),
                           np.ones(shape, bool), md=shared_md, gm_probability=gm, gm_threshold=None,
                           tissue_fractions={"gm": gm, "wm": wm, "csf": csf})
    assert list(table.columns) == ROISTATS_COLUMNS + ROISTATS_PV_COLUMNS
    row = table.iloc[0]
    roi = labels_native == 1
    kept = roi & (shared_md <= 1.1)
    assert row["excluded_fraction"] == pytest.approx(1 - kept.sum() / roi.sum())
    assert row["own_excluded_fraction"] == pytest.approx(1 - (roi & (noisy <= 1.1)).sum() / roi.sum())
    assert row["gm_fraction"] == pytest.approx(gm[kept].mean())
    assert row["gm_weighted_mean"] == pytest.approx(np.sum(gm[kept] * noisy[kept]) / gm[kept].sum())
    assert np.isnan(row["pv_gm"])  # no b-value: no mixture
    # noise-free MD: the mixture fit gives the GM MD (WM MD 0.7 from the pure WM slab, the
    # tissues' b=0 signals from the b=0 image)
    clean = roi_statistics({"md": md}, labels_native, pd.DataFrame({"index": [1], "name": ["a"]}),
                           np.ones(shape, bool), gm_probability=gm, gm_threshold=None,
                           tissue_fractions={"gm": gm, "wm": wm, "csf": csf}, b_value=1000.0,
                           b0=300.0 * fractions @ s0)
    assert clean.iloc[0]["pv_gm"] == pytest.approx(0.8, rel=1e-9)


def _fake_truth(tmp_path, effects_by_label):
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "truth.json").write_text(json.dumps({"md_model": {"effect_model": "blobs"}}))
    for label, effects in effects_by_label.items():
        (truth / f"sub-{label}").mkdir()
        (truth / f"sub-{label}" / f"sub-{label}_effects.json").write_text(json.dumps(effects))
    return truth


@pytest.mark.slow
def test_ideal_label_change_of_a_known_label_image(tmp_path):
    from bids_ketamine.simulate.anatomy import TISSUES, load_template_anatomy
    from bids_ketamine.simulate.effects import ideal_label_change

    anatomy = load_template_anatomy()
    n_groups = anatomy.n_rois + 1
    centre = np.asarray(anatomy.brain_centre, float)
    gradient = [0.02, 0.0, 0.0]  # percent per mm along x
    visit = {"global_pct": -3.0, "blob_centres_mm": [], "blob_amplitudes_pct": [],
             "blob_sigma_mm": 6.0, "gradient_pct_per_mm": gradient,
             "gradient_origin_mm": centre.tolist()}
    sessions = [{"session_id": "pre", "drift_pct": 0.0, "md_groups": [0.8] * n_groups},
                {"session_id": "post", "drift_pct": 1.0, "md_groups": [0.8] * n_groups}]
    truth = _fake_truth(tmp_path, {"01": {"label": "01", "visits": [visit], "sessions": sessions}})
    # a label image on its own 4 mm grid in template space: two boxes left and right of centre
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = centre - 40.3  # no template voxel centre half-way between label voxels
    labels = np.zeros((21, 21, 21), np.int16)
    labels[3:8, 8:13, 8:13] = 1
    labels[13:18, 8:13, 8:13] = 2
    ideal = ideal_label_change(truth, nib.Nifti1Image(labels, affine)).set_index("label")
    # independent expectation: the mean over the template GM voxels whose nearest label voxel is
    # the label, of 0.8 * (1 + (global + gradient . (x - centre)) / 100) * 1.01 - 0.8
    gm = np.argwhere(anatomy.codes % 4 == TISSUES["gm"])
    points = gm @ anatomy.affine[:3, :3].T + anatomy.affine[:3, 3]
    index = np.rint((points - affine[:3, 3]) / 4.0).astype(int)
    inside = np.all((index >= 0) & (index < 21), axis=1)
    point_label = np.zeros(len(points), int)
    point_label[inside] = labels[tuple(index[inside].T)]
    for label in (1, 2):
        x = points[point_label == label]
        followup = 0.8 * (1 + (-3.0 + (x - centre) @ np.asarray(gradient)) / 100) * 1.01
        expected = 100 * (followup.mean() - 0.8) / 0.8
        assert ideal.at[label, "md_change_pct"] == pytest.approx(expected, abs=1e-6)
    # the gradient makes the right box (larger x) change less negatively than the left one
    assert ideal.at[2, "md_change_pct"] > ideal.at[1, "md_change_pct"]


@pytest.mark.slow
def test_blobs_baseline_equals_roi_model_and_follow_up_follows_the_field(tmp_path):
    """At baseline the blobs model's GM MD equals the ROI model's (same seed, no change yet);
    at follow-up each voxel's GM MD changed by the field averaged over its GM sub-samples, which
    within a 4 mm voxel is close to the field at the voxel's template position."""
    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.study import truth_map_paths

    options = dict(n_subjects=1, seed=5, preset="demo", progress=False, noise=False,
                   motion_enabled=False)
    roi_root = simulate_trial(tmp_path / "roi", **options)
    blob_root = simulate_trial(tmp_path / "blobs", effect_model="blobs", **options)
    paths_roi = truth_map_paths(roi_root, "01", "pre")
    paths_blob = truth_map_paths(blob_root, "01", "pre")
    np.testing.assert_allclose(nib.load(paths_blob["gm_md"]).get_fdata(),
                               nib.load(paths_roi["gm_md"]).get_fdata(), rtol=1e-5, atol=1e-6)
    effects = json.loads((blob_root / "sourcedata" / "simulation" / "sub-01" / "sub-01_effects.json").read_text())
    visit = effects["visits"][0]
    assert any(abs(a) > 0 for a in visit["blob_amplitudes_pct"])
    truth = pd.read_csv(blob_root / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
    roi_truth = pd.read_csv(roi_root / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
    # the ideal change of an ROI is no longer the ROI's drawn change (the field ignores the ROI)
    assert not np.allclose(truth["md_change_pct"], roi_truth["md_change_pct"], atol=0.05)
    # the ideal change lies between the global change and the global change plus the blob peak
    global_pct = visit["global_pct"]
    assert np.all(np.abs(truth["md_change_pct"] - global_pct)
                  <= np.max(np.abs(visit["blob_amplitudes_pct"])) + 3.0)


def test_roi_grey_matter_volume_fractions_of_a_plane_border():
    from bids_ketamine.dwi.partial_volume import roi_grey_matter_volume_fractions

    atlas = np.zeros((20, 9, 9), int)
    atlas[:10] = 1
    atlas[10:] = 2
    gm = np.full(atlas.shape, 0.5)
    fractions = roi_grey_matter_volume_fractions(atlas, gm, [1, 2], 3)
    # a 3-voxel box centred on x = 9 holds x = 8, 9 (label 1) and 10 (label 2)
    assert fractions[9, 4, 4, 0] == pytest.approx(0.5 * 2 / 3)
    assert fractions[10, 4, 4, 0] == pytest.approx(0.5 * 1 / 3)
    np.testing.assert_allclose(fractions[5:15, 4, 4].sum(axis=-1), 0.5, rtol=1e-6)


def test_roi_grey_matter_volume_fractions_equal_whole_grid_filtering():
    """Filtering each label's padded bounding box gives the whole grid's box average exactly,
    for small ROIs, one touching the grid's edge, and a label that is absent."""
    from bids_ketamine.dwi.partial_volume import box_average, roi_grey_matter_volume_fractions

    rng = np.random.default_rng(8)
    atlas = np.zeros((40, 44, 36), int)
    for label in range(1, 5):
        corner = rng.integers(6, 26, 3)
        atlas[corner[0]:corner[0] + 7, corner[1]:corner[1] + 5, corner[2]:corner[2] + 6] = label
    atlas[:2, 40:, 33:] = 5
    gm = rng.random(atlas.shape).astype(np.float32)
    for box in (1, 2, 3, 4, 1.5, (2.5, 1.2, 3)):
        fractions = roi_grey_matter_volume_fractions(atlas, gm, [1, 2, 3, 4, 5, 6], box)
        for position, label in enumerate([1, 2, 3, 4, 5, 6]):
            whole = box_average(np.where(atlas == label, gm, 0.0), box)
            np.testing.assert_allclose(fractions[..., position], whole, rtol=0, atol=1e-7)


@pytest.mark.parametrize("box", [2, 3, 4, 1.5, 2.5])
def test_box_average_is_centred_for_any_side(box):
    """A step (voxels 0-9 = 1, i.e. x < 9.5): a box of ``box`` voxels centred on voxel x holds
    clip((9.5 - (x - box/2)) / box, 0, 1) of it (closed form), even and fractional sides
    included; scipy's uniform_filter of even size sits half a voxel off."""
    from scipy import ndimage

    from bids_ketamine.dwi.partial_volume import box_average

    step = np.zeros((24, 7, 7), np.float32)
    step[:10] = 1.0  # voxels 0..9, i.e. x < 9.5 in voxel coordinates
    averaged = box_average(step, box)[:, 3, 3]
    x = np.arange(24)
    expected = np.clip((9.5 - (x - box / 2)) / box, 0.0, 1.0)
    np.testing.assert_allclose(averaged[3:20], expected[3:20], atol=1e-6)
    if box in (2, 4):
        assert not np.allclose(ndimage.uniform_filter(step, box, mode="constant")[box:20, 3, 3], expected[box:20])
    both = np.stack([step, 1.0 - step], axis=-1)  # 4-D: each map alike, the maps not mixed
    np.testing.assert_allclose(box_average(both, box)[3:20, 3, 3].sum(axis=-1), 1.0, atol=1e-6)


def test_box_side_follows_the_axes_not_their_order():
    """A DWI grid of 2 x 2 x 4 mm voxels whose third axis points along world x, over a 1-mm T1w
    grid (and a 2-mm one): the T1w's x axis takes the 4-mm side."""
    from bids_ketamine.dwi.partial_volume import box_side

    coarse = np.zeros((4, 4))
    coarse[1, 0], coarse[2, 1], coarse[0, 2], coarse[3, 3] = 2.0, 2.0, 4.0, 1.0  # i -> y, j -> z, k -> x
    np.testing.assert_allclose(box_side(np.eye(4), coarse), [4.0, 2.0, 2.0])
    np.testing.assert_allclose(box_side(np.diag([2.0, 2.0, 2.0, 1.0]), coarse), [2.0, 1.0, 1.0])
    np.testing.assert_allclose(box_side(np.diag([3.0, 3.0, 3.0, 1.0]), np.eye(4)), [1.0, 1.0, 1.0])  # never below 1


def test_t1w_fractions_reach_the_native_grid_through_both_rigid_maps(tmp_path):
    """T1wFractionsToNative: a T1w (1 mm) whose grey matter fills world x < 0.  The series' grid
    (3 mm) maps to the midpoint by +2 mm in x and the T1w to the midpoint by +5 mm, so the
    native point p sits at T1w point p - 3 mm; each native voxel's fraction is the closed-form
    share of its 3-mm cube at x < 0 there, to within the supersampling's step (4 points per
    axis: half of 1/4)."""
    from bids_ketamine.interfaces.roi import T1wFractionsToNative

    t1w_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    t1w_affine[:3, 3] = (-40.5, -10.5, -10.5)  # voxel edges at integer mm: x < 0 is whole voxels
    gm = np.zeros((81, 21, 21), np.float32)
    centres = t1w_affine[0, 3] + np.arange(81)
    gm[centres < 0] = 1.0
    native_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    native_affine[:3, 3] = (-20.0, -6.0, -6.0)
    shift = {"rigid": 2.0, "t1w": 5.0}
    paths = {}
    for name, offset in shift.items():
        matrix = np.eye(4)
        matrix[0, 3] = offset
        paths[name] = tmp_path / f"{name}.txt"
        np.savetxt(paths[name], matrix)
    nib.Nifti1Image(gm, t1w_affine).to_filename(tmp_path / "gm.nii.gz")
    nib.Nifti1Image(np.zeros((14, 5, 5), np.float32), native_affine).to_filename(tmp_path / "b0.nii.gz")
    result = T1wFractionsToNative(in_file=str(tmp_path / "gm.nii.gz"), rigid_file=str(paths["rigid"]),
                                  t1w_xfm_file=str(paths["t1w"]), reference_file=str(tmp_path / "b0.nii.gz"),
                                  ).run(cwd=str(tmp_path))
    out = nib.load(result.outputs.out_file)
    np.testing.assert_allclose(out.affine, native_affine)
    x_t1w = native_affine[0, 3] + 3.0 * np.arange(14) + shift["rigid"] - shift["t1w"]
    expected = np.clip((0.0 - (x_t1w - 1.5)) / 3.0, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out.dataobj)[:, 2, 2], expected, atol=1 / 8 + 1e-6)
    assert ((expected > 0) & (expected < 1)).any()  # a voxel straddles the border
    whole = (expected == 0) | (expected == 1)
    np.testing.assert_array_equal(np.asarray(out.dataobj)[whole, 2, 2], expected[whole])


def test_t1w_roi_weights_are_the_labels_grey_matter_in_each_native_voxel(tmp_path):
    """T1wROIWeights: two labels split a T1w (1 mm) at x = 0, grey-matter fraction 0.6
    everywhere; on a 3-mm grid through the identity, every voxel's weights sum to 0.6 and the
    voxel straddling the border is shared in closed form, to within the supersampling's step
    (4 points per axis)."""
    from bids_ketamine.interfaces.roi import T1wROIWeights

    affine = np.eye(4)
    affine[:3, 3] = (-30.5, -10.5, -10.5)
    atlas = np.where((affine[0, 3] + np.arange(61)) < 0, 1, 2)[:, None, None] * np.ones((1, 21, 21), np.int16)
    nib.Nifti1Image(atlas.astype(np.int16), affine).to_filename(tmp_path / "atlas.nii.gz")
    nib.Nifti1Image(np.full(atlas.shape, 0.6, np.float32), affine).to_filename(tmp_path / "gm.nii.gz")
    pd.DataFrame({"index": [1, 2], "name": ["left", "right"]}).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    native_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    native_affine[:3, 3] = (-13.0, -3.0, -3.0)  # x centres -13, -10, ..., 11: -1 straddles x = 0
    nib.Nifti1Image(np.zeros((9, 3, 3), np.float32), native_affine).to_filename(tmp_path / "b0.nii.gz")
    np.savetxt(tmp_path / "identity.txt", np.eye(4))
    result = T1wROIWeights(atlas_file=str(tmp_path / "atlas.nii.gz"), gm_file=str(tmp_path / "gm.nii.gz"),
                           labels_file=str(tmp_path / "labels.tsv"), rigid_file=str(tmp_path / "identity.txt"),
                           t1w_xfm_file=str(tmp_path / "identity.txt"), reference_file=str(tmp_path / "b0.nii.gz"),
                           ).run(cwd=str(tmp_path))
    weights = np.asarray(nib.load(result.outputs.out_file).dataobj)[:, 1, 1]
    x = native_affine[0, 3] + 3.0 * np.arange(9)
    left = 0.6 * np.clip((0.0 - (x - 1.5)) / 3.0, 0.0, 1.0)
    np.testing.assert_allclose(weights[:, 0], left, atol=0.6 / 8 + 1e-6)
    np.testing.assert_allclose(weights.sum(axis=1), 0.6, atol=1e-6)
    assert 0 < weights[4, 0] < 0.6  # the voxel at x = -1 is shared


def _shell_fractions(shape, affine, points_per_axis):
    """Volume fractions of a wavy spherical shell 3 mm thick (a cortex-like sheet), by numerical
    integration with ``points_per_axis`` points per axis in every voxel."""
    offsets = (np.arange(points_per_axis) + 0.5) / points_per_axis - 0.5
    index = np.indices(shape).reshape(3, -1).astype(float)
    total = np.zeros(index.shape[1])
    for shift in itertools.product(offsets, repeat=3):
        x, y, z = affine[:3, :3] @ (index + np.array(shift)[:, None]) + affine[:3, 3:]
        radius = np.sqrt(x ** 2 + y ** 2 + z ** 2) - 1.5 * np.sin(x / 7.0) * np.cos(y / 9.0)
        total += (radius > 30.0) & (radius < 33.0)
    return (total / points_per_axis ** 3).reshape(shape)


def test_volume_fractions_of_a_thin_sheet_keep_their_partial_volume():
    """A 3-mm sheet's fractions on a 2-mm grid (the T1w), carried into a 3-mm grid rotated by
    11 degrees and shifted (the DWI), against the sheet's fractions integrated on that grid
    directly (12 points per axis): within the 2-mm map's own loss.  Measured 2026-12-06: mean
    absolute error 0.071 and bias -0.008 (the box average sampled trilinearly used until then:
    0.117 and -0.031, the sheet blurred into its neighbours)."""
    from bids_ketamine.dwi.partial_volume import volume_fractions_on_grid

    fine_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine_affine[:3, 3] = -45.0
    fine = _shell_fractions((46, 46, 46), fine_affine, 12)
    angle = 0.2
    coarse_affine = np.eye(4)
    coarse_affine[:2, :2] = 3.0 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    coarse_affine[2, 2] = 3.0
    coarse_affine[:3, 3] = -39.3
    truth = _shell_fractions((27, 27, 27), coarse_affine, 12)
    sampled = volume_fractions_on_grid(fine, fine_affine, (27, 27, 27), coarse_affine)
    sheet = truth > 0.01
    assert np.abs(sampled - truth)[sheet].mean() < 0.08
    assert abs((sampled - truth)[sheet].mean()) < 0.015
    assert sampled.sum() == pytest.approx(truth.sum(), rel=0.01)  # no volume lost or gained


def test_roi_gm_weighted_mean_uses_soft_weights_not_the_labels():
    rng = np.random.default_rng(4)
    shape = (6, 6, 6)
    md = rng.uniform(0.6, 1.0, shape)
    weights = rng.uniform(0, 1, shape + (1,))
    labels_native = np.zeros(shape, int)  # no voxel carries the label: the soft weights decide
    table = roi_statistics({"md": md}, labels_native, pd.DataFrame({"index": [1], "name": ["a"]}),
                           np.ones(shape, bool), roi_weights=weights)
    assert table.iloc[0]["n_voxels"] == 0
    assert table.iloc[0]["roi_gm_weighted_mean"] == pytest.approx(
        np.sum(weights[..., 0] * md) / weights.sum())


@pytest.mark.parametrize("argument, name", [
    ("b0", "mean b=0"), ("md", "MD map"), ("gm_probability", "grey-matter probability"),
    ("tissue_fractions", "wm fraction map"), ("mask", "mask")])
def test_roi_statistics_checks_every_image_against_the_labels_grid(argument, name):
    """An image on another grid is refused at the door, named, before any statistic is computed
    (the mean b=0 went unchecked until 2026-12-05)."""
    shape, other = (6, 6, 6), np.ones((6, 6, 5))
    inputs = {"md": None, "b0": None, "gm_probability": None, "mask": np.ones(shape, bool),
              "tissue_fractions": {"gm": np.full(shape, 0.5), "wm": np.full(shape, 0.3), "csf": np.full(shape, 0.2)}}
    inputs[argument] = dict(inputs["tissue_fractions"], wm=other) if argument == "tissue_fractions" else other
    with pytest.raises(ValueError, match=rf"^{name} has shape \(6, 6, 5\), labels \(6, 6, 6\)$"):
        roi_statistics({"md": np.full(shape, 0.8)}, np.ones(shape, int), pd.DataFrame({"index": [1], "name": ["a"]}),
                       inputs.pop("mask"), b_value=1000.0, **inputs)


def _write_table(out_dir, subject, session, columns, value):
    folder = out_dir / f"sub-{subject}" / f"ses-{session}" / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    row = {"roi": "vACC", "param": "md", "mean": 0.8, "median": value - 0.01, "std": 0.1, "n_voxels": 40,
           "coverage": 1.0, "roi_gm_weighted_mean": value, "gm_weighted_mean": value + 0.01,
           "roi_gm_weighted_median": value + 0.02 if np.isfinite(value) else "n/a"}
    pd.DataFrame([{c: row[c] for c in columns}]).to_csv(
        folder / f"sub-{subject}_ses-{session}_atlas-ketamine7_model-tensor_roistats.tsv", sep="\t",
        index=False)


def test_group_reads_the_new_roi_statistic_and_rejects_old_tables(tmp_path):
    from bids_ketamine.errors import InputError
    from bids_ketamine.group.roistats import load_roi_values

    new = ROISTATS_COLUMNS + ["gm_weighted_mean", "roi_gm_weighted_mean"]
    _write_table(tmp_path, "01", "pre", new, 0.81)
    _write_table(tmp_path, "01", "post", new, 0.77)
    values, _, _ = load_roi_values(tmp_path, "ketamine7", (), "roi_gm_weighted_mean")
    assert sorted(values["value"].round(6)) == [0.77, 0.81]
    _write_table(tmp_path, "02", "pre", ROISTATS_COLUMNS, 0.8)
    with pytest.raises(InputError, match="no 'roi_gm_weighted_mean' column"):
        load_roi_values(tmp_path, "ketamine7", (), "roi_gm_weighted_mean")
    with pytest.raises(ValueError, match="statistic must be one of"):
        load_roi_values(tmp_path, "ketamine7", (), "mode")


def test_group_default_roi_statistic_falls_back_for_every_participant(tmp_path):
    """Without --roi-statistic the group level takes DEFAULT_ROI_STATISTIC while every table holds
    it; where one table lacks it (an older participant level, or no grey-matter weights:
    n/a throughout), the fallback for every participant, never a mix, and the reason names the
    table."""
    from bids_ketamine.config import DEFAULT_ROI_STATISTIC, ROI_STATISTIC_FALLBACK
    from bids_ketamine.group.roistats import load_roi_values

    assert (DEFAULT_ROI_STATISTIC, ROI_STATISTIC_FALLBACK) == ("roi_gm_weighted_median", "median")
    full = ROISTATS_COLUMNS + ["roi_gm_weighted_median"]
    _write_table(tmp_path, "01", "pre", full, 0.81)
    _write_table(tmp_path, "01", "post", full, 0.77)
    values, _, chosen = load_roi_values(tmp_path, "ketamine7")
    assert chosen == {"statistic": "roi_gm_weighted_median", "reason": "the default"}
    assert sorted(values["value"].round(6)) == [0.79, 0.83]
    for name, columns, value, why in (
            ("02", ROISTATS_COLUMNS, 0.8, "has no such column"),
            ("03", full, np.nan, "holds no value of it")):
        _write_table(tmp_path, name, "pre", columns, value)
        values, _, chosen = load_roi_values(tmp_path, "ketamine7")
        assert chosen["statistic"] == "median"
        assert f"sub-{name}_ses-pre_atlas-ketamine7_model-tensor_roistats.tsv {why}" in chosen["reason"]
        assert sorted(values.loc[values["participant_id"] == "01", "value"].round(6)) == [0.76, 0.8]
        (tmp_path / f"sub-{name}").rename(tmp_path / f"old-{name}")  # out of the study again
    values, _, chosen = load_roi_values(tmp_path, "ketamine7", (), "median")
    assert chosen == {"statistic": "median", "reason": "chosen with --roi-statistic"}


def test_weighted_median_closed_forms():
    from bids_ketamine.dwi.partial_volume import weighted_median

    values = np.array([3.0, 1.0, 2.0, 10.0, 0.5])
    assert weighted_median(values, np.ones(5)) == pytest.approx(np.median(values))
    # a value with zero weight does not count; weights 1, 1, 2 on 1, 2, 3: half of 4 is 2, which
    # lies half-way between the centres of 2 (1.5) and 3 (3.0) on the cumulative scale
    assert weighted_median([1.0, 2.0, 3.0, 100.0], [1, 1, 2, 0]) == pytest.approx(2 + (2 - 1.5) / 1.5)
    assert np.isnan(weighted_median([1.0], [0.0]))
