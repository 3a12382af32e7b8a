"""Progress display (issue 18): the reporter on fake event streams, the group level's permutation
progress, and (slow) a real participant run on a terminal and in a log, with MultiProc and Linear.

The expectations are counted independently of the reporter: the events sent, the folds and
permutations of the cross-validation scheme, and the node result files nipype leaves in the work
directory.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from bids_ketamine.utils.progress import (
    Progress,
    format_duration,
    progress_mode,
)
from bids_ketamine.utils.workflow_progress import WorkflowProgress

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LOGGER = "bids_ketamine.progress"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNode:
    """What the reporter reads of a nipype node: its full name."""

    def __init__(self, fullname: str):
        self.fullname = fullname


def _nodes(subjects=("01", "02")) -> dict:
    """Expected nodes: per subject a two-node sub-workflow and one node at the subject level."""
    nodes = {}
    for label in subjects:
        nodes[f"top.sub_{label}_wf.pre_wf.denoise"] = (label, 3.0)
        nodes[f"top.sub_{label}_wf.pre_wf.ds_dwi"] = (label, 0.02)
        nodes[f"top.sub_{label}_wf.registration"] = (label, 3.0)
    return nodes


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


def _counts(lines: list[str]) -> list[tuple[int, int]]:
    return [tuple(map(int, m.groups())) for line in lines
            for m in [re.search(r"(\d+)/(\d+) nodes \(", line)] if m]


# ----------------------------------------------------------------------------- fake events
def test_log_lines_follow_the_events(caplog):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    clock = FakeClock()
    nodes = _nodes()
    reporter = WorkflowProgress(nodes, mode="log", interval=1e9, clock=clock, heartbeat=False)
    order = ["top.sub_01_wf.pre_wf.denoise", "top.sub_02_wf.pre_wf.denoise",
             "top.sub_01_wf.pre_wf.ds_dwi", "top.sub_01_wf.registration",
             "top.sub_02_wf.pre_wf.ds_dwi", "top.sub_02_wf.registration"]
    for name in order:
        reporter(FakeNode(name), "start")
        clock.now += 10
        reporter(FakeNode(name), "end")
    reporter.close()
    lines = _messages(caplog)
    assert lines[0] == "participant level: 2 participant(s), 6 nodes to run or reuse"
    assert lines[1].startswith("sub-01 finished (1/2 participants); participant level: 4/6 nodes")
    assert lines[2].startswith("sub-02 finished (2/2 participants); participant level: 6/6 nodes")
    assert lines[3] == "participant level: 2/2 participants and 6/6 nodes finished, in 1:00"
    assert len(lines) == 4  # no group lines unless verbose, no status line within the interval


def test_verbose_adds_one_line_per_finished_node_group(caplog):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    clock = FakeClock()
    reporter = WorkflowProgress(_nodes(("01",)), mode="log", verbose=True, interval=1e9,
                                clock=clock, heartbeat=False)
    for name in ("top.sub_01_wf.pre_wf.denoise", "top.sub_01_wf.pre_wf.ds_dwi",
                 "top.sub_01_wf.registration"):
        reporter(FakeNode(name), "start")
        reporter(FakeNode(name), "end")
    reporter.close()
    lines = _messages(caplog)
    assert lines[1].startswith("sub-01 pre done; participant level: 2/3 nodes")
    assert lines[2].startswith("sub-01 finished (1/1 participants); participant level: 3/3 nodes")


def test_failures_cached_nodes_and_duplicate_events(caplog):
    """MultiProc: cached nodes end without a start; a main-process failure also sends "end"."""
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    clock = FakeClock()
    reporter = WorkflowProgress(_nodes(), mode="log", interval=1e9, clock=clock, heartbeat=False)
    reporter(FakeNode("top.sub_01_wf.pre_wf.denoise"), "end")  # cached
    reporter(FakeNode("top.sub_02_wf.pre_wf.denoise"), "start")
    clock.now += 30
    reporter(FakeNode("top.sub_02_wf.pre_wf.denoise"), "exception")
    reporter(FakeNode("top.sub_02_wf.pre_wf.denoise"), "end")  # counted once
    reporter(FakeNode("top.other.mapnode_sub0"), "end")  # not an expected node: ignored
    assert reporter.progress.done == 2
    assert reporter.progress.eta() is not None
    reporter.close()
    lines = _messages(caplog)
    assert lines[1].startswith("sub-02 pre/denoise failed; participant level: 2/6 nodes")
    assert "(1 failed)" in lines[1]
    assert lines[-1] == ("participant level: 0/2 participants and 2/6 nodes finished; "
                         "1 node(s) failed in 1 participant(s), in 0:30")


def test_status_lines_at_most_once_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    clock = FakeClock()
    total = 60
    bar = Progress("task", total, unit="fit", mode="log", interval=60, clock=clock,
                   heartbeat=False)
    times = []
    for _ in range(total):
        clock.now += 7
        before = len(caplog.records)
        bar.update(1)
        if len(caplog.records) > before:
            times.append(clock.now)
    gaps = np.diff([1000.0] + times)
    assert len(times) == (total * 7) // 63  # first multiple of 7 s at or after each 60 s
    assert np.all(gaps >= 60)


def test_eta_from_work_done_and_instant_items():
    clock = FakeClock()
    bar = Progress("task", 3, total_work=10.0, mode="off", clock=clock)
    assert bar.eta() is None
    bar.update(1, work=1.0, instant=True)  # cached: done, but says nothing about the rate
    assert bar.eta() is None
    clock.now += 20
    bar.update(1, work=3.0)
    assert bar.eta() == pytest.approx(20 / 3.0 * 6.0)
    bar.update(1, work=6.0)
    assert bar.eta() == 0.0
    clock = FakeClock()
    bar = Progress("task", 3, total_work=10.0, mode="off", clock=clock)
    bar.update(in_progress=4.0)  # running, nothing finished: counted half done
    clock.now += 20
    assert bar.eta() == pytest.approx(20 / 2.0 * 8.0)


def test_bar_mode_draws_counts_and_milestones():
    stream = io.StringIO()
    clock = FakeClock()
    reporter = WorkflowProgress(_nodes(("01",)), mode="bar", stream=stream, clock=clock,
                                heartbeat=False)
    for name in ("top.sub_01_wf.pre_wf.denoise", "top.sub_01_wf.pre_wf.ds_dwi",
                 "top.sub_01_wf.registration"):
        reporter(FakeNode(name), "start")
        clock.now += 5
        reporter(FakeNode(name), "end")
    reporter.close()
    frames = [f for f in re.split(r"[\r\n]", stream.getvalue()) if "nodes" in f]
    counts = [int(re.search(r"\| (\d+)/3 nodes", f).group(1)) for f in frames]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 3
    assert "participants 1/1, elapsed 0:15, ETA 0:00" in frames[-1]
    assert "running sub-01 pre/denoise" in stream.getvalue()
    assert "sub-01 finished (1/1 participants)" in stream.getvalue()


def test_heartbeat_writes_overdue_lines_during_a_long_node(caplog):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    clock = FakeClock()
    bar = Progress("task", 2, mode="log", interval=0.2, clock=clock)
    try:
        bar.update(status="running registration")
        clock.now += 1
        import time

        deadline = time.monotonic() + 5
        while not _messages(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        bar.close()
    lines = _messages(caplog)
    assert lines[0].startswith("task: 0/2 items (0 %), running registration, elapsed 0:01")


def test_quiet_mode_shows_nothing(caplog, capsys):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    reporter = WorkflowProgress(_nodes(), mode="off")
    reporter(FakeNode("top.sub_01_wf.registration"), "end")
    reporter.close()
    assert _messages(caplog) == []
    assert capsys.readouterr() == ("", "")


def test_progress_mode_and_durations():
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            assert progress_mode(False, terminal) == "bar"
            assert progress_mode(True, terminal) == "off"
    finally:
        os.close(master)
        os.close(slave)
    assert progress_mode(False, io.StringIO()) == "log"
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 * 2 + 62, None)] == \
        ["0:00", "1:00", "1:01", "2:01:02", "?"]


def test_quiet_option_and_its_default():
    from bids_ketamine.cli.parser import parse_args
    from bids_ketamine.config import Config

    base = ["/data", "/out", "participant"]
    assert parse_args(base).quiet is Config.__dataclass_fields__["quiet"].default is False
    assert parse_args([*base, "-q"]).quiet is True
    with pytest.raises(SystemExit):
        parse_args([*base, "-q", "-v"])


# ----------------------------------------------------------------------------- group level
def test_prediction_reports_folds_then_permutations():
    from bids_ketamine.group import prediction

    rng = np.random.default_rng(3)
    n, n_perm = 12, 5
    X = rng.normal(size=(n, 3))
    y = X[:, 0] + rng.normal(size=n)
    calls = []
    prediction.predict_outcome(X, y, ["a", "b", "c"], n_permutations=n_perm, seed=0,
                               progress=lambda *args: calls.append(args))
    total = n * (1 + n_perm)  # leave-one-out: one fit per participant, per permutation too
    assert [c[0] for c in calls] == ([f"outer fold {k}/{n}" for k in range(1, n + 1)]
                                     + [f"permutation {j}/{n_perm}" for j in range(1, n_perm + 1)])
    assert [c[1] for c in calls] == list(range(1, n + 1)) + [n * (1 + j) for j in range(1, n_perm + 1)]
    assert {c[2] for c in calls} == {total}


def test_parallel_permutations_report_in_order_and_give_the_serial_result():
    from bids_ketamine.group import prediction

    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 3))
    y = X[:, 1] + rng.normal(size=12)
    results, calls = {}, {}
    for n_jobs in (1, 2):
        calls[n_jobs] = []
        results[n_jobs] = prediction.predict_outcome(
            X, y, ["a", "b", "c"], n_permutations=4, seed=1, n_jobs=n_jobs,
            progress=lambda *args, jobs=n_jobs: calls[jobs].append(args))
    np.testing.assert_array_equal(results[2].null_r2, results[1].null_r2)
    assert calls[2] == calls[1]


def _terminal_run(command: list[str], env: dict | None = None) -> tuple[int, str]:
    """Run a command with stdin/stdout/stderr on a pseudo-terminal; return status and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))  # lines, columns
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                               env=dict(os.environ, **(env or {})))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=600), b"".join(chunks).decode(errors="replace")


