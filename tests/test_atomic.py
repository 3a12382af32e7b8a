"""Atomic writes (bids_ketamine.utils.atomic): concurrent writers and interrupted writes.

The expectations are independent of the implementation: every payload carries its own
length and SHA-256, so a reader can tell a whole file from a partial or mixed one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.utils import atomic
from bids_ketamine.utils.atomic import (
    atomic_copy,
    atomic_path,
    atomic_write_bytes,
    atomic_write_nifti,
    atomic_write_text,
    atomic_write_tsv,
    write_dataset_description,
)

N_WRITERS = 8
N_WRITES = 50
BODY_BYTES = 64 * 1024

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX rename semantics")


def _fork_context():
    try:
        return multiprocessing.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        pytest.skip("these tests start writer processes with fork, unavailable here")


def _payload(writer: int, iteration: int) -> bytes:
    """A self-checking file: a JSON header (writer, iteration, size, sha256) and a body."""
    rng = np.random.default_rng(writer * 1000 + iteration)
    body = rng.integers(0, 256, BODY_BYTES, dtype=np.uint8).tobytes()
    header = {"writer": writer, "iteration": iteration, "size": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(header).encode() + b"\n" + body


def _check_payload(data: bytes) -> dict:
    """Return the header of a whole payload; raise AssertionError for a partial/mixed one."""
    head, sep, body = data.partition(b"\n")
    assert sep, f"no header line in {len(data)} bytes"
    header = json.loads(head)
    assert len(body) == header["size"], f"partial file: {len(body)} of {header['size']} bytes"
    assert hashlib.sha256(body).hexdigest() == header["sha256"], "mixed or corrupted body"
    return header


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if atomic.TEMP_MARKER in p.name]


def _writer(path: str, writer: int, start) -> None:
    start.wait()
    for iteration in range(N_WRITES):
        if iteration % 2:
            atomic_write_bytes(path, _payload(writer, iteration))
        else:  # the text writer goes through the same path; latin-1 keeps bytes as is
            atomic_write_text(path, _payload(writer, iteration).decode("latin-1"),
                              encoding="latin-1")


def test_concurrent_writers_never_leave_partial_or_mixed_file(tmp_path):
    ctx = _fork_context()
    target = tmp_path / "shared.bin"
    atomic_write_bytes(target, _payload(99, 0))
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(target), w, start)) for w in range(N_WRITERS)]
    for proc in procs:
        proc.start()
    start.set()
    reads, seen_writers = 0, set()
    while any(proc.is_alive() for proc in procs):
        header = _check_payload(target.read_bytes())  # a reader never sees a broken file
        seen_writers.add(header["writer"])
        reads += 1
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    final = _check_payload(target.read_bytes())
    # The last rename overall is the last write of whichever writer made it.
    assert final["writer"] in range(N_WRITERS)
    assert final["iteration"] == N_WRITES - 1
    assert reads > 0
    assert _temp_files(tmp_path) == []


def _describer(output_dir: str, content: dict, start, queue) -> None:
    start.wait()
    try:
        for _ in range(N_WRITES):
            write_dataset_description(output_dir, content)
    except Exception as err:  # report to the parent, which fails the test
        queue.put(repr(err))
    else:
        queue.put("ok")


def test_concurrent_dataset_description(tmp_path):
    ctx = _fork_context()
    content = {"Name": "bids_ketamine derivatives", "BIDSVersion": "1.9.0",
               "DatasetType": "derivative",
               "GeneratedBy": [{"Name": "bids_ketamine", "Version": "0.1.0"}]}
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_describer, args=(str(tmp_path), content, start, queue))
             for _ in range(N_WRITERS)]
    for proc in procs:
        proc.start()
    start.set()
    description = tmp_path / "dataset_description.json"
    while any(proc.is_alive() for proc in procs):
        if description.exists():
            assert json.loads(description.read_text()) == content
    results = [queue.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert results == ["ok"] * N_WRITERS
    assert json.loads(description.read_text()) == content
    assert _temp_files(tmp_path) == []


def test_dataset_description_identical_file_is_left_alone(tmp_path):
    content = {"Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}
    path = write_dataset_description(tmp_path, content)
    before = path.stat()
    # Same content, keys in another order: the file is not rewritten (same inode).
    write_dataset_description(tmp_path, dict(reversed(list(content.items()))))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    changed = dict(content, Name="y")
    write_dataset_description(tmp_path, changed)
    assert json.loads(path.read_text()) == changed
    assert path.stat().st_ino != before.st_ino


def test_dataset_description_checks_content(tmp_path):
    with pytest.raises(ValueError, match="BIDSVersion"):
        write_dataset_description(tmp_path, {"Name": "x"})
    with pytest.raises(ValueError, match="JSON"):
        write_dataset_description(tmp_path, {"Name": "x", "BIDSVersion": "1.9.0",
                                             "Bad": float("nan")})
    with pytest.raises(TypeError):
        write_dataset_description(tmp_path, [("Name", "x")])
    assert not (tmp_path / "dataset_description.json").exists()


class _Exploding:
    """A table cell whose text conversion fails, so that to_csv fails mid-file."""

    def __str__(self):
        raise RuntimeError("disk full (simulated)")

    __repr__ = __format__ = lambda self, *args: self.__str__()  # noqa: E731


def test_interrupted_tsv_keeps_old_file(tmp_path):
    target = tmp_path / "roistats.tsv"
    old = pd.DataFrame({"roi": ["vACC"], "mean": [0.8]})
    atomic_write_tsv(old, target)
    old_bytes = target.read_bytes()
    cells = [f"r{i}" for i in range(5000)] + [_Exploding()]
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_tsv(pd.DataFrame({"roi": cells}), target)
    assert target.read_bytes() == old_bytes
    assert _temp_files(tmp_path) == []


def test_interrupted_text_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    atomic_write_text(target, '{"old": true}\n')

    def _interrupt(fd):
        raise KeyboardInterrupt  # e.g. Ctrl-C after the data were written, before the rename

    monkeypatch.setattr(atomic.os, "fsync", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, '{"new": true}\n')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert _temp_files(tmp_path) == []


def test_interrupted_nifti_keeps_old_file(tmp_path):
    target = tmp_path / "md.nii.gz"
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    atomic_write_nifti(nib.Nifti1Image(data, np.eye(4)), target)

    class HalfWritten:
        def to_filename(self, filename):
            Path(filename).write_bytes(b"\x1f\x8b garbage")
            raise OSError("quota exceeded (simulated)")

    with pytest.raises(OSError, match="quota"):
        atomic_write_nifti(HalfWritten(), target)
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), data)
    assert _temp_files(tmp_path) == []


def _endless_writer(path: str) -> None:
    iteration = 0
    while True:
        atomic_write_bytes(path, _payload(0, iteration % 7))
        iteration += 1


def test_killed_writer_leaves_whole_file(tmp_path):
    """SIGKILL (no cleanup possible) mid-write: the destination is still a whole file."""
    ctx = _fork_context()
    target = tmp_path / "killed.bin"
    atomic_write_bytes(target, _payload(1, 1))
    for delay in (0.05, 0.13, 0.31):
        proc = ctx.Process(target=_endless_writer, args=(str(target),))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        _check_payload(target.read_bytes())


def test_writers_roundtrip(tmp_path):
    data = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nifti = atomic_write_nifti(nib.Nifti1Image(data, affine), tmp_path / "sub" / "x.nii.gz")
    loaded = nib.load(nifti)
    np.testing.assert_array_equal(loaded.get_fdata(dtype=np.float32), data)
    np.testing.assert_array_equal(loaded.affine, affine)
    with open(nifti, "rb") as handle:  # .nii.gz kept: gzip magic number
        assert handle.read(2) == b"\x1f\x8b"

    frame = pd.DataFrame({"roi": ["BA10_L", "vACC"], "mean": [0.81, np.nan]})
    tsv = atomic_write_tsv(frame, tmp_path / "t.tsv")
    assert tsv.read_text() == "roi\tmean\nBA10_L\t0.81\nvACC\tn/a\n"

    src = tmp_path / "src.sh"
    src.write_text("#!/bin/sh\necho hi\n")
    src.chmod(0o750)
    dst = atomic_copy(src, tmp_path / "copy" / "dst.sh")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o750
    assert _temp_files(tmp_path) == [] and _temp_files(tmp_path / "copy") == []


def test_atomic_path_and_input_checks(tmp_path):
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError, match="str"):
        atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        atomic_copy(tmp_path / "missing", tmp_path / "dst")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "never.txt"):
            pass
    assert not (tmp_path / "never.txt").exists()
    assert _temp_files(tmp_path) == []
