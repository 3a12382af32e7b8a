"""``bids-ketamine-demo``: the whole app on a built-in simulated trial.

Simulates a two-arm trial (``bids-ketamine-simulate``), runs the participant level on every
subject, then the group level, prints where the reports are and the group level's treatment x
MD-change interaction next to the simulator's truth.  The participant level runs as
``--nprocs`` concurrent single-process jobs (:func:`_run_participant_jobs`).  Rerunning with
the same ``--nprocs`` reuses the simulated dataset and the nipype work directories, so an
interrupted demo resumes.

The default demo is about a third of the ``--full`` work: 8 participants of the
``demo`` acquisition (4 mm, 15 volumes), a wide spread of MD change so that 8 participants
estimate the interaction, and the interaction model without covariates.  ``--full`` runs
12 participants of the ``small`` acquisition with the default models (about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class DemoSize:
    """How big a demo is: what is simulated and which group options are used."""

    n_subjects: int
    preset: str
    simulate_options: tuple = ()
    group_options: tuple = ()


#: The default demo.
QUICK = DemoSize(
    n_subjects=8, preset="demo",
    simulate_options=("--arm-ratio", "1:1", "--md-change-ketamine", "-3", "8",
                      "--md-change-saline", "0", "8"),
    group_options=("--covariates",),
)
#: ``--full``: the size of the reference demo.
FULL = DemoSize(n_subjects=12, preset="small")


def build_parser() -> argparse.ArgumentParser:
    """The demo's parser."""
    parser = argparse.ArgumentParser(
        prog="bids-ketamine-demo",
        description="Simulate a ketamine/saline DTI trial and run bids-ketamine on it end to end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_root", type=Path, nargs="?", default=Path("demo_output"),
                        help="folder for the simulated dataset (bids/), outputs (derivatives/) and work/")
    parser.add_argument("--full", action="store_true",
                        help=f"{FULL.n_subjects} participants of the '{FULL.preset}' acquisition and "
                             f"the default models (about 20 min on 2 cores) instead of "
                             f"{QUICK.n_subjects} of the '{QUICK.preset}' acquisition")
    parser.add_argument("--n-subjects", type=int, default=None,
                        help=f"participants to simulate (default {QUICK.n_subjects}, "
                             f"{FULL.n_subjects} with --full)")
    parser.add_argument("--seed", type=int, default=2023, help="simulation seed")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1,
                        help="participant-level jobs run at once (one process each)")
    return parser


def _run(argv: list[str], entry) -> None:
    """Run a console entry point in-process; stop the demo if it fails."""
    print("$ " + " ".join(argv), flush=True)
    try:
        entry(argv[1:])
    except SystemExit as done:
        if done.code not in (0, None):
            sys.exit(f"bids-ketamine-demo: '{argv[0]}' failed with status {done.code}")


def _run_participant_jobs(bids_dir: Path, out_dir: Path, work_dir: Path, n_jobs: int) -> None:
    """The participant level as ``n_jobs`` concurrent single-process jobs, as a job array runs it.

    Participants are dealt round-robin to the jobs; each job runs its participants one after
    the other with nipype's Linear plugin into the shared output folder, its log in
    ``work_dir/job-<k>.log``.  On 2 cores this takes about half the time of one
    ``--nprocs 2`` run of the same participants: MultiProc's scheduler adds about 20 s per
    participant of this size (measured: 49 s with MultiProc, 29 s with Linear, one core).
    Progress is read from the outputs: ROI tables written, then reports.
    """
    import subprocess

    participants = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    groups = [participants[k::n_jobs] for k in range(n_jobs) if participants[k::n_jobs]]
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for k, labels in enumerate(groups, start=1):
        argv = ["bids-ketamine", str(bids_dir), str(out_dir), "participant", "--participant-label",
                *labels, "-w", str(work_dir / f"job-{k}"), "--plugin", "Linear", "--nprocs", "1",
                "--omp-nthreads", "1"]
        log = work_dir / f"job-{k}.log"
        print("$ " + " ".join(argv) + f"  > {log}", flush=True)
        with open(log, "w") as stream:
            jobs.append((subprocess.Popen([sys.executable, "-m", "bids_ketamine", *argv[1:]],
                                          stdout=stream, stderr=subprocess.STDOUT), log))
    n_series = len(list(bids_dir.glob("sub-*/**/dwi/*_dwi.nii*")))
    reported = None
    while any(job.poll() is None for job, _ in jobs):
        time.sleep(2)
        tables = len(list(out_dir.glob("sub-*/**/dwi/*_roistats.tsv")))
        reports = sum((out_dir / f"sub-{label}.html").exists() for label in participants)
        if (tables, reports) != reported:
            reported = (tables, reports)
            print(f"  ROI tables {tables}/{n_series}, participant reports {reports}/{len(participants)}",
                  flush=True)
    failed = [log for job, log in jobs if job.returncode != 0]
    if failed:
        tail = "\n".join(failed[0].read_text().splitlines()[-15:])
        sys.exit(f"{tail}\nbids-ketamine-demo: the participant level failed; see {', '.join(map(str, failed))}")


