"""Agreement of two opposite phase-encoded runs' MD maps, corrected and uncorrected (issue 19).

Runs the participant level on ``real-sdc/uih-umr770`` sub-01 (DWI-only path) with the
susceptibility-distortion correction (dir-AP and dir-PA correct each other) and with
``--ignore fieldmaps``, then compares the AP and PA MD maps inside both brain masks (MD 0-1.5):
median relative difference and Pearson r, raw and after smoothing both maps alike (a Gaussian of
``sigma`` voxels normalised inside the tissue mask), which separates voxel noise, that any
interpolation's smoothing lowers, from geometric agreement.  ``tests/test_sdc_real.py`` checks
the raw numbers (extended set); the table is in docs/anatomy.md.

Usage::

    python benchmarks/sdc_agreement.py --workdir /tmp/uih     # about 1 minute on 2 cores

Outputs already in ``--workdir`` are reused: delete it after changing the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-sdc" / "uih-umr770"
CONDITIONS = {"corrected": [], "uncorrected": ["--ignore", "fieldmaps"]}


def run_conditions(data: Path, workdir: Path, conditions: dict | None = None, *,
                   common=("--ignore", "t1w"), shared_work: bool = False) -> dict[str, Path]:
    """The participant level of sub-01 in each condition (name -> extra options; default
    :data:`CONDITIONS`, with ``common`` added to each); each condition's ``sub-01`` output folder.
    ``shared_work``: one work folder for all, so that what the conditions share runs once."""
    from bids_ketamine.cli.run import main

    folders = {}
    for name, extra in (CONDITIONS if conditions is None else conditions).items():
        out = workdir / f"out_{name}"
        work = workdir / ("work" if shared_work else f"work_{name}")
        if not (out / "sub-01").exists():
            try:
                main([str(data), str(out), "participant", "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1",
                      "--participant-label", "01", "--skip-bids-validation", *common, *extra])
            except SystemExit as done:
                if done.code:
                    raise
        folders[name] = out / "sub-01"
    return folders


def smoothed(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` smoothed by a Gaussian of ``sigma`` voxels, normalised inside ``mask``."""
    if sigma == 0:
        return values
    weight = ndimage.gaussian_filter(mask.astype(float), sigma)
    return ndimage.gaussian_filter(values * mask, sigma) / np.maximum(weight, 1e-6)


def agreement(folder: Path, sigmas) -> list[tuple[float, float, float]]:
    """(sigma, median relative difference, r) of the AP and PA MD maps of one condition."""
    maps, masks = {}, {}
    for direction in ("AP", "PA"):
        prefix = folder / f"sub-01_ses-01_dir-{direction}"
        maps[direction] = nib.load(f"{prefix}_space-dwi_model-tensor_param-md_dwimap.nii.gz").get_fdata()
        masks[direction] = nib.load(f"{prefix}_space-dwi_desc-brain_mask.nii.gz").get_fdata() > 0
    ap, pa = maps["AP"], maps["PA"]
    tissue = masks["AP"] & masks["PA"] & (ap > 0) & (pa > 0) & (ap < 1.5) & (pa < 1.5)
    rows = []
    for sigma in sigmas:
        a, b = smoothed(ap, tissue, sigma)[tissue], smoothed(pa, tissue, sigma)[tissue]
        relative = np.abs(a - b) / (0.5 * (a + b))
        rows.append((sigma, float(np.median(relative)), float(np.corrcoef(a, b)[0, 1])))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the uih-umr770 dataset")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdc_agreement"))
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    args = parser.parse_args(argv)
    if not (args.data / "dataset_description.json").exists():
        parser.error(f"{args.data} is not the uih-umr770 dataset (../shared/data/real-sdc/uih-umr770)")
    print("| condition | sigma (voxels) | median relative difference | r |")
    print("|---|---:|---:|---:|")
    for name, folder in run_conditions(args.data, args.workdir).items():
        for sigma, median, r in agreement(folder / "ses-01" / "dwi", args.sigmas):
            print(f"| {name} | {sigma:g} | {100 * median:.2f} % | {r:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