def test_forked_worker_logs_above_the_bar_without_redrawing_it():
    """MultiProc forks its workers while the bar is shown: their log lines erase the bar's line
    and leave the redrawing to the main process."""
    script = (
        "import logging, os, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(message)s')\n"
        "from bids_ketamine.utils.progress import Progress\n"
        "bar = Progress('task', 5, mode='bar', heartbeat=False)\n"
        "bar.update(1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    logging.getLogger('worker').warning('from the worker')\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "bar.update(4)\n"
        "bar.close()\n"
    )
    status, text = _terminal_run([sys.executable, "-c", script], _app_env())
    assert status == 0, text
    assert "\r\x1b[Kfrom the worker\r\n" in text
    after = text.split("from the worker")[1]
    assert re.findall(r"\| (\d)/5 items", after) and set(re.findall(r"\| (\d)/5 items", after)) == {"5"}


def _app_env() -> dict:
    return {"PYTHONPATH": str(REPO), "TEMPLATEFLOW_AUTOUPDATE": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def group_study(tmp_path_factory) -> tuple[Path, Path]:
    import json

    from bids_ketamine.group.synthetic import random_study, write_study

    root = tmp_path_factory.mktemp("progress_group")
    bids, out = root / "bids", root / "out"
    write_study(bids, out, *random_study(12, rois=["BA10_L", "vACC"], seed=4))
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "fabricated", "BIDSVersion": "1.9.0"}))
    return bids, out


