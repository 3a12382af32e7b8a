"""Where the false change of the null trial comes from (issue 20).

The null subjects of ``precision_benchmark.py`` (same seed, preset, blob effect model,
repositioning 2 mm / 2 degrees; exact motion sampling by default) are simulated three ways, each
processed by the participant level:

- ``noisy``: as ``precision_benchmark.py --null`` simulates them;
- ``noise_free``: the same series without noise (``--no-noise``: motion, repositioning, anatomy
  and blobs are drawn from the same generators and are identical);
- ``static``: noise-free and without per-volume motion (``--no-motion``): what repositioning,
  registration between sessions and ROI placement cost, alone.

Two more arms are not the pipeline: ``true_motion`` corrects the ``noise_free`` series with the
simulator's own motion (``motion_matrices`` of truth's motion table; the pipeline's resampler,
cubic B-spline, each volume once; DIPY's WLS tensor fit) onto the static head's pose, where the
truth's anatomy is: the error left by a perfect motion estimate, the interpolation of the moved
volumes alone.  ``true_motion_reference`` does the same onto the participant level's reference
pose (where its maps show the head: the pose its motion estimates imply for the b=0 volumes), so
that it and the participant level differ by the error of the motion estimates (and the rest of
the preprocessing: denoising, b-vector rotation, the tensor fit); it and
``true_motion`` differ by what the values taken with the static pose's anatomy lose when the
head is elsewhere (an error of this evaluation, not of the pipeline).

Values per participant x ROI x session:

- the participant level's ROI statistics (``roi_gm_weighted_median``, ``median``), as
  ``precision_benchmark.py`` reads them;
- two values that need no registration, taken on the session's own grid with the simulation's
  anatomy, so that the pipeline's MD maps and ``true_motion``'s are compared on the same voxels:
  ``core_median``, the median MD over the ROI's grey-matter voxels (truth's ``desc-greymatter``
  dseg: grey-matter fraction >= 0.9, CSF <= 0.02; few voxels: about 40 in the vACC, 70 in BA10),
  and ``true_weighted_median``, the ``roi_gm_weighted_median`` rule with the true anatomy (the
  ROI's voxels by truth's label, weighted by the true grey-matter fraction, MD above the CSF
  threshold excluded).  On error-free maps their change is truth's (below 0.1 % here).

Per arm and value: the RMS and the largest false change (percent of the baseline), and the RMS
per ROI; per arm with motion, the RMS position error of the participant level's motion estimates
(b=0 and DW volumes apart).  Results: ``results/null_sources_<motion>.json`` and ``.md``.

Usage::

    python benchmarks/null_sources.py --n-subjects 12 --motion moderate --workdir /tmp/null_sources
    python benchmarks/null_sources.py --evaluate-only --workdir /tmp/null_sources
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_ketamine.config import Config
from precision_benchmark import MOTION_LEVELS, RESULTS, recovered_changes, simulate_and_run, write_results

#: Simulator options of each arm (beside the harder simulator's; all are null trials).
ARMS = {"noisy": [], "noise_free": ["--no-noise"], "static": ["--no-noise", "--no-motion"]}
#: The participant level's statistics compared.
STATISTICS = ("roi_gm_weighted_median", "median")
#: The app's default CSF exclusion (um^2/ms), used by ``true_weighted_median``.
CSF_MD_THRESHOLD = Config.default("csf_md_threshold")
#: The app's default b=0 threshold (s/mm^2; the simulator writes 0).
B0_THRESHOLD = Config.default("b0_threshold")
#: The tensor fit of ``true_motion`` (DIPY) and its MD unit (mm^2/s) -> um^2/ms.
MD_SCALE = 1000.0


def _truth_dir(run_dir: Path, subject: str, session: str) -> Path:
    return run_dir / "bids" / "sourcedata" / "simulation" / subject / f"ses-{session}"


def _load(path: Path, canonical: bool = False) -> np.ndarray:
    image = nib.load(str(path))
    return np.asarray((nib.as_closest_canonical(image) if canonical else image).dataobj, dtype=float)


def _true_roi_values(md: np.ndarray, run_dir: Path, subject: str, session: str, canonical: bool,
                     rois: list[str]) -> dict:
    """``core_median`` and ``true_weighted_median`` of every ROI (the session's own grid; ``rois``:
    the atlas' names in label order, from truth.json)."""
    from bids_ketamine.dwi.partial_volume import weighted_median

    prefix = f"{subject}_ses-{session}"
    truth = _truth_dir(run_dir, subject, session)
    core = _load(truth / f"{prefix}_space-dwi_atlas-ketamine7_desc-greymatter_dseg.nii.gz", canonical).astype(int)
    labels = _load(truth / f"{prefix}_space-dwi_atlas-ketamine7_dseg.nii.gz", canonical).astype(int)
    grey_matter = _load(truth / f"{prefix}_space-dwi_label-GM_probseg.nii.gz", canonical)
    not_csf = np.isfinite(md) & (md <= CSF_MD_THRESHOLD)
    values = {}
    for index, roi in enumerate(rois, start=1):
        soft = (labels == index) & not_csf
        values[roi] = {"core_median": float(np.median(md[core == index])),
                       "true_weighted_median": weighted_median(md[soft], grey_matter[soft])}
    return values


def _motion(run_dir: Path, subject: str, session: str):
    """The simulated motion (static head -> volume, per volume), the participant level's
    estimates (its reference -> volume), the b-values, and the reference's pose (static head ->
    reference): the log-Euclidean mean over the b=0 volumes of estimate^-1 @ truth, which is
    the same for every volume where the estimates are exact."""
    from scipy.linalg import expm

    from bids_ketamine.dwi.motion import PARAM_COLUMNS
    from bids_ketamine.dwi.transforms import params_to_matrix, real_logm
    from bids_ketamine.simulate.motion import motion_matrices

    prefix = f"{subject}_ses-{session}"
    truth = pd.read_csv(_truth_dir(run_dir, subject, session) / f"{prefix}_desc-motion_timeseries.tsv", sep="\t")
    estimate = pd.read_csv(run_dir / "out" / subject / f"ses-{session}" / "dwi" / f"{prefix}_desc-motion_timeseries.tsv",
                           sep="\t")
    bvals = np.loadtxt(run_dir / "bids" / subject / f"ses-{session}" / "dwi" / f"{prefix}_dwi.bval")
    true = motion_matrices(truth.to_numpy())
    estimated = np.array([params_to_matrix(row) for row in estimate[list(PARAM_COLUMNS)].to_numpy()])
    pose = expm(np.mean([real_logm(np.linalg.inv(t) @ m) for t, m, b in zip(estimated, true, bvals)
                         if b < B0_THRESHOLD], axis=0))
    return true, estimated, bvals, pose


def true_motion_md(run_dir: Path, subject: str, session: str, onto_reference: bool = False) -> np.ndarray:
    """MD (um^2/ms) of one noise-free series corrected with the simulator's motion (the raw grid).

    Onto the static head's pose, where the truth's anatomy is; with ``onto_reference``, onto the
    participant level's reference pose (:func:`_motion`), where its maps show the head.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from bids_ketamine.dwi.resample import resample

    prefix = f"{subject}_ses-{session}"
    folder = run_dir / "bids" / subject / f"ses-{session}" / "dwi"
    image = nib.load(str(folder / f"{prefix}_dwi.nii.gz"))
    data = np.asarray(image.dataobj, dtype=float)
    bvecs = np.loadtxt(folder / f"{prefix}_dwi.bvec")
    true, _, bvals, pose = _motion(run_dir, subject, session)
    # volume v shows the static head moved by M_v; the reference shows it moved by the pose:
    # the reference at x is volume v at M_v @ pose^-1 x
    to_reference = np.linalg.inv(pose) if onto_reference else np.eye(4)
    corrected = np.stack([resample(data[..., v], image.affine, data.shape[:3], image.affine,
                                   matrix @ to_reference, order=3)
                          for v, matrix in enumerate(true)], axis=-1)
    b0 = corrected[..., bvals < B0_THRESHOLD].mean(axis=-1)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs.T), fit_method="WLS").fit(corrected, mask=b0 > 0)
    return fit.md * MD_SCALE


def motion_error(run_dir: Path) -> dict:
    """RMS position error (mm, over the brain mask's voxels) of the participant level's motion
    estimates, b=0 and DW volumes apart, over every session of one arm.

    The estimates map the series' reference to each volume, the truth the static head to each
    volume; their difference is a constant (the reference's pose, which does not matter) plus the
    error.  The constant is the log-Euclidean mean difference over the session's b=0 volumes, so
    that a common offset of the DW volumes from the b=0s (which biases MD) counts as DW error.
    """
    squared = {"b0": [], "dw": []}
    for folder in sorted((run_dir / "out").glob("sub-*/ses-*/dwi")):
        subject, session = folder.parts[-3], folder.parts[-2][4:]
        mask = nib.load(str(folder / f"{subject}_ses-{session}_space-dwi_desc-brain_mask.nii.gz"))
        voxels = np.argwhere(np.asarray(mask.dataobj) > 0)
        points = np.c_[voxels, np.ones(len(voxels))] @ mask.affine.T
        true, estimated, bvals, pose = _motion(run_dir, subject, session)
        for moved, estimate, bvalue in zip(true, estimated, bvals):
            error = points @ (np.linalg.inv(estimate) @ moved - pose).T
            squared["b0" if bvalue < B0_THRESHOLD else "dw"].append(np.mean(np.sum(error[:, :3] ** 2, axis=1)))
    return {kind: round(float(np.sqrt(np.mean(values))), 3) for kind, values in squared.items() if values}


def arm_changes(run_dir: Path, source: str = "pipeline") -> pd.DataFrame:
    """Per participant x ROI: the false change (percent) of every value of one arm.

    ``source``: the participant level's outputs (``"pipeline"``), or the series corrected with
    the true motion onto the static pose (``"true_motion"``) or onto the participant level's
    reference pose (``"true_motion_reference"``).
    """
    subjects = sorted(p.name for p in (run_dir / "bids").glob("sub-*") if p.is_dir())
    truth = json.loads((run_dir / "bids" / "sourcedata" / "simulation" / "truth.json").read_text())
    baseline, followup = truth["design"]["sessions"][:2]
    rois = truth["anatomy"]["roi_names"]
    rows = []
    for subject in subjects:
        values = {}
        for session in (baseline, followup):
            if source == "pipeline":
                dwi = run_dir / "out" / subject / f"ses-{session}" / "dwi"
                md = _load(dwi / f"{subject}_ses-{session}_space-dwi_model-tensor_param-md_dwimap.nii.gz")
                # the outputs are RAS+; the truth's images are on the simulated (raw) grid
                values[session] = _true_roi_values(md, run_dir, subject, session, True, rois)
            else:
                md = true_motion_md(run_dir, subject, session, onto_reference=source == "true_motion_reference")
                values[session] = _true_roi_values(md, run_dir, subject, session, False, rois)
        for roi, before in values[baseline].items():
            rows.append({"participant_id": subject, "roi": roi,
                         **{name: 100.0 * (values[followup][roi][name] - value) / value
                            for name, value in before.items()}})
    table = pd.DataFrame(rows)
    if source == "pipeline":
        statistics, _ = recovered_changes(run_dir)
        table = table.merge(statistics[["participant_id", "roi", *STATISTICS]], on=["participant_id", "roi"])
    return table


def summary(table: pd.DataFrame) -> dict:
    """RMS, largest and per-ROI RMS false change of every value column (percent)."""
    out = {}
    for column in (c for c in table.columns if c not in ("participant_id", "roi")):
        values = table[column].dropna()
        worst = values.abs().idxmax()
        out[column] = {"rms": round(float(np.sqrt(np.mean(values ** 2))), 3),
                       "worst": round(float(abs(values[worst])), 2), "worst_roi": str(table.at[worst, "roi"]),
                       "rms_per_roi": table.groupby("roi")[column].apply(
                           lambda x: float(np.sqrt(np.mean(x ** 2)))).round(2).to_dict()}
    return out


def markdown(results: dict) -> str:
    lines = [f"Motion estimates, RMS position error (mm) of the b=0 / DW volumes: {arm} "
             f"{error.get('b0', float('nan')):.3f} / {error.get('dw', float('nan')):.3f}"
             for arm, error in results["motion_error_mm"].items()]
    lines += ["", "| arm | value | RMS false change | largest | RMS per ROI |", "|---|---|---|---|---|"]
    for arm, values in results["arms"].items():
        for name, row in values.items():
            per_roi = ", ".join(f"{roi} {value:.2f}" for roi, value in row["rms_per_roi"].items())
            lines.append(f"| {arm} | {name} | {row['rms']:.2f} % | {row['worst']:.2f} % ({row['worst_roi']}) | "
                         f"{per_roi} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--motion", choices=list(MOTION_LEVELS), default="moderate")
    parser.add_argument("--motion-sampling", default="exact")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/null_sources"))
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate the runs in --workdir")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {"preset": args.preset, "seed": args.seed, "motion": args.motion,
               "motion_sampling": args.motion_sampling, "n_subjects": args.n_subjects, "arms": {},
               "motion_error_mm": {}}
    for arm, options in ARMS.items():
        run_dir = args.workdir / arm
        if not args.evaluate_only:
            simulate_and_run(run_dir, args.motion, args.n_subjects, args.seed, args.preset, args.nprocs,
                             ["--null", "--motion-sampling", args.motion_sampling, *options])
        tables = {arm: arm_changes(run_dir)}
        if arm == "noise_free":
            tables.update({source: arm_changes(run_dir, source) for source in ("true_motion", "true_motion_reference")})
        for name, table in tables.items():  # per participant x ROI, beside the runs
            table.to_csv(args.workdir / f"{name}_null_changes.tsv", sep="\t", index=False)
            results["arms"][name] = summary(table)
        if arm != "static":
            results["motion_error_mm"][arm] = motion_error(run_dir)
    write_results(args.results, f"null_sources_{args.motion}", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
