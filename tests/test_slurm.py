"""bids_ketamine on Slurm: nipype's SLURM plugins, the array scripts, and the pipeline.

A real single-node Slurm cluster is started for the session (``tests/slurm_cluster.py``);
the tests are skipped where it cannot start.  Jobs are checked in the cluster's
job-completion records (``sacct --completion`` and the jobcomp file), independently of what
nipype reports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

if str(Path(__file__).parent) not in sys.path:  # pytest --import-mode=importlib
    sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import slurm_cluster  # noqa: E402,F401 - the session fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO_ROOT / "scripts" / "slurm"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------
def _jobs_by_id(cluster) -> dict[str, dict[str, str]]:
    return {job["JobID"]: job for job in cluster.completed_jobs()}


def _wait_for_jobs(cluster, job_ids, timeout: float = 300) -> dict[str, dict[str, str]]:
    """Wait until every job id (``<array>_<task>`` for array tasks) has completion records."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = _jobs_by_id(cluster)
        if all(str(job_id) in jobs for job_id in job_ids):
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {sorted(set(map(str, job_ids)) - set(jobs))} never "
                               f"finished:\n{cluster.run('squeue', check=False).stdout}")
        time.sleep(1)


def _console_script(name: str) -> list[str]:
    """argv prefix running a console script of pyproject.toml with this interpreter."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def _pipeline_missing() -> str | None:
    """Why the participant level cannot run yet (modules still being written), or None."""
    for module in ("bids_ketamine.cli.run", "bids_ketamine.cli.simulate",
                   "bids_ketamine.workflows.base"):
        try:
            found = importlib.util.find_spec(module)
        except ImportError as err:
            return f"{module} cannot be imported ({err})"
        if found is None:
            return f"{module} does not exist yet: bids-ketamine cannot run a participant level"
    return None


# -------------------------------------------------------------------------------------------
# 1. nipype's SLURM and SLURMGraph plugins on the local cluster
# -------------------------------------------------------------------------------------------
def _add(a, b):
    import os

    return a + b, os.environ.get("SLURM_JOB_ID", "")


def _scale(total, factor, upstream_job):
    import os

    return total * factor, [upstream_job, os.environ.get("SLURM_JOB_ID", "")]


def _tiny_workflow(base_dir: Path, a: int, b: int, factor: int):
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    add = pe.Node(Function(input_names=["a", "b"], output_names=["total", "job_id"],
                           function=_add), name="add")
    add.inputs.a, add.inputs.b = a, b
    scale = pe.Node(Function(input_names=["total", "factor", "upstream_job"],
                             output_names=["product", "job_ids"], function=_scale),
                    name="scale")
    scale.inputs.factor = factor
    wf = pe.Workflow(name="tiny", base_dir=str(base_dir))
    wf.connect([(add, scale, [("total", "total"), ("job_id", "upstream_job")])])
    wf.config["execution"]["poll_sleep_duration"] = 1
    wf.config["execution"]["crashdump_dir"] = str(base_dir / "crash")
    return wf


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_nipype_workflow_runs_through_slurm(slurm_cluster, tmp_path, plugin):
    from nipype.pipeline.engine.utils import load_resultfile

    a, b, factor = 3, 4, 6
    wf = _tiny_workflow(tmp_path, a, b, factor)
    plugin_args = {"sbatch_args": "--time=0:10:00 --mem=300M"}
    if plugin == "SLURMGraph":
        # SLURMGraphPlugin reads this attribute only when given (nipype 1.11).
        plugin_args["dont_resubmit_completed_jobs"] = False
    wf.run(plugin=plugin, plugin_args=plugin_args)
    if plugin == "SLURMGraph":  # it submits the graph with dependencies and returns
        slurm_cluster.wait_queue_empty(timeout=300)

    result = load_resultfile(str(tmp_path / "tiny" / "scale" / "result_scale.pklz"))
    product, (add_job, scale_job) = result.outputs.product, result.outputs.job_ids
    assert product == (a + b) * factor == 42
    assert add_job and scale_job and add_job != scale_job, "nodes did not run as Slurm jobs"

    jobs = _wait_for_jobs(slurm_cluster, [add_job, scale_job], timeout=60)
    sacct = slurm_cluster.sacct_completion()  # Slurm's own reader of the same records
    assert sacct[add_job] == sacct[scale_job] == "COMPLETED"
    for job_id in (add_job, scale_job):
        assert jobs[job_id]["State"] == "COMPLETED"
        assert jobs[job_id]["ExitCode"] == "0:0"
        assert jobs[job_id]["NodeList"] == "localhost"
        # our sbatch_args reached sbatch (the jobcomp file holds the limit in minutes)
        assert jobs[job_id]["Timelimit"] in ("10", "00:10:00")
    assert int(scale_job) > int(add_job)
    # the dependency held: scale started after add ended (ISO times, 1 s resolution)
    assert jobs[scale_job]["Start"] >= jobs[add_job]["End"]


# -------------------------------------------------------------------------------------------
# 2. scripts/slurm: the participant array and the dependent group job
# -------------------------------------------------------------------------------------------
_STUB = """#!/bin/bash
# Stands in for bids-ketamine: records its arguments, fails for participant label FAIL.
python3 - "$@" <<'EOF'
import json, os, sys, time
record = {"argv": sys.argv[1:], "start": time.time(), "job": os.environ.get("SLURM_JOB_ID"),
          "task": os.environ.get("SLURM_ARRAY_TASK_ID")}
