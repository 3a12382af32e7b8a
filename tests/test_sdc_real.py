"""Susceptibility-distortion correction on real scanner data (../shared/data/real-sdc; skipped
without it): which correction the preflight chooses, and whether the corrected opposite-polarity
b=0 images agree better than the raw ones (issue 19)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED

REAL_SDC = SHARED / "data" / "real-sdc"
ELITION = REAL_SDC / "philips-elition"
SESSION = ELITION / "sub-01" / "ses-01"

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def elition():
    if not (ELITION / "dataset_description.json").exists():
        pytest.skip(f"real SDC test data not found at {ELITION} (the shared/ folder beside the repo)")
    return ELITION


def _series(root):
    from bids_ketamine.bids import collect_dwi, load_layout

    layout = load_layout(root, validate=False)
    return {item.dwi.name: item for item in collect_dwi(layout)["01"]}


def test_elition_reverse_run_is_chosen_for_the_dwi(elition, tmp_path):
    """philips-elition has a GRE field map (phase1/phase2, not implemented) and a reverse
    phase-encoding DWI run (acq-rpe_dir-PA, j, six b~0 volumes): the dir-AP series (j-) is
    corrected by PEPOLAR with that run's b=0 volumes, with its own readout time."""
    from bids_ketamine.cli.preflight import plan_fieldmaps, preflight
    from bids_ketamine.config import Config

    config = Config(bids_dir=elition, output_dir=tmp_path / "out", analysis_level="participant")
    found = {"01": list(_series(elition).values())}
    usable, problems = preflight(config, found)
    assert problems == []
    assert [item.dwi.name for item in usable["01"]] == ["sub-01_ses-01_dir-AP_dwi.nii.gz"]
    plan = plan_fieldmaps(config, usable, found)["01"][0].fieldmap
    assert plan is not None and plan.method == "pepolar"
    assert plan.reference_files == (str(SESSION / "dwi" / "sub-01_ses-01_acq-rpe_dir-PA_dwi.nii.gz"),)
    assert plan.reference_bvals == (str(SESSION / "dwi" / "sub-01_ses-01_acq-rpe_dir-PA_dwi.bval"),)
    sidecar = json.loads((SESSION / "dwi" / "sub-01_ses-01_dir-AP_dwi.json").read_text())
    assert plan.total_readout_time == sidecar["TotalReadoutTime"]
    assert (plan.axis, plan.sign) == (1, -1)  # LAS storage: j- stays the second axis, posterior


@pytest.mark.slow
@pytest.mark.extended
def test_corrected_opposite_b0_images_agree_better(elition, tmp_path):
    """The workflow's own interfaces (load, PEPOLAR field) on the dir-AP series and the reverse
    run; each polarity's mean b=0 is unwarped with its own sign and the two are compared inside
    the brain mask of their raw mean.  Measured 2026-12-05 (dwi/sdc.py PEPOLAR_SETTINGS): Pearson
    r 0.716 raw, 0.755 displaced only (the geometry the ROI placement and the tensor maps see),
    0.723 with the exact Jacobian (the workflow's default, dwi/sdc.py JACOBIAN_SIGMA), 0.738 with
    it smoothed by 3 voxels.  With the unsmoothed field used before, the exact Jacobian made them
    agree worse than raw (0.669).  The dir-AP run has a single b=0 and the runs' echo times differ
    (72 / 86 ms), so the intensities cannot agree closely."""
    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config
    from bids_ketamine.dwi.mask import brain_mask
    from bids_ketamine.dwi.sdc import unwarp
    from bids_ketamine.interfaces.io import LoadDWI
    from bids_ketamine.interfaces.sdc import PepolarField

    config = Config(bids_dir=elition, output_dir=tmp_path / "out", analysis_level="participant")
    series = _series(elition)
    ap = series["sub-01_ses-01_dir-AP_dwi.nii.gz"]
    plan = plan_fieldmaps(config, {"01": [ap]}, {"01": list(series.values())})["01"][0].fieldmap
    loaded = LoadDWI(dwi_file=str(ap.dwi), bval_file=str(ap.bval), bvec_file=str(ap.bvec)).run(
        cwd=str(tmp_path)).outputs
    estimate = PepolarField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file,
                            reference_files=list(plan.reference_files), reference_bvals=list(plan.reference_bvals),
                            axis=plan.axis, sign=plan.sign, total_readout_time=plan.total_readout_time).run(
        cwd=str(tmp_path)).outputs
    field = nib.load(estimate.field_file).get_fdata()
    forward = nib.load(estimate.b0_file).get_fdata()
    reverse = nib.load(estimate.reference_file).get_fdata()
    brain = brain_mask(0.5 * (forward + reverse))
    encoding = {"axis": plan.axis, "total_readout_time": plan.total_readout_time}

    def agreement(**options):
        first = unwarp(forward, field, sign=plan.sign, **encoding, **options)
        second = unwarp(reverse, field, sign=-plan.sign, **encoding, **options)
        return np.corrcoef(first[brain], second[brain])[0, 1]

    before = np.corrcoef(forward[brain], reverse[brain])[0, 1]
    geometry = agreement(jacobian=False)
    exact, smoothed = agreement(), agreement(jacobian_sigma=3.0)
    print(f"AP vs PA b=0 inside the brain: r {before:.4f} raw, {geometry:.4f} displaced, {exact:.4f} with "
          f"the Jacobian, {smoothed:.4f} with it smoothed; field 1st/99th percentile {np.percentile(field[brain], 1):.1f} / "
          f"{np.percentile(field[brain], 99):.1f} Hz")
    assert geometry > before + 0.02
    assert exact > before  # the full forward model, intensities included
    assert smoothed > exact  # the Jacobian's noise: smoothing it removes part of the loss


