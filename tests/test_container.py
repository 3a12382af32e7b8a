"""The container image, built from the Dockerfile and run (markers ``container``, ``slow``).

Daemonless, with Debian's tools: ``scripts/container/debian_base.sh`` makes the base image
``debian:bookworm-slim`` with mmdebstrap, ``scripts/container/build_image.sh`` builds the
Dockerfile with buildah (``--isolation chroot``; pip in the build gets the host's CA bundle,
and the host's library versions as constraints so that both runs below use the same
numerics), then the image runs, as its non-root user and without network, the version, the
simulator, the participant level and the group level, writing to a mounted folder.  The
simulator and the first participant's participant level run outside the container too; the
simulated dataset must be byte-identical and that participant's ROI tables equal within 1e-6.
The group level's change table inside must hold the ROI tables' values.

Needs root, buildah, mmdebstrap, unshare and access to Debian's mirror and to PyPI; skipped
with the reason otherwise.  The base tarball and buildah's storage (overlay where the kernel
allows it, else vfs; with the cached layers of the Debian packages) are kept in
``$BIDS_KETAMINE_CONTAINER_CACHE`` (default ``/var/tmp/bids_ketamine-container``) between
runs; the tarball is checked before reuse.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.config import DEFAULT_ROI_STATISTIC

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "container"
CACHE = Path(os.environ.get("BIDS_KETAMINE_CONTAINER_CACHE", "/var/tmp/bids_ketamine-container"))
IMAGE = "localhost/bids_ketamine:container-test"
#: The non-root user of the Dockerfile.
APP_UID = 1000
#: buildah's storage driver, chosen when the image is built.
DRIVER = "vfs"
#: Two small simulated participants, one per arm (the group level needs both arms), of the
#: "demo" acquisition (4 mm, 15 volumes).
SIMULATE = ["--n-subjects", "2", "--arm-ratio", "1:1", "--seed", "5", "--preset", "demo", "--quiet"]
PARTICIPANT = ["--nprocs", "2", "--omp-nthreads", "1"]
#: The participant also run outside the image.
OUTSIDE_LABEL = "01"

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _storage_driver() -> str:
    """overlay where the kernel and buildah allow it (fast layer commits), else vfs."""
    probe = subprocess.run(["buildah", "--storage-driver", "overlay", "--root",
                            str(CACHE / "storage-overlay"), "--runroot",
                            f"/run/bids_ketamine-container-{os.getuid()}-overlay", "info"],
                           capture_output=True, text=True)
    return "overlay" if probe.returncode == 0 else "vfs"


def _buildah_options(driver: str | None = None) -> list[str]:
    driver = driver or DRIVER
    return ["--storage-driver", driver, "--root", str(CACHE / f"storage-{driver}"),
            "--runroot", f"/run/bids_ketamine-container-{os.getuid()}-{driver}"]


def _why_not() -> str | None:
    """Why the container cannot be built here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "building and running the image with buildah needs root"
    missing = [tool for tool in ("buildah", "mmdebstrap", "unshare", "tar")
               if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install buildah mmdebstrap)"
    global DRIVER
    DRIVER = _storage_driver()
    probe = subprocess.run(["buildah", *_buildah_options(), "images"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"buildah cannot run here: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def _run(command: list[str], log: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, its output appended to ``log``; fail the test with the log's tail."""
    with open(log, "a") as stream:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{' '.join(command[:6])} ... failed ({done.returncode}); log {log}:\n{tail}")
    return done


def _constraints(path: Path) -> Path:
    """The library versions of this Python, as pip constraints (local builds left out)."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    path.write_text("".join(f"{line}\n" for line in frozen.splitlines()
                            if "==" in line and "@" not in line and "+" not in line))
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    """Build the base image and the app image; return the image name and the build time."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    folder = tmp_path_factory.mktemp("container-build")
    log = folder / "build.log"
    env = dict(os.environ, BUILDAH_OPTS=" ".join(_buildah_options()), BUILDER="buildah",
               TEMPLATEFLOW_PREFETCH="0",
               CONSTRAINTS=str(_constraints(folder / "constraints.txt")))
    started = time.perf_counter()
    _run(["bash", str(SCRIPTS / "debian_base.sh"), str(CACHE / "debian-bookworm-minbase.tar")],
         log, env=env)
    _run(["bash", str(SCRIPTS / "build_image.sh"), IMAGE], log, env=env)
    build_s = time.perf_counter() - started
    return {"name": IMAGE, "build_s": build_s, "log": log}


def _inspect(image_name: str, template: str) -> str:
    return subprocess.run(["buildah", *_buildah_options(), "inspect", "--type", "image",
                           "--format", template, image_name],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def runs(image, tmp_path_factory) -> dict:
    """The same commands inside the image (no network, non-root) and outside it."""
    inside = tmp_path_factory.mktemp("inside")
    outside = tmp_path_factory.mktemp("outside")
    inside.chmod(0o777)
    log = inside.parent / "runs.log"
    container = subprocess.run(["buildah", *_buildah_options(), "from", image["name"]],
                               capture_output=True, text=True, check=True).stdout.strip()
    # `--network none` is refused with chroot isolation: buildah itself runs in a new, empty
    # network namespace instead (unshare --net), which the chroot shares.
    run = ["unshare", "--net", "buildah", *_buildah_options(), "run", "--isolation", "chroot",
           "--user", f"{APP_UID}:{APP_UID}", "--volume", f"{inside}:/out", container, "--"]
    timings = {}
    try:
        identity = subprocess.run([*run, "sh", "-c", "id -u; python3 -c \"import socket; "
                                   "socket.create_connection(('pypi.org', 443), timeout=5)\" "
                                   ">/dev/null 2>&1 && echo online || echo offline"],
                                  capture_output=True, text=True, check=True).stdout.splitlines()
        version = subprocess.run([*run, "bids-ketamine", "--version"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        started = time.perf_counter()
        for argv in (["bids-ketamine-simulate", "/out/bids", *SIMULATE],
                     ["bids-ketamine", "/out/bids", "/out/derivatives", "participant",
                      "-w", "/out/work", *PARTICIPANT],
                     ["bids-ketamine", "/out/bids", "/out/derivatives", "group"]):
            _run([*run, *argv], log)
        timings["inside_s"] = time.perf_counter() - started
    finally:
        subprocess.run(["buildah", *_buildah_options(), "rm", container], capture_output=True)

    # Outside: this checkout, the template the image has (nilearn's: no TemplateFlow files);
    # one participant (the second would check the same numerics at twice the cost).
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(outside / "templateflow"),
               TEMPLATEFLOW_AUTOUPDATE="0", NO_ET="1", NIPYPE_NO_ET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    (outside / "templateflow").mkdir()
    started = time.perf_counter()
    for module, argv in (("bids_ketamine.cli.simulate", [str(outside / "bids"), *SIMULATE]),
                         ("bids_ketamine.cli.run", [str(outside / "bids"), str(outside / "derivatives"),
                                                    "participant", "-w", str(outside / "work"),
                                                    "--participant-label", OUTSIDE_LABEL,
                                                    *PARTICIPANT])):
        _run([sys.executable, "-m", module, *argv], log, env=env)
    timings["outside_s"] = time.perf_counter() - started
    print(f"\ncontainer: build {image['build_s']:.0f} s, in-container run {timings['inside_s']:.0f} s, "
          f"same run outside {timings['outside_s']:.0f} s")
    return {"inside": inside, "outside": outside, "identity": identity, "version": version,
            **timings}


def test_image_is_a_bids_app_for_a_non_root_user(image):
    assert _inspect(image["name"], "{{.OCIv1.Config.Entrypoint}}") == "[bids-ketamine]"
    assert _inspect(image["name"], "{{.OCIv1.Config.User}}") == "bidsapp"
    size = subprocess.run(["buildah", *_buildah_options(), "images", "--format", "{{.Size}}",
                           image["name"]], capture_output=True, text=True, check=True).stdout
    print(f"\nimage size {size.strip()}, built in {image['build_s']:.0f} s")


def test_inside_runs_as_the_app_user_offline(runs):
    from bids_ketamine import __version__

    uid, connection = runs["identity"]
    assert int(uid) == APP_UID
    assert connection == "offline"  # no route out: the network namespace is empty
    assert runs["version"].endswith(__version__)
    owners = {path.stat().st_uid for path in (runs["inside"] / "derivatives").rglob("*")}
    assert owners == {APP_UID}


def test_simulated_dataset_is_identical_inside_and_outside(runs):
    inside, outside = runs["inside"] / "bids", runs["outside"] / "bids"
    files = sorted(p.relative_to(inside) for p in inside.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outside) for p in outside.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(inside, outside, [str(f) for f in files], shallow=False)
    assert errors == []
    # truth.json records where the template files were read: the install location differs
    truth = Path("sourcedata") / "simulation" / "truth.json"
    assert mismatch in ([], [str(truth)])
    assert _without_paths(json.loads((inside / truth).read_text())) == \
        _without_paths(json.loads((outside / truth).read_text()))


def _without_paths(value):
    """A JSON value with every absolute file path replaced by its file name."""
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_paths(item) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def test_roi_tables_equal_outside(runs):
    inside, outside = runs["inside"] / "derivatives", runs["outside"] / "derivatives"
    tables = sorted(p.relative_to(outside) for p in outside.rglob("*_roistats.tsv"))
    assert len(tables) == 2  # one participant, two sessions
    for relative in tables:
        got = pd.read_csv(inside / relative, sep="\t")
        expected = pd.read_csv(outside / relative, sep="\t")
        assert list(got.columns) == list(expected.columns), relative
        numeric = expected.select_dtypes("number").columns
        assert got.drop(columns=numeric).equals(expected.drop(columns=numeric)), relative
        np.testing.assert_allclose(got[numeric].to_numpy(float), expected[numeric].to_numpy(float),
                                   rtol=0, atol=1e-6, equal_nan=True, err_msg=str(relative))
    for name in ("sub-01.html", "sub-02.html", "group/models.tsv", "group/report.html"):
        assert (inside / name).is_file(), name


def test_group_change_inside_holds_the_roi_tables(runs):
    """change.tsv's baseline and follow-up are the ROI tables' default ``--roi-statistic``
    (roi_gm_weighted_median: the participant level wrote it) of each participant's sessions, and
    change = follow-up - baseline."""
    inside = runs["inside"] / "derivatives"
    change = pd.read_csv(inside / "group" / "change.tsv", sep="\t")
    statistic = json.loads((inside / "group" / "models.json").read_text())["roi_value"]["statistic"]
    assert statistic == DEFAULT_ROI_STATISTIC
    rows = []
    for path in sorted(inside.glob("sub-*/ses-*/dwi/*_roistats.tsv")):
        subject, session = path.name.split("_")[:2]
        table = pd.read_csv(path, sep="\t")
        rows.append(table.assign(participant_id=subject, session=session[4:]))
    tables = pd.concat(rows).pivot_table(index=["participant_id", "roi", "param"],
                                         columns="session", values=statistic)
    assert len(tables) == 2 * 7 * 4  # two participants, 7 ROIs, FA/MD/AD/RD
    merged = change.merge(tables.reset_index(), on=["participant_id", "roi", "param"])
    assert len(merged) == len(change) and len(change) > 0
    np.testing.assert_allclose(merged["baseline"], merged["pre"], rtol=1e-9)
    np.testing.assert_allclose(merged["followup"], merged["post"], rtol=1e-9)
    np.testing.assert_allclose(merged["change"], merged["post"] - merged["pre"], rtol=1e-9, atol=1e-12)
