#!/usr/bin/env python
"""Cost of the progress display (issue 18) against the run it reports on.

Measured, in this process:

- ``count_s``: :func:`bids_ketamine.utils.workflow_progress.expected_nodes` on the real participant
  workflow of ``--n-subjects`` participants (every one built from the series of the given
  dataset's first participant), once per run;
- ``per_event_us``: one nipype ``status_callback`` call of :class:`WorkflowProgress` (the full
  event stream of that workflow, "start" then "end" for every node), in each display mode;
- ``heartbeat_cpu_s_per_hour``: CPU time of the display's background thread (bar redrawn once a
  second; log mode checks every 15 s), measured over ``--idle-s`` seconds;
- group level: one ``progress`` call of :func:`predict_outcome` against one outer-fold fit.

The overhead of a run is (``count_s`` + events x ``per_event_us`` + heartbeat CPU) / run time,
with the run time of a measured participant run (``--run-s``, default: the 1-subject small-preset
run of ``results/participant_small.json``, scaled by the number of participants).

Usage::

    python benchmarks/progress_benchmark.py BIDS_DIR [--n-subjects 12]

Result: ``results/progress.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _workflow(bids_dir: Path, n_subjects: int, work_dir: Path):
    from bids_ketamine.bids import collect_dwi, load_layout
    from bids_ketamine.cli.parser import parse_args
    from bids_ketamine.workflows.base import init_bids_ketamine_wf

    config = parse_args([str(bids_dir), str(work_dir / "out"), "participant"]).replace(
        work_dir=work_dir)
    series = next(iter(collect_dwi(load_layout(bids_dir), (), (), {}).values()))
    subjects = {f"{i:02d}": series for i in range(1, n_subjects + 1)}
    workflow, _, _ = init_bids_ketamine_wf(config, subjects)
    return workflow


class _Node:
    def __init__(self, fullname):
        self.fullname = fullname


def _event_cost(nodes: dict, mode: str, repeats: int) -> float:
    """Microseconds per status_callback call, over ``repeats`` full event streams."""
    from bids_ketamine.utils.workflow_progress import WorkflowProgress

    events = [(_Node(name), status) for name in nodes for status in ("start", "end")]
    elapsed = 0.0
    for _ in range(repeats):
        reporter = WorkflowProgress(nodes, mode=mode, stream=io.StringIO(), heartbeat=False)
        started = time.perf_counter()
        for node, status in events:
            reporter(node, status)
        elapsed += time.perf_counter() - started
        reporter.close()
    return elapsed / (repeats * len(events)) * 1e6


def _heartbeat_cpu(mode: str, idle_s: float) -> float:
    """CPU seconds per hour used by the display's thread while nothing happens."""
    from bids_ketamine.utils.progress import Progress

    before = time.thread_time()
    baseline = time.process_time()
    bar = Progress("idle", 100, mode=mode, stream=io.StringIO())
    time.sleep(idle_s)
    bar.close()
    used = time.process_time() - baseline - (time.thread_time() - before)
    return used / idle_s * 3600


def _group_cost(repeats: int) -> dict:
    from bids_ketamine.group import prediction
    from bids_ketamine.utils.progress import StageProgress

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 15))
    y = X[:, 0] + rng.normal(size=60)
    names = [f"f{i}" for i in range(15)]
    calls = []
    started = time.perf_counter()
    prediction.predict_outcome(X, y, names, n_permutations=10, seed=0,
                               progress=lambda *a: calls.append(a))
    run_s = time.perf_counter() - started
    fits = calls[-1][2]
    started = time.perf_counter()
    for _ in range(repeats):  # a display opened, fed the whole run's calls, closed
        reporter = StageProgress("prediction", unit="fit", mode="bar", stream=io.StringIO(),
                                 heartbeat=False)
        for call in calls:
            reporter(*call)
        reporter.close()
    per_call_us = (time.perf_counter() - started) / (repeats * len(calls)) * 1e6
    return {"fits": fits, "calls": len(calls), "per_fit_s": run_s / fits,
            "per_call_us": per_call_us,
            "overhead_percent": 100 * per_call_us * 1e-6 * len(calls) / run_s}