time.sleep(1)
record["end"] = time.time()
with open(os.environ["BK_STUB_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.exit(1 if "FAIL" in sys.argv else 0)
EOF
"""


def _stub_dataset(tmp_path: Path, labels: list[str]) -> tuple[Path, Path, dict[str, str]]:
    bids = tmp_path / "bids"
    bids.mkdir()
    # participant_id deliberately not the first column
    rows = ["age\tparticipant_id\tgroup"] + [f"{30 + i}\tsub-{label}\tsaline"
                                              for i, label in enumerate(labels)]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    stub = tmp_path / "bids-ketamine-stub"
    stub.write_text(_STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {"BK_CMD": str(stub), "BK_STUB_LOG": str(log),
           "BK_PARTICIPANT_SBATCH_ARGS": "--time=0:05:00",
           "BK_PARTICIPANT_ARGS": "--denoise none", "BK_GROUP_ARGS": "--n-permutations 0"}
    return bids, log, env


def _submit_all(cluster, bids: Path, out: Path, env: dict[str, str]) -> tuple[str, str]:
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPTS / "submit_all.sh"), str(bids), str(out), "--", "--seed", "5"],
        env={**cluster.env, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ids = dict(line.split("=") for line in result.stdout.split())
    return ids["participant_array"], ids["group"]


def test_participant_list_follows_participants_tsv(tmp_path):
    bids, _, _ = _stub_dataset(tmp_path, ["01", "pilot2", "03"])
    listed = subprocess.run(["bash", str(SLURM_SCRIPTS / "participant_array.sbatch"), "--list",
                             str(bids)], capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["01", "pilot2", "03"]
    # Windows line ends, participant_id as the last column
    (bids / "participants.tsv").write_bytes(b"age\tparticipant_id\r\n30\tsub-x1\r\n31\ty2\r\n")
    listed = subprocess.run(["bash", str(SLURM_SCRIPTS / "participant_array.sbatch"), "--list",
                             str(bids)], capture_output=True, check=True).stdout
    assert listed == b"x1\ny2\n"
    (bids / "participants.tsv").unlink()
    for label in ("b", "a"):
        (bids / f"sub-{label}").mkdir()
    listed = subprocess.run(["bash", str(SLURM_SCRIPTS / "participant_array.sbatch"), "--list",
                             str(bids)], capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["a", "b"]


def test_submit_all_runs_array_then_group(slurm_cluster, tmp_path):
    labels = ["01", "02", "03"]
    bids, log, env = _stub_dataset(tmp_path, labels)
    out = tmp_path / "derivatives" / "bids_ketamine"
    array_job, group_job = _submit_all(slurm_cluster, bids, out, env)
    jobs = _wait_for_jobs(slurm_cluster, [f"{array_job}_{i}" for i in (1, 2, 3)] + [group_job])

    for task in (1, 2, 3):
        record = jobs[f"{array_job}_{task}"]
        assert (record["JobName"], record["State"]) == ("bk-participant", "COMPLETED")
    assert (jobs[group_job]["JobName"], jobs[group_job]["State"]) == ("bk-group", "COMPLETED")

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    participant = [c for c in calls if c["argv"][2] == "participant"]
    group = [c for c in calls if c["argv"][2] == "group"]
    assert len(participant) == 3 and len(group) == 1
    work_root = out.parent / "work"
    seen = {}
    for call in participant:
        argv = call["argv"]
        assert argv[:2] == [str(bids), str(out)]
        label = argv[argv.index("--participant-label") + 1]
        seen[label] = call["task"]
        assert argv[argv.index("-w") + 1] == str(work_root / f"sub-{label}")
        assert argv[argv.index("--seed") + 1] == "5"  # options common to both levels
        assert argv[argv.index("--denoise") + 1] == "none"  # participant-only options
    # one task per participant, task i <-> i-th row of participants.tsv
    assert seen == {label: str(i) for i, label in enumerate(labels, start=1)}
    group_argv = group[0]["argv"]
    assert group_argv[:3] == [str(bids), str(out), "group"]
    assert "--n-permutations" in group_argv and "--denoise" not in group_argv
    assert "--seed" in group_argv
    # afterok: the group level started after every participant had finished
    assert group[0]["start"] >= max(c["end"] for c in participant)
    assert (work_root / "logs").is_dir()


def test_failed_participant_holds_group_job(slurm_cluster, tmp_path):
    bids, log, env = _stub_dataset(tmp_path, ["01", "FAIL"])
    array_job, group_job = _submit_all(slurm_cluster, bids, tmp_path / "out", env)
    try:
        jobs = _wait_for_jobs(slurm_cluster, [f"{array_job}_1", f"{array_job}_2"])
        assert jobs[f"{array_job}_1"]["State"] == "COMPLETED"
        assert jobs[f"{array_job}_2"]["State"] == "FAILED"
        deadline = time.monotonic() + 60
        reason = ""
        while time.monotonic() < deadline:
            reason = slurm_cluster.run("squeue", "-h", "-j", group_job, "-o", "%T %r",
                                       check=False).stdout.strip()
            if "DependencyNeverSatisfied" in reason:
                break
            time.sleep(1)
        assert reason == "PENDING DependencyNeverSatisfied"
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert all(c["argv"][2] == "participant" for c in calls)
    finally:
        slurm_cluster.run("scancel", group_job, check=False)


# -------------------------------------------------------------------------------------------
# 3. the participant level itself: Slurm equals MultiProc; concurrent participants
# -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated_bids(tmp_path_factory):
    reason = _pipeline_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("sim") / "bids"
    result = subprocess.run(_console_script("bids-ketamine-simulate") + [
        str(root), "--n-subjects", "2", "--seed", "11", "--preset", "demo"],
        capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"bids-ketamine-simulate failed:\n{result.stderr[-3000:]}")
    return root


#: The pipeline tests here are about execution (plugins, concurrency), not denoising: skipping
#: MP-PCA keeps them light on shared machines without changing what they check.
LIGHT_OPTIONS = ("--denoise", "none")


def _participants(bids: Path) -> list[str]:
    return sorted(p.name[4:] for p in bids.glob("sub-*") if p.is_dir())


def _run_participant(bids: Path, out: Path, work: Path, *extra: str,
                     env: dict | None = None) -> subprocess.Popen:
    argv = _console_script("bids-ketamine") + [
        str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation",
        "--nprocs", "1", *LIGHT_OPTIONS, *extra]
    work.mkdir(parents=True, exist_ok=True)
    log = open(work.parent / f"{work.name}.log", "w")  # noqa: SIM115 - the child holds it
    # its own process group, so that its MultiProc workers can be stopped with it
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=env or dict(os.environ), start_new_session=True)


def _finish(proc: subprocess.Popen, work: Path, timeout: float) -> None:
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (work.parent / f"{work.name}.log").read_text()
    assert proc.returncode == 0, f"bids-ketamine failed ({proc.returncode}):\n{log[-4000:]}"


def _derivative_files(root: Path, label: str = "*") -> set[str]:
    return {str(p.relative_to(root)) for pattern in (f"sub-{label}/**/*.nii.gz", f"sub-{label}/**/*.tsv")
            for p in root.glob(pattern) if "figures" not in p.parts}


def _assert_same_derivatives(expected: Path, actual: Path, label: str) -> None:
    import nibabel as nib

    files = _derivative_files(expected, label)
    assert files, f"no derivatives of sub-{label} in {expected}"
    assert _derivative_files(actual, label) == files
    assert any(name.endswith("_roistats.tsv") for name in files)
    for name in sorted(files):
        if name.endswith(".tsv"):
            left = pd.read_csv(expected / name, sep="\t")
            right = pd.read_csv(actual / name, sep="\t")
            assert list(left.columns) == list(right.columns), name
            numeric = left.select_dtypes("number").columns
            np.testing.assert_allclose(right[numeric].to_numpy(float),
                                       left[numeric].to_numpy(float), rtol=0, atol=1e-6,
                                       err_msg=name)
            other = [c for c in left.columns if c not in numeric]
            pd.testing.assert_frame_equal(left[other], right[other], obj=name)
        else:
            left, right = nib.load(expected / name), nib.load(actual / name)
            np.testing.assert_allclose(right.affine, left.affine, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(np.asanyarray(right.dataobj, dtype=float),
                                       np.asanyarray(left.dataobj, dtype=float),
                                       rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def concurrent_run(simulated_bids, tmp_path_factory) -> Path:
    """Both participants run at once, each its own process, into one output folder (the
    default plugin); also the reference of the Slurm run."""
    root = tmp_path_factory.mktemp("concurrent")
    out = root / "derivatives"
    procs = {label: _run_participant(simulated_bids, out, root / f"work_{label}",
                                     "--participant-label", label)
             for label in _participants(simulated_bids)}
    for label, proc in procs.items():
        _finish(proc, root / f"work_{label}", timeout=1700)
    return out


@pytest.mark.timeout(3600)
def test_participant_level_on_slurm_equals_multiproc(slurm_cluster, simulated_bids,
                                                     concurrent_run, tmp_path):
    """One participant (both sessions) through the SLURM plugin: the derivatives of the run
    without Slurm."""
    earlier_jobs = {job["RawJobID"] for job in slurm_cluster.completed_jobs()}
    label = _participants(simulated_bids)[0]
    out = tmp_path / "SLURM" / "derivatives"
    proc = _run_participant(simulated_bids, out, tmp_path / "SLURM" / "work", "--plugin", "SLURM",
                            "--plugin-args", json.dumps({"sbatch_args": "--time=1:00:00 --mem=2G"}),
                            "--participant-label", label)
    _finish(proc, tmp_path / "SLURM" / "work", timeout=1700)
    _assert_same_derivatives(concurrent_run, out, label)
    # Every node of the SLURM run was one Slurm job (one batch script each), all succeeded.
    batch_scripts = list((tmp_path / "SLURM" / "work").rglob("batch/batchscript_*.sh"))
    new_jobs = [job for job in slurm_cluster.completed_jobs()
                if job["RawJobID"] not in earlier_jobs]
    assert batch_scripts, "the SLURM plugin wrote no batch scripts"
    assert len(new_jobs) == len(batch_scripts)
    assert {job["State"] for job in new_jobs} == {"COMPLETED"}


def _expected_outputs(out: Path, bids: Path, label: str) -> list[Path]:
    """The contract's participant-level files (docs/interfaces.md) for one participant."""
    found = [out / f"sub-{label}.html"]
    sessions = sorted(p.name[4:] for p in (bids / f"sub-{label}").glob("ses-*"))
    assert sessions, f"sub-{label} has no sessions in {bids}"
    for session in sessions:
        folder = out / f"sub-{label}" / f"ses-{session}" / "dwi"
        prefix = f"sub-{label}_ses-{session}"
        patterns = [f"{prefix}*_space-dwi_desc-brain_mask.nii.gz",
                    f"{prefix}*_space-dwi_model-tensor_dwimap.json",
                    f"{prefix}*_space-dwi_atlas-ketamine7_dseg.nii.gz",
                    f"{prefix}*_space-dwi_atlas-ketamine7_dseg.tsv",
                    f"{prefix}*_atlas-ketamine7_model-tensor_roistats.tsv"]
        patterns += [f"{prefix}*_space-dwi_model-tensor_param-{p}_dwimap.nii.gz"
                     for p in ("fa", "md", "ad", "rd")]
        patterns += [f"{prefix}*_space-MNI*_model-tensor_param-{p}_dwimap.nii.gz"
                     for p in ("fa", "md")]
        for pattern in patterns:
            hits = sorted(folder.glob(pattern))
            assert hits, f"missing {folder / pattern}"
            found.extend(hits)
    return found


def test_concurrent_participants_into_one_output_dir(simulated_bids, concurrent_run):
    from bids_ketamine.config import KETAMINE7_ROIS

    labels = _participants(simulated_bids)
    assert len(labels) == 2
    out = concurrent_run
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_ketamine"
    for label in labels:
        for path in _expected_outputs(out, simulated_bids, label):
            assert path.stat().st_size > 0, f"{path} is empty"
            if path.name.endswith("_roistats.tsv"):
                table = pd.read_csv(path, sep="\t")
                assert set(table["roi"]) == set(KETAMINE7_ROIS)
                assert np.isfinite(table.loc[table["param"] == "md", "mean"]).all()
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
