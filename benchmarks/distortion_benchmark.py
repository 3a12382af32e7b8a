"""What susceptibility distortion does to the ROI MD, corrected or not (issue 19), with and without a T1w.

Simulates the same subjects twice (``--preset small`` by default, 3 mm; ``--preset realistic``,
2 mm; a 2 mm T1w per session, repositioning
SD 2 mm / 2 degrees): once distorted (``--distortion 100 --reverse-pe``: a field over the
frontal sinus and the temporal bones, up to 4.6 voxels of displacement in grey matter), once
not; runs the participant level on each through the T1w path and the DWI-only path
(``--ignore t1w``), the distorted data with the correction (PEPOLAR; ``distorted-gre``: the same
field with a GRE field map instead of the reverse phase-encoded b=0; ``t1w-syn``: fieldmap-less,
``--ignore fieldmaps --use-syn-sdc``) and without it (``--ignore fieldmaps``); and compares each
session's ROI MD (``--statistic``, default ``median``) with the truth, and the MD change across
participants with the true change.

Usage::

    python benchmarks/distortion_benchmark.py [--workdir /tmp/distortion] [--n-subjects 3] [--paths dwi-only ...]
    python benchmarks/distortion_benchmark.py --preset realistic --n-subjects 6 --workdir /tmp/distortion_2mm
    python benchmarks/distortion_benchmark.py --evaluate-only --workdir /tmp/distortion
    python benchmarks/distortion_benchmark.py --oracle --workdir /tmp/distortion

``--contrast`` regresses each session's ROI error on the ROI's true MD contrast with the grey
matter outside the ROIs (the step partial volume blurs). ``--oracle`` asks where each ROI's error comes from: the median of the pipeline's own MD map over
the pipeline's ROI labels, over the simulator's true labels on the same grid (no registration
error) and over the true labels' nearly pure grey-matter voxels (``desc-greymatter_dseg``), for
every ``out_<condition>_<path>`` folder beside its ``bids_<condition>`` (any simulation options).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.simulate import PRESETS
from participant_runs import participant_level_done  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results"
CONDITIONS = {"distorted": ["--distortion", "100", "--reverse-pe"],
              "distorted-gre": ["--distortion", "100", "--gre-fieldmap"], "undistorted": []}
#: Processing arms: the T1w path or the DWI-only path, each with the correction (when the data
#: have reverse phase-encoded b=0 images) or without it.
PATHS = {"t1w": [], "dwi-only": ["--ignore", "t1w"],
         "t1w-uncorrected": ["--ignore", "fieldmaps"], "dwi-only-uncorrected": ["--ignore", "t1w", "fieldmaps"],
         "t1w-syn": ["--ignore", "fieldmaps", "--use-syn-sdc"]}
#: Arms that only make sense on distorted data (on undistorted data they repeat an arm or correct nothing).
DISTORTED_ONLY = ("-uncorrected", "-syn")


def _run(command: list[str], log: Path | None = None) -> None:
    print("+", " ".join(command), flush=True)
    if log is None:
        subprocess.run(command, check=True)
        return
    with open(log, "w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)


def _arms(condition: str, paths) -> list[str]:
    """The arms run on a condition: on undistorted data "uncorrected" is the same run and "syn" pointless."""
    return [path for path in paths if condition.startswith("distorted") or not path.endswith(DISTORTED_ONLY)]


def simulate_and_process(workdir: Path, n_subjects: int, seed: int, paths=tuple(PATHS),
                         conditions=tuple(CONDITIONS), preset: str = "small") -> None:
    for condition in conditions:
        options = CONDITIONS[condition]
        bids = workdir / f"bids_{condition}"
        if not (bids / "sourcedata" / "simulation" / "truth.tsv").exists():
            _run([sys.executable, "-m", "bids_ketamine.cli.simulate", str(bids), "--overwrite", "--quiet",
                  "--n-subjects", str(n_subjects), "--seed", str(seed), "--preset", preset, "--t1w", "2",
                  "--repositioning", "2", "2", *options])
        for path in _arms(condition, paths):
            extra = PATHS[path]
            out = workdir / f"out_{condition}_{path}"
            if not participant_level_done(bids, out):
                _run([sys.executable, "-m", "bids_ketamine.cli.run", str(bids), str(out), "participant",
                      "-w", str(workdir / f"work_{condition}_{path}"), "--nprocs", "2", "--omp-nthreads", "1",
                      *extra], workdir / f"log_{condition}_{path}.txt")


def _md_rows(out: Path) -> pd.DataFrame | None:
    """The MD rows of every ROI table under one arm's output folder, with ``participant_id`` and
    ``session`` (label without ``ses-``); None when there is none yet."""
    tables = []
    for table_path in sorted(out.glob("sub-*/ses-*/dwi/*_roistats.tsv")):
        subject, session = table_path.name.split("_")[:2]
        table = pd.read_csv(table_path, sep="\t")
        tables.append(table[table["param"] == "md"].assign(participant_id=subject, session=session[4:]))
    return pd.concat(tables) if tables else None


def _finished_arms(workdir: Path):
    """``(output folder, condition)`` of every ``out_<condition>_<path>`` beside its ``bids_<condition>``."""
    for out in sorted(workdir.glob("out_*")):
        condition = next((bids.name[5:] for bids in workdir.glob("bids_*")
                          if out.name.startswith(f"out_{bids.name[5:]}_")), None)
        if condition is not None:
            yield out, condition


def evaluate(workdir: Path, statistic: str = "median") -> pd.DataFrame:
    """Per condition and path: the largest and median absolute ROI MD error (percent of the
    truth, both sessions) and r(recovered change, true change) pooled over participants x ROIs,
    for one ROI statistic (a column of the ROI tables)."""
    rows = []
    for condition in CONDITIONS:
        truth_file = workdir / f"bids_{condition}" / "sourcedata" / "simulation" / "truth.tsv"
        if not truth_file.exists():
            continue
        truth = pd.read_csv(truth_file, sep="\t")
        for path in _arms(condition, PATHS):
            md_rows = _md_rows(workdir / f"out_{condition}_{path}")
            if md_rows is None:
                continue
            wide = md_rows.pivot_table(index=["participant_id", "roi"], columns="session",
                                                 values=statistic).reset_index()
            merged = truth.merge(wide, on=["participant_id", "roi"])
            errors = pd.concat([merged["pre"] / merged["md_baseline"] - 1,
                                merged["post"] / merged["md_followup"] - 1]).abs() * 100
            by_roi = pd.concat([(merged["pre"] / merged["md_baseline"] - 1).abs(),
                                (merged["post"] / merged["md_followup"] - 1).abs()]).groupby(
                pd.concat([merged["roi"], merged["roi"]])).max() * 100
            change = merged["post"] - merged["pre"]
            field_error, field_error_large = _field_errors(workdir / f"bids_{condition}", workdir / f"out_{condition}_{path}")
            rows.append({"condition": condition, "path": path, "statistic": statistic, "n": len(merged),
                         "field_error_vox": field_error, "field_error_large_vox": field_error_large,
                         "max_error_pct": round(float(errors.max()), 2),
                         "median_error_pct": round(float(errors.median()), 2),
                         "worst_roi": str(by_roi.idxmax()),
                         "r_change": round(float(np.corrcoef(change, merged["md_change"])[0, 1]), 3),
                         "max_error_by_roi_pct": by_roi.round(2).to_dict()})
    return pd.DataFrame(rows)


def _field_errors(bids: Path, out: Path) -> tuple[float | None, float | None]:
    """Median over sessions of the median absolute displacement error (voxels) of the written field
    against the true field inside the true brain, and the same where the true displacement exceeds
    1 voxel; None without written fields."""
    import nibabel as nib

    from bids_ketamine.simulate.study import truth_map_paths

    overall, large = [], []
    for path in sorted(out.glob("sub-*/ses-*/fmap/*_desc-preproc_fieldmap.nii.gz")):
        subject, session = path.name.split("_")[0][4:], path.name.split("_")[1][4:]
        truth = truth_map_paths(bids, subject, session)
        true_field = nib.as_closest_canonical(nib.load(truth["fieldmap"])).get_fdata()
        brain = sum(nib.as_closest_canonical(nib.load(truth[t])).get_fdata() for t in ("gm", "wm", "csf")) > 0.5
        readout = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())["TotalReadoutTime"]
        error = np.abs(nib.load(path).get_fdata() - true_field)[brain] * readout
        overall.append(np.median(error))
        large.append(np.median(error[np.abs(true_field[brain]) * readout > 1.0]))
    if not overall:
        return None, None
    return round(float(np.median(overall)), 3), round(float(np.median(large)), 3)


def oracle_errors(workdir: Path) -> pd.DataFrame:
    """Per arm and ROI, the largest absolute error (percent of the truth, both sessions) of the
    median MD (0 < MD < 1.5) over the pipeline's labels, the true labels and the true labels'
    grey-matter voxels, and the mean Dice of the pipeline's labels with the true ones."""
    import nibabel as nib

    from bids_ketamine.simulate.study import truth_map_paths

    rows = []
    for out, condition in _finished_arms(workdir):
        bids = workdir / f"bids_{condition}"
        truth = pd.read_csv(bids / "sourcedata" / "simulation" / "truth.tsv",
                            sep="\t").set_index(["participant_id", "roi"])
        for folder in sorted(out.glob("sub-*/ses-*/dwi")):
            if not list(folder.glob("*_roistats.tsv")):  # not finished
                continue
            subject, session = folder.parts[-3], folder.parts[-2]
            stem = folder / f"{subject}_{session}_space-dwi_"
            md = nib.load(f"{stem}model-tensor_param-md_dwimap.nii.gz").get_fdata()
            labels = np.asarray(nib.load(f"{stem}atlas-ketamine7_dseg.nii.gz").dataobj)
            names = pd.read_csv(f"{stem}atlas-ketamine7_dseg.tsv", sep="\t").set_index("index")["name"]
            paths = truth_map_paths(bids, subject[4:], session[4:])
            true_labels, true_gm = (np.asarray(nib.as_closest_canonical(nib.load(paths[key])).dataobj)
                                    for key in ("rois", "roi_gm"))
            tissue = (md > 0) & (md < 1.5)
            column = "md_baseline" if session == "ses-pre" else "md_followup"
            for index, roi in names.items():
                true_md = truth.loc[(subject, roi), column]
                mine, theirs = labels == index, true_labels == index
                dice = 2 * (mine & theirs).sum() / (mine.sum() + theirs.sum())
                row = {"arm": out.name[4:], "roi": roi, "dice": dice}
                for key, voxels in (("pipeline_labels", mine), ("true_labels", theirs), ("true_gm", true_gm == index)):
                    row[key] = 100 * abs(np.median(md[voxels & tissue]) / true_md - 1)
                rows.append(row)
    table = pd.DataFrame(rows)
    return table.groupby(["arm", "roi"]).agg(dice=("dice", "mean"), pipeline_labels=("pipeline_labels", "max"),
                                             true_labels=("true_labels", "max"), true_gm=("true_gm", "max")).round(2)


