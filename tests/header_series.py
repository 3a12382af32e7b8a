"""Small header-only DWI series: enough to build the participant workflow graph (never run)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_ketamine.bids import DwiSeries, merged_sidecar

BVALS = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000])


def header_only_series(root: Path, session: str, subject: str = "01", **entities: str) -> DwiSeries:
    """A 6x6x6 series of zeros with its gradient files, under ``root`` (a BIDS dataset)."""
    folder = root / f"sub-{subject}" / f"ses-{session}" / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "_".join([f"sub-{subject}", f"ses-{session}"] + [f"{k[:3]}-{v}" for k, v in entities.items()])
    dwi = folder / f"{stem}_dwi.nii.gz"
    nib.Nifti1Image(np.zeros((6, 6, 6, BVALS.size), np.int16), np.diag([3.0, 3, 3, 1])).to_filename(dwi)
    bval, bvec = dwi.with_name(f"{stem}_dwi.bval"), dwi.with_name(f"{stem}_dwi.bvec")
    bval.write_text(" ".join(map(str, BVALS)) + "\n")
    np.savetxt(bvec, np.vstack([np.zeros(BVALS.size), np.ones(BVALS.size), np.zeros(BVALS.size)]))
    return DwiSeries(subject=subject, session=session, dwi=dwi, bval=bval, bvec=bvec,
                     entities=dict(entities), fit_bval=1000.0, fit_b_mean=1000.0)


def with_sidecar(series: DwiSeries, metadata: dict) -> DwiSeries:
    """The series with ``metadata`` written as its JSON sidecar, read back as the app reads it."""
    sidecar = series.dwi.with_name(series.dwi.name.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps(metadata))
    return dataclasses.replace(series, sidecar=merged_sidecar([sidecar]), sidecar_files=(sidecar,))


def fmap_image(root: Path, session: str, suffix: str, metadata: dict, *, n_volumes: int = 0,
               affine=None, subject: str = "01") -> Path:
    """A 6x6x6 (x ``n_volumes``) image of zeros ``fmap/sub-<s>_ses-<t>_<suffix>.nii.gz`` with its
    sidecar; ``affine`` default 3 mm RAS."""
    folder = root / f"sub-{subject}" / f"ses-{session}" / "fmap"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sub-{subject}_ses-{session}_{suffix}.nii.gz"
    shape = (6, 6, 6) + ((n_volumes,) if n_volumes else ())
    nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([3.0, 3, 3, 1]) if affine is None else affine).to_filename(path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(metadata))
    return path
