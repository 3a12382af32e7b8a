"""The participant level on real scanner data (../shared/data/real-dwi; skipped without it).

- sub-canon: ROI MD agrees between sessions (ses-2020, ses-2021) and between acquisitions
  (acq-ortho, acq-tilted) within 5 % (a strict xfail: the known gap of issue 4);
- sub-elition: the native MD map equals MRtrix3's dwi2tensor + tensor2metric on the same input;
  its T1w (1 mm) is used (issue 19): brain, GM and WM volumes plausible, and the MD of the
  T1w-defined white matter, carried into the DWI through the b=0-to-T1w registration, in
  0.6-0.85 um^2/ms (measured 2026-12-06: brain 1343 ml, GM 656 ml, WM 516 ml; WM MD 0.733).

Separate from ``test_participant.py`` (simulated trial) so that the two can run in parallel.
Every test here is ``extended`` (``make test-extended``): the sub-elition run (a 1 mm T1w, about
260 s) left CI's 30 minutes on 2026-12-04 (a clean-clone ``.ci/run`` took 28 min 18 s with it);
MRtrix3 agreement stays in CI on simulated data (``test_tensor.py``, ``test_denoise.py``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from participant_runs import run_participant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.mark.realdata
@pytest.mark.extended  # a strict xfail (known gap) that costs two minutes: kept out of .ci/run
@pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 4, blocked by the data): on sub-canon (3 mm, b=1500, 12 directions, "
    "no field map) 17 of 28 comparisons of the ROI mean agree within 5 % (2026-12-06, after the "
    "edge-slice fix; 19 of 28 before it); the largest are BA10_R 7.6 % (tilted 2020 vs 2021), "
    "amygdala_R 7.6 % (ortho vs tilted 2020) and BA10_L and amygdala_L 6.7 % (ortho vs tilted "
    "2021); an older state of the pipeline had 25 of 28. amygdala_R's ortho-tilted "
    "difference is in the data at the same anatomical location (ortho MD sampled at the tilted "
    "ROI voxels through the rigid midpoint transforms, nearest neighbour, is 4.5-6.7 % above tilted's) and does not move with denoising, motion, "
    "eddy-current (12-dof) or Gibbs correction, WLS/OLS/NLLS/RESTORE, ROI statistic, tissue "
    "thresholds or a per-series SyN. Between the years every tissue's MD rose 4-5 % (the "
    "tissue tables' white matter +4.0 / +5.0 %, benchmarks/real_retest.py): net of that shift the "
    "year differences are within 3.2 % (roi_gm_weighted_median). strict: the test fails as soon as this passes",
)
def test_real_canon_sessions_and_acquisitions_agree(real_dwi, tmp_path):
    """sub-canon: ROI MD agrees between years (same acquisition) and between acq-ortho and
    acq-tilted (same year) within 5 %, for every ROI with coverage >= 0.8 in both series."""
    out_dir = tmp_path / "out"
    run_participant(real_dwi, out_dir, tmp_path / "work", "--participant-label", "canon")
    rows = []
    for path in sorted(out_dir.glob("sub-canon/ses-*/dwi/*_roistats.tsv")):
        parts = dict(p.split("-", 1) for p in path.name.split("_")[:3])
        table = pd.read_csv(path, sep="\t")
        table = table[table["param"] == "md"]
        rows.append(table.assign(session=parts["ses"], acquisition=parts["acq"]))
    table = pd.concat(rows)
    pairs = [(("2020", "ortho"), ("2021", "ortho")), (("2020", "tilted"), ("2021", "tilted")),
             (("2020", "ortho"), ("2020", "tilted")), (("2021", "ortho"), ("2021", "tilted"))]
    indexed = table.set_index(["session", "acquisition", "roi"])
    differences = []
    for first, second in pairs:
        a, b = indexed.loc[first], indexed.loc[second]
        covered = (a["coverage"] >= 0.8) & (b["coverage"] >= 0.8)
        relative = ((a["mean"] - b["mean"]).abs() / ((a["mean"] + b["mean"]) / 2))[covered]
        differences.append(relative.rename(f"{'_'.join(first)} vs {'_'.join(second)}"))
    differences = pd.concat(differences, axis=1)
    print(table.pivot_table(index="roi", columns=["session", "acquisition"], values="mean").round(3))
    print(differences.round(3).to_string())
    assert differences.notna().any().all(), "a pair has no ROI with coverage >= 0.8"
    assert differences.max().max() < 0.05, differences.max().to_dict()


@pytest.fixture(scope="module")
def elition_run(real_dwi, tmp_path_factory):
    """The participant level on real sub-elition (one session, DWI and a 1 mm T1w)."""
    root = tmp_path_factory.mktemp("elition")
    run_participant(real_dwi, root / "out", root / "work", "--participant-label", "elition")
    return root / "out"


@pytest.mark.realdata
@pytest.mark.extended
def test_real_elition_t1w_volumes_and_white_matter_md(elition_run):
    import nibabel as nib
    from nilearn.image import resample_to_img

    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    anat = elition_run / "sub-elition" / "anat"
    mask = nib.load(anat / "sub-elition_desc-brain_mask.nii.gz")
    ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000.0
    volumes = {"brain": float(np.asanyarray(mask.dataobj).sum()) * ml}
    for tissue in ("GM", "WM"):
        volumes[tissue] = float(nib.load(anat / f"sub-elition_label-{tissue}_probseg.nii.gz").get_fdata().sum()) * ml
    print("sub-elition volumes (ml):", {k: round(v) for k, v in volumes.items()})
    assert 1000.0 <= volumes["brain"] <= 1800.0
    assert 500.0 <= volumes["GM"] <= 800.0
    assert 350.0 <= volumes["WM"] <= 700.0
    # T1w-defined white matter in the DWI grid: T1w world -> midpoint world (one session: the
    # series' own world), the T1w's voxels placed there and resampled onto the MD map
    t1w_to_dwi = np.loadtxt(elition_run / "sub-elition" / "dwi" / "sub-elition_from-T1w_to-midpoint_mode-image_xfm.txt")
    wm = nib.load(anat / "sub-elition_label-WM_probseg.nii.gz")
    md_img = nib.load(elition_run / "sub-elition" / "ses-1" / "dwi" /
                      "sub-elition_ses-1_space-dwi_model-tensor_param-md_dwimap.nii.gz")
    wm_in_dwi = resample_to_img(nib.Nifti1Image(wm.get_fdata(), t1w_to_dwi @ wm.affine), md_img,
                                interpolation="linear", force_resample=True, copy_header=True)
    white = wm_in_dwi.get_fdata() >= 0.9
    md_white = float(np.median(md_img.get_fdata()[white]))
    print(f"sub-elition: median MD of T1w white matter (fraction >= 0.9, {white.sum()} voxels) {md_white:.3f}")
    assert white.sum() > 1000
    assert 0.6 <= md_white <= 0.85


@pytest.mark.realdata
@pytest.mark.extended
@pytest.mark.mrtrix
def test_real_elition_md_matches_mrtrix(elition_run, tmp_path):
    """sub-elition: our native MD equals dwi2tensor + tensor2metric on the same preprocessed input."""
    import subprocess

    import nibabel as nib

    if shutil.which("dwi2tensor") is None or shutil.which("tensor2metric") is None:
        pytest.skip("MRtrix3 (dwi2tensor, tensor2metric) is not installed: apt-get install mrtrix3")
    out_dir = elition_run
    folder = out_dir / "sub-elition" / "ses-1" / "dwi"
    prefix = "sub-elition_ses-1_space-dwi"
    dwi = folder / f"{prefix}_desc-preproc_dwi.nii.gz"
    mask = folder / f"{prefix}_desc-brain_mask.nii.gz"
    tensor, md_mrtrix = tmp_path / "dt.mif", tmp_path / "md.nii.gz"
    subprocess.run(["dwi2tensor", "-quiet", "-fslgrad", str(dwi).replace(".nii.gz", ".bvec"),
                    str(dwi).replace(".nii.gz", ".bval"), "-mask", str(mask), str(dwi), str(tensor)],
                   check=True)
    subprocess.run(["tensor2metric", "-quiet", "-adc", str(md_mrtrix), "-mask", str(mask), str(tensor)],
                   check=True)
    ours = nib.load(folder / f"{prefix}_model-tensor_param-md_dwimap.nii.gz").get_fdata()
    theirs = nib.load(md_mrtrix).get_fdata() * 1000.0  # mm^2/s -> um^2/ms
    inside = (nib.load(mask).get_fdata() > 0) & (theirs > 0.1) & (ours > 0.1)
    relative = np.abs(ours[inside] - theirs[inside]) / theirs[inside]
    print(f"sub-elition MD: median relative difference {np.median(relative):.5f} over {inside.sum()} voxels; "
          f"median MD ours {np.median(ours[inside]):.3f}, MRtrix3 {np.median(theirs[inside]):.3f} um^2/ms")
    assert np.median(relative) < 0.01
