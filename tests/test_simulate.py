"""Tests of the trial simulator (bids_ketamine.simulate and bids-ketamine-simulate).

The expectations are independent of the simulator's own code paths: DIPY's tensor fit on
the written files (through the BIDS/FSL bvec convention, implemented here from its
definition), closed-form results (Rayleigh background, compounded MD changes, shifted
images), pybids and the BIDS validator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.config import KETAMINE7_ROIS, OFFLINE_TEMPLATE
from bids_ketamine.resources import get_template
from bids_ketamine.simulate import (
    load_template_anatomy,
    make_acquisition,
    simulate_session,
    simulate_trial,
    truth_map_paths,
)
from bids_ketamine.simulate.geometry import random_subject_transform
from bids_ketamine.simulate.motion import apply_motion
from bids_ketamine.simulate.trial import (
    OutcomeModel,
    TrialDesign,
    assign_arms,
    default_outcome_models,
    draw_participants,
)

#: Fewest grey-matter voxels (the truth.json definition) each ROI must have at 3 mm.
MIN_ROI_GM_VOXELS = 10

# ---------------------------------------------------------------------------------------
# The atlas: the app's ketamine7 atlas in the offline template space when it is packaged;
# until then, a stand-in (spheres at textbook MNI coordinates, intersected with GM).
_STANDIN_CENTRES = {
    "BA10_L": (-12, 62, 6), "BA10_R": (12, 62, 6), "amygdala_L": (-23, -5, -18),
    "amygdala_R": (23, -5, -18), "hippocampus_L": (-28, -24, -12),
    "hippocampus_R": (28, -24, -12), "vACC": (0, 32, -4),
}
_STANDIN_RADII = {"BA10_L": 14, "BA10_R": 14, "amygdala_L": 8, "amygdala_R": 8,
                  "hippocampus_L": 9, "hippocampus_R": 9, "vACC": 9}


def _packaged_atlas_available() -> bool:
    try:
        from bids_ketamine.atlas import get_atlas

        get_atlas("ketamine7", get_template(OFFLINE_TEMPLATE))
    except (ImportError, ValueError, FileNotFoundError):
        return False
    return True


def _standin_atlas(path: Path) -> Path:
    template = get_template(OFFLINE_TEMPLATE)
    img = nib.load(template.gm)
    gm = np.asarray(img.dataobj, dtype=np.float32)
    labels = np.zeros(gm.shape, np.uint8)
    inverse = np.linalg.inv(img.affine)
    for k, name in enumerate(KETAMINE7_ROIS, start=1):
        radius = _STANDIN_RADII[name]
        centre = inverse[:3, :3] @ np.array(_STANDIN_CENTRES[name], float) + inverse[:3, 3]
        low = np.floor(centre - radius - 1).astype(int)
        high = np.ceil(centre + radius + 2).astype(int)
        block = tuple(slice(a, b) for a, b in zip(low, high))
        ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), -1)
        inside = np.linalg.norm(ijk - centre, axis=-1) <= radius  # 1 mm voxels
        target = labels[block]
        target[inside & (gm[block] > 0.3) & (target == 0)] = k
    nib.Nifti1Image(labels, img.affine).to_filename(path)
    return path


@pytest.fixture(scope="session")
def atlas_kwargs(tmp_path_factory):
    """Keyword arguments selecting the atlas (empty: the app's own ketamine7 atlas)."""
    if _packaged_atlas_available():
        return {}
    path = _standin_atlas(tmp_path_factory.mktemp("atlas") / "standin_ketamine7.nii.gz")
    return {"atlas_image": path, "roi_names": KETAMINE7_ROIS}


@pytest.fixture(scope="session")
def anatomy(atlas_kwargs):
    return load_template_anatomy(**atlas_kwargs)


#: The noisy, moving 2-subject dataset of most tests (and of the determinism test).
NOISY_ARGS = dict(n_subjects=2, seed=11, preset="small", progress=False)


@pytest.fixture(scope="session")
def noisy_trial(tmp_path_factory, atlas_kwargs):
    return simulate_trial(tmp_path_factory.mktemp("noisy") / "bids", **NOISY_ARGS, **atlas_kwargs)


@pytest.fixture(scope="session")
def clean_trial(tmp_path_factory, atlas_kwargs):
    """Noise-free, motion-free, one subject, RAS storage with an oblique slab."""
    return simulate_trial(tmp_path_factory.mktemp("clean") / "bids", n_subjects=1, seed=5,
                          preset="small", progress=False, noise=False, motion_enabled=False,
                          orientation="RAS", oblique_deg=10.0, **atlas_kwargs)


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "sourcedata" / "simulation" / "truth.tsv", sep="\t")


