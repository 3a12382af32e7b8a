"""Faults at the participant level: killed jobs, half-written files, reruns, determinism.

Jobs on clusters get killed; nothing may be lost, corrupted or silently wrong.  These tests
run the command line as a subprocess (as a scheduler would)::

    python -m bids_ketamine BIDS OUT participant -w WORK --nprocs N --omp-nthreads 1

on the smallest simulated dataset (``bids-ketamine-simulate --n-subjects 1 --seed 3
--preset demo``: one subject, two sessions, 4 mm), shared by the whole module:

(a) a run killed with SIGKILL mid-way and started again finishes, reuses the work
    directory (the nodes finished before the kill are not run again) and gives the ROI
    tables of an uninterrupted run (to 1e-6);
(b) no output is ever visible under its final name half-written: a thread polls the
    output folder during a run and every ``*.nii.gz`` that appears must load, every
    ``*.tsv`` parse and every ``*.json`` decode;
(c) a rerun over existing (and tampered) outputs rewrites them: no duplicated rows, no
    mix of old and new results;
(d) determinism and symmetry: a second, independent run with another process count
    (``--nprocs 1`` vs the reference's ``--nprocs 2``), of the dataset with its sessions
    renamed into each other (pre <-> post), gives the reference's ROI tables to the last
    digit, every column, with the sessions exchanged: the change flips its sign and nothing
    else (no session privileged), whatever the process count.

and, at the group level (fast, fabricated inputs), a rerun with other options replaces
every output of the previous run.

The participant-level tests are ``slow`` (several runs of a few minutes each).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from participant_runs import assert_same_tables, roistats_tables, swap_sessions, with_sessions_exchanged

from bids_ketamine.config import KETAMINE7_ROIS

REPO = Path(__file__).resolve().parents[1]
REGISTRATION = REPO / "bids_ketamine" / "dwi" / "registration.py"
RUN_TIMEOUT_S = 1800
#: Fraction of the uninterrupted run's finished nodes after which run (a) is killed.
KILL_AT_FRACTION = 0.5

#: Marks of the participant-level tests (whole runs of a few minutes each).
participant_level = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not REGISTRATION.exists(),
        reason=f"the participant level cannot complete yet ({REGISTRATION.relative_to(REPO)} "
        "is not written): the fault tests need whole participant-level runs",
    ),
]


def at_participant_level(test):
    for mark in reversed(participant_level):
        test = mark(test)
    return test


# ----------------------------------------------------------------------------- helpers
def _environment() -> dict:
    env = dict(os.environ, TEMPLATEFLOW_AUTOUPDATE="0", PYTHONUNBUFFERED="1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def participant_command(bids: Path, out: Path, work: Path, nprocs: int = 1) -> list[str]:
    return [sys.executable, "-m", "bids_ketamine", str(bids), str(out), "participant",
            "-w", str(work), "--nprocs", str(nprocs), "--omp-nthreads", "1"]


def start_participant(bids, out, work, nprocs=1, log: Path | None = None) -> subprocess.Popen:
    """Start a participant-level run in its own process group (killed as a whole)."""
    log = log or out.parent / f"{out.name}.log"
    handle = open(log, "ab")
    process = subprocess.Popen(participant_command(bids, out, work, nprocs), stdout=handle,
                               stderr=subprocess.STDOUT, env=_environment(),
                               start_new_session=True)
    process.log_path = log  # type: ignore[attr-defined]
    handle.close()
    return process


def finish(process: subprocess.Popen) -> None:
    """Wait for a run and fail with the tail of its log unless it succeeded."""
    try:
        status = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"participant level still running after {RUN_TIMEOUT_S} s")
    if status != 0:
        tail = "\n".join(Path(process.log_path).read_text(errors="replace").splitlines()[-25:])
        pytest.fail(f"participant level exited with status {status}:\n{tail}")


def run_participant(bids, out, work, nprocs=1) -> None:
    finish(start_participant(bids, out, work, nprocs))


def finished_nodes(work: Path) -> dict[Path, float]:
    """Result files of the nipype nodes finished in a work directory, with their mtimes."""
    found = {}
    for path in work.rglob("result_*.pklz"):
        try:
            found[path] = path.stat().st_mtime_ns
        except FileNotFoundError:  # removed while listing
            continue
    return found


def source_digest() -> str:
    """SHA-256 of the package's Python source (to notice code edited while the tests run)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "bids_ketamine").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def skip_if_source_changed(reference: dict) -> None:
    """Runs made with different code are not comparable: say so instead of a false failure."""
    if source_digest() != reference["source"]:
        pytest.skip("bids_ketamine's source changed while these tests ran (someone is editing "
                    "the package): the runs used different code and cannot be compared; rerun "
                    "the tests on a quiet checkout")


