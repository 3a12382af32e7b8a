"""The participant level run in-process through the command line, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_ketamine.cli.run import main


def run_participant(bids_dir: Path, out_dir: Path, work_dir: Path, *extra: str) -> None:
    with pytest.raises(SystemExit) as done:
        main([str(bids_dir), str(out_dir), "participant", "-w", str(work_dir), "--nprocs", "2",
              "--omp-nthreads", "1", *extra])
    assert done.value.code == 0, f"participant level failed with status {done.value.code}"