def _read_dwi(root: Path, subject: str, session: str):
    stem = root / f"sub-{subject}" / f"ses-{session}" / "dwi" / f"sub-{subject}_ses-{session}_dwi"
    img = nib.load(f"{stem}.nii.gz")
    bvals = np.loadtxt(f"{stem}.bval")
    bvecs = np.loadtxt(f"{stem}.bvec").T  # file: 3 rows; here (n, 3)
    return img, bvals, bvecs


def _fsl_bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """BIDS/FSL bvecs (n, 3) to scanner axes: undo the x flip, then voxel axes to world."""
    vectors = np.array(bvecs, dtype=float)
    if np.linalg.det(affine[:3, :3]) > 0:
        vectors[:, 0] *= -1
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return vectors @ axes.T


def _fit_tensor(data, bvals, bvecs, mask):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    table = gradient_table(bvals, bvecs=np.asarray(bvecs))
    return TensorModel(table, fit_method="WLS").fit(np.asarray(data, float), mask=mask)


# ---------------------------------------------------------------------------------------
# Reproducibility


def test_same_seed_gives_identical_files(clean_trial, tmp_path, atlas_kwargs):
    again = simulate_trial(tmp_path / "again", n_subjects=1, seed=5, preset="small", progress=False,
                           noise=False, motion_enabled=False, orientation="RAS", oblique_deg=10.0,
                           **atlas_kwargs)
    first, second = _hashes(clean_trial), _hashes(again)
    assert len(first) > 20
    assert first == second


@pytest.mark.slow
def test_same_seed_gives_identical_files_with_noise_and_motion(noisy_trial, tmp_path, atlas_kwargs):
    again = simulate_trial(tmp_path / "again", **NOISY_ARGS, **atlas_kwargs)
    first, second = _hashes(noisy_trial), _hashes(again)
    assert len(first) > 40
    assert first == second


def test_different_seed_differs(noisy_trial, tmp_path, atlas_kwargs):
    other = simulate_trial(tmp_path / "other", n_subjects=1, seed=12, preset="small",
                           progress=False, motion_enabled=False, **atlas_kwargs)
    first, second = _hashes(noisy_trial), _hashes(other)
    for name in ("sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz", "sourcedata/simulation/truth.tsv",
                 "participants.tsv", "sub-01/sub-01_sessions.tsv",
                 "sourcedata/simulation/sub-01/ses-pre/sub-01_ses-pre_space-dwi_label-GM_probseg.nii.gz"):
        assert first[name] != second[name], name
    # The protocol is the same for every seed.
    bvec = "sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.bvec"
    assert first[bvec] == second[bvec]


# ---------------------------------------------------------------------------------------
# Imaging truth


def test_noise_free_tensor_fit_recovers_roi_md(clean_trial):
    truth = _truth(clean_trial)
    for session, column in (("pre", "md_baseline"), ("post", "md_followup")):
        img, bvals, bvecs = _read_dwi(clean_trial, "01", session)
        paths = truth_map_paths(clean_trial, "01", session)
        roi_gm = np.asarray(nib.load(paths["roi_gm"]).dataobj)
        fit = _fit_tensor(img.dataobj, bvals, bvecs, roi_gm > 0)
        md = fit.md * 1000.0  # um^2/ms
        for k, roi in enumerate(KETAMINE7_ROIS, start=1):
            voxels = roi_gm == k
            assert voxels.sum() >= MIN_ROI_GM_VOXELS, (roi, session, int(voxels.sum()))
            expected = truth.loc[truth.roi == roi, column].item()
            measured = md[voxels].mean()
            assert abs(measured / expected - 1) < 0.01, (roi, session, measured, expected)