def output_digests(out: Path) -> dict[str, str]:
    """SHA-256 of the data outputs (maps, tables, gradients, transforms)."""
    digests = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name.endswith((".nii.gz", ".tsv", ".bval", ".bvec", ".txt")):
            digests[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


class OutputWatcher(threading.Thread):
    """Poll an output folder; open every output file under its final name once per version.

    Hidden files (``.name.<pid>.<token>.tmp.nii.gz``) are temporaries by design and are
    not looked at; every other ``*.nii.gz``, ``*.tsv`` and ``*.json`` must be whole.
    """

    def __init__(self, folder: Path, period_s: float = 0.05):
        super().__init__(daemon=True)
        self.folder, self.period_s = folder, period_s
        self.stop_event = threading.Event()
        self.checked: dict[tuple[str, int, int], str] = {}
        self.broken: list[str] = []

    def _check(self, path: Path) -> None:
        if path.name.endswith(".nii.gz"):
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
            assert data.size == int(np.prod(image.shape))
        elif path.suffix == ".tsv":
            table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
            assert len(table.columns) > 0
            if path.name.endswith("_roistats.tsv"):  # whole: every ROI, once per parameter
                assert {"roi", "param", "mean", "coverage"} <= set(table.columns)
                assert set(table["roi"]) == set(KETAMINE7_ROIS)
                assert len(table) == len(KETAMINE7_ROIS) * table["param"].nunique()
        elif path.suffix == ".json":
            json.loads(path.read_text())

    def poll_once(self) -> None:
        for path in list(self.folder.rglob("*")):
            if path.name.startswith(".") or not path.name.endswith((".nii.gz", ".tsv", ".json")):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key = (str(path), stat.st_ino, stat.st_mtime_ns)
            if key in self.checked:
                continue
            try:
                self._check(path)
                self.checked[key] = "ok"
            except FileNotFoundError:
                continue  # replaced between listing and opening: the next poll sees it
            except Exception as err:  # noqa: BLE001 - any failure to read is the finding
                self.checked[key] = "broken"
                self.broken.append(f"{path.relative_to(self.folder)} ({stat.st_size} bytes): "
                                   f"{type(err).__name__}: {err}")

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self.folder.exists():
                self.poll_once()
            time.sleep(self.period_s)
        self.poll_once()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=120)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The smallest simulated dataset: one subject, two sessions."""
    bids = tmp_path_factory.mktemp("faults") / "bids"
    result = subprocess.run(
        [sys.executable, "-m", "bids_ketamine.cli.simulate", str(bids), "--n-subjects", "1",
         "--seed", "3", "--preset", "demo", "--quiet"],
        capture_output=True, text=True, env=_environment(), timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return bids


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict:
    """One uninterrupted run (--nprocs 2), watched by :class:`OutputWatcher`."""
    root = tmp_path_factory.mktemp("reference")
    out, work = root / "out", root / "work"
    source = source_digest()
    watcher = OutputWatcher(out)
    watcher.start()
    started = time.time()
    try:
        run_participant(dataset, out, work, nprocs=2)
    finally:
        watcher.stop()
    tables = roistats_tables(out)
    assert tables, f"the run wrote no ROI table in {out}"
    return {"out": out, "work": work, "tables": tables, "watcher": watcher,
            "digests": output_digests(out), "source": source, "seconds": time.time() - started,
            "n_nodes": len(finished_nodes(work))}


# ----------------------------------------------------------------------------- tests
@at_participant_level
def test_no_output_is_ever_visible_half_written(reference):
    """(b) Every output polled during the run was whole when it appeared."""
    watcher = reference["watcher"]
    assert not watcher.broken, "\n".join(watcher.broken)
    seen = {Path(key[0]).name for key in watcher.checked}
    # the watcher did see the outputs appear (not only an empty folder)
    assert any(name.endswith("_roistats.tsv") for name in seen), sorted(seen)
    assert sum(name.endswith(".nii.gz") for name in seen) >= 10, sorted(seen)


@at_participant_level
def test_roi_tables_are_complete(reference):
    """The ROI tables hold every ROI x parameter once (the contract's ketamine7 set)."""
    assert len(reference["tables"]) == 2  # one per session
    for name, table in reference["tables"].items():
        keys = list(zip(table["roi"], table["param"]))
        assert len(keys) == len(set(keys)), name
        assert set(table["roi"]) == set(KETAMINE7_ROIS), name
        assert {"md", "fa"} <= set(table["param"]), name


@at_participant_level
def test_killed_run_resumes_and_matches(dataset, reference, tmp_path):
    """(a) SIGKILL mid-way, then the same command: finishes, reuses WORK, same tables."""
    out, work = tmp_path / "out", tmp_path / "work"
    target = max(1, int(KILL_AT_FRACTION * reference["n_nodes"]))
    process = start_participant(dataset, out, work, nprocs=2)
    deadline = time.time() + RUN_TIMEOUT_S
    while process.poll() is None and time.time() < deadline:
        if len(finished_nodes(work)) >= target:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed mid-way"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = finished_nodes(work)
    assert len(before) >= target
    assert not roistats_tables(out), "killed too late: the ROI tables were already written"

    run_participant(dataset, out, work, nprocs=2)
    after = finished_nodes(work)
    # nodes finished before the kill were reused, not run again (their result files are
    # untouched); DerivativesSink nodes (ds_*) always run by design
    rerun = [p for p, mtime in before.items()
             if not p.parent.name.startswith("ds_") and after.get(p) != mtime]
    assert not rerun, f"{len(rerun)} finished node(s) were run again: {rerun[:5]}"
    skip_if_source_changed(reference)
    assert_same_tables(roistats_tables(out), reference["tables"], atol=1e-6)


@at_participant_level
def test_rerun_over_existing_outputs_rewrites_them(dataset, reference):
    """(c) Rerun over outputs that were tampered with: no duplicated rows, no old values.

    In the reference run's folders (its tables are kept in memory for the other tests),
    one ROI table gets its rows twice and a changed value, and one map is cut short; the
    rerun (same command, same work directory) must give back exactly the reference
    outputs, byte for byte.
    """
    out, work = reference["out"], reference["work"]
    table_path = sorted(out.glob("sub-*/ses-*/dwi/*_roistats.tsv"))[0]
    lines = table_path.read_text().splitlines()
    changed = lines[1].split("\t")
    changed[2] = "9.999"
    table_path.write_text("\n".join(lines + [lines[1], "\t".join(changed)]) + "\n")
    md_map = sorted(out.glob("sub-*/ses-*/dwi/*_param-md_dwimap.nii.gz"))[0]
    md_map.write_bytes(md_map.read_bytes()[:100])
    assert output_digests(out) != reference["digests"]

    run_participant(dataset, out, work, nprocs=2)
    assert output_digests(out) == reference["digests"]
    for name, table in roistats_tables(out).items():
        keys = list(zip(table["roi"], table["param"]))
        assert len(keys) == len(set(keys)), f"duplicated rows in {name}"
    assert_same_tables(roistats_tables(out), reference["tables"], atol=None)


@at_participant_level
def test_independent_run_with_sessions_swapped_gives_the_same_tables(dataset, reference, tmp_path):
    """(d) A fresh run (new work directory, --nprocs 1 instead of 2) of the dataset with
    ``ses-pre`` and ``ses-post`` renamed into each other: each session's ROI table is the
    reference's table of the same data under the other name, to the last digit."""
    swapped, _ = swap_sessions(dataset, tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    run_participant(swapped, out, work, nprocs=1)
    skip_if_source_changed(reference)
    assert_same_tables(with_sessions_exchanged(roistats_tables(out)), reference["tables"], atol=None)


# ----------------------------------------------------------------------------- group level
@pytest.fixture(scope="module")
def group_rerun(tmp_path_factory) -> Path:
    """A group-level run (outcomes MADRS and QIDS-SR) rerun over its outputs with MADRS only."""
    from bids_ketamine.cli.run import main
    from bids_ketamine.group.synthetic import random_study, write_study

    root = tmp_path_factory.mktemp("group_rerun")
    bids, out = root / "bids", root / "out"
    write_study(bids, out, *random_study(9, rois=["BA10_L", "vACC"], seed=4))
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "fabricated", "BIDSVersion": "1.9.0"}))
    for options in ([], ["--outcomes", "madrs"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(bids), str(out), "group", "--n-permutations", "0", *options])
        assert exit_info.value.code == 0
    return out / "group"


def test_group_rerun_replaces_the_tables(group_rerun):
    """The rerun's tables hold its own results only, each row once."""
    change = pd.read_csv(group_rerun / "change.tsv", sep="\t", keep_default_na=False)
    assert not [c for c in change.columns if c.startswith("qids_sr")]
    assert not change.duplicated(["participant_id", "roi", "param"]).any()
    assert len(change) == 9 * 2
    models = pd.read_csv(group_rerun / "models.tsv", sep="\t", keep_default_na=False)
    assert set(models["outcome"]) <= {"madrs", "madrs_pctimprovement"}
    assert json.loads((group_rerun / "models.json").read_text())["outcomes"] == ["madrs"]
    assert not [p for p in group_rerun.rglob("*") if ".tmp" in p.name]


def test_group_rerun_leaves_no_figure_of_the_previous_run(group_rerun):
    """The QIDS-SR figures of the first run are gone, and the report does not show them."""
    stale = sorted(p.name for p in (group_rerun / "figures").glob("*qids_sr*"))
    assert not stale, stale
    assert "qids_sr_roi" not in (group_rerun / "report.html").read_text()
