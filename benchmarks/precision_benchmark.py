"""Precision of the longitudinal ROI MD change on the harder simulator (issue 20).

For each motion level, simulates a trial with ``--effect-model blobs`` (the MD change as smooth
blobs off the ROI centres plus a gradient, repositioning SD 2 mm / 2 degrees clipped at 5), and
the same subjects again with ``--null`` (no change), runs the participant level on both, and
compares every ROI statistic's recovered change with the *ideal* change of the app's ROI (the
true change averaged over the ROI's grey matter, :func:`bids_ketamine.simulate.effects.ideal_label_change`,
written to truth.tsv by the simulator).

Statistics compared:

- ``mean``, ``median``, ``gm_weighted_mean``, ``pv_gm``, ``roi_gm_weighted_mean``, ``roi_gm_weighted_median``: the ROI table's columns (voxel
  selection shared by the sessions);
- ``session_mean``, ``session_median``: the previous rule (each session excludes CSF by its own
  MD inside its own mask), recomputed from the same outputs.

Per statistic: r(recovered, ideal) pooled over participants x ROIs and per ROI, residual SD
(recovered - ideal, percent of MD), and on the null run the SD and the largest absolute false
change (percent of MD).  Results: ``results/precision.json`` and ``results/precision.md``.

Usage::

    python benchmarks/precision_benchmark.py --n-subjects 12 --motion moderate heavy
    python benchmarks/precision_benchmark.py --n-subjects 3 --motion moderate --workdir /tmp/prec
    python benchmarks/precision_benchmark.py --evaluate-only --workdir /tmp/prec   # recompute tables
    python benchmarks/precision_benchmark.py --n-subjects 6 --motion moderate --t1w 2   # T1w path
    python benchmarks/precision_benchmark.py --motion-sampling exact   # no simulator interpolation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.simulate.session import DEFAULT_MOTION_SAMPLING, MOTION_SAMPLING
from participant_runs import participant_level_done  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results"
#: Per-volume motion scale (simulator ``--motion``) of each level; mean FD of the pipeline's
#: motion estimates is reported with the results (moderate about 0.9 mm, heavy about 3.5 mm).
MOTION_LEVELS = {"moderate": 0.32, "heavy": 1.25}
STATISTICS = ("mean", "median", "gm_weighted_mean", "pv_gm", "roi_gm_weighted_mean",
              "roi_gm_weighted_median", "session_mean", "session_median")


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def simulate_and_run(run_dir: Path, level: str, n_subjects: int, seed: int, preset: str, nprocs: int,
                     simulator_options: list[str]) -> Path:
    """Simulate one trial of a motion level into ``run_dir/bids`` (the harder simulator's settings
    plus ``simulator_options``) and run the participant level into ``run_dir/out``; each step
    is skipped when its outputs exist (the participant level: :func:`participant_level_done`)."""
    bids, out = run_dir / "bids", run_dir / "out"
    if not (bids / "sourcedata" / "simulation" / "truth.tsv").exists():
        _run([sys.executable, "-m", "bids_ketamine.cli.simulate", str(bids), "--overwrite",
              "--n-subjects", str(n_subjects), "--seed", str(seed), "--preset", preset,
              "--effect-model", "blobs", "--repositioning", "2", "2",
              "--motion", str(MOTION_LEVELS[level]), "--quiet", *simulator_options])
    if not participant_level_done(bids, out):
        _run([sys.executable, "-m", "bids_ketamine.cli.run", str(bids), str(out), "participant",
              "-w", str(run_dir / "work"), "--nprocs", str(nprocs), "--omp-nthreads", "1"])
    return run_dir


def simulate_and_process(workdir: Path, level: str, n_subjects: int, seed: int, preset: str,
                         nprocs: int, t1w_mm: float | None = None,
                         motion_sampling: str = DEFAULT_MOTION_SAMPLING) -> dict[str, Path]:
    """Simulate the change and null trials of one motion level and run the participant level
    (with ``t1w_mm``, each session also has a T1w of that voxel size: the T1w path;
    ``motion_sampling``: the simulator's ``--motion-sampling``)."""
    options = ["--motion-sampling", motion_sampling] + (["--t1w", str(t1w_mm)] if t1w_mm else [])
    return {condition: simulate_and_run(workdir / f"{level}_{condition}", level, n_subjects, seed, preset,
                                        nprocs, options + (["--null"] if condition == "null" else []))
            for condition in ("change", "null")}


def session_rule_table(run_dir: Path, subject: str, session: str) -> pd.DataFrame:
    """The MD ROI table under the previous rule: CSF excluded by the session's own MD, own mask."""
    import nibabel as nib

    from bids_ketamine.dwi.roi import roi_statistics

    dwi = run_dir / "out" / f"sub-{subject}" / f"ses-{session}" / "dwi"
    prefix = f"sub-{subject}_ses-{session}"

    def load(path):
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)

    md = load(dwi / f"{prefix}_space-dwi_model-tensor_param-md_dwimap.nii.gz")
    mask = load(dwi / f"{prefix}_space-dwi_desc-brain_mask.nii.gz") > 0
    dseg = load(dwi / f"{prefix}_space-dwi_atlas-ketamine7_dseg.nii.gz").astype(int)
    labels = pd.read_csv(dwi / f"{prefix}_space-dwi_atlas-ketamine7_dseg.tsv", sep="\t")
    key = f"s{subject}_ses{session}"
    gm_files = list((run_dir / "work").glob(f"bids_ketamine_wf/sub_{subject}_wf/gm_to_native_{key}/warped.nii.gz"))
    gm = load(gm_files[0]) if gm_files else None
    return roi_statistics({"md": md}, dseg, labels, mask, gm_probability=gm)