def replay_eta(work_dir: Path, nodes: dict) -> dict:
    """The ETA shown along a finished run, replayed from its node start/end times.

    Every node's result file in ``work_dir`` holds when it started and ended; those events are
    fed to :class:`WorkflowProgress` in time order with a clock set to each event, and the ETA
    shown is compared with the time the run actually still took.  ``nodes`` are the expected
    nodes of the same workflow (:func:`expected_nodes`).
    """
    from datetime import datetime

    from nipype.pipeline.engine.utils import load_resultfile

    from bids_ketamine.utils.workflow_progress import WorkflowProgress

    events = []
    for path in sorted((work_dir / "bids_ketamine_wf").glob("**/result_*.pklz")):
        runtime = load_resultfile(str(path)).runtime
        name = "bids_ketamine_wf." + ".".join(path.parent.relative_to(
            work_dir / "bids_ketamine_wf").parts)
        for status, stamp in (("start", runtime.startTime), ("end", runtime.endTime)):
            events.append((datetime.fromisoformat(stamp).timestamp(), status == "end", name,
                           status))
    events.sort()
    first, last = events[0][0], events[-1][0]
    clock = {"now": first}
    reporter = WorkflowProgress(nodes, mode="off", clock=lambda: clock["now"], heartbeat=False)
    samples = []
    for stamp, _, name, status in events:
        clock["now"] = stamp
        reporter(_Node(name), status)
        eta = reporter.progress.eta()
        if eta is not None and stamp < last:
            samples.append(((stamp - first) / (last - first), eta, last - stamp))
    table = {}
    for fraction in (0.1, 0.25, 0.5, 0.75, 0.9):
        _, eta, truth = min(samples, key=lambda s: abs(s[0] - fraction))
        table[f"{fraction:.0%} elapsed"] = {"eta_s": round(eta, 1), "true_left_s": round(truth, 1)}
    return {"run_s": round(last - first, 1), "events": len(events), "eta_vs_truth": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--run-s", type=float, default=None,
                        help="participant-level run time of ONE participant (seconds)")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/progress_benchmark"))
    parser.add_argument("--replay", type=Path, default=None, metavar="WORK_DIR",
                        help="work directory of a finished participant run of BIDS_DIR's first "
                        "participant (1 subject): replay it to compare the ETA with the truth")
    args = parser.parse_args()
    logging.getLogger("bids_ketamine.progress").disabled = True  # time the reporter, not I/O

    from bids_ketamine.utils.workflow_progress import expected_nodes

    workflow = _workflow(args.bids_dir, args.n_subjects, args.work_dir)
    started = time.perf_counter()
    nodes = expected_nodes(workflow)
    count_s = time.perf_counter() - started
    per_event = {mode: _event_cost(nodes, mode, repeats=5) for mode in ("bar", "log", "off")}
    heartbeat = {mode: _heartbeat_cpu(mode, args.idle_s) for mode in ("bar", "log")}
    if args.run_s is None:
        small = json.loads((HERE / "results" / "participant_small.json").read_text())
        args.run_s = small["wall_s"]
    # conservative: as if two participants ran in the time of one (a shorter run, a larger share)
    run_s = args.run_s * args.n_subjects / 2
    events = 2 * len(nodes)
    worst = max(per_event.values()) * 1e-6 * events + count_s + \
        max(heartbeat.values()) * run_s / 3600
    record = {
        "n_subjects": args.n_subjects,
        "nodes": len(nodes),
        "events": events,
        "count_s": round(count_s, 4),
        "per_event_us": {k: round(v, 1) for k, v in per_event.items()},
        "heartbeat_cpu_s_per_hour": {k: round(v, 3) for k, v in heartbeat.items()},
        "participant_run_s": round(run_s, 1),
        "participant_overhead_s": round(worst, 4),
        "participant_overhead_percent": round(100 * worst / run_s, 4),
        "group": {k: (round(v, 6) if isinstance(v, float) else v)
                  for k, v in _group_cost(repeats=20).items()},
    }
    if args.replay:
        one = expected_nodes(_workflow(args.bids_dir, 1, args.work_dir))
        record["eta_replay"] = replay_eta(args.replay, one)
    out = HERE / "results" / "progress.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
