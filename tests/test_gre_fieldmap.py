"""GRE field maps (issue 19): the field from wrapped phase against closed forms, the preflight's
choice from the sidecars, the simulator's field map against its true field, and the field-map
and PEPOLAR estimates of real philips-elition against each other."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED
from scipy import ndimage

from bids_ketamine.dwi import gre_fieldmap

DELTA_TE = 0.00246  # s: the phase wraps beyond +-203 Hz


def _ellipsoid(shape):
    index = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.4
    return (((index - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1


def _gaussian_field(shape, sigmas, smoothing=0.0):
    """350 Hz at a Gaussian peak (SDs ``sigmas``, voxels) plus a gradient; ``smoothing``: the same
    convolved with a Gaussian of that SD (closed form: the variances add)."""
    index = np.indices(shape, dtype=float)
    centre = (22.0, 26.0, 15.0)
    variances = [s**2 + smoothing**2 for s in sigmas]
    scale = np.prod([s / np.sqrt(v) for s, v in zip(sigmas, variances)])
    exponent = sum((index[k] - centre[k]) ** 2 / variances[k] for k in range(3))
    return 350.0 * scale * np.exp(-0.5 * exponent) + 2.0 * (index[1] - 22) - 20.0


def test_wrapped_phase_is_unwrapped_to_the_true_field():
    """A field peaking at 350 Hz (the phase wraps once near the peak) plus a gradient, from its
    wrapped phase difference: inside the mask it equals the true field smoothed by
    FIELD_SIGMA (closed form) to 1 % of the peak, without 2 pi jumps; filled smoothly outside."""
    shape, sigmas = (40, 44, 30), (5.0, 6.0, 5.0)
    field = _gaussian_field(shape, sigmas)
    mask = _ellipsoid(shape)
    wrapped = np.angle(np.exp(2j * np.pi * field * DELTA_TE))
    assert np.abs(wrapped / (2 * np.pi * DELTA_TE) - field)[mask].max() > 300  # it did wrap
    recovered = gre_fieldmap.field_from_phase_difference(wrapped, DELTA_TE, mask)
    expected = _gaussian_field(shape, sigmas, gre_fieldmap.FIELD_SIGMA)
    inner = ndimage.binary_erosion(mask, iterations=2)  # the smoothing mixes in the filled edge
    error = np.abs(recovered - expected)[inner]
    print(f"largest error {error.max():.2f} Hz, median {np.median(error):.3f} Hz")
    assert np.median(error) < 1.0 and error.max() < 0.01 * 350
    assert np.all(np.isfinite(recovered)) and np.abs(recovered[~mask]).max() < 400
    with pytest.raises(ValueError, match="positive"):
        gre_fieldmap.field_from_phase_difference(wrapped, -DELTA_TE, mask)


def test_phase_in_scanner_units_is_rescaled_to_radians():
    radians = np.linspace(-np.pi, np.pi, 50)
    np.testing.assert_array_equal(gre_fieldmap.phase_in_radians(radians), radians)
    scanner = (radians + np.pi) / (2 * np.pi) * 4095.0  # a Siemens phase image, 0-4095
    np.testing.assert_allclose(gre_fieldmap.phase_in_radians(scanner), radians, atol=1e-9)
    np.testing.assert_allclose(gre_fieldmap.wrapped_difference(np.full(3, 3.0), np.full(3, -3.0)),
                               np.full(3, 2 * np.pi - 6.0))


def _gre_dataset(root: Path, files: dict[str, dict], *, epi: bool = False):
    """A header-only DWI series (j-, 0.05 s) with GRE field-map images of the given sidecars."""
    from header_series import fmap_image, header_only_series, with_sidecar

    series = with_sidecar(header_only_series(root, "pre"), {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05})
    intended = {"IntendedFor": ["ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]}
    for suffix, meta in files.items():
        fmap_image(root, "pre", suffix, dict(meta, **intended))
    if epi:
        fmap_image(root, "pre", "dir-PA_epi", dict(intended, PhaseEncodingDirection="j", TotalReadoutTime=0.05),
                   n_volumes=2)
    return series


PHASEDIFF = {"phasediff": {"EchoTime1": 0.00492, "EchoTime2": 0.00738}, "magnitude1": {}}


@pytest.mark.parametrize("case, files, epi, method, message", [
    ("phasediff", PHASEDIFF, False, "phasediff", None),
    ("two phases", {"phase1": {"EchoTime": 0.0023}, "phase2": {"EchoTime": 0.0046}, "magnitude1": {}}, False,
     "phases", None),
    ("fieldmap in Hz", {"fieldmap": {"Units": "Hz"}, "magnitude": {}}, False, "fieldmap", None),
    ("PEPOLAR first", PHASEDIFF, True, "pepolar", None),
    ("no echo times", {"phasediff": {}, "magnitude1": {}}, False, None, "add EchoTime1 and EchoTime2"),
    ("no magnitude", {"phasediff": {"EchoTime1": 0.00492, "EchoTime2": 0.00738}}, False, None, "no magnitude1"),
    ("fieldmap in other units", {"fieldmap": {"Units": "T"}, "magnitude": {}}, False, None, "'Hz' or 'rad/s'"),
])
def test_gre_fieldmap_plan_from_the_sidecars(tmp_path, caplog, case, files, epi, method, message):
    """The preflight corrects with a GRE field map meant for the DWI when no reverse phase-encoded
    reference exists, with its echo times and magnitude; what cannot serve is named with the fix."""
    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config

    series = _gre_dataset(tmp_path / "bids", files, epi=epi)
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant")
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    plan = plan_fieldmaps(config, {"01": [series]})["01"][0].fieldmap
    if method is None:
        assert plan is None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(message in text for text in warnings), warnings
        return
    assert plan.method == method and (plan.axis, plan.sign, plan.total_readout_time) == (1, -1, 0.05)
    if method == "phasediff":
        assert plan.echo_times == (0.00492, 0.00738)
        assert Path(plan.magnitude_file).name == "sub-01_ses-pre_magnitude1.nii.gz"
        assert plan.metadata()["Method"] == "phasediff"
    if method == "phases":
        assert [Path(p).name for p in plan.reference_files] == ["sub-01_ses-pre_phase1.nii.gz",
                                                                "sub-01_ses-pre_phase2.nii.gz"]
        assert plan.echo_times == (0.0023, 0.0046)


def _moved(img, rigid):
    """The same voxels with the scanner saying they lie ``rigid`` (world 4x4) away: the head moved
    between the field map and the DWI by the inverse of ``rigid``."""
    return nib.Nifti1Image(np.asarray(img.dataobj), rigid @ img.affine, img.header)


@pytest.mark.slow
def test_simulated_gre_fieldmap_recovers_the_true_field(tmp_path, caplog):
    """The simulator's GRE field map (phase difference with noise, a coarser LAS grid, a magnitude
    contrast unlike the b=0's) through the workflow's interface, against the true field on the
    DWI grid inside the true brain; then the same field map with the head moved 4.4 mm and 5
    degrees between it and the DWI, which the magnitude-to-b=0 registration undoes.  Measured
    (small preset, 100 Hz, seed 5): r 0.985, median displacement error 0.007 voxel, 0.16 voxel
    where the true displacement exceeds 1 voxel; moved, by scanner coordinates: r 0.935, 0.40
    voxel; registered: r 0.984, 0.16 voxel."""
    from scipy.spatial.transform import Rotation

    from bids_ketamine.interfaces.io import LoadDWI
    from bids_ketamine.interfaces.sdc import GreField
    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.study import truth_map_paths

    bids = simulate_trial(tmp_path / "bids", n_subjects=1, seed=5, preset="small", progress=False,
                          distortion_hz=100.0, gre_fieldmap=True)
    session = bids / "sub-01" / "ses-pre"
    stem = session / "fmap" / "sub-01_ses-pre"
    sidecar = json.loads(Path(f"{stem}_phasediff.json").read_text())
    loaded = LoadDWI(dwi_file=str(session / "dwi" / "sub-01_ses-pre_dwi.nii.gz"),
                     bval_file=str(session / "dwi" / "sub-01_ses-pre_dwi.bval"),
                     bvec_file=str(session / "dwi" / "sub-01_ses-pre_dwi.bvec")).run(cwd=str(tmp_path)).outputs
    truth = truth_map_paths(bids, "01", "pre")
    true_img = nib.as_closest_canonical(nib.load(truth["fieldmap"]))
    brain = sum(nib.as_closest_canonical(nib.load(truth[t])).get_fdata() for t in ("gm", "wm", "csf")) > 0.5
    readout = json.loads((session / "dwi" / "sub-01_ses-pre_dwi.json").read_text())["TotalReadoutTime"]
    true_field = true_img.get_fdata()
    large = np.abs(true_field[brain]) * readout > 1.0
    rigid = np.eye(4)
    rigid[:3, :3] = Rotation.from_euler("xyz", [3.0, -2.0, 4.0], degrees=True).as_matrix()
    rigid[:3, 3] = [3.0, -2.0, 2.5]
    moved = tmp_path / "moved"
    moved.mkdir()
    for suffix in ("phasediff", "magnitude1"):
        _moved(nib.load(f"{stem}_{suffix}.nii.gz"), rigid).to_filename(moved / f"{suffix}.nii.gz")
    caplog.set_level(logging.INFO, logger="bids_ketamine")

    def recovered(folder, register=True):
        cwd = tmp_path / f"{folder.name}_{register}"
        cwd.mkdir()
        prefix = f"{folder / 'sub-01_ses-pre_'}" if folder == stem.parent else f"{folder}/"
        estimate = GreField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file, method="phasediff",
                            fieldmap_files=[f"{prefix}phasediff.nii.gz"], magnitude_file=f"{prefix}magnitude1.nii.gz",
                            echo_times=[sidecar["EchoTime1"], sidecar["EchoTime2"]],
                            register=register).run(cwd=str(cwd)).outputs
        field_img = nib.load(estimate.field_file)
        np.testing.assert_allclose(field_img.affine, true_img.affine, atol=1e-4)
        field = field_img.get_fdata()
        error = np.abs(field - true_field)[brain] * readout
        r = np.corrcoef(field[brain], true_field[brain])[0, 1]
        print(f"{folder.name}, {'registered' if register else 'scanner coordinates'}: r {r:.3f}; median "
              f"displacement error {np.median(error):.3f} voxel, {np.median(error[large]):.2f} where |d| > 1")
        return r, np.median(error), np.median(error[large])

    for r, median_error, large_error in (recovered(stem.parent), recovered(moved)):
        assert r > 0.95
        assert median_error <= 0.5 and large_error <= 0.5
    shifts = [float(record.getMessage().split("moved ")[1].split(" mm")[0]) for record in caplog.records
              if "registered to the DWI b=0" in record.getMessage()]
    assert shifts[0] < 1.0 and 4.0 < shifts[1] < 8.0, shifts  # not moved; moved 4.4 mm and 5 degrees
    r_scanner, _, large_scanner = recovered(moved, register=False)
    assert r_scanner < 0.96 and large_scanner > 0.3  # what the registration undid


def test_gre_field_falls_back_to_scanner_coordinates_when_the_registration_fails(monkeypatch, caplog):
    """A magnitude-to-b=0 registration that moves the brain by more than MAX_FIELDMAP_SHIFT_MM is
    taken as failed: one warning naming the check, and the field placed by scanner coordinates;
    a small one is applied (closed form: a field linear along x, shifted by 3 mm along x)."""
    shape, affine = (20, 22, 18), np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(shape) + 1.0
    x = np.indices(shape, dtype=float)[0] * 2.0 + affine[0, 3]  # world x (mm)
    field_img = nib.Nifti1Image((5.0 * x).astype(np.float32), affine)  # 5 Hz per mm
    magnitude = nib.Nifti1Image(np.ones(shape, np.float32), affine)
    b0 = nib.Nifti1Image(np.ones(shape, np.float32), affine)
    brain = _ellipsoid(shape)
    interior = ndimage.binary_erosion(brain, iterations=3)
    for shift_mm, expected in ((3.0, 5.0 * (x + 3.0)), (gre_fieldmap.MAX_FIELDMAP_SHIFT_MM + 5.0, 5.0 * x)):
        translation = np.eye(4)
        translation[0, 3] = shift_mm
        monkeypatch.setattr(gre_fieldmap, "magnitude_to_dwi", lambda *args, matrix=translation, **kw: matrix)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bids_ketamine"):
            field = gre_fieldmap.gre_field("fieldmap", [field_img], magnitude, b0, b0=b0, b0_mask=brain)
        smoothed = ndimage.gaussian_filter(expected, gre_fieldmap.FIELD_SIGMA)  # linear: unchanged inside
        np.testing.assert_allclose(field[interior], smoothed[interior], atol=1e-3)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warnings) == (shift_mm > gre_fieldmap.MAX_FIELDMAP_SHIFT_MM), warnings
        assert all("IntendedFor" in text for text in warnings)


ELITION = SHARED / "data" / "real-sdc" / "philips-elition"


@pytest.fixture(scope="module")
def elition_fields(tmp_path_factory):
    """philips-elition's dir-AP series: the PEPOLAR field (the acq-rpe_dir-PA run's b=0 volumes)
    and the GRE field (phase1/phase2, 2.3 / 4.6 ms, 3 mm) on its grid, with the brain mask of both
    polarities' mean b=0 and the mm of displacement per Hz."""
    if not (ELITION / "dataset_description.json").exists():
        pytest.skip(f"real SDC test data not found at {ELITION} (the shared/ folder beside the repo)")
    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    from bids_ketamine.bids import collect_dwi, collect_gre, load_layout
    from bids_ketamine.cli.preflight import _gre_plan, plan_fieldmaps
    from bids_ketamine.config import Config
    from bids_ketamine.dwi.mask import brain_mask
    from bids_ketamine.interfaces.io import LoadDWI
    from bids_ketamine.interfaces.sdc import GreField, PepolarField

    work = tmp_path_factory.mktemp("elition_fields")
    found = {item.dwi.name: item for item in collect_dwi(load_layout(ELITION, validate=False))["01"]}
    ap = found["sub-01_ses-01_dir-AP_dwi.nii.gz"]
    config = Config(bids_dir=ELITION, output_dir=work / "out", analysis_level="participant")
    pepolar = plan_fieldmaps(config, {"01": [ap]}, {"01": list(found.values())})["01"][0].fieldmap
    gre = _gre_plan(ap, collect_gre(ELITION, ap))
    assert (pepolar.method, gre.method, gre.echo_times) == ("pepolar", "phases", (0.0023, 0.0046))
    loaded = LoadDWI(dwi_file=str(ap.dwi), bval_file=str(ap.bval), bvec_file=str(ap.bvec)).run(cwd=str(work)).outputs
    encoding = dict(axis=pepolar.axis, sign=pepolar.sign, total_readout_time=pepolar.total_readout_time)
    estimated = PepolarField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file,
                             reference_files=list(pepolar.reference_files),
                             reference_bvals=list(pepolar.reference_bvals), **encoding).run(cwd=str(work)).outputs
    (work / "gre").mkdir()
    measured = GreField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file, method=gre.method,
                        fieldmap_files=list(gre.reference_files), magnitude_file=gre.magnitude_file,
                        echo_times=list(gre.echo_times)).run(cwd=str(work / "gre")).outputs
    forward, reverse = (nib.load(path).get_fdata() for path in (estimated.b0_file, estimated.reference_file))
    return {"pepolar": nib.load(estimated.field_file).get_fdata(), "gre": nib.load(measured.field_file).get_fdata(),
            "brain": brain_mask(0.5 * (forward + reverse)), "b0": (forward, reverse), "encoding": encoding,
            "mm_per_hz": pepolar.total_readout_time * nib.load(loaded.dwi_file).header.get_zooms()[pepolar.axis]}


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.realdata
def test_elition_fieldmap_and_pepolar_displacements_within_1mm(elition_fields):
    """Issue 19: the GRE and PEPOLAR displacements differ by a median of at most 1 mm inside the
    brain.  Measured 2026-12-05 (the field map registered to the DWI; by scanner coordinates the
    same to 0.01 mm): 0.79 mm (90th percentile 2.6 mm); GRE field 1st/50th/99th
    percentile -34 / 3 / 75 Hz, PEPOLAR -17 / 1 / 18 Hz (with the unsmoothed PEPOLAR field used
    before, dwi/sdc.py PEPOLAR_SETTINGS: 0.83 mm, 2.9 mm, -36 / 1 / 32 Hz)."""
    brain = elition_fields["brain"]
    gre, pepolar = elition_fields["gre"][brain], elition_fields["pepolar"][brain]
    difference_mm = np.abs(gre - pepolar) * elition_fields["mm_per_hz"]
    print(f"GRE vs PEPOLAR inside the brain: r {np.corrcoef(gre, pepolar)[0, 1]:.3f}, median |displacement "
          f"difference| {np.median(difference_mm):.3f} mm (90th percentile {np.percentile(difference_mm, 90):.3f}); "
          f"GRE 1st/50th/99th percentile {np.percentile(gre, [1, 50, 99]).round(1)} Hz, "
          f"PEPOLAR {np.percentile(pepolar, [1, 50, 99]).round(1)} Hz")
    assert np.median(difference_mm) <= 1.0


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.realdata
@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/anatomy.md): on philips-elition the GRE field is anti-correlated with the PEPOLAR "
    "estimate (r -0.41; -0.35 with the unsmoothed PEPOLAR field used before) and, applied with the sidecar's polarity, makes the AP and PA b=0 agree worse "
    "(r 0.716 raw -> 0.550) while its negative, scaled by 0.25-0.5, makes them agree better (0.736). Philips "
    "DICOM records no phase-encoding polarity (the README's sign comes from the fat-shift direction) and "
    "the Philips phase sign convention is not documented here, so one of the two could be reversed. "
    "Registering the field map to the DWI (1.4 mm) changes none of it; the shifts between the AP and PA b=0 "
    "images themselves correlate with the GRE field's prediction at r -0.70 and with PEPOLAR's at 0.65, and "
    "where the GRE field predicts 2.9 voxels of relative shift they are shifted by 0.25 "
    "(benchmarks/sdc_block_shifts.py): the GRE field is not the field of these DWI runs"))
def test_elition_fieldmap_correlates_with_pepolar(elition_fields):
    from bids_ketamine.dwi.sdc import unwarp

    brain, (forward, reverse) = elition_fields["brain"], elition_fields["b0"]
    encoding = dict(elition_fields["encoding"])
    sign = encoding.pop("sign")

    def agreement(field):
        first = unwarp(forward, field, sign=sign, jacobian=False, **encoding)
        second = unwarp(reverse, field, sign=-sign, jacobian=False, **encoding)
        return np.corrcoef(first[brain], second[brain])[0, 1]

    gre = elition_fields["gre"]
    print("AP vs PA b=0, r inside the brain: " + ", ".join(
        f"{name} {agreement(field):.3f}" for name, field in (
            ("raw", 0 * gre), ("PEPOLAR", elition_fields["pepolar"]), ("GRE", gre), ("-0.25 x GRE", -0.25 * gre))))
    assert np.corrcoef(gre[brain], elition_fields["pepolar"][brain])[0, 1] > 0.3
