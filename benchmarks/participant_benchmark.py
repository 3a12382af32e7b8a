"""Benchmark of the participant level: wall time per stage and peak memory.

Runs ``bids-ketamine BIDS_DIR OUT participant`` in a subprocess (so that its peak RSS is
measured with ``getrusage(RUSAGE_CHILDREN)``), then reads the wall time of every nipype node
from the work directory and adds them up per stage (node name without its series suffix).
Default: one simulated realistic-preset session (2 mm, 6 b=0 + 64 directions).

Usage::

    python benchmarks/participant_benchmark.py [--preset realistic|small] [--sessions 1|2]
        [--t1w MM] [--distortion HZ] [--nprocs 2] [--bids-dir DIR --participant-label LABEL]

Targets (issue "Performance"): the whole participant level of one realistic session in under
5 minutes wall on 2 cores, peak RSS under 4 GB.  Issue 19: a realistic 2-session subject with
a T1w in each session (``--sessions 2 --t1w 1``) in under 8 minutes, also with its
susceptibility distortion corrected (``--distortion 100``: reverse-PE b=0 volumes, PEPOLAR).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def stage_resources(work_dir: Path) -> dict[str, dict[str, float]]:
    """Per stage: node wall times summed, and the largest peak memory of its nodes (GB, from
    nipype's resource monitor; absent when it did not run), from the work directory's results."""
    from nipype.utils.filemanip import loadpkl

    seconds: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = {}
    for result_file in work_dir.rglob("result_*.pklz"):
        stage = re.sub(r"_s[0-9A-Za-z]+(_(ses|acq|dir|run)[0-9A-Za-z]+)*$", "", result_file.parent.name)
        try:
            runtime = loadpkl(result_file).runtime
        except Exception:  # noqa: BLE001 - a partial result file is skipped
            continue
        seconds[stage] += float(getattr(runtime, "duration", 0.0) or 0.0)
        peak = getattr(runtime, "mem_peak_gb", None)
        if peak is not None:
            memory[stage] = max(memory.get(stage, 0.0), float(peak))
    return {stage: {"wall_s": round(total, 1), "peak_gb": round(memory[stage], 2) if stage in memory else None}
            for stage, total in sorted(seconds.items(), key=lambda item: -item[1])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["small", "realistic"], default="realistic")
    parser.add_argument("--sessions", type=int, choices=[1, 2], default=1)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--bids-dir", type=Path, default=None, help="use this dataset instead of simulating")
    parser.add_argument("--participant-label", default="01")
    parser.add_argument("--session-label", default=None,
                        help="with --bids-dir: process this session only (default: all)")
    parser.add_argument("--t1w", type=float, default=None, metavar="MM",
                        help="simulate a T1w of this voxel size in each session (the anatomical path)")
    parser.add_argument("--distortion", type=float, default=None, metavar="HZ",
                        help="simulate a susceptibility field of this size with reverse-PE b=0 volumes "
                             "(the PEPOLAR correction runs)")
    parser.add_argument("--keep", type=Path, default=None, help="keep outputs in this folder")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="participant_benchmark_") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bids_dir = args.bids_dir
        if bids_dir is None:
            bids_dir = root / "bids"
            if not bids_dir.exists():
                subprocess.run(["bids-ketamine-simulate", str(bids_dir), "--n-subjects", "1", "--seed", "11",
                                "--preset", args.preset, "--quiet"]
                               + (["--t1w", str(args.t1w)] if args.t1w else [])
                               + (["--distortion", str(args.distortion), "--reverse-pe"] if args.distortion else []),
                               check=True)
        command = ["bids-ketamine", str(bids_dir), str(root / "out"), "participant", "-w", str(root / "work"),
                   "--participant-label", args.participant_label, "--nprocs", str(args.nprocs),
                   "--omp-nthreads", str(args.nprocs), "--resource-monitor"]
        if args.bids_dir is None and args.sessions == 1:
            command += ["--session-label", "pre"]
        elif args.session_label:
            command += ["--session-label", args.session_label]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr[-3000:])
            raise SystemExit(f"participant level failed with status {completed.returncode}")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        row = {
            "dataset": str(args.bids_dir or f"simulated {args.preset}"),
            "sessions": args.sessions if args.bids_dir is None else (args.session_label or "all"),
            "t1w_mm": args.t1w,
            "distortion_hz": args.distortion,
            "nprocs": args.nprocs,
            "wall_s": round(wall, 1),
            "peak_rss_gb": round(peak_gb, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "stages": stage_resources(root / "work"),
        }
    RESULTS.mkdir(exist_ok=True)
    name = "participant_" + (args.preset if args.bids_dir is None else Path(args.bids_dir).name)
    name += f"_{args.sessions}ses" if args.bids_dir is None and args.sessions == 2 else ""
    name += "_t1w" if args.t1w else ""
    name += "_pepolar" if args.distortion else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    print(f"participant level: {row['wall_s']} s wall, peak RSS {row['peak_rss_gb']} GB "
          f"(load average {row['load_avg_1min']})")
    print("| stage | wall (s, summed over nodes) | peak memory (GB, largest node) |\n|---|---:|---:|")
    for stage, usage in row["stages"].items():
        if usage["wall_s"] >= 0.5:
            print(f"| {stage} | {usage['wall_s']} | {usage['peak_gb']} |")
    return row


if __name__ == "__main__":
    main()
