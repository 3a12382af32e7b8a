"""Shared fixtures: small synthetic BIDS datasets, the real-DWI test data, a simulated trial."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DWI = SHARED / "data" / "real-dwi"

# Never let a test reach the network (TemplateFlow would try to download).
os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")


def write_tiny_dwi(folder: Path, prefix: str, *, shape=(12, 12, 10), n_b0=2, n_dirs=12, seed=0,
                   bvals=None, bvecs=None, data=None) -> Path:
    """Write a small synthetic DWI series (image, .bval, .bvec, .json) and return the image path.

    The signal is an isotropic ball (MD 0.8 um^2/ms) inside a box of background, with a
    little noise: enough for loading, checking and the first pipeline steps.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if bvals is None:
        bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, 1000.0)]
    if bvecs is None:
        dirs = rng.normal(size=(n_dirs, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        bvecs = np.vstack([np.zeros((n_b0, 3)), dirs])
    if data is None:
        grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
        inside = (np.sqrt((grid ** 2).sum(0)) < min(shape) / 2.5).astype(np.float32)
        signal = 1000.0 * np.exp(-np.asarray(bvals) * 0.8e-3)
        data = inside[..., None] * signal + rng.normal(0, 5, size=shape + (len(bvals),))
        data = np.abs(data).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -np.array(shape) * 1.5
    image = folder / f"{prefix}_dwi.nii.gz"
    nib.Nifti1Image(data, affine).to_filename(image)
    np.savetxt(folder / f"{prefix}_dwi.bval", np.atleast_2d(bvals), fmt="%g")
    np.savetxt(folder / f"{prefix}_dwi.bvec", np.asarray(bvecs).T, fmt="%.6f")
    (folder / f"{prefix}_dwi.json").write_text(json.dumps(
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05, "EchoTime": 0.08,
         "RepetitionTime": 8.0}))
    return image


def make_tiny_bids(root: Path, subjects=("01", "02"), sessions=("pre", "post")) -> Path:
    """A minimal valid BIDS dataset with small synthetic DWI series."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tgroup\tage\tsex"]
    for i, subject in enumerate(subjects):
        rows.append(f"sub-{subject}\t{'ketamine' if i % 2 == 0 else 'saline'}\t{30 + i}\t{'F' if i % 2 else 'M'}")
        for j, session in enumerate(sessions):
            write_tiny_dwi(root / f"sub-{subject}" / f"ses-{session}" / "dwi", f"sub-{subject}_ses-{session}",
                           seed=10 * i + j)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_bids(tmp_path) -> Path:
    """A fresh two-subject, two-session synthetic BIDS dataset (function scope: tests may damage it)."""
    return make_tiny_bids(tmp_path / "bids")


@pytest.fixture(scope="session")
def real_dwi() -> Path:
    """The real scanner DWI of ../shared/data/real-dwi (skips when absent)."""
    if not (REAL_DWI / "dataset_description.json").exists():
        pytest.skip(f"real DWI test data not found at {REAL_DWI} (the shared/ folder beside the repo)")
    return REAL_DWI


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a dataset so that a test may modify it."""
    shutil.copytree(src, dst)
    return dst


#: The test modules that take longest in the full suite (`make test --durations`), longest
#: first.  With ``-n 2 --dist loadfile --no-loadscope-reorder`` xdist hands out modules in
#: collection order, so these start at once on different workers instead of last.
LONGEST_MODULES = ("test_participant.py", "test_container.py", "test_participant_t1w.py",
                   "test_faults.py", "test_slurm.py", "test_distortion.py", "test_progress.py",
                   "test_layouts_real.py", "test_participant_real.py", "test_combine_runs.py",
                   "test_sdc_real.py", "test_anat.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: the order within a module and among the rest is kept
