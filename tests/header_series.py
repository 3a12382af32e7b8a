"""Small header-only DWI series: enough to build the participant workflow graph (never run)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_ketamine.bids import DwiSeries

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
                     entities=dict(entities), fit_bval=1000.0)
