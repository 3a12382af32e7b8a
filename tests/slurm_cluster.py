"""pytest fixture: a throwaway single-node Slurm cluster on localhost.

The cluster itself is ``scripts/slurm/local_cluster.py`` (munged with its own key and
socket, slurmctld and slurmd in the foreground, jobs recorded by ``jobcomp/filetxt`` and
read back with ``sacct --completion``).  This module loads it, starts one cluster per test
session and points ``SLURM_CONF`` (read by sbatch/squeue/sacct, and so by nipype's SLURM
plugins) at it.  Where it cannot start (not root, no slurm-wlm/munge, a daemon failing)
the tests that use it are skipped with the reason.

Use it in a test module with ``from slurm_cluster import slurm_cluster  # noqa: F401``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "local_cluster.py"


def load_local_cluster():
    """Import ``scripts/slurm/local_cluster.py`` as a module."""
    spec = importlib.util.spec_from_file_location("bk_local_cluster", LOCAL_CLUSTER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bk_local_cluster", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started :class:`LocalSlurm` with ``SLURM_CONF`` and ``LOGNAME`` set for the session.

    Yields
    ------
    LocalSlurm
        Stopped (daemons killed, folder removed) at the end of the session.
    """
    local_cluster = load_local_cluster()
    reason = local_cluster.missing_requirements()
    if reason:
        pytest.skip(f"no local Slurm cluster: {reason}")
    # A short path: munge's socket path must fit in a UNIX socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="bkslurm-"))
    cluster = local_cluster.LocalSlurm(root, memory_mb=4000)
    try:
        cluster.start(timeout=90)
    except Exception as err:  # noqa: BLE001 - any failure to start is a reason to skip
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the local Slurm cluster did not start: {err}")
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(cluster.conf))
    # nipype's SLURM plugin names jobs after $LOGNAME and fails with KeyError without it.
    if not os.environ.get("LOGNAME"):
        patch.setenv("LOGNAME", os.environ.get("USER") or "root")
    try:
        yield cluster
    finally:
        patch.undo()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
