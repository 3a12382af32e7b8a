"""Writing the simulated trial as a BIDS dataset, byte-identical for the same seed.

NIfTI files go through nibabel, whose gzip writer stores no time stamp; JSON has sorted
keys; TSV floats have a fixed format.  Nothing written depends on the clock or the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "write_json",
    "write_tsv",
    "write_nifti",
    "write_gradients",
    "dwi_sidecar",
    "dataset_description",
    "PARTICIPANTS_JSON",
    "SESSIONS_JSON",
]

#: Column descriptions of participants.tsv.
PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Participant label"},
    "group": {
        "Description": "Randomised arm (one infusion of ketamine 0.5 mg/kg or saline)",
        "Levels": {"ketamine": "ketamine infusion", "saline": "saline (placebo) infusion"},
    },
    "age": {"Description": "Age at baseline", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
}

#: Column descriptions of the sessions.tsv files (top-level sessions.json, inherited).
SESSIONS_JSON = {
    "session_id": {"Description": "Session label"},
    "acq_time": {"Description": "Date and time of the DWI acquisition (ISO 8601)"},
    "madrs": {
        "LongName": "Montgomery-Asberg Depression Rating Scale",
        "Description": "Clinician-rated depression severity at the session (0-60)",
        "Units": "score",
    },
    "qids_sr": {
        "LongName": "Quick Inventory of Depressive Symptomatology, Self-Report (16 items)",
        "Description": "Self-rated depression severity at the session (0-27)",
        "Units": "score",
    },
}


def write_json(path: Path, content: Mapping) -> Path:
    """Write JSON with sorted keys, two-space indentation and a final newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(content), indent=2, sort_keys=True) + "\n")
    return path


def _plain(value):
    """JSON-ready values (numpy scalars and arrays become Python numbers and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _format(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{float(value):.8g}"
    return str(value)


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[Mapping]) -> Path:
    """Write a tab-separated table (``n/a`` for missing values, 8 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(_format(row.get(c)) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=None,
                repetition_time: float | None = None) -> Path:
    """Write a NIfTI-1 image with the affine as both qform and sform (code 1, scanner).

    Parameters
    ----------
    path : Path
        ``.nii.gz`` (gzip without time stamp, as nibabel writes it).
    data : ndarray
    affine : ndarray (4, 4)
    dtype : numpy dtype, optional
        On-disk type (default: the array's); integer data is stored unscaled.
    repetition_time : float, optional
        Seconds, stored in the 4th pixdim of 4D images.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype)
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, affine, header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if array.ndim == 4 and repetition_time is not None:
        zooms = list(img.header.get_zooms())
        zooms[3] = float(repetition_time)
        img.header.set_zooms(zooms)
    img.header.set_slope_inter(1.0, 0.0)
    img.to_filename(str(path))
    return path


def write_gradients(stem: Path, bvals: np.ndarray, bvecs: np.ndarray) -> tuple:
    """Write ``<stem>.bval`` (one line) and ``<stem>.bvec`` (three lines, BIDS/FSL)."""
    stem = Path(stem)
    bval_path = stem.with_name(stem.name + ".bval")
    bvec_path = stem.with_name(stem.name + ".bvec")
    bval_path.write_text(" ".join(str(int(round(b))) for b in bvals) + "\n")
    bvecs = np.asarray(bvecs, dtype=float) + 0.0  # no negative zeros
    rows = [" ".join(f"{v:.6f}" for v in np.where(np.abs(bvecs[:, axis]) < 5e-7, 0.0, bvecs[:, axis]))
            for axis in range(3)]
    bvec_path.write_text("\n".join(rows) + "\n")
    return bval_path, bvec_path


def dwi_sidecar(preset, shape) -> dict:
    """Acquisition metadata of a simulated DWI series (plausible for a 3 T EPI)."""
    n_phase = int(shape[1])
    echo_spacing = 0.00055
    slices = int(shape[2])
    multiband = 2 if slices > 70 else 1
    repetition_time = round(0.11 * slices / multiband, 3)
    return {
        "Manufacturer": "bids_ketamine",
        "ManufacturersModelName": "bids-ketamine-simulate",
        "MagneticFieldStrength": 3.0,
        "PulseSequenceType": "Single-shot spin-echo EPI (simulated)",
        "EchoTime": 0.08 if preset.voxel_size >= 2.5 else 0.089,
        "RepetitionTime": repetition_time,
        "PhaseEncodingDirection": "j-",
        "EffectiveEchoSpacing": echo_spacing,
        "TotalReadoutTime": round(echo_spacing * (n_phase - 1), 6),
        "SliceEncodingDirection": "k",
        "MultibandAccelerationFactor": multiband,
        "FlipAngle": 90,
    }


def dataset_description(version: str, seed: int, preset: str) -> dict:
    """dataset_description.json of a simulated trial."""
    return {
        "Name": f"bids_ketamine simulated two-arm trial (preset {preset}, seed {seed})",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bids_ketamine simulator"],
        "GeneratedBy": [
            {
                "Name": "bids-ketamine-simulate",
                "Version": version,
                "Description": "Simulated DWI and clinical scores with known ground truth "
                               "(sourcedata/simulation/truth.json)",
            }
        ],
    }
