"""Real retest on sub-canon: ROI MD a year apart, and how much of the difference is global (issue 20).

sub-canon (``../shared/data/real-dwi``) is one person scanned in 2020 and 2021 with the same two
acquisitions (``acq-ortho``, ``acq-tilted``; 3 mm, one b=0 and 12 directions at b=1500).  Issue 20
asks that each ROI's MD agree between the years within 5 % for the default ROI statistic.  This
script runs the participant level once and reports, per acquisition and ROI statistic:

- the ROI differences between the years: ``(2021 - 2020) / mean of the two`` in percent (the
  measure of ``tests/test_participant_real.py`` and of docs/participant.md), ROIs with coverage
  >= 0.8 in both years; their mean absolute value, the largest and how many exceed 5 %;
- the global shift between the years, measured away from the ROIs' processing: the median MD
  of each series' brain mask (the quantity the dataset's README gives: about 0.77 in 2020 and
  0.79 in 2021), and the median over the template's white matter (probability >= 0.9) and grey
  matter (>= 0.6) of the four series' template-space MD maps, the same voxels in every series;
- the same shift as the participant level reports it in its tissue tables
  (``*_model-tensor_tissuestats.tsv``: the MD median over the participant's shared brain
  mask, white matter and grey matter, in each series' own grid), the measures that the group
  level's ``--covariates md_wm_change`` uses;
- each ROI difference net of each global shift, i.e. what remains specific to the ROI.
- each series' noise level and SNR (b=0 and mean DW image), from the participant level's noise
  map: a noise floor that differed between the years would bias MD by itself.

A global shift is in the measured MD of every voxel (a b-value scale, a different gradient
calibration or temperature), so an ideal pipeline reports it too: the simulator counts its
``--scanner-drift`` in the truth for that reason (docs/simulation.md).

Usage::

    python benchmarks/real_retest.py --workdir /tmp/retest   # about 2.5 minutes on 2 cores

The participant level is skipped when ``--workdir``'s outputs exist; delete the folder after
changing the code.  Results: ``results/real_retest.json``; numbers in docs/participant.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from participant_runs import participant_level_done  # benchmarks/, beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dwi"
RESULTS = Path(__file__).parent / "results" / "real_retest.json"
YEARS = ("2020", "2021")
ACQUISITIONS = ("ortho", "tilted")
STATISTICS = ("median", "mean", "roi_gm_weighted_median", "roi_gm_weighted_mean", "gm_weighted_mean")
MIN_COVERAGE = 0.8
LIMIT_PCT = 5.0
#: The participant level's own tissue table (``*_tissuestats.tsv``): MD median over the
#: shared brain mask and the participant's white / grey matter in each series' native grid.
TISSUE_MEASURES = ("tissue_brain", "tissue_wm", "tissue_gm")
GLOBAL_MEASURES = ("brain_mask", "template_wm", "template_gm", *TISSUE_MEASURES)


def run_participant(data: Path, workdir: Path) -> Path:
    """The participant level of sub-canon into ``workdir/out`` (skipped when it exists)."""
    from bids_ketamine.cli.run import main

    out = workdir / "out"
    if not participant_level_done(data, out, "canon"):
        try:
            main([str(data), str(out), "participant", "-w", str(workdir / "work"), "--participant-label",
                  "canon", "--skip-bids-validation"])
        except SystemExit as done:
            if done.code:
                raise
    return out / "sub-canon"


def _series(folder: Path, year: str, acquisition: str) -> str:
    return str(folder / f"ses-{year}" / "dwi" / f"sub-canon_ses-{year}_acq-{acquisition}_")


def roi_table(folder: Path) -> pd.DataFrame:
    """Every series' MD rows of its ROI table, indexed by (year, acquisition, roi)."""
    tables = []
    for year in YEARS:
        for acquisition in ACQUISITIONS:
            table = pd.read_csv(_series(folder, year, acquisition) + "atlas-ketamine7_model-tensor_roistats.tsv",
                                sep="\t")
            tables.append(table[table["param"] == "md"].assign(year=year, acquisition=acquisition))
    return pd.concat(tables).set_index(["year", "acquisition", "roi"])


def percent_difference(first, second):
    """``(second - first)`` over the mean of the two, in percent (symmetric in the two)."""
    return 100.0 * (second - first) / ((first + second) / 2.0)


def roi_differences(table: pd.DataFrame, statistic: str) -> pd.DataFrame:
    """The years' difference of each ROI, per acquisition (columns), ROIs covered in both years."""
    columns = {}
    for acquisition in ACQUISITIONS:
        before, after = table.loc[(YEARS[0], acquisition)], table.loc[(YEARS[1], acquisition)]
        covered = (before["coverage"] >= MIN_COVERAGE) & (after["coverage"] >= MIN_COVERAGE)
        columns[acquisition] = percent_difference(before[statistic], after[statistic])[covered]
    return pd.DataFrame(columns)