#: ROI groups of :func:`contrast_regression`: thin cortical ROIs and compact subcortical ones.
ROI_GROUPS = {"BA10": ("BA10_L", "BA10_R"), "vACC": ("vACC",),
              "amygdala+hippocampus": ("amygdala_L", "amygdala_R", "hippocampus_L", "hippocampus_R")}


def contrast_regression(workdir: Path, statistic: str = "median") -> pd.DataFrame:
    """Per arm and ROI group, the least-squares slope and r of each session's ROI MD error (percent
    of the truth) on the ROI's true contrast with the rest of the grey matter (true ROI MD over the
    true MD of the grey matter outside the ROIs, minus 1, percent): how much of that step partial
    volume takes away (-1: all of it)."""
    rows = []
    for out, condition in _finished_arms(workdir):
        truth = pd.read_csv(workdir / f"bids_{condition}" / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
        md_rows = _md_rows(out)
        if md_rows is None:
            continue
        merged = md_rows.merge(truth, on=["participant_id", "roi"])
        baseline = ~merged["session"].isin(truth["session_id"].str[4:])  # truth rows are the follow-ups
        merged = merged[baseline | (merged["session"] == merged["session_id"].str[4:])]
        baseline = baseline[merged.index]
        true_md = np.where(baseline, merged["md_baseline"], merged["md_followup"])
        other_gm = np.where(baseline, merged["md_gm_outside_rois_baseline"], merged["md_gm_outside_rois_followup"])
        contrast, error = 100 * (true_md / other_gm - 1), 100 * (merged[statistic] / true_md - 1)
        for group, rois in ROI_GROUPS.items():
            inside = merged["roi"].isin(rois).to_numpy()
            slope = np.polyfit(contrast[inside], error[inside], 1)[0]
            rows.append({"arm": out.name[4:], "rois": group, "statistic": statistic, "slope": round(float(slope), 2),
                         "r": round(float(np.corrcoef(contrast[inside], error[inside])[0, 1]), 2),
                         "largest_error_pct": round(float(np.abs(error[inside]).max()), 2)})
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/distortion_benchmark"))
    parser.add_argument("--n-subjects", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--preset", choices=list(PRESETS), default="small",
                        help="simulator preset (bids_ketamine.simulate.PRESETS; default: small, 3 mm)")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="processing arms to run (default: all)")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS),
                        help="simulated data to run on (default: all; distorted-gre has a GRE field map and "
                             "no reverse phase-encoded b=0)")
    parser.add_argument("--statistic", default="median", help="ROI table column evaluated (default: median)")
    parser.add_argument("--results", type=Path, default=RESULTS / "distortion.json")
    parser.add_argument("--oracle", action="store_true",
                        help="print where each ROI's error comes from (labels, true labels, true grey matter) and stop")
    parser.add_argument("--contrast", action="store_true",
                        help="print how each ROI group's error follows its true contrast with the rest of the "
                             "grey matter (slope, r) and stop")
    args = parser.parse_args(argv)
    if args.contrast:
        table = contrast_regression(args.workdir, args.statistic)
        print(table.to_string(index=False))
        return table
    if args.oracle:
        table = oracle_errors(args.workdir)
        print(table.to_string())
        return table
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        simulate_and_process(args.workdir, args.n_subjects, args.seed, args.paths, args.conditions, args.preset)
    table = evaluate(args.workdir, args.statistic)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
    print(table.drop(columns=["max_error_by_roi_pct"]).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
