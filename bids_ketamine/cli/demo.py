"""``bids-ketamine-demo``: the whole app on a built-in simulated trial.

Simulates a small two-arm trial (``bids-ketamine-simulate``), runs the participant level on
every subject, then the group level, and prints where the reports are.  Rerunning reuses the
simulated dataset and the nipype work directory, so an interrupted demo resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The demo's parser."""
    parser = argparse.ArgumentParser(
        prog="bids-ketamine-demo",
        description="Simulate a small ketamine/saline DTI trial and run bids-ketamine on it end to end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_root", type=Path, nargs="?", default=Path("demo_output"),
                        help="folder for the simulated dataset (bids/), outputs (derivatives/) and work/")
    parser.add_argument("--n-subjects", type=int, default=12, help="participants to simulate")
    parser.add_argument("--seed", type=int, default=2023, help="simulation seed")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1, help="processes for nipype")
    return parser


def _run(argv: list[str], entry) -> None:
    """Run a console entry point in-process; stop the demo if it fails."""
    print("$ " + " ".join(argv), flush=True)
    try:
        entry(argv[1:])
    except SystemExit as done:
        if done.code not in (0, None):
            sys.exit(f"bids-ketamine-demo: '{argv[0]}' failed with status {done.code}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``bids-ketamine-demo``."""
    from bids_ketamine.cli import run as app
    from bids_ketamine.cli import simulate

    args = build_parser().parse_args(argv)
    root = args.output_root.absolute()
    bids_dir, out_dir, work_dir = root / "bids", root / "derivatives" / "bids_ketamine", root / "work"
    started = time.time()
    if not (bids_dir / "dataset_description.json").exists():
        _run(["bids-ketamine-simulate", str(bids_dir), "--n-subjects", str(args.n_subjects),
              "--seed", str(args.seed), "--preset", "small"], simulate.main)
    else:
        print(f"Reusing the simulated dataset in {bids_dir}")
    common = [str(bids_dir), str(out_dir)]
    _run(["bids-ketamine", *common, "participant", "-w", str(work_dir), "--nprocs", str(args.nprocs),
          "--omp-nthreads", "1"], app.main)
    _run(["bids-ketamine", *common, "group"], app.main)
    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min.")
    print("Reports:")
    for report in sorted(out_dir.glob("sub-*.html")) + [out_dir / "group" / "report.html"]:
        print(f"  {report}")
    print(f"Group tables: {out_dir / 'group' / 'models.tsv'}, {out_dir / 'group' / 'change.tsv'}")
    print(f"Ground truth: {bids_dir / 'sourcedata' / 'simulation' / 'truth.tsv'}")


if __name__ == "__main__":  # pragma: no cover
    main()