def test_truth_maps_agree_with_truth_table(clean_trial):
    truth = _truth(clean_trial)
    paths = truth_map_paths(clean_trial, "01", "post")
    roi_gm = np.asarray(nib.load(paths["roi_gm"]).dataobj)
    gm_md = np.asarray(nib.load(paths["gm_md"]).dataobj)
    gm = np.asarray(nib.load(paths["gm"]).dataobj)
    wm = np.asarray(nib.load(paths["wm"]).dataobj)
    csf = np.asarray(nib.load(paths["csf"]).dataobj)
    assert np.all(gm + wm + csf <= 1 + 1e-6)
    definition = json.loads((clean_trial / "sourcedata/simulation/truth.json").read_text())["grey_matter_voxels"]
    kept = roi_gm > 0
    assert np.all(gm[kept] >= definition["min_gm_fraction"] - 1e-6)
    assert np.all(csf[kept] <= definition["max_csf_fraction"] + 1e-6)
    every_md = np.r_[truth["md_gm_outside_rois_followup"].iloc[0], truth["md_followup"].to_numpy()]
    for k, roi in enumerate(KETAMINE7_ROIS, start=1):
        inside = truth.loc[truth.roi == roi, "md_followup"].item()
        # At least 80 % of each voxel's GM is the ROI's; the rest has some other GM MD.
        bound = (1 - definition["min_roi_purity"]) * np.max(np.abs(every_md - inside))
        assert np.all(np.abs(gm_md[roi_gm == k] - inside) <= bound * (1 + 1e-4) + 1e-6), roi
        assert np.any(np.abs(gm_md[roi_gm == k] - inside) < 1e-4), roi  # some voxels are pure


def test_bvec_convention_oblique_ras(clean_trial):
    """Principal eigenvector from the written files matches the true WM direction."""
    img, bvals, bvecs = _read_dwi(clean_trial, "01", "pre")
    assert np.linalg.det(img.affine[:3, :3]) > 0  # RAS storage: FSL's x flip applies
    assert abs(img.affine[1, 2]) > 0.1  # oblique
    paths = truth_map_paths(clean_trial, "01", "pre")
    wm = np.asarray(nib.load(paths["wm"]).dataobj)
    direction = np.asarray(nib.load(paths["wm_direction"]).dataobj)
    pure = wm >= 1.0
    fit = _fit_tensor(img.dataobj, bvals, bvecs, pure)
    true = direction[pure]
    # Only directions where a sign error in x (or a wrong frame) would show.
    informative = (np.abs(true[:, 0]) > 0.3) & (np.abs(true[:, 0]) < 0.95)
    assert informative.sum() > 100
    estimated = _fsl_bvecs_to_world(fit.evecs[pure][:, :, 0], img.affine)
    dots = np.abs(np.sum(estimated * true, axis=1))[informative]
    assert np.median(dots) > 0.99
    assert np.percentile(dots, 5) > 0.95
    # The same vectors read without the x flip point elsewhere: the test can fail.
    axes = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    no_flip = fit.evecs[pure][:, :, 0] @ axes.T
    assert np.median(np.abs(np.sum(no_flip * true, axis=1))[informative]) < 0.95


def test_bvec_convention_las_with_subject_transform(anatomy):
    acquisition = make_acquisition("small", orientation="LAS")
    assert np.linalg.det(acquisition.affine[:3, :3]) < 0
    rng = np.random.default_rng(3)
    transform = random_subject_transform(rng, anatomy.brain_centre)
    result = simulate_session(anatomy, acquisition, subject_transform=transform)
    pure = result.anatomy.fractions["wm"] >= 1.0
    fit = _fit_tensor(result.data, result.bvals, result.bvecs, pure)
    true = result.anatomy.wm_direction[pure]
    estimated = _fsl_bvecs_to_world(fit.evecs[pure][:, :, 0], result.affine)
    informative = (np.abs(true[:, 0]) > 0.3) & (np.abs(true[:, 0]) < 0.95)
    dots = np.abs(np.sum(estimated * true, axis=1))[informative]
    assert np.median(dots) > 0.99
    # Plausible anatomy: the white-matter tensor is anisotropic (FA about 0.66 for 1.4/0.35).
    assert 0.55 < np.median(fit.fa[pure]) < 0.75


