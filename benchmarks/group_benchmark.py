"""Benchmark of the group level: N participants x 7 ROIs x 2 outcomes (default N = 1000).

Writes a fabricated study (participants.tsv, sessions.tsv, 2 x N ROI tables; not timed),
then times :func:`bids_ketamine.group.run.run_group_level` with the default options
(interaction, simple-slope, percent-improvement and remission models, nested-CV elastic
net with permutations, figures).  Target: under 30 s on 2 cores for N = 1000.

Usage::

    python benchmarks/group_benchmark.py [--n-subjects 1000] [--nprocs 2] [--n-permutations 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=1000)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--n-permutations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from bids_ketamine.config import Config
    from bids_ketamine.group.run import run_group_level
    from bids_ketamine.group.synthetic import random_study, write_study

    with tempfile.TemporaryDirectory(prefix="group_benchmark_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_study(root / "bids", root / "out", *random_study(args.n_subjects, seed=args.seed))
        setup = time.perf_counter() - start
        config = Config(bids_dir=root / "bids", output_dir=root / "out", analysis_level="group",
                        nprocs=args.nprocs, n_permutations=args.n_permutations, seed=args.seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_group_level(config)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    row = {"n_subjects": args.n_subjects, "nprocs": args.nprocs,
           "n_permutations_requested": args.n_permutations, "setup_s": round(setup, 2),
           "group_level_wall_s": round(wall, 2),
           "main_process_cpu_s": round(cpu, 2),
           "peak_rss_gb": round(max(resource.getrusage(who).ru_maxrss
                                    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024**2, 2),
           "load_avg_1min": round(os.getloadavg()[0], 2), "n_figures": len(result["figures"])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"group_{args.n_subjects}.json").write_text(json.dumps(row, indent=2) + "\n")
    print("\t".join(row))
    print("\t".join(str(v) for v in row.values()))
    return row


if __name__ == "__main__":
    main()
