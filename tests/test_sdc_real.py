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
@pytest.mark.xfail(strict=True, reason=(
    "known gap (issue 19): on philips-elition the PEPOLAR correction does not yet make the AP "
    "and PA b=0 agree better: Pearson r inside the brain 0.716 raw, 0.669 corrected (default "
    "settings, measured); with SyN's total-field smoothing (total_sigma 3) 0.729, but that "
    "smoothing doubles the error of the simulated field where it displaces > 1 voxel (0.77 -> "
    "1.80 voxel). The dir-AP run has one b=0 volume, and the two runs' echo times differ "
    "(72 / 86 ms): the registration fits noise and contrast. strict: fails as soon as this passes"))
def test_corrected_opposite_b0_images_agree_better(elition, tmp_path):
    """The workflow's own interfaces (load, PEPOLAR field, unwarp) on the dir-AP series and
    the reverse run; each polarity's mean b=0 is unwarped with its own sign, and the two are
    compared inside the brain mask of their raw mean."""
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
    corrected = (unwarp(forward, field, sign=plan.sign, **encoding),
                 unwarp(reverse, field, sign=-plan.sign, **encoding))
    before = np.corrcoef(forward[brain], reverse[brain])[0, 1]
    after = np.corrcoef(corrected[0][brain], corrected[1][brain])[0, 1]
    print(f"AP vs PA b=0 inside the brain: r {before:.4f} raw, {after:.4f} corrected; field 1st/99th "
          f"percentile {np.percentile(field[brain], 1):.1f} / {np.percentile(field[brain], 99):.1f} Hz")
    assert after > before