def interaction_versus_truth(bids_dir: Path, out_dir: Path, outcome: str = "madrs",
                             param: str = "md"):
    """The group level's interaction estimates next to the simulator's truth, per ROI.

    Parameters
    ----------
    bids_dir : Path
        A dataset written by ``bids-ketamine-simulate`` (truth in ``sourcedata/simulation``).
    out_dir : Path
        The app's output folder after the group level.
    outcome, param : str
        The outcome and the imaging parameter of the interaction model.

    Returns
    -------
    pandas.DataFrame
        One row per ROI: ``estimate``, ``conf_low``, ``conf_high``, ``n_obs`` (from
        ``group/models.tsv``), ``true_md_estimate`` (the same model, with the same
        covariates, fitted to the simulator's true ROI MD changes: what a perfect pipeline
        would give) and ``generative`` (the simulator's interaction coefficient; the per-ROI
        model also absorbs the ROIs whose changes correlate with it).
    """
    import pandas as pd

    from bids_ketamine.group import models

    group_dir = out_dir / "group"
    truth_dir = bids_dir / "sourcedata" / "simulation"
    table = pd.read_csv(group_dir / "models.tsv", sep="\t")
    term = f"treatment:{param}_change"
    rows = table.loc[(table["model"] == "interaction") & (table["measure"] == "change")
                     & (table["param"] == param) & (table["outcome"] == outcome)
                     & (table["term"] == term)].set_index("roi")
    covariates = json.loads((group_dir / "models.json").read_text())["covariates"][outcome]
    generative = json.loads((truth_dir / "truth.json").read_text())["outcome_model"]["outcomes"][outcome]
    true_changes = pd.read_csv(truth_dir / "truth.tsv", sep="\t")
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t").set_index("participant_id")
    first_followup = true_changes["session_id"] == true_changes["session_id"].iloc[0]
    out = rows[["estimate", "conf_low", "conf_high", "n_obs"]].copy()
    for roi in out.index:
        frame = true_changes.loc[first_followup & (true_changes["roi"] == roi)].set_index("participant_id")
        frame = frame.join(participants.drop(columns="group"))
        frame["treatment"] = (frame["group"] == "ketamine").astype(float)
        frame, terms, _ = models.encode_covariates(frame, list(covariates))
        fitted = models.fit_ols(frame, f"{outcome}_change", models.interaction_terms(param, terms))
        out.loc[roi, "true_md_estimate"] = fitted.set_index("term").loc[term, "estimate"]
        out.loc[roi, "generative"] = generative["interaction"].get(roi, 0.0)
    return out


def print_interaction_versus_truth(bids_dir: Path, out_dir: Path, outcome: str = "madrs") -> None:
    """Print :func:`interaction_versus_truth` as a table."""
    table = interaction_versus_truth(bids_dir, out_dir, outcome)
    n_obs = int(table["n_obs"].max()) if len(table) else 0
    print(f"\nGroup result: {outcome} change ~ treatment x MD change, {n_obs} participants "
          f"(interaction in {outcome} points per um^2/ms of MD change)")
    print(f"  {'ROI':<15}{'estimate [95% CI]':>26}{'from true MD':>15}{'simulated':>12}")
    for roi, row in table.iterrows():
        interval = f"{row['estimate']:.0f} [{row['conf_low']:.0f}, {row['conf_high']:.0f}]"
        print(f"  {roi:<15}{interval:>26}{row['true_md_estimate']:>15.0f}{row['generative']:>12.0f}")
    print("  'from true MD': the same model on the simulator's true ROI MD changes; 'simulated': "
          "the simulator's coefficient (a one-ROI model also picks up correlated ROIs).")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``bids-ketamine-demo``."""
    from bids_ketamine.cli import run as app
    from bids_ketamine.cli import simulate

    args = build_parser().parse_args(argv)
    size = FULL if args.full else QUICK
    n_subjects = args.n_subjects or size.n_subjects
    root = args.output_root.absolute()
    bids_dir, out_dir, work_dir = root / "bids", root / "derivatives" / "bids_ketamine", root / "work"
    started = time.time()
    if not (bids_dir / "dataset_description.json").exists():
        _run(["bids-ketamine-simulate", str(bids_dir), "--n-subjects", str(n_subjects),
              "--seed", str(args.seed), "--preset", size.preset, *size.simulate_options],
             simulate.main)
    else:
        print(f"Reusing the simulated dataset in {bids_dir}")
    common = [str(bids_dir), str(out_dir)]
    _run_participant_jobs(bids_dir, out_dir, work_dir, max(1, args.nprocs))
    _run(["bids-ketamine", *common, "group", *size.group_options], app.main)
    print_interaction_versus_truth(bids_dir, out_dir)
    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min.")
    print("Reports:")
    for report in sorted(out_dir.glob("sub-*.html")) + [out_dir / "group" / "report.html"]:
        print(f"  {report}")
    print(f"Group tables: {out_dir / 'group' / 'models.tsv'}, {out_dir / 'group' / 'change.tsv'}")
    print(f"Ground truth: {bids_dir / 'sourcedata' / 'simulation' / 'truth.tsv'}")


if __name__ == "__main__":  # pragma: no cover
    main()
