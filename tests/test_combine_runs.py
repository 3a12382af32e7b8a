"""``--combine-runs average`` end to end on a simulated session with two runs (issue 14; slow).

sub-01's baseline session of a simulated trial (``--preset demo``: 4 mm, 15 volumes) becomes two
runs: run-1 is the simulated series, run-2 the same head moved one voxel (4 mm) with fresh noise.
The participant level joins them into one series: one ROI table without run-, the sidecar lists
both runs and all volumes, and the ROI MD matches the simulation's truth within the 5 % of the
participant acceptance test.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from participant_runs import run_participant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _split_into_two_runs(folder, prefix, rng):
    stem = folder / f"{prefix}_dwi"
    first = folder / f"{prefix}_run-1_dwi"
    second = folder / f"{prefix}_run-2_dwi"
    for ext in (".nii.gz", ".bval", ".bvec", ".json"):
        content = stem.with_name(stem.name + ext).read_bytes()
        stem.with_name(stem.name + ext).unlink()
        first.with_name(first.name + ext).write_bytes(content)
        second.with_name(second.name + ext).write_bytes(content)
    img = nib.load(f"{first}.nii.gz")
    data = img.get_fdata(dtype=np.float32)
    sigma = 0.02 * np.percentile(data[..., 0], 99)
    moved = np.roll(data, 1, axis=1) + rng.normal(0, sigma, size=data.shape)
    nib.Nifti1Image(np.clip(moved, 0, None).astype(np.float32), img.affine).to_filename(f"{second}.nii.gz")
    return img.shape[3], float(img.header.get_zooms()[1])


def test_two_runs_fitted_as_one_series(tmp_path):
    from bids_ketamine.simulate import simulate_trial

    bids_dir = simulate_trial(tmp_path / "bids", n_subjects=1, seed=11, preset="demo", progress=False)
    folder = bids_dir / "sub-01" / "ses-pre" / "dwi"
    n_volumes, voxel_mm = _split_into_two_runs(folder, "sub-01_ses-pre", np.random.default_rng(0))
    out_dir = tmp_path / "out"
    # --denoise none: the test is about joining runs; MP-PCA would double its time (CI budget)
    run_participant(bids_dir, out_dir, tmp_path / "work", "--participant-label", "01",
                    "--combine-runs", "average", "--denoise", "none")
    outputs = out_dir / "sub-01" / "ses-pre" / "dwi"
    assert not [p.name for p in outputs.iterdir() if "run-" in p.name]
    tables = sorted(p.name for p in outputs.glob("*_roistats.tsv"))
    assert tables == ["sub-01_ses-pre_atlas-ketamine7_model-tensor_roistats.tsv"]
    sidecar = json.loads((outputs / "sub-01_ses-pre_space-dwi_desc-preproc_dwi.json").read_text())
    assert [p.split("/")[-1] for p in sidecar["Sources"]] == ["sub-01_ses-pre_run-1_dwi.nii.gz",
                                                              "sub-01_ses-pre_run-2_dwi.nii.gz"]
    assert sidecar["NumberOfVolumes"] == 2 * n_volumes
    motion = pd.read_csv(outputs / "sub-01_ses-pre_desc-motion_timeseries.tsv", sep="\t")
    # run-2 moved one voxel along the second voxel axis (anterior in the simulation's RAS+ frame)
    shift = (motion["trans_y"].iloc[n_volumes:].median() - motion["trans_y"].iloc[:n_volumes].median())
    print(f"run-2 shift found: {shift:.2f} mm")
    assert abs(abs(shift) - voxel_mm) < 0.5
    truth = pd.read_csv(bids_dir / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
    truth = truth[truth["participant_id"] == "sub-01"].set_index("roi")["md_baseline"]
    table = pd.read_csv(outputs / tables[0], sep="\t")
    measured = table[table["param"] == "md"].set_index("roi")["median"]
    relative = (measured / truth - 1).dropna()
    print(relative.round(4).to_string())
    assert len(relative) == 7 and relative.abs().max() < 0.05