@pytest.fixture(scope="module")
def uih_runs(tmp_path_factory):
    """uih-umr770 sub-01 (an 84 mm slab; dir-AP j- and dir-PA j, each the other's reference;
    acq-rot_dir-PA, its field of view rotated 14 degrees, is no reference) through the participant
    level, DWI-only path, with the correction and with --ignore fieldmaps."""
    root = REAL_SDC / "uih-umr770"
    if not (root / "dataset_description.json").exists():
        pytest.skip(f"real SDC test data not found at {root} (the shared/ folder beside the repo)")
    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    from participant_runs import run_participant

    base = tmp_path_factory.mktemp("uih")
    outputs = {}
    for name, extra in (("corrected", []), ("uncorrected", ["fieldmaps"])):
        run_participant(root, base / f"out_{name}", base / f"work_{name}", "--participant-label", "01",
                        "--skip-bids-validation", "--ignore", "t1w", *extra)
        outputs[name] = base / f"out_{name}" / "sub-01" / "ses-01"
    return outputs


@pytest.mark.slow
@pytest.mark.extended
def test_uih_ap_and_pa_md_maps_agree_better_corrected(uih_runs):
    """Issue 19: the AP and PA runs' MD maps, each in its own (identical) grid, agree better
    corrected than uncorrected: median relative difference inside both brain masks (MD 0-1.5,
    tissue).  Measured 2026-12-06: 5.13 % uncorrected, 4.91 % corrected (r 0.768 -> 0.828; 5.49 and
    5.20 % before that day's edge-slice fix).  With
    the unsmoothed field estimate used before (dwi/sdc.py PEPOLAR_SETTINGS), 5.71 % corrected
    against 5.39 % then: the correction made them agree worse."""
    results = {}
    for name, folder in uih_runs.items():
        maps, masks = {}, {}
        for direction in ("AP", "PA"):
            prefix = folder / "dwi" / f"sub-01_ses-01_dir-{direction}"
            maps[direction] = nib.load(f"{prefix}_space-dwi_model-tensor_param-md_dwimap.nii.gz")
            masks[direction] = nib.load(f"{prefix}_space-dwi_desc-brain_mask.nii.gz").get_fdata() > 0
        np.testing.assert_allclose(maps["AP"].affine, maps["PA"].affine, atol=1e-4)
        ap, pa = maps["AP"].get_fdata(), maps["PA"].get_fdata()
        tissue = masks["AP"] & masks["PA"] & (ap > 0) & (pa > 0) & (ap < 1.5) & (pa < 1.5)
        relative = np.abs(ap - pa)[tissue] / (0.5 * (ap + pa)[tissue])
        results[name] = (float(np.median(relative)), float(np.corrcoef(ap[tissue], pa[tissue])[0, 1]))
        print(f"{name}: MD AP vs PA median relative difference {results[name][0]:.4f}, r {results[name][1]:.3f}")
    assert (uih_runs["corrected"] / "fmap" / "sub-01_ses-01_dir-AP_desc-preproc_fieldmap.nii.gz").exists()
    assert not (uih_runs["uncorrected"] / "fmap").exists()
    assert results["corrected"][0] < results["uncorrected"][0] - 0.002
    assert results["corrected"][1] > results["uncorrected"][1]


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.xfail(strict=True, reason=(
    "known gap (issue 19, docs/anatomy.md 'Fieldmap-less'): on philips-elition the T1w is a poor likeness of "
    "the b=0 (Pearson r 0.47 of the inverted T1w and the b=0 after rigid registration; 0.49 for a b=0 "
    "synthesised from the T1w's tissue maps), and the fieldmap-less field, unrelated to the PEPOLAR one "
    "(r 0.10), makes the AP and PA b=0 agree worse (r 0.716 raw; displaced 0.595 here, with the T1w's "
    "morphological brain region, 0.522 through the participant level; PEPOLAR 0.758)"))