def test_rician_background_matches_snr(noisy_trial):
    """Outside the head the magnitude is Rayleigh: mean = sigma * sqrt(pi / 2)."""
    img, bvals, _ = _read_dwi(noisy_trial, "01", "pre")
    paths = truth_map_paths(noisy_trial, "01", "pre")
    transforms = json.loads(paths["transforms"].read_text())
    truth = json.loads((noisy_trial / "sourcedata/simulation/truth.json").read_text())
    gain = transforms["receiver_gain"]
    sigma = truth["tissue"]["s0_gm"] * gain / truth["noise"]["snr"]
    assert truth["noise"]["snr"] == 50.0
    corner = np.asarray(img.dataobj[:8, :8, :8, :], dtype=float)
    estimated = corner.mean() / np.sqrt(np.pi / 2)
    assert abs(estimated / sigma - 1) < 0.05


def test_motion_is_written_into_the_images(noisy_trial):
    paths = truth_map_paths(noisy_trial, "01", "pre")
    motion = pd.read_csv(paths["motion"], sep="\t")
    assert list(motion.columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    assert len(motion) == 36
    assert 0.05 < motion.to_numpy().std() < 1.0
    # bvecs are the protocol's, not rotated per volume: both sessions share them.
    _, _, pre = _read_dwi(noisy_trial, "01", "pre")
    _, _, post = _read_dwi(noisy_trial, "01", "post")
    np.testing.assert_array_equal(pre, post)


def test_apply_motion_shifts_by_whole_voxels():
    rng = np.random.default_rng(0)
    image = np.zeros((12, 12, 12))
    image[3:9, 3:9, 3:9] = rng.uniform(1, 2, (6, 6, 6))
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS, 2 mm
    motion = np.eye(4)
    motion[0, 3] = 4.0  # 4 mm to the left (world +x) = 2 voxels towards lower i
    moved = apply_motion(image, affine, motion, order=1)
    np.testing.assert_allclose(moved, np.roll(image, -2, axis=0), atol=1e-10)


def test_exact_motion_sampling_moves_the_head_like_resampling(anatomy):
    """``motion_sampling="exact"`` samples the anatomy where the moved head is instead of
    resampling the static head's image.  For a translation of whole voxels the two agree (a cubic
    B-spline is exact at grid points), which checks the direction of the motion.  For a rotation
    of 20 degrees about z the diffusion-weighted images agree (r 0.983-0.987) only if the exact
    mode turns the fibres with the head (with them turned twice: r 0.88).  Half a voxel keeps the
    exact b=0's total signal, the head's, within 0.01 % (resampled: +0.36 %)."""
    import dataclasses

    acquisition = make_acquisition("small")
    keep = np.r_[0, np.flatnonzero(acquisition.bvals > 0)[:4]]  # a b=0 and four directions
    acquisition = dataclasses.replace(acquisition, bvals=acquisition.bvals[keep],
                                      gradients=acquisition.gradients[keep])
    voxel_mm = np.linalg.norm(acquisition.affine[:3, :3], axis=0)

    def volumes(motion_row, mode):
        motion = np.tile(np.asarray(motion_row, dtype=float), (len(keep), 1))
        return simulate_session(anatomy, acquisition, motion=motion, motion_sampling=mode).data.astype(float)

    two_voxels, turn, half_voxel = ([2 * voxel_mm[0], 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 20.0],
                                    [voxel_mm[0] / 2, 0, 0, 0, 0, 0])
    exact, resampled = volumes(two_voxels, "exact"), volumes(two_voxels, "resample")
    brain = resampled[..., 0] > 100
    assert np.median(np.abs(exact - resampled)[brain]) <= 1.0  # int16 rounding
    exact, resampled = volumes(turn, "exact"), volumes(turn, "resample")
    brain = resampled[..., 0] > 100
    r = [np.corrcoef(exact[..., v][brain], resampled[..., v][brain])[0, 1] for v in range(1, len(keep))]
    assert min(r) > 0.97, r
    static = volumes([0] * 6, "exact")[..., 0].sum()
    assert abs(volumes(half_voxel, "exact")[..., 0].sum() / static - 1) < 1e-3
    with pytest.raises(ValueError, match="motion_sampling"):
        simulate_session(anatomy, acquisition, motion_sampling="nearest")


# ---------------------------------------------------------------------------------------
# Clinical design and model


def test_arm_ratio_exact_and_reproducible():
    arms = assign_arms(30, (2, 1), seed=4)
    assert arms.count("ketamine") == 20 and arms.count("saline") == 10
    assert arms == assign_arms(30, (2, 1), seed=4)
    assert arms != assign_arms(30, (2, 1), seed=5)
    balanced = assign_arms(10, (1, 1), seed=4)
    assert balanced.count("ketamine") == 5


def test_scores_clipped_to_scale_range():
    extreme = (
        OutcomeModel("madrs", 60, 31, 6, intercept=-200, treatment=0, noise_sd=1),
        OutcomeModel("qids_sr", 27, 17, 4, intercept=200, treatment=0, noise_sd=1),
    )
    people = draw_participants(TrialDesign(n_subjects=12, seed=1), KETAMINE7_ROIS, extreme)
    assert all(p.scores["madrs"][1] == 0 for p in people)
    assert all(p.scores["qids_sr"][1] == 27 for p in people)
    assert all(p.latent_changes["madrs"][0] < -100 for p in people)


def test_sessions_table_and_participants(noisy_trial):
    participants = pd.read_csv(noisy_trial / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "group", "age", "sex"]
    assert set(participants.group) <= {"ketamine", "saline"}
    truth = _truth(noisy_trial)
    for _, row in participants.iterrows():
        label = row.participant_id
        sessions = pd.read_csv(noisy_trial / label / f"{label}_sessions.tsv", sep="\t")
        assert list(sessions.columns) == ["session_id", "acq_time", "madrs", "qids_sr"]
        assert list(sessions.session_id) == ["ses-pre", "ses-post"]
        times = [dt.datetime.fromisoformat(t) for t in sessions.acq_time]
        assert times[1] - times[0] == dt.timedelta(hours=24)
        assert sessions.madrs.between(0, 60).all() and sessions.qids_sr.between(0, 27).all()
        assert pd.api.types.is_integer_dtype(sessions.madrs)
        mine = truth[truth.participant_id == label]
        assert set(mine.group) == {row.group}
        assert (mine.madrs_change == sessions.madrs[1] - sessions.madrs[0]).all()


def test_repeated_visits_accumulate(tmp_path, atlas_kwargs):
    root = simulate_trial(tmp_path / "visits", n_subjects=3, seed=2, progress=False, images=False,
                          sessions=("pre", "inf1", "inf2", "inf3"), md_change_ketamine=(-3.0, 0.0),
                          md_change_saline=(0.0, 0.0), arm_ratio=(1, 0), visit_interval_hours=72,
                          **atlas_kwargs)
    truth = _truth(root)
    assert set(truth.session_id) == {"ses-inf1", "ses-inf2", "ses-inf3"}
    for k, session in enumerate(("ses-inf1", "ses-inf2", "ses-inf3"), start=1):
        expected = 100 * (0.97**k - 1)
        np.testing.assert_allclose(truth.loc[truth.session_id == session, "md_change_pct"], expected,
                                   rtol=1e-6)
    sessions = pd.read_csv(root / "sub-01" / "sub-01_sessions.tsv", sep="\t")
    times = [dt.datetime.fromisoformat(t) for t in sessions.acq_time]
    assert all(b - a == dt.timedelta(hours=72) for a, b in zip(times, times[1:]))


def test_null_has_no_imaging_change_or_relation(tmp_path, atlas_kwargs):
    root = simulate_trial(tmp_path / "null", n_subjects=9, seed=3, progress=False, images=False,
                          null=True, **atlas_kwargs)
    truth = _truth(root)
    assert (truth.md_change == 0).all() and (truth.md_followup == truth.md_baseline).all()
    model = json.loads((root / "sourcedata/simulation/truth.json").read_text())
    assert model["md_model"]["null"] is True
    for outcome in model["outcome_model"]["outcomes"].values():
        assert outcome["md"] and all(v == 0 for v in outcome["md"].values())
        assert outcome["interaction"] and all(v == 0 for v in outcome["interaction"].values())
    # Without --null the same seed has both.
    assert any(v != 0 for v in default_outcome_models(False)[0].interaction.values())


def test_truth_json_records_everything(noisy_trial):
    truth = json.loads((noisy_trial / "sourcedata/simulation/truth.json").read_text())
    assert truth["seed"] == 11
    assert truth["generator"]["name"] == "bids-ketamine-simulate"
    assert truth["anatomy"]["roi_names"] == list(KETAMINE7_ROIS)
    assert truth["preset"]["voxel_size_mm"] == 3.0 and truth["preset"]["n_directions"] == 30
    assert truth["acquisition"]["b0_volumes"] == [0, 6, 12, 18, 24, 30]
    assert {"madrs", "qids_sr"} == set(truth["outcome_model"]["outcomes"])
    assert "min_gm_fraction" in truth["grey_matter_voxels"]


# ---------------------------------------------------------------------------------------
# BIDS


def test_bids_valid(noisy_trial):
    from bids import BIDSLayout
    from bids_validator import BIDSValidator

    validator = BIDSValidator()
    files = [p for p in noisy_trial.rglob("*") if p.is_file()
             and p.relative_to(noisy_trial).parts[0] != "sourcedata"]
    assert files
    for path in files:
        assert validator.is_bids("/" + str(path.relative_to(noisy_trial))), path
    layout = BIDSLayout(noisy_trial, validate=True)
    assert layout.get_subjects() == ["01", "02"]
    assert layout.get_sessions() == ["post", "pre"]
    dwis = layout.get(suffix="dwi", extension=".nii.gz")
    assert len(dwis) == 4
    metadata = dwis[0].get_metadata()
    for key in ("PhaseEncodingDirection", "TotalReadoutTime", "EchoTime", "RepetitionTime"):
        assert key in metadata
    img = nib.load(dwis[0].path)
    assert img.shape == (72, 84, 62, 36) and img.get_data_dtype() == np.int16
    assert np.allclose(img.header.get_zooms()[:3], 3.0)


# ---------------------------------------------------------------------------------------
# Command line


def test_cli_errors_are_one_line(tmp_path, capsys):
    from bids_ketamine.cli.simulate import main

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    cases = [
        ([str(occupied), "--n-subjects", "1", "--no-images"], "not empty"),
        ([str(tmp_path / "a"), "--snr", "-5"], "--snr"),
        ([str(tmp_path / "b"), "--arm-ratio", "two"], "ratio"),
        ([str(tmp_path / "c"), "--n-subjects", "0"], "must be 1 or more"),
        ([str(tmp_path / "d"), "--md-change-ketamine", "-3", "-1"], "SD must be >= 0"),
        ([str(tmp_path / "e"), "--sessions", "pre"], "at least two"),
        ([str(occupied), "--overwrite", "--no-images"], "refusing"),  # not a simulation
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("bids-ketamine-simulate: error:"), err
        assert message in err and "Traceback" not in err, err
    assert (occupied / "notes.txt").read_text() == "keep me"


def test_cli_overwrites_previous_simulation(tmp_path, atlas_kwargs, capsys):
    from bids_ketamine.cli.simulate import main

    extra = ["--atlas-image", str(atlas_kwargs["atlas_image"])] if atlas_kwargs else []
    out = tmp_path / "sim"
    assert main([str(out), "--n-subjects", "4", "--no-images", "--quiet"] + extra) == 0
    assert len(pd.read_csv(out / "participants.tsv", sep="\t")) == 4
    with pytest.raises(SystemExit):
        main([str(out), "--n-subjects", "3", "--no-images", "--quiet"] + extra)
    capsys.readouterr()
    assert main([str(out), "--n-subjects", "3", "--no-images", "--quiet", "--overwrite"] + extra) == 0
    assert len(pd.read_csv(out / "participants.tsv", sep="\t")) == 3