GROUP_OPTIONS = ["group", "--outcomes", "madrs", "--n-permutations", "6", "--nprocs", "1"]


def test_group_level_logs_permutation_progress(group_study, caplog):
    from bids_ketamine.cli.run import main

    caplog.set_level(logging.INFO, logger="bids_ketamine")
    bids, out = group_study
    with pytest.raises(SystemExit) as done:
        main([str(bids), str(out), *GROUP_OPTIONS])
    assert done.value.code == 0
    lines = _messages(caplog)
    n, n_perm = 12, 6  # leave-one-out over the 12 participants; a permutation refits every fold
    total = n * (1 + n_perm)
    assert len(lines) == 2
    assert lines[0].startswith(f"outer fold {n}/{n} done; prediction of madrs_change from md: "
                               f"{2 * n}/{total} fits ({100 * 2 * n / total:.0f} %), "
                               f"permutation 1/{n_perm}, elapsed ")
    assert lines[1].startswith(f"prediction of madrs_change from md: {total}/{total} fits "
                               f"(100 %), permutation {n_perm}/{n_perm}, elapsed ")
    assert not list(out.glob("**/*progress*"))


def test_group_level_bar_on_a_terminal_and_quiet(group_study):
    bids, out = group_study
    command = [sys.executable, "-m", "bids_ketamine", str(bids), str(out), *GROUP_OPTIONS]
    status, text = _terminal_run(command, _app_env())
    assert status == 0, text[-2000:]
    frames = [f for f in re.split(r"[\r\n]", text) if "fits" in f]
    done = [int(re.search(r"\| (\d+)/84 fits", f).group(1)) for f in frames]
    assert done == sorted(done) and done[-1] == 84
    assert "permutation 6/6" in frames[-1]
    status, text = _terminal_run([*command, "--quiet"], _app_env())
    assert status == 0, text[-2000:]
    assert text == ""


# ----------------------------------------------------------------------------- participant level
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """One simulated subject of the demo acquisition (4 mm, 15 volumes): a short real run."""
    from bids_ketamine.simulate import simulate_trial

    return simulate_trial(tmp_path_factory.mktemp("progress_participant") / "bids", n_subjects=1,
                          seed=3, preset="demo", progress=False)


def _participant_command(bids: Path, root: Path, plugin: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bids_ketamine", str(bids), str(root / "out"), "participant",
            "-w", str(root / "work"), "--plugin", plugin, "--nprocs", "2", "--omp-nthreads", "1",
            *extra]


