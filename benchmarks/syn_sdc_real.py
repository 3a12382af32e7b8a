"""Fieldmap-less correction (``--use-syn-sdc``) against the reverse phase-encoding one on real data
(issue 19).

Runs the participant level (T1w path) on ``real-sdc/philips-elition`` three times, sharing one
work folder so that the anatomy is computed once: uncorrected (``--ignore fieldmaps``), PEPOLAR
(the default: the ``acq-rpe_dir-PA`` run's b=0 volumes) and fieldmap-less (``--ignore fieldmaps
--use-syn-sdc``: the field from the T1w only).  Then, on the dir-AP series' grid:

- the two estimated fields: median absolute difference of the displacement inside the brain (mm)
  and their Pearson r;
- each field applied to the dir-AP mean b=0 and, with the opposite polarity, to the reverse run's
  mean b=0 (which the fieldmap-less estimate never saw): Pearson r of the two inside the brain,
  raw, displaced only and with the Jacobian (``tests/test_sdc_real.py`` does this for PEPOLAR);
- the b=0-to-T1w registration cost of each run's preprocessed mean b=0: ANTs' Mattes mutual
  information (more negative is better) inside the T1w brain mask, after the workflow's own rigid
  b=0 -> T1w registration (``*_from-T1w_to-midpoint_mode-image_xfm.txt``).
- the same question asked of the geometry alone: the uncorrected run's preprocessed mean b=0,
  displaced (no Jacobian) by ``k`` times each estimated field, ``k`` in -1, -0.5, 0, 0.5, 1,
  brought into the T1w by the uncorrected run's rigid registration; Pearson r with the T1w inside its brain
  mask (negative: CSF is bright on the b=0, dark on the T1w; more negative is better). A field
  with the right sign and size is best at ``k = 1`` and worse than none at ``k = -1``.

Usage::

    python benchmarks/syn_sdc_real.py --workdir /tmp/syn_real   # about 10 minutes on 2 cores

Outputs already in ``--workdir`` are reused: delete it after changing the code.  The numbers are
in docs/anatomy.md ("Fieldmap-less").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from sdc_agreement import run_conditions  # benchmarks/, beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-sdc" / "philips-elition"
CONDITIONS = {"uncorrected": ["--ignore", "fieldmaps"], "pepolar": [],
              "syn": ["--ignore", "fieldmaps", "--use-syn-sdc"]}
SERIES = "sub-01_ses-01_dir-AP"


def _field(folder: Path):
    stem = folder / "ses-01" / "fmap" / f"{SERIES}_desc-preproc_fieldmap"
    return nib.load(f"{stem}.nii.gz"), json.loads(Path(f"{stem}.json").read_text())


def _encoding(data: Path, sidecar: dict) -> tuple[int, int]:
    """The dir-AP series' phase-encoding axis and polarity in RAS+ voxel order."""
    from bids_ketamine.dwi.sdc import ras_phase_encoding

    raw = data / "sub-01" / "ses-01" / "dwi" / f"{SERIES}_dwi.nii.gz"
    return ras_phase_encoding(sidecar["PhaseEncodingDirection"], nib.load(raw).affine)


def field_agreement(data: Path, folders: dict[str, Path]) -> dict:
    """Displacement difference (mm) and r of the PEPOLAR and fieldmap-less fields in the brain."""
    (pepolar, sidecar), (syn, _) = _field(folders["pepolar"]), _field(folders["syn"])
    axis, _ = _encoding(data, sidecar)
    mask = folders["pepolar"] / "ses-01" / "dwi" / f"{SERIES}_space-dwi_desc-brain_mask.nii.gz"
    brain = nib.load(mask).get_fdata() > 0
    mm_per_hz = sidecar["TotalReadoutTime"] * float(pepolar.header.get_zooms()[axis])
    a, b = pepolar.get_fdata()[brain], syn.get_fdata()[brain]
    return {"median_abs_displacement_difference_mm": float(np.median(np.abs(a - b)) * mm_per_hz),
            "p90_abs_displacement_difference_mm": float(np.percentile(np.abs(a - b), 90) * mm_per_hz),
            "r": float(np.corrcoef(a, b)[0, 1]),
            "p1_p99_hz": {"pepolar": np.percentile(a, [1, 99]).round(1).tolist(),
                          "syn": np.percentile(b, [1, 99]).round(1).tolist()}}


