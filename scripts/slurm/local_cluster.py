#!/usr/bin/env python3
"""Start a throwaway single-node Slurm cluster on this machine (for tests and trials).

Everything lives in one folder: a fresh munge key and its own ``munged`` (own socket), a
generated ``slurm.conf``, the state and spool folders, logs, and the job-completion file.
``slurmctld`` and ``slurmd`` run in the foreground (``-D``) as child processes, so stopping
them is killing two process ids.  Jobs are recorded by ``JobCompType=jobcomp/filetxt``,
which ``sacct --completion`` (``sacct -c``) reads without ``slurmdbd`` (with
``AccountingStorageType=accounting_storage/none``, plain ``sacct`` has no data), and which
:meth:`LocalSlurm.completed_jobs` parses itself to keep array task ids.

It needs root (slurmd starts jobs as their owner) and the Debian packages ``slurm-wlm`` and
``munge`` (Slurm 22.05 on Debian bookworm).  Client commands (``sbatch``, ``squeue``,
``sacct``) find the cluster through the ``SLURM_CONF`` variable: use :attr:`LocalSlurm.env`.

Command line::

    python3 scripts/slurm/local_cluster.py start /tmp/myslurm   # prints: export SLURM_CONF=...
    python3 scripts/slurm/local_cluster.py stop /tmp/myslurm
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Programs a cluster needs, by where they live on Debian.
REQUIRED_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "sacct")

_SLURM_CONF = """\
# Throwaway single-node cluster written by scripts/slurm/local_cluster.py
ClusterName={cluster_name}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
InactiveLimit=0
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing_requirements() -> str | None:
    """Say why a local cluster cannot start here, or None if it can.

    Returns
    -------
    str or None
        A one-line reason (not root, a program missing), or None.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a local Slurm cluster needs root (slurmd starts jobs as their owner)"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"Slurm/munge programs not found: {', '.join(missing)} "
                "(apt-get install slurm-wlm munge)")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _program(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/sbin", name)
    if fallback.exists():
        return str(fallback)
    raise FileNotFoundError(f"program '{name}' not found; install slurm-wlm and munge")


def parse_jobcomp_line(line: str) -> dict[str, str]:
    """Split one ``jobcomp/filetxt`` record (``Key=value Key=value ...``) into a dict."""
    return {key: value.strip() for key, value in
            re.findall(r"(\w+)=(.*?)(?=\s\w+=|$)", line.strip())}


class LocalSlurm:
    """A single-node Slurm cluster (slurmctld + slurmd + munged) in one folder.

    Parameters
    ----------
    root : path-like
        Folder for configuration, state, logs and the munge key; created if missing.
    cpus : int, optional
        CPUs the node offers (default: all of this machine's, at most 2).
    memory_mb : int
        Memory the node offers, in MB.
    partition : str
        Name of the only (default) partition.

    Examples
    --------
    >>> with LocalSlurm("/tmp/slurm-try") as cluster:          # doctest: +SKIP
    ...     subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)
    """

    def __init__(self, root, *, cpus: int | None = None, memory_mb: int = 4000,
                 partition: str = "debug", cluster_name: str = "bkslurm"):
        if cpus is None:
            cpus = min(os.cpu_count() or 1, 2)
        if cpus < 1 or memory_mb < 100:
            raise ValueError(f"cpus={cpus} and memory_mb={memory_mb} must be >= 1 and >= 100")
        self.root = Path(root).absolute()
        self.cpus = int(cpus)
        self.memory_mb = int(memory_mb)
        self.partition = partition
        self.cluster_name = cluster_name
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.jobcomp = self.root / "jobcomp.txt"
        self._processes: dict[str, subprocess.Popen] = {}

    # -- environment ------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment client commands need (``SLURM_CONF``, ``LOGNAME``, ...)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        # nipype's SLURM plugin names jobs after $LOGNAME and fails where it is unset.
        env.setdefault("LOGNAME", os.environ.get("USER") or "root")
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster and return its result."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    # -- start / stop -----------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("state", "spool", "run", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf.write_text(_SLURM_CONF.format(
            cluster_name=self.cluster_name, root=self.root, munge_socket=self.munge_socket,
            ctld_port=_free_port(), slurmd_port=_free_port(), cpus=self.cpus,
            memory_mb=self.memory_mb, partition=self.partition))
        (self.root / "state.json").write_text(json.dumps({"pids": {}}))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._processes[name] = proc
        state = json.loads((self.root / "state.json").read_text())
        state["pids"][name] = proc.pid
        (self.root / "state.json").write_text(json.dumps(state))

    def _check_alive(self) -> None:
        for name, proc in self._processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n"
                                   + self.logs(name))

    def logs(self, name: str | None = None, tail: int = 40) -> str:
        """The last lines of the daemons' logs (all of them, or one by name)."""
        text = []
        for path in sorted((self.root / "log").glob("*")):
            if name is None or path.name.startswith(name):
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                text.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(text)

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Start munged, slurmctld and slurmd; return once the node is idle.

        Raises
        ------
        RuntimeError
            If a daemon exits or the node is not idle within ``timeout`` seconds; the
            message holds the daemons' logs.
        """
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self._write_files()
        munge_dir = self.root / "munge"
        self._spawn("munged", [
            _program("munged"), "--foreground", "--force",
            f"--socket={self.munge_socket}", f"--key-file={munge_dir / 'munge.key'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("munged did not create its socket:\n" + self.logs())
            time.sleep(0.1)
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_program("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        try:
            self.wait_idle(deadline - time.monotonic())
        except Exception:
            self.stop()
            raise
        return self

    def wait_idle(self, timeout: float) -> None:
        """Wait until ``sinfo`` reports the node idle."""
        deadline = time.monotonic() + max(timeout, 1)
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=20)
            last = (result.stdout + result.stderr).strip()
            if result.returncode == 0 and "idle" in result.stdout:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node is not idle after {timeout:.0f} s "
                           f"(sinfo: {last!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL after 10 s) that this cluster started."""
        pids = dict((name, proc.pid) for name, proc in self._processes.items())
        if not pids and (self.root / "state.json").exists():
            pids = json.loads((self.root / "state.json").read_text())["pids"]
        if pids and self.conf.exists():
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = pids.get(name)
            if pid is None:
                continue
            _terminate(pid, self._processes.get(name))
        self._processes.clear()
        if (self.root / "state.json").exists():
            (self.root / "state.json").write_text(json.dumps({"pids": {}}))

    def _cancel_all_jobs(self, timeout: float = 15) -> None:
        """Cancel this cluster's queued and running jobs, so that no job outlives it."""
        try:
            queued = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
            if queued:
                self.run("scancel", *queued, check=False, timeout=10)
                self.wait_queue_empty(timeout=timeout, poll=0.5)
        except (subprocess.SubprocessError, TimeoutError, OSError):
            pass  # the daemons are stopped next in any case

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- jobs -------------------------------------------------------------------------------
    def wait_queue_empty(self, timeout: float = 600, poll: float = 1.0) -> None:
        """Wait until no job is pending or running (``squeue`` lists none)."""
        deadline = time.monotonic() + timeout
        listing = ""
        while time.monotonic() < deadline:
            result = self.run("squeue", "-h", "-o", "%i %T", check=False)
            listing = result.stdout
            if result.returncode == 0 and not listing.strip():
                return
            time.sleep(poll)
        raise TimeoutError(f"jobs still queued after {timeout:.0f} s:\n{listing}")

    def completed_jobs(self) -> list[dict[str, str]]:
        """Finished jobs, read from the job-completion file (``jobcomp/filetxt``).

        ``sacct --completion`` reads the same file, but Slurm 22.05's sacct does not know
        the array fields (``ArrayJobId``, ``ArrayTaskId``) and shows array tasks by their
        raw job ids; this reader keeps them.

        Returns
        -------
        list of dict
            One dict per job, in completion order, with the keys ``JobID``
            (``<array job>_<task>`` for array tasks, as squeue and sacct name them),
            ``RawJobID``, ``JobName``, ``State``, ``ExitCode``, ``NodeList``,
            ``Timelimit`` (minutes, or ``UNLIMITED``), ``Start`` and ``End``.
        """
        if not self.jobcomp.exists():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            if not line.strip():
                continue
            record = parse_jobcomp_line(line)
            job_id = record.get("JobId", "")
            if record.get("ArrayJobId") and record.get("ArrayTaskId"):
                job_id = f"{record['ArrayJobId']}_{record['ArrayTaskId']}"
            jobs.append({
                "JobID": job_id, "RawJobID": record.get("JobId", ""),
                "JobName": record.get("Name", ""), "State": record.get("JobState", ""),
                "ExitCode": record.get("ExitCode", ""), "NodeList": record.get("NodeList", ""),
                "Timelimit": record.get("TimeLimit", ""), "Start": record.get("StartTime", ""),
                "End": record.get("EndTime", ""),
            })
        return jobs

    def sacct_completion(self) -> dict[str, str]:
        """``sacct --completion``: raw job id -> state, as Slurm's own reader sees them."""
        result = self.run("sacct", "--completion", "--noheader", "--parsable2",
                          "--starttime=2000-01-01", "--format=JobID,State")
        states = {}
        for line in result.stdout.splitlines():
            if "|" in line:
                job_id, state = line.split("|")[:2]
                states[job_id] = state
        return states


def _terminate(pid: int, proc: subprocess.Popen | None) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("root", type=Path, help="folder holding the cluster's files")
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--memory-mb", type=int, default=4000)
    args = parser.parse_args(argv)
    cluster = LocalSlurm(args.root, cpus=args.cpus, memory_mb=args.memory_mb)
    if args.action == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        print(f"# stop with: {sys.executable} {Path(__file__).resolve()} stop {cluster.root}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
