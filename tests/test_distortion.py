"""The simulator's susceptibility distortion (issue 19): the EPI forward model against closed
forms, and ``--distortion``/``--reverse-pe`` changing nothing but what they add."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bids_ketamine.simulate.distortion import Distortion, distort, susceptibility_field


def _line_image():
    image = np.zeros((6, 48, 4))
    image[:, 12:36, :] = 2.0 + np.sin(np.arange(24) / 3.0)[None, :, None]
    return image


def test_constant_field_shifts_by_field_times_readout_time():
    image = _line_image()
    # 100 Hz x 0.03 s = 3 voxels along j; the polarity decides the direction
    forward = distort(image, np.full(image.shape, 100.0), Distortion(100.0, 0.03, axis=1, sign=1))
    backward = distort(image, np.full(image.shape, 100.0), Distortion(100.0, 0.03, axis=1, sign=-1))
    np.testing.assert_allclose(forward[:, 15:39], image[:, 12:36], atol=1e-12)
    np.testing.assert_allclose(backward[:, 9:33], image[:, 12:36], atol=1e-12)


def test_linear_field_stretches_and_keeps_the_signal():
    """d(x) = a x: the line is stretched by 1 + a and dimmed by 1 / (1 + a); its sum is kept."""
    image = _line_image()
    slope = 0.2  # voxels of displacement per voxel
    field = np.broadcast_to((np.arange(48.0) * slope / 0.05)[None, :, None], image.shape)
    out = distort(image, field, Distortion(1.0, 0.05, axis=1, sign=1))
    np.testing.assert_allclose(out.sum(axis=1), image.sum(axis=1), rtol=0.01)
    y = np.arange(48.0)
    expected = np.interp(y / (1 + slope), y, image[0, :, 0]) / (1 + slope)
    np.testing.assert_allclose(out[0, 5:40, 0], expected[5:40], atol=0.02)


def test_folding_field_is_refused():
    image = _line_image()
    field = np.broadcast_to((np.arange(48.0) * -30.0)[None, :, None], image.shape)  # d' = -1.5
    with pytest.raises(ValueError, match="folds the image"):
        distort(image, field, Distortion(1.0, 0.05, axis=1, sign=1))


def test_field_peaks_at_the_sources():
    assert susceptibility_field(np.array([0.0, 64.0, -20.0]), 100.0) == pytest.approx(100.0, abs=0.1)
    assert susceptibility_field(np.array([0.0, -40.0, 40.0]), 100.0) < 1e-6  # parietal: none


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_distortion_options_change_only_what_they_add(tmp_path):
    import json

    import nibabel as nib

    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.study import truth_map_paths

    plain = _digests(simulate_trial(tmp_path / "plain", n_subjects=1, seed=3, preset="demo", progress=False))
    root = simulate_trial(tmp_path / "distorted", n_subjects=1, seed=3, preset="demo", progress=False,
                          distortion_hz=60.0, reverse_pe=True, gre_fieldmap=True)
    distorted = _digests(root)
    changed = sorted(name for name in plain if distorted[name] != plain[name])
    assert changed == ["sub-01/ses-post/dwi/sub-01_ses-post_dwi.nii.gz",
                       "sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]
    added = sorted(set(distorted) - set(plain))
    # per session: the field's truth, the epi image and its sidecar, phasediff and magnitude1 with theirs
    assert len(added) == 14
    gre = json.loads((root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_phasediff.json").read_text())
    assert (gre["EchoTime1"], gre["EchoTime2"]) == (0.00492, 0.00738)
    assert gre["IntendedFor"] == ["ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]
    phase = nib.load(root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_phasediff.nii.gz")
    dwi = nib.load(root / "sub-01" / "ses-pre" / "dwi" / "sub-01_ses-pre_dwi.nii.gz")
    assert nib.aff2axcodes(phase.affine)[0] != nib.aff2axcodes(dwi.affine)[0]  # stored the other way
    assert np.abs(phase.get_fdata()).max() <= np.pi
    sidecar = json.loads((root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_dir-PA_epi.json").read_text())
    dwi_sidecar = json.loads((root / "sub-01" / "ses-pre" / "dwi" / "sub-01_ses-pre_dwi.json").read_text())
    assert (dwi_sidecar["PhaseEncodingDirection"], sidecar["PhaseEncodingDirection"]) == ("j-", "j")
    assert sidecar["IntendedFor"] == ["ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]
    assert sidecar["TotalReadoutTime"] == dwi_sidecar["TotalReadoutTime"]
    n_b0 = int((np.loadtxt(root / "sub-01" / "ses-pre" / "dwi" / "sub-01_ses-pre_dwi.bval") <= 50).sum())
    assert nib.load(root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_dir-PA_epi.nii.gz").shape[3] == n_b0
    field = nib.load(truth_map_paths(root, "01", "pre")["fieldmap"]).get_fdata()
    assert 20.0 < field.max() <= 60.0
    # the field follows the head: the two sessions' heads are placed differently
    field_post = nib.load(truth_map_paths(root, "01", "post")["fieldmap"]).get_fdata()
    assert np.abs(field - field_post).max() > 1.0


def test_unwarp_inverts_the_forward_model():
    """dwi/sdc.py's correction with the true field undoes the simulator's distortion (an
    independent implementation of the same physics: forward by line inversion, backward by
    sampling), Jacobian included; the uncorrected image is off by a quarter of its range."""
    from scipy import ndimage

    from bids_ketamine.dwi.sdc import unwarp

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((12, 48, 6)), 2.0) * 100
    field = np.broadcast_to(30.0 * np.exp(-0.5 * ((np.arange(48.0) - 24) / 5.0) ** 2)[None, :, None], image.shape)
    for sign in (1, -1):
        distorted = distort(image, field, Distortion(30.0, 0.05, axis=1, sign=sign))
        corrected = unwarp(distorted, field, axis=1, sign=sign, total_readout_time=0.05)
        inner = (slice(None), slice(6, 42))
        assert np.abs(distorted - image)[inner].max() > 0.2 * image.max()
        assert np.abs(corrected - image)[inner].max() < 0.01 * image.max()
    stacked = unwarp(np.stack([distorted, 2 * distorted], -1), field, axis=1, sign=-1, total_readout_time=0.05)
    np.testing.assert_allclose(stacked[..., 1], 2 * stacked[..., 0], rtol=1e-6)


@pytest.mark.parametrize("direction, codes, expected", [
    ("j-", ("R", "A", "S"), (1, -1)), ("j-", ("L", "A", "S"), (1, -1)), ("i", ("L", "A", "S"), (0, -1)),
    ("i-", ("L", "P", "S"), (0, 1)), ("j", ("L", "P", "S"), (1, -1)), ("k", ("A", "S", "R"), (0, 1)),
    ("i", ("A", "S", "R"), (1, 1)), ("j-", ("P", "I", "L"), (2, 1)),
])
def test_phase_encoding_in_ras_voxel_order(direction, codes, expected):
    """The axis and polarity after reorienting to RAS+, against the axis codes read by hand:
    the stored axis becomes the RAS axis its code names, and a P/I/L code flips the polarity."""
    import nibabel as nib

    from bids_ketamine.dwi.sdc import ras_phase_encoding

    columns = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for stored_axis, code in enumerate(codes):
        ras_axis, sign = columns[code]
        affine[ras_axis, stored_axis] = 2.0 * sign
    assert nib.aff2axcodes(affine) == codes
    assert ras_phase_encoding(direction, affine) == expected


def _epi_dataset(root: Path, *, dwi_meta: dict, epi_meta: dict, intended: bool = True):
    """A header-only DWI series and one fmap/*_epi image with the given sidecars."""
    from header_series import fmap_image, header_only_series, with_sidecar

    series = with_sidecar(header_only_series(root, "pre"), dwi_meta)
    epi_meta = dict(epi_meta)
    angle = np.radians(epi_meta.pop("rotate", 0.0))  # a field of view rotated about the x axis
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.diag([3.0, 3, 3, 1])
    affine[:3, :3] = rotation @ affine[:3, :3]
    meta = dict(epi_meta, **({"IntendedFor": ["ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]} if intended else {}))
    fmap_image(root, "pre", "dir-PA_epi", meta, n_volumes=2, affine=affine)
    return series


@pytest.mark.parametrize("case, epi_meta, dwi_meta, message", [
    ("opposite", {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05}, None, None),
    ("by B0FieldSource", {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05, "B0FieldIdentifier": "pe"},
     {"B0FieldSource": "pe"}, None),
    ("same polarity", {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}, None, "not opposite"),
    ("other axis", {"PhaseEncodingDirection": "i", "TotalReadoutTime": 0.05}, None, "not opposite"),
    ("other readout", {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.08}, None, "TotalReadoutTime 0.08"),
    ("no readout in the DWI", {"PhaseEncodingDirection": "j"}, {"TotalReadoutTime": None}, "add PhaseEncoding"),
    ("direction not BIDS", {"PhaseEncodingDirection": "A>>P", "TotalReadoutTime": 0.05}, None, "fix its sidecar"),
    ("rotated field of view", {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05, "rotate": 16}, None,
     "16 degrees"),
])
def test_fieldmap_plan_from_the_sidecars(tmp_path, caplog, case, epi_meta, dwi_meta, message):
    """The preflight's choice (cli/preflight.py::plan_fieldmaps): PEPOLAR when an epi image meant
    for the DWI (IntendedFor, or B0FieldIdentifier = the DWI's B0FieldSource) has the opposite
    polarity on the same axis and the same readout time; otherwise no correction, and a warning
    that names the file and the fix.  --ignore fieldmaps plans nothing."""
    import logging

    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config

    meta = {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05, **(dwi_meta or {})}
    meta = {k: v for k, v in meta.items() if v is not None}
    series = _epi_dataset(tmp_path / "bids", dwi_meta=meta, epi_meta=epi_meta,
                          intended="B0FieldSource" not in meta)
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant")
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    plan = plan_fieldmaps(config, {"01": [series]})["01"][0].fieldmap
    unused = [r.getMessage() for r in caplog.records if "not used by any DWI series" in r.getMessage()]
    if message is None:
        assert plan is not None and plan.method == "pepolar"
        assert (plan.axis, plan.sign, plan.total_readout_time) == (1, -1, 0.05)
        assert [Path(p).name for p in plan.reference_files] == ["sub-01_ses-pre_dir-PA_epi.nii.gz"]
        assert unused == []
        assert "sub-01_ses-pre: susceptibility distortion corrected from PEPOLAR (reverse phase-encoded b=0) " \
               "(sub-01_ses-pre_dir-PA_epi.nii.gz)" in [r.getMessage() for r in caplog.records]
        ignored = config.replace(ignore=("fieldmaps",))
        assert plan_fieldmaps(ignored, {"01": [series]})["01"][0].fieldmap is None
    else:
        assert plan is None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(message in text and "epi" in text for text in warnings), warnings
        assert len(unused) == 1 and "ses-pre/fmap/sub-01_ses-pre_dir-PA_epi.nii.gz" in unused[0], unused


@pytest.mark.parametrize("intended", [False, True])
def test_field_maps_meant_for_no_series_are_logged_unused(tmp_path, caplog, intended):
    """A GRE field map without IntendedFor or B0FieldIdentifier corrects nothing, and the
    preflight says so once, naming the images and what would make them used; one meant for
    the series is used, its second magnitude image included."""
    import logging

    from header_series import fmap_image, header_only_series, with_sidecar

    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config

    root = tmp_path / "bids"
    series = with_sidecar(header_only_series(root, "pre"), {"PhaseEncodingDirection": "j-",
                                                            "TotalReadoutTime": 0.05})
    meta = {"EchoTime1": 0.004, "EchoTime2": 0.006}
    if intended:
        meta["IntendedFor"] = "ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"
    for suffix in ("magnitude1", "magnitude2", "phasediff"):
        fmap_image(root, "pre", suffix, meta)
    config = Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant")
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    plan = plan_fieldmaps(config, {"01": [series]})["01"][0].fieldmap
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    if intended:
        assert plan is not None and plan.method == "phasediff"
        assert lines == []
        return
    assert plan is None
    assert lines == ["sub-01: field-map images not used by any DWI series: "
                     "ses-pre/fmap/sub-01_ses-pre_magnitude1.nii.gz, ses-pre/fmap/sub-01_ses-pre_magnitude2.nii.gz, "
                     "ses-pre/fmap/sub-01_ses-pre_phasediff.nii.gz "
                     "(an image is used when its IntendedFor names the DWI, or its B0FieldIdentifier is "
                     "the DWI's B0FieldSource)"]


@pytest.fixture(scope="module")
def corrected_run(tmp_path_factory):
    """One simulated participant (small preset, 3 mm, seed 5), distorted by a 100 Hz field
    (up to 4.6 voxels in grey matter) with a reverse phase-encoded b=0 per session, through the
    participant level (DWI-only path, PEPOLAR correction)."""
    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    from bids_ketamine.simulate import simulate_trial
    from participant_runs import run_participant

    root = tmp_path_factory.mktemp("sdc")
    bids = simulate_trial(root / "bids", n_subjects=1, seed=5, preset="small", progress=False,
                          distortion_hz=100.0, reverse_pe=True)
    run_participant(bids, root / "out", root / "work")
    return bids, root / "out"


@pytest.mark.slow
@pytest.mark.parametrize("session", ["pre", "post"])
def test_pepolar_field_recovers_the_simulated_field(corrected_run, session):
    """The written field (fmap/*_desc-preproc_fieldmap) against the simulator's true field, inside
    the true brain.  Measured 2026-12-05 (seed 5, pre / post, dwi/sdc.py PEPOLAR_SETTINGS): r
    0.880 / 0.889, median displacement error 0.007 / 0.007 voxel over the brain (most of it has
    little field), 0.61 / 0.49 voxel where the true displacement exceeds 1 voxel (3 % of the
    brain, next to the sources: SyN's regularisation smooths the steepest part of the field).  The
    settings before gave r 0.86 / 0.78, 0.012 / 0.015 and 0.77 / 0.55 voxel."""
    import json

    import nibabel as nib

    from bids_ketamine.simulate.study import truth_map_paths

    bids, out = corrected_run
    truth_paths = truth_map_paths(bids, "01", session)
    true_img = nib.as_closest_canonical(nib.load(truth_paths["fieldmap"]))
    brain = sum(nib.as_closest_canonical(nib.load(truth_paths[t])).get_fdata() for t in ("gm", "wm", "csf")) > 0.5
    stem = out / "sub-01" / f"ses-{session}" / "fmap" / f"sub-01_ses-{session}_desc-preproc_fieldmap"
    field_img = nib.load(f"{stem}.nii.gz")
    np.testing.assert_allclose(field_img.affine, true_img.affine, atol=1e-4)
    field, true_field = field_img.get_fdata(), true_img.get_fdata()
    sidecar = json.loads(Path(f"{stem}.json").read_text())
    readout = sidecar["TotalReadoutTime"]
    assert (sidecar["Units"], sidecar["Method"], sidecar["PhaseEncodingDirection"]) == ("Hz", "pepolar", "j-")
    error_voxels = np.abs(field - true_field)[brain] * readout
    large = np.abs(true_field[brain]) * readout > 1.0
    r = np.corrcoef(field[brain], true_field[brain])[0, 1]
    print(f"ses-{session}: r {r:.3f}; median displacement error {np.median(error_voxels):.3f} voxel, "
          f"{np.median(error_voxels[large]):.2f} where |d| > 1")
    assert r > 0.8
    assert np.median(error_voxels) <= 0.5  # issue 19's limit
    assert np.median(error_voxels[large]) < 0.9


@pytest.mark.slow
def test_corrected_roi_md_within_3_percent_of_truth(corrected_run):
    """With the correction, every ROI's MD at both sessions is within 3 % of the simulation's
    truth (issue 19; measured 2026-12-05: largest 2.64 % (BA10_R, pre), 2.23 % at post; without the
    correction 3.5 % when last measured, 2026-12-04).  The methods text names the correction."""
    import pandas as pd

    bids, out = corrected_run
    truth = pd.read_csv(bids / "sourcedata" / "simulation" / "truth.tsv", sep="\t").set_index("roi")
    for session, column in (("pre", "md_baseline"), ("post", "md_followup")):
        table = pd.read_csv(out / "sub-01" / f"ses-{session}" / "dwi" /
                            f"sub-01_ses-{session}_atlas-ketamine7_model-tensor_roistats.tsv", sep="\t")
        measured = table[table["param"] == "md"].set_index("roi")["median"]
        relative = (measured / truth[column] - 1).dropna()
        print(session, relative.round(4).to_dict())
        assert len(relative) == 7 and relative.abs().max() < 0.03
    assert "reverse phase-encoded" in (out / "sub-01" / "log" / "methods.md").read_text()


def test_opposite_dwi_runs_of_a_session_correct_each_other(tmp_path):
    """Without fmap/*_epi, the session's DWI runs phase-encoded the other way are the references
    (their b=0 volumes: the .bval goes with them); a run of the same polarity is passed over
    silently, and a series of another session is never used."""
    from header_series import header_only_series, with_sidecar

    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config

    def series(session, encoding, **entities):
        return with_sidecar(header_only_series(tmp_path / "bids", session, **entities),
                            {"PhaseEncodingDirection": encoding, "TotalReadoutTime": 0.05})

    ap, pa = series("pre", "j-", direction="AP"), series("pre", "j", direction="PA")
    tilted = series("pre", "j-", acquisition="tilted", direction="AP")
    other_session = series("post", "j", direction="PA")
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant")
    everything = {"01": [ap, pa, tilted, other_session]}
    planned = {item.dwi.name: item.fieldmap for item in plan_fieldmaps(config, everything)["01"]}
    assert planned["sub-01_ses-pre_dir-AP_dwi.nii.gz"].reference_files == (str(pa.dwi),)
    assert planned["sub-01_ses-pre_dir-AP_dwi.nii.gz"].reference_bvals == (str(pa.bval),)
    assert planned["sub-01_ses-pre_dir-PA_dwi.nii.gz"].reference_files == (str(ap.dwi), str(tilted.dwi))
    assert planned["sub-01_ses-pre_dir-PA_dwi.nii.gz"].sign == 1
    assert planned["sub-01_ses-post_dir-PA_dwi.nii.gz"] is None
    # a reverse run set aside by the preflight (found, not usable) still serves as a reference
    only_ap = plan_fieldmaps(config, {"01": [ap]}, {"01": [ap, pa]})["01"][0].fieldmap
    assert only_ap.reference_files == (str(pa.dwi),)


def test_motion_and_distortion_resampled_once_beat_two_interpolations():
    """Head motion and EPI distortion corrected in one resampling (motion estimated on the
    unwarped copy) come closer to the undistorted, unmoved head than unwarping first and then
    resampling the unwarped series for motion.  The truth is analytic (Gaussian blobs evaluated
    at the moved positions), the distortion the simulator's forward model."""
    from bids_ketamine.dwi.motion import correct_motion
    from bids_ketamine.dwi.rigid import params_to_matrix
    from bids_ketamine.dwi.sdc import DisplacementField, unwarp

    shape, voxel = (28, 36, 20), 2.0
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (np.array(shape) - 1) / 2
    rng = np.random.default_rng(4)
    centres = rng.uniform(-14, 14, size=(40, 3)) * [1.0, 1.3, 0.8]
    widths, heights = rng.uniform(3.0, 5.0, 40), rng.uniform(50, 100, 40)

    def head(transform):
        """The analytic head seen through a reference-to-volume world transform."""
        grid = np.indices(shape, dtype=float).reshape(3, -1)
        world = affine[:3, :3] @ grid + affine[:3, 3:4]
        # a voxel at world x of the moved volume shows the head at transform^-1 x
        inverse = np.linalg.inv(transform)
        points = (inverse[:3, :3] @ world + inverse[:3, 3:4]).T
        sq = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
        return (heights * np.exp(-0.5 * sq / widths ** 2)).sum(-1).reshape(shape) + 20.0

    moves = [(0, 0, 0, 0, 0, 0), (1.2, -0.8, 0.5, 0.03, -0.02, 0.04), (-0.9, 1.1, -0.6, -0.04, 0.03, -0.02),
             (0.6, 0.4, 1.0, 0.02, 0.04, 0.03)]
    transforms = [params_to_matrix(m) for m in moves]
    y = np.arange(shape[1], dtype=float)
    field = np.broadcast_to((40.0 * np.exp(-0.5 * ((y - 20) / 6.0) ** 2))[None, :, None], shape).copy()
    encoding = Distortion(40.0, 0.05, axis=1, sign=1)
    series = np.stack([distort(head(t), field, encoding) for t in transforms], axis=-1)
    bvals, bvecs = np.zeros(len(moves)), np.zeros((len(moves), 3))
    unwarped = unwarp(series, field, axis=1, sign=1, total_readout_time=0.05)
    options = dict(mask=np.ones(shape, bool), bvec_convention="voxel")
    chained = correct_motion(unwarped, affine, bvals, bvecs, **options)
    composed = correct_motion(unwarped, affine, bvals, bvecs, distorted=series,
                              distortion=DisplacementField.from_field(field, axis=1, sign=1, total_readout_time=0.05),
                              **options)
    np.testing.assert_allclose(composed.transforms, chained.transforms)  # same estimate, other resampling
    # the output shows the head at the series' mean pose, where the first volume's transform
    # (truly the identity) puts it
    truth = head(np.linalg.inv(composed.transforms[0]))
    inner = (slice(4, -4), slice(6, -6), slice(4, -4))
    errors = {name: np.sqrt(np.mean((result.data[..., 1:] - truth[..., None])[inner] ** 2))
              for name, result in (("chained", chained), ("composed", composed))}
    print({k: round(float(v), 3) for k, v in errors.items()}, "signal SD", round(float(truth[inner].std()), 2))
    assert errors["composed"] < 0.8 * errors["chained"], errors
    with pytest.raises(ValueError, match="both"):
        correct_motion(unwarped, affine, bvals, bvecs, distorted=series, **options)