def b0_agreement(data: Path, folders: dict[str, Path]) -> dict:
    """Pearson r of the dir-AP and reverse-run mean b=0, each unwarped with its own polarity."""
    from bids_ketamine.dwi.mask import brain_mask
    from bids_ketamine.dwi.sdc import mean_reference_b0, unwarp

    dwi = data / "sub-01" / "ses-01" / "dwi"
    forward_img = nib.load(folders["syn"] / "ses-01" / "dwi" / f"{SERIES}_space-dwi_desc-uncorrected_dwiref.nii.gz")
    rpe = dwi / "sub-01_ses-01_acq-rpe_dir-PA_dwi"
    reverse = mean_reference_b0([nib.load(f"{rpe}.nii.gz")], forward_img,
                                [np.loadtxt(f"{rpe}.bval", ndmin=1) <= 50]).get_fdata()
    forward = forward_img.get_fdata()
    brain = brain_mask(0.5 * (forward + reverse))
    result = {"raw": float(np.corrcoef(forward[brain], reverse[brain])[0, 1])}
    for name in ("pepolar", "syn"):
        field_img, sidecar = _field(folders[name])
        field = field_img.get_fdata()
        axis, sign = _encoding(data, sidecar)
        encoding = {"axis": axis, "total_readout_time": sidecar["TotalReadoutTime"]}
        for jacobian in (False, True):
            first = unwarp(forward, field, sign=sign, jacobian=jacobian, **encoding)
            second = unwarp(reverse, field, sign=-sign, jacobian=jacobian, **encoding)
            key = f"{name}_{'jacobian' if jacobian else 'displaced'}"
            result[key] = float(np.corrcoef(first[brain], second[brain])[0, 1])
    return result


def _t1w_and_b0(folder: Path):
    """One run's bias-corrected T1w, its brain mask, the preprocessed mean b=0 of the dir-AP
    series, and a function that brings a volume on the b=0's grid into the T1w through the
    workflow's own rigid registration (``*_from-T1w_to-midpoint_mode-image_xfm.txt``)."""
    from bids_ketamine.dwi.resample import resample

    anat = folder / "anat"
    t1w = nib.load(next(anat.glob("*_desc-preproc_T1w.nii.gz")))
    brain = nib.load(next(anat.glob("*_desc-brain_mask.nii.gz"))).get_fdata() > 0
    b0 = nib.load(folder / "ses-01" / "dwi" / f"{SERIES}_space-dwi_desc-b0_dwiref.nii.gz")
    t1w_to_dwi = np.loadtxt(next(folder.rglob("*_from-T1w_to-midpoint_mode-image_xfm.txt")))

    def into_t1w(volume: np.ndarray) -> np.ndarray:
        return resample(volume, b0.affine, t1w.shape, t1w.affine, t1w_to_dwi, order=1)

    return t1w, brain, b0, into_t1w


def b0_to_t1w_cost(folder: Path) -> float:
    """ANTs' Mattes mutual information of the T1w and the preprocessed mean b=0 brought into it
    by the workflow's rigid registration, inside the T1w brain mask (more negative: better)."""
    import ants

    t1w, brain, b0, into_t1w = _t1w_and_b0(folder)
    images = [ants.from_numpy(np.where(brain, data, 0).astype(np.float32))
              for data in (t1w.get_fdata(), into_t1w(b0.get_fdata()))]
    return float(ants.image_mutual_information(*images))


def b0_to_t1w_correlation_by_scale(data: Path, folders: dict[str, Path],
                                   scales=(-1.0, -0.5, 0.0, 0.5, 1.0)) -> dict:
    """Per estimated field and scale ``k``: Pearson r of the T1w and the uncorrected run's mean
    b=0 displaced by ``k`` x the field, inside the T1w brain mask (module docstring)."""
    from bids_ketamine.dwi.sdc import unwarp

    t1w, brain, b0, into_t1w = _t1w_and_b0(folders["uncorrected"])
    anatomy, b0_data = t1w.get_fdata()[brain], b0.get_fdata()
    result = {}
    for name in ("pepolar", "syn"):
        field_img, sidecar = _field(folders[name])
        axis, sign = _encoding(data, sidecar)
        field = field_img.get_fdata()
        result[name] = {}
        for scale in scales:
            moved = unwarp(b0_data, scale * field, axis=axis, sign=sign,
                           total_readout_time=sidecar["TotalReadoutTime"], jacobian=False)
            result[name][f"{scale:+g}"] = float(np.corrcoef(anatomy, into_t1w(moved)[brain])[0, 1])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workdir", type=Path, default=Path("syn_sdc_real"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "syn_sdc_real.json")
    args = parser.parse_args(argv)
    folders = run_conditions(args.data, args.workdir, CONDITIONS, common=(), shared_work=True)
    report = {"fields": field_agreement(args.data, folders), "b0_agreement": b0_agreement(args.data, folders),
              "b0_to_t1w_mattes_mi": {name: b0_to_t1w_cost(folder) for name, folder in folders.items()},
              "b0_to_t1w_r_by_field_scale": b0_to_t1w_correlation_by_scale(args.data, folders)}
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