def global_md(folder: Path) -> pd.DataFrame:
    """Per series: the median MD of its brain mask, of the template's white and grey matter
    over the voxels whose MD is finite and positive in all four template-space maps, and the
    participant level's own tissue medians (:data:`TISSUE_MEASURES`)."""
    from nilearn.image import resample_to_img

    from bids_ketamine.resources import get_template

    maps, rows = {}, {}
    for year in YEARS:
        for acquisition in ACQUISITIONS:
            stem = _series(folder, year, acquisition)
            md = nib.load(stem + "space-dwi_model-tensor_param-md_dwimap.nii.gz").get_fdata()
            brain = nib.load(stem + "space-dwi_desc-brain_mask.nii.gz").get_fdata() > 0
            rows[(year, acquisition)] = {"brain_mask": float(np.median(md[brain]))}
            tissues = pd.read_csv(stem + "model-tensor_tissuestats.tsv", sep="\t").query("param == 'md'")
            for tissue, median in zip(tissues["tissue"], tissues["median"]):
                rows[(year, acquisition)][f"tissue_{tissue}"] = float(median)
            maps[(year, acquisition)] = nib.load(stem + "space-MNI152NLin2009aSym_model-tensor_param-md_dwimap.nii.gz")
    grid = next(iter(maps.values()))
    values = {key: image.get_fdata() for key, image in maps.items()}
    measured = np.all([np.isfinite(v) & (v > 0) for v in values.values()], axis=0)
    template = get_template("MNI152NLin2009aSym")
    for tissue, threshold in (("wm", 0.9), ("gm", 0.6)):
        probability = resample_to_img(str(getattr(template, tissue)), grid, interpolation="linear",
                                      force_resample=True, copy_header=True).get_fdata()
        voxels = measured & (probability >= threshold)
        for key, md in values.items():
            rows[key][f"template_{tissue}"] = float(np.median(md[voxels]))
            rows[key][f"template_{tissue}_voxels"] = int(voxels.sum())
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["year", "acquisition"])


def noise_levels(folder: Path) -> dict:
    """Per series, from the participant level's outputs, inside its brain mask: the median MP-PCA
    noise level, the median mean b=0 over it (b=0 SNR) and the median of the mean DW image over
    it (DW SNR): whether the years differ in the noise floor that biases MD (Rician bias of a
    signal at SNR s: about 1 / (2 s^2))."""
    levels = {}
    for year in YEARS:
        for acquisition in ACQUISITIONS:
            stem = _series(folder, year, acquisition)
            brain = nib.load(stem + "space-dwi_desc-brain_mask.nii.gz").get_fdata() > 0
            noise = float(np.median(nib.load(stem + "space-dwi_model-mppca_param-noise_dwimap.nii.gz").get_fdata()[brain]))
            b0 = nib.load(stem + "space-dwi_desc-b0_dwiref.nii.gz").get_fdata()
            dwi = nib.load(stem + "space-dwi_desc-preproc_dwi.nii.gz")
            weighted = np.loadtxt(stem + "space-dwi_desc-preproc_dwi.bval") > 50
            mean_dw = np.asarray(dwi.dataobj, dtype=np.float32)[..., weighted].mean(axis=-1)
            levels[f"{year}_{acquisition}"] = {"noise": round(noise, 2),
                                               "b0_snr": round(float(np.median(b0[brain])) / noise, 1),
                                               "dw_snr": round(float(np.median(mean_dw[brain])) / noise, 1)}
    return levels


def summarise(table: pd.DataFrame, shift: pd.DataFrame) -> dict:
    """Per statistic: the ROI differences, raw and net of each global shift, with their
    mean absolute value, largest and count above :data:`LIMIT_PCT`."""
    global_shift = {acquisition: {measure: percent_difference(shift.loc[(YEARS[0], acquisition), measure],
                                                              shift.loc[(YEARS[1], acquisition), measure])
                                  for measure in GLOBAL_MEASURES}
                    for acquisition in ACQUISITIONS}
    results = {"global_shift_pct": global_shift, "global_md": shift.reset_index().to_dict(orient="records"),
               "statistics": {}}
    for statistic in STATISTICS:
        if statistic not in table.columns:
            continue
        raw = roi_differences(table, statistic)
        frames = {"raw": raw, **{f"net_of_{measure}_shift": raw - pd.Series({a: global_shift[a][measure]
                                                                             for a in ACQUISITIONS})
                                 for measure in GLOBAL_MEASURES}}
        results["statistics"][statistic] = {
            name: {"by_roi_pct": frame.round(2).to_dict(), "mean_abs_pct": round(float(frame.abs().stack().mean()), 2),
                   "largest_pct": round(float(frame.abs().stack().max()), 2),
                   "above_limit": int((frame.abs() > LIMIT_PCT).sum().sum()), "n": int(frame.notna().sum().sum())}
            for name, frame in frames.items()}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workdir", type=Path, default=Path("real_retest"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder = run_participant(args.data, args.workdir)
    results = summarise(roi_table(folder), global_md(folder))
    results["noise_levels"] = noise_levels(folder)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"global_shift_pct": results["global_shift_pct"], "noise_levels": results["noise_levels"],
                      **{s: {k: {m: v[m] for m in ("mean_abs_pct", "largest_pct", "above_limit")}
                             for k, v in r.items()} for s, r in results["statistics"].items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