def test_syn_sdc_makes_opposite_b0_images_agree_better(elition, tmp_path):
    """Fieldmap-less correction (``--use-syn-sdc``'s interface) of the dir-AP series from the T1w
    (N4 inside its morphological brain region); the field is applied to the dir-AP mean b=0 and,
    with the opposite polarity, to the reverse run's, which the estimate never saw: they should
    agree better than raw (displacement only, as in
    :func:`test_corrected_opposite_b0_images_agree_better`)."""
    from bids_ketamine.anat.bias import bias_field_correct
    from bids_ketamine.anat.brain_mask import rough_brain_mask
    from bids_ketamine.cli.preflight import plan_fieldmaps
    from bids_ketamine.config import Config
    from bids_ketamine.dwi.mask import brain_mask
    from bids_ketamine.dwi.sdc import mean_reference_b0, unwarp
    from bids_ketamine.interfaces.io import LoadDWI
    from bids_ketamine.interfaces.sdc import SynSdcField

    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    t1w_file = SESSION / "anat" / "sub-01_ses-01_T1w.nii.gz"
    config = Config(bids_dir=elition, output_dir=tmp_path / "out", analysis_level="participant",
                    ignore=("fieldmaps",), use_syn_sdc=True)
    ap = _series(elition)["sub-01_ses-01_dir-AP_dwi.nii.gz"]
    plan = plan_fieldmaps(config, {"01": [ap]}, t1w_by_subject={"01": [t1w_file]})["01"][0].fieldmap
    assert plan.method == "syn"
    region = rough_brain_mask(nib.load(t1w_file))
    t1w, _ = bias_field_correct(t1w_file, region)
    t1w.to_filename(tmp_path / "t1w.nii.gz")
    region.to_filename(tmp_path / "t1w_mask.nii.gz")
    loaded = LoadDWI(dwi_file=str(ap.dwi), bval_file=str(ap.bval), bvec_file=str(ap.bvec)).run(
        cwd=str(tmp_path)).outputs
    estimate = SynSdcField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file, t1w_file=str(tmp_path / "t1w.nii.gz"),
                           t1w_mask_file=str(tmp_path / "t1w_mask.nii.gz"), axis=plan.axis, sign=plan.sign,
                           total_readout_time=plan.total_readout_time).run(cwd=str(tmp_path)).outputs
    field = nib.load(estimate.field_file).get_fdata()
    forward_img = nib.load(estimate.b0_file)
    rpe = SESSION / "dwi" / "sub-01_ses-01_acq-rpe_dir-PA_dwi"
    reverse = mean_reference_b0([nib.load(f"{rpe}.nii.gz")], forward_img,
                                [np.loadtxt(f"{rpe}.bval", ndmin=1) <= 50]).get_fdata()
    forward = forward_img.get_fdata()
    brain = brain_mask(0.5 * (forward + reverse))
    encoding = {"axis": plan.axis, "total_readout_time": plan.total_readout_time, "jacobian": False}
    first = unwarp(forward, field, sign=plan.sign, **encoding)
    second = unwarp(reverse, field, sign=-plan.sign, **encoding)
    before = np.corrcoef(forward[brain], reverse[brain])[0, 1]
    after = np.corrcoef(first[brain], second[brain])[0, 1]
    print(f"AP vs PA b=0 inside the brain: r {before:.4f} raw, {after:.4f} displaced by the fieldmap-less field "
          f"(1st/99th percentile {np.percentile(field[brain], 1):.1f} / {np.percentile(field[brain], 99):.1f} Hz)")
    assert after > before + 0.02