def recovered_changes(run_dir: Path) -> tuple[pd.DataFrame, float]:
    """Per participant and ROI: baseline and follow-up of every statistic, and the mean FD."""
    rows, fd = [], []
    truth = pd.read_csv(run_dir / "bids" / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
    sessions = json.loads((run_dir / "bids" / "sourcedata" / "simulation" / "truth.json").read_text())
    baseline, followup = sessions["design"]["sessions"][:2]
    for subject in sorted(p.name[4:] for p in (run_dir / "out").glob("sub-*") if p.is_dir()):
        values = {}
        for session in (baseline, followup):
            dwi = run_dir / "out" / f"sub-{subject}" / f"ses-{session}" / "dwi"
            table = pd.read_csv(next(dwi.glob("*_roistats.tsv")), sep="\t")
            table = table[table["param"] == "md"].set_index("roi")
            own = session_rule_table(run_dir, subject, session).set_index("roi")
            table["session_mean"], table["session_median"] = own["mean"], own["median"]
            values[session] = table
            motion = pd.read_csv(next(dwi.glob("*_desc-motion_timeseries.tsv")), sep="\t")
            column = [c for c in motion.columns if "framewise" in c.lower()]
            if column:
                fd.append(float(motion[column[0]].mean()))
        for roi in values[baseline].index:
            row = {"participant_id": f"sub-{subject}", "roi": roi}
            for stat in STATISTICS:
                before, after = values[baseline].at[roi, stat], values[followup].at[roi, stat]
                row[stat] = 100.0 * (after - before) / before
            row["excluded_fraction_change"] = (values[followup].at[roi, "excluded_fraction"]
                                               - values[baseline].at[roi, "excluded_fraction"])
            rows.append(row)
    table = pd.DataFrame(rows).merge(truth[["participant_id", "roi", "md_change_pct"]],
                                     on=["participant_id", "roi"])
    return table.rename(columns={"md_change_pct": "ideal"}), float(np.mean(fd)) if fd else float("nan")


def summarise(change: pd.DataFrame, null: pd.DataFrame) -> list[dict]:
    """The issue's table: r pooled and per ROI, residual SD, null SD and worst (percent of MD)."""
    out = []
    for stat in STATISTICS:
        pooled = change[[stat, "ideal"]].dropna()
        per_roi = {roi: float(np.corrcoef(rows[stat], rows["ideal"])[0, 1])
                   for roi, rows in change.groupby("roi") if rows[stat].notna().sum() > 2}
        ideal_sd = change.groupby("roi")["ideal"].std()
        # the per-ROI criterion applies where the ideal change varies by >= 1 % of MD
        varying = [per_roi[roi] for roi in per_roi if ideal_sd.get(roi, 0.0) >= 1.0]
        residual = (change[stat] - change["ideal"]).groupby(change["roi"]).std(ddof=1)
        false = null[["roi", stat]].dropna()
        worst = false.loc[false[stat].abs().idxmax()] if len(false) else None
        out.append({
            "statistic": stat,
            "n": int(len(pooled)),
            "r_pooled": float(np.corrcoef(pooled[stat], pooled["ideal"])[0, 1]),
            "r_min_roi": min(per_roi.values()) if per_roi else float("nan"),
            "r_per_roi": per_roi,
            "r_min_roi_varying": min(varying) if varying else float("nan"),
            "ideal_sd_per_roi": ideal_sd.round(3).to_dict(),
            "residual_sd_per_roi": residual.round(3).to_dict(),
            "residual_sd_pct": float((pooled[stat] - pooled["ideal"]).std(ddof=1)),
            "null_sd_pct": float(np.sqrt(np.mean(false[stat] ** 2))) if len(false) else float("nan"),
            "null_worst_pct": float(abs(worst[stat])) if worst is not None else float("nan"),
            "null_worst_roi": str(worst["roi"]) if worst is not None else "",
        })
    return out


def markdown(results: dict) -> str:
    lines = ["| motion (mean FD) | subjects | statistic | r pooled | r worst ROI (ideal SD >= 1 %) | "
             "residual SD | null: false change SD, worst |", "|---|---|---|---|---|---|---|"]
    for level, entry in results["levels"].items():
        for row in entry["summary"]:
            lines.append(
                f"| {level} ({entry['mean_fd_mm']:.2f} mm) | {entry['n_subjects']} | {row['statistic']} | "
                f"{row['r_pooled']:.2f} | {row['r_min_roi']:.2f} ({row.get('r_min_roi_varying', float('nan')):.2f}) | "
                f"{row['residual_sd_pct']:.2f} % | "
                f"{row['null_sd_pct']:.2f} %, {row['null_worst_roi']} {row['null_worst_pct']:.2f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--motion", nargs="+", choices=list(MOTION_LEVELS), default=list(MOTION_LEVELS))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/precision_benchmark"))
    parser.add_argument("--evaluate-only", action="store_true",
                        help="only evaluate the runs already in --workdir")
    parser.add_argument("--t1w", type=float, metavar="MM", default=None,
                        help="simulate a T1w (voxel size MM) in each session: the T1w path, whose ROI "
                             "values use the participant's own tissue fractions; results precision_t1w.*")
    parser.add_argument("--motion-sampling", choices=MOTION_SAMPLING, default=DEFAULT_MOTION_SAMPLING,
                        help="the simulator's --motion-sampling; 'exact' samples the anatomy where the "
                             "moved head is (no simulator interpolation); results precision*_exact.*")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"preset": args.preset, "seed": args.seed, "t1w_mm": args.t1w,
               "motion_sampling": args.motion_sampling, "levels": {}}
    name = ("precision_t1w" if args.t1w else "precision") + (
        "" if args.motion_sampling == DEFAULT_MOTION_SAMPLING else f"_{args.motion_sampling}")
    for level in args.motion:
        started = time.time()
        if args.evaluate_only:
            runs = {c: args.workdir / f"{level}_{c}" for c in ("change", "null")}
        else:
            runs = simulate_and_process(args.workdir, level, args.n_subjects, args.seed, args.preset,
                                        args.nprocs, args.t1w, args.motion_sampling)
        change, fd = recovered_changes(runs["change"])
        null, _ = recovered_changes(runs["null"])
        change.to_csv(args.workdir / f"{level}_change.tsv", sep="\t", index=False)
        null.to_csv(args.workdir / f"{level}_null.tsv", sep="\t", index=False)
        results["levels"][level] = {
            "n_subjects": int(change["participant_id"].nunique()), "mean_fd_mm": fd,
            "motion_scale": MOTION_LEVELS[level], "wall_s": round(time.time() - started, 1),
            "summary": summarise(change, null),
        }
    write_results(args.results, name, results, markdown(results))
    return 0


def write_results(folder: Path, name: str, results: dict, text: str) -> None:
    """``folder/name.json`` (the results) and ``folder/name.md`` (``text``, also printed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
