"""Do the estimated fields predict the shifts seen in the images themselves? (issue 19, real data)

A check that uses no field estimate: in each block of the brain, the shift along the
phase-encoding axis that best aligns the reverse-polarity mean b=0 with the DWI's mean b=0 (1-D
search, linear interpolation, Pearson r inside the block) is compared with the shift a field
predicts, ``2 s d`` (``d`` the block's median displacement in voxels, ``s`` the DWI's polarity:
the two polarities are displaced in opposite directions).  Fields: the PEPOLAR estimate
(:class:`bids_ketamine.interfaces.sdc.PepolarField`) of philips-elition and uih-umr770 sub-01,
and elition's GRE field map (:class:`bids_ketamine.interfaces.sdc.GreField`).

The block shift is not a calibrated field estimate (a block mixes regions the field displaces
differently; on simulated data its least-squares scale against the true field's prediction was
0.42), so read the sign and the correlation, and the error against "no field" and "the field
negated".

Usage::

    python benchmarks/sdc_block_shifts.py [--workdir /tmp/sdc_block_shifts]   # about 1 minute
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REAL_SDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-sdc"
RESULTS = Path(__file__).parent / "results" / "sdc_block_shifts.json"
#: dataset -> (DWI series, block size in voxels)
DATASETS = {"philips-elition": ("sub-01_ses-01_dir-AP_dwi.nii.gz", (24, 24, 12)),
            "uih-umr770": ("sub-01_ses-01_dir-AP_dwi.nii.gz", (16, 16, 5))}


def block_shifts(first, second, brain, axis, block, search=4.0, step=0.1):
    """Per block at least half brain: (slices, the shift of ``second`` along ``axis`` that best
    matches ``first``, in voxels, as :func:`scipy.ndimage.shift` takes it)."""
    shape = np.array(first.shape)
    found = []
    for corner in np.ndindex(*(int(n) for n in np.ceil(shape / np.array(block)))):
        box = tuple(slice(c * b, min((c + 1) * b, n)) for c, b, n in zip(corner, block, shape))
        if brain[box].mean() < 0.5:
            continue
        low, high = box[axis].start, box[axis].stop
        wide = list(box)
        wide[axis] = slice(max(0, low - 6), min(shape[axis], high + 6))
        cut = [slice(None)] * 3
        cut[axis] = slice(low - wide[axis].start, high - wide[axis].start)
        best = (0.0, -2.0)
        for shift in np.arange(-search, search + 1e-9, step):
            moved = ndimage.shift(second[tuple(wide)], [shift if k == axis else 0 for k in range(3)],
                                  order=1, mode="nearest")[tuple(cut)]
            r = np.corrcoef(first[box].ravel(), moved.ravel())[0, 1]
            if r > best[1]:
                best = (float(shift), r)
        found.append((box, best[0]))
    return found


def _fields(root: Path, series_name: str, work: Path):
    from bids_ketamine.bids import collect_dwi, collect_gre, load_layout
    from bids_ketamine.cli.preflight import _gre_plan, plan_fieldmaps
    from bids_ketamine.config import Config
    from bids_ketamine.interfaces.io import LoadDWI
    from bids_ketamine.interfaces.sdc import GreField, PepolarField

    found = {item.dwi.name: item for item in collect_dwi(load_layout(root, validate=False))["01"]}
    series = found[series_name]
    config = Config(bids_dir=root, output_dir=work / "out", analysis_level="participant")
    plan = plan_fieldmaps(config, {"01": [series]}, {"01": list(found.values())})["01"][0].fieldmap
    loaded = LoadDWI(dwi_file=str(series.dwi), bval_file=str(series.bval),
                     bvec_file=str(series.bvec)).run(cwd=str(work)).outputs
    estimate = PepolarField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file,
                            reference_files=list(plan.reference_files), reference_bvals=list(plan.reference_bvals),
                            axis=plan.axis, sign=plan.sign,
                            total_readout_time=plan.total_readout_time).run(cwd=str(work)).outputs
    fields = {"PEPOLAR": nib.load(estimate.field_file).get_fdata()}
    found_gre = collect_gre(root, series)
    gre = _gre_plan(series, found_gre) if found_gre else None
    if gre is not None:
        (work / "gre").mkdir(exist_ok=True)
        measured = GreField(dwi_file=loaded.dwi_file, bval_file=loaded.bval_file, method=gre.method,
                            fieldmap_files=list(gre.reference_files), magnitude_file=gre.magnitude_file,
                            echo_times=list(gre.echo_times), units=gre.units).run(cwd=str(work / "gre")).outputs
        fields["GRE"] = nib.load(measured.field_file).get_fdata()
    images = (nib.load(estimate.b0_file).get_fdata(), nib.load(estimate.reference_file).get_fdata())
    return plan, images, fields


def compare(root: Path, series_name: str, block, work: Path) -> list[dict]:
    from bids_ketamine.dwi.mask import brain_mask

    work.mkdir(parents=True, exist_ok=True)
    plan, (forward, reverse), fields = _fields(root, series_name, work)
    brain = brain_mask(0.5 * (forward + reverse))
    blocks = block_shifts(forward, reverse, brain, plan.axis, block)
    measured = np.array([shift for _, shift in blocks])
    rows = [{"dataset": root.name, "field": "none", "blocks": len(blocks),
             "median_abs_error_vox": round(float(np.median(np.abs(measured))), 3)}]
    for name, field in fields.items():
        predicted = np.array([2 * plan.sign * np.median(field[box][brain[box]]) * plan.total_readout_time
                              for box, _ in blocks])
        rows.append({"dataset": root.name, "field": name, "blocks": len(blocks),
                     "r": round(float(np.corrcoef(measured, predicted)[0, 1]), 3),
                     "median_abs_error_vox": round(float(np.median(np.abs(measured - predicted))), 3),
                     "negated_median_abs_error_vox": round(float(np.median(np.abs(measured + predicted))), 3),
                     "predicted_5_50_95_vox": np.percentile(predicted, [5, 50, 95]).round(2).tolist()})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdc_block_shifts"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for dataset, (series_name, block) in DATASETS.items():
        root = REAL_SDC / dataset
        if not (root / "dataset_description.json").exists():
            raise SystemExit(f"real SDC data not found at {root} (the shared/ folder beside the repo)")
        rows += compare(root, series_name, block, args.workdir / dataset)
    for row in rows:
        print(row)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
