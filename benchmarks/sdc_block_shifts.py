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

A second pass asks about size where a field is strong: in small blocks (``FINE_BLOCK_MM``,
searched over +-8 voxels), the median measured shift where a field predicts 2 voxels or more.
At this scale a block straddles compressed and stretched signal, so the measured shift does not
follow the prediction's sign (least-squares slope -0.1 for the true field on simulated data,
2026-12-06);
only its size is read.  ``--simulated BIDS_ROOT`` runs this pass on sub-01's first session of a
simulated dataset with ``--distortion --reverse-pe`` with its true field as a further field:
what a field that describes the images gives.

Usage::

    python benchmarks/sdc_block_shifts.py [--workdir /tmp/sdc_block_shifts]   # about 1 minute
    python benchmarks/sdc_block_shifts.py --simulated BIDS_ROOT   # the second pass's reference
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
#: Side (mm) of the second pass's blocks, rounded to whole voxels per axis.
FINE_BLOCK_MM = 16.0


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
    b0 = nib.load(estimate.b0_file)
    images = (b0.get_fdata(), nib.load(estimate.reference_file).get_fdata())
    return plan, images, fields, b0.header.get_zooms()[:3]


def fine_scale(forward, reverse, brain, plan, fields, zooms) -> list[dict]:
    """The second pass of the module docstring: per field, over small blocks, the median
    predicted and measured shift (voxels) where the prediction is 2 voxels or more."""
    block = tuple(max(2, int(round(FINE_BLOCK_MM / zoom))) for zoom in zooms)
    blocks = block_shifts(forward, reverse, brain, plan.axis, block, search=8.0, step=0.25)
    measured = np.array([shift for _, shift in blocks])
    rows = []
    for name, field in fields.items():
        predicted = np.array([2 * plan.sign * np.median(field[box][brain[box]]) * plan.total_readout_time
                              for box, _ in blocks])
        large = np.abs(predicted) >= 2.0
        rows.append({"field": name, "fine_blocks": len(blocks), "fine_block_vox": list(block),
                     "fine_blocks_predicted_ge_2_vox": int(large.sum()),
                     "fine_median_abs_predicted_vox": round(float(np.median(np.abs(predicted[large]))), 2)
                     if large.any() else None,
                     "fine_median_abs_measured_vox": round(float(np.median(np.abs(measured[large]))), 2)
                     if large.any() else None})
    return rows


def compare(root: Path, series_name: str, block, work: Path) -> list[dict]:
    from bids_ketamine.dwi.mask import brain_mask

    work.mkdir(parents=True, exist_ok=True)
    plan, (forward, reverse), fields, zooms = _fields(root, series_name, work)
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
    fine = {row["field"]: row for row in fine_scale(forward, reverse, brain, plan, fields, zooms)}
    for row in rows:
        row.update({key: value for key, value in fine.get(row["field"], {}).items() if key != "field"})
    return rows


def simulated_reference(root: Path, work: Path) -> list[dict]:
    """The second pass on sub-01's first session of a simulated dataset, with its true field."""
    from bids_ketamine.dwi.mask import brain_mask
    from bids_ketamine.simulate.study import truth_map_paths

    session = sorted(path.name[4:] for path in (root / "sub-01").glob("ses-*"))[0]
    work.mkdir(parents=True, exist_ok=True)
    plan, (forward, reverse), fields, zooms = _fields(root, f"sub-01_ses-{session}_dwi.nii.gz", work)
    truth = truth_map_paths(root, "01", session)["fieldmap"]
    fields["true"] = nib.as_closest_canonical(nib.load(truth)).get_fdata()
    rows = fine_scale(forward, reverse, brain_mask(0.5 * (forward + reverse)), plan, fields, zooms)
    return [{"dataset": f"{root.name} (simulated)", **row} for row in rows]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdc_block_shifts"))
    parser.add_argument("--results", type=Path, default=None,
                        help=f"JSON of the rows (default {RESULTS}; with --simulated, none written)")
    parser.add_argument("--simulated", type=Path, default=None,
                        help="run only the second pass on this simulated BIDS dataset (module docstring)")
    args = parser.parse_args(argv)
    if args.simulated is not None:
        return _report(simulated_reference(args.simulated, args.workdir / "simulated"), args.results)
    rows = []
    for dataset, (series_name, block) in DATASETS.items():
        root = REAL_SDC / dataset
        if not (root / "dataset_description.json").exists():
            raise SystemExit(f"real SDC data not found at {root} (the shared/ folder beside the repo)")
        rows += compare(root, series_name, block, args.workdir / dataset)
    return _report(rows, args.results or RESULTS)


def _report(rows: list[dict], results: Path | None) -> list[dict]:
    """Print the rows and write them to ``results`` (JSON) unless it is None."""
    for row in rows:
        print(row)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