def _node_results(work: Path) -> int:
    """Nodes nipype ran: one result file each, counted in the work directory."""
    return len(list((work / "bids_ketamine_wf").glob("**/result_*.pklz")))


def _check_log(text: str, n_nodes: int) -> None:
    lines = [line.split("] INFO: ", 1)[1] for line in text.splitlines()
             if "[bids_ketamine.progress] INFO: " in line]
    assert lines[0] == f"participant level: 1 participant(s), {n_nodes} nodes to run or reuse"
    finished = [i for i, line in enumerate(lines) if line.startswith("sub-01 finished (1/1")]
    assert len(finished) == 1 and f"{n_nodes}/{n_nodes} nodes (100 %)" in lines[finished[0]]
    assert lines[-1].startswith(f"participant level: 1/1 participants and {n_nodes}/{n_nodes} "
                                "nodes finished, in ")
    counts = _counts(lines)
    assert [c[1] for c in counts] == [n_nodes] * len(counts)
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)


def _check_bar(text: str, n_nodes: int) -> None:
    frames = [f for f in re.split(r"[\r\n]", text) if re.search(r"\| \d+/\d+ nodes", f)]
    counts = [tuple(map(int, re.search(r"\| (\d+)/(\d+) nodes", f).groups())) for f in frames]
    assert {total for _, total in counts} == {n_nodes}
    done = [n for n, _ in counts]
    assert done == sorted(done) and done[0] == 0 and done[-1] == n_nodes
    assert "participants 1/1" in frames[-1] and "participants 0/1" in frames[0]
    assert "sub-01 finished (1/1 participants)" in text
    assert "[bids_ketamine.progress] INFO: participant level: 1/1 participants" in text


def _run_in_log(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, **_app_env()), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _run_on_terminal(command: list[str]) -> str:
    status, text = _terminal_run(command, _app_env())
    assert status == 0, text[-3000:]
    return text


@pytest.mark.slow
def test_participant_progress_in_a_log_and_on_a_terminal(small_dataset, tmp_path):
    """A fresh MultiProc run on a terminal (the bar, with forked workers), then resumed runs
    (every node reused): Linear in a log with --verbose (a line per finished node group), and
    MultiProc on a terminal with --quiet (nothing).

    MultiProc reports reused nodes with an "end" event only, Linear with "start" and "end";
    both must count every node once. (One fresh run: a second one would check the same
    counting at twice the cost.)
    """
    multiproc = _participant_command(small_dataset, tmp_path, "MultiProc")
    first = _run_on_terminal(multiproc)
    n_nodes = _node_results(tmp_path / "work")
    assert n_nodes > 50
    _check_bar(first, n_nodes)
    assert not [p for p in (tmp_path / "out").rglob("*") if "progress" in p.name]
    verbose = _run_in_log([*_participant_command(small_dataset, tmp_path, "Linear"), "-v"])
    _check_log(verbose, n_nodes)
    assert re.search(r"INFO: sub-01 dwi_preproc_\w+ done; participant level: \d+/", verbose)
    quiet = _run_on_terminal([*multiproc, "-q"])
    assert "nodes" not in quiet and "participant level" not in quiet


def _add_one(value):
    return value + 1


def _total(values):
    return sum(values)


def test_mapnode_workflow_runs_with_the_reporter_under_multiproc(tmp_path):
    """nipype keeps the callback in every MapNode and pickles the node to a worker: the run
    must not fail on the reporter (it did: 'cannot pickle _thread.RLock'), and the events of the
    main process still count every node once."""
    import copy
    import pickle

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_ketamine.utils.workflow_progress import expected_nodes

    participant = pe.Workflow(name="sub_01_wf")
    mapped = pe.MapNode(niu.Function(function=_add_one, input_names=["value"], output_names=["value"]),
                        iterfield=["value"], name="runs")
    mapped.inputs.value = [1, 2, 3]
    total = pe.Node(niu.Function(function=_total, input_names=["values"], output_names=["out"]),
                    name="total")
    participant.connect(mapped, "value", total, "values")
    workflow = pe.Workflow(name="top", base_dir=str(tmp_path))
    workflow.add_nodes([participant])
    reporter = WorkflowProgress(expected_nodes(workflow), mode="off")
    assert copy.deepcopy(reporter) is reporter
    inert = pickle.loads(pickle.dumps(reporter))
    inert(mapped, "end")  # a worker's copy records nothing and raises nothing
    graph = workflow.run(plugin="MultiProc", plugin_args={"n_procs": 2, "status_callback": reporter})
    (result,) = [node.result.outputs.out for node in graph.nodes() if node.name == "total"]
    assert result == 2 + 3 + 4
    assert reporter.finished_participants == ["01"]
    assert reporter.left == {"01": 0}
