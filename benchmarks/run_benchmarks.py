#!/usr/bin/env python
"""Per-stage wall time, CPU time and peak memory: bids_ketamine vs MRtrix3 vs DIPY.

Every stage runs in its own subprocess (this script with ``--stage``), file to file (read the
input NIfTI, compute, write the outputs), so that peak memory (``ru_maxrss``) is per stage and the
tools are compared on the same work. Stages of one dataset run back to back in one invocation;
on a shared machine compare the ratios, not the absolute times.

Usage::

    python benchmarks/run_benchmarks.py                      # real + simulated, 2 threads
    python benchmarks/run_benchmarks.py --threads 1 --datasets real
    python benchmarks/run_benchmarks.py --no-dipy-denoise    # skip DIPY's (slow) mppca

Results: ``benchmarks/results/<dataset>.json`` and ``benchmarks/results/summary.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REAL_DWI = REPO.parent / "shared" / "data" / "real-dwi"
ELITION = REAL_DWI / "sub-elition" / "ses-1" / "dwi" / "sub-elition_ses-1_dwi"
REALISTIC_SHAPE = (108, 126, 90)  # 2 mm MNI-sized field of view
REALISTIC_GRADIENTS = (6, 64)  # b=0 volumes, b=1000 directions


# ---------------------------------------------------------------------------------------------
# Stages: each one runs in a fresh subprocess (see run_stage)
# ---------------------------------------------------------------------------------------------
def _load(path, dtype=np.float32):
    """Image and data (``dtype=None``: as stored, e.g. int16, without a converted copy)."""
    import nibabel as nib

    image = nib.load(path)
    return image, (np.asanyarray(image.dataobj) if dtype is None else
                   np.asarray(image.dataobj, dtype=dtype))


def _save(array, image, path):
    import nibabel as nib

    nib.Nifti1Image(np.asarray(array, dtype=np.float32), image.affine).to_filename(path)


def _gradients(inputs):
    bvals = np.loadtxt(inputs["bval"], ndmin=1)
    bvecs = np.loadtxt(inputs["bvec"], ndmin=2)
    return bvals, (bvecs.T if bvecs.shape[0] == 3 else bvecs)


def stage_denoise_ours(inputs, outdir, threads):
    from bids_ketamine.dwi.denoise import mppca

    image, data = _load(inputs["dwi"])
    denoised, sigma = mppca(data, patch_radius=2, n_threads=threads)
    _save(denoised, image, outdir / "denoised.nii")
    _save(sigma, image, outdir / "noise.nii")


def stage_denoise_ours_brain(inputs, outdir, threads):
    """The pipeline's default: only the voxels of the denoising mask (brain + 10 mm)."""
    from bids_ketamine.dwi.denoise import mppca

    image, data = _load(inputs["dwi"])
    mask = _load(inputs["denoise_mask"], np.uint8)[1] > 0
    denoised, sigma = mppca(data, mask=mask, patch_radius=2, n_threads=threads)
    _save(denoised, image, outdir / "denoised.nii")
    _save(sigma, image, outdir / "noise.nii")


def stage_denoise_dipy(inputs, outdir, threads):
    from dipy.denoise.localpca import mppca

    image, data = _load(inputs["dwi"])
    denoised, sigma = mppca(data, patch_radius=2, return_sigma=True)  # no thread option
    _save(denoised, image, outdir / "denoised.nii")
    _save(sigma, image, outdir / "noise.nii")


def _dwidenoise(inputs, outdir, threads, extent, mask=None):
    command = ["dwidenoise", "-quiet", "-force", "-nthreads", str(threads)]
    if extent:
        command += ["-extent", str(extent)]
    if mask:
        command += ["-mask", str(mask)]
    subprocess.run(command + [str(inputs["dwi"]), str(outdir / "denoised.nii"),
                              "-noise", str(outdir / "noise.nii")], check=True)


def stage_denoise_mrtrix(inputs, outdir, threads):
    _dwidenoise(inputs, outdir, threads, 5)  # the same 5x5x5 patch as ours and DIPY's


def stage_denoise_mrtrix_brain(inputs, outdir, threads):
    _dwidenoise(inputs, outdir, threads, 5, inputs["denoise_mask"])  # same voxels as ours-brain


def stage_denoise_mrtrix_default(inputs, outdir, threads):
    _dwidenoise(inputs, outdir, threads, None)  # dwidenoise's own choice (3x3x3 for <= 27 volumes)


def _write_maps(fit, image, outdir):
    for name in ("fa", "md", "ad", "rd"):
        _save(getattr(fit, name), image, outdir / f"{name}.nii")


def stage_tensor_ours(inputs, outdir, threads):
    from bids_ketamine.dwi.tensor import fit_tensor

    image, data = _load(inputs["dwi"], None)  # converted chunk by chunk by fit_tensor
    mask = _load(inputs["mask"], np.uint8)[1] > 0
    bvals, bvecs = _gradients(inputs)
    _write_maps(fit_tensor(data, bvals, bvecs, mask=mask, method="wls", n_threads=threads), image,
                outdir)


def stage_tensor_dipy(inputs, outdir, threads):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    image, data = _load(inputs["dwi"], None)
    mask = _load(inputs["mask"], np.uint8)[1] > 0
    bvals, bvecs = _gradients(inputs)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs), fit_method="WLS").fit(data, mask=mask)
    for name in ("fa", "md", "ad", "rd"):
        _save(getattr(fit, name) * (1 if name == "fa" else 1000), image, outdir / f"{name}.nii")


def stage_tensor_mrtrix(inputs, outdir, threads):
    common = ["-quiet", "-force", "-nthreads", str(threads), "-mask", str(inputs["mask"])]
    subprocess.run(["dwi2tensor", *common, "-fslgrad", str(inputs["bvec"]), str(inputs["bval"]),
                    str(inputs["dwi"]), str(outdir / "dt.mif")], check=True)
    subprocess.run(["tensor2metric", *common, "-fa", str(outdir / "fa.nii"), "-adc",
                    str(outdir / "md.nii"), "-ad", str(outdir / "ad.nii"), "-rd",
                    str(outdir / "rd.nii"), str(outdir / "dt.mif")], check=True)


STAGES = {
    "denoise/ours": stage_denoise_ours,
    "denoise/mrtrix": stage_denoise_mrtrix,
    "denoise/mrtrix-default-extent": stage_denoise_mrtrix_default,
    "denoise-brain/ours": stage_denoise_ours_brain,
    "denoise-brain/mrtrix": stage_denoise_mrtrix_brain,
    "denoise/dipy": stage_denoise_dipy,
    "tensor/ours": stage_tensor_ours,
    "tensor/mrtrix": stage_tensor_mrtrix,
    "tensor/dipy": stage_tensor_dipy,
}
EXTERNAL = {"denoise/mrtrix", "denoise/mrtrix-default-extent", "denoise-brain/mrtrix", "tensor/mrtrix"}


def _stage_main(spec):
    """Subprocess side: run one stage, print wall/CPU/peak-RSS as JSON on the last line."""
    inputs = {key: Path(value) for key, value in spec["inputs"].items()}
    outdir = Path(spec["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    STAGES[spec["stage"]](inputs, outdir, spec["threads"])
    wall = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    external = spec["stage"] in EXTERNAL  # the MRtrix3 commands: this wrapper's memory excluded
    peak_kb = children.ru_maxrss if external else max(own.ru_maxrss, children.ru_maxrss)
    cpu = children.ru_utime + children.ru_stime + (0 if external else own.ru_utime + own.ru_stime)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_kb / 1024}))


def run_stage(stage, inputs, outdir, threads):
    """Run one stage in a fresh interpreter and return its measurements."""
    spec = {"stage": stage, "inputs": {k: str(v) for k, v in inputs.items()},
            "outdir": str(outdir), "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MRTRIX_QUIET="1")
    load_before = os.getloadavg()[0]
    result = subprocess.run([sys.executable, __file__, "--stage", json.dumps(spec)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return {"stage": stage, "error": result.stderr.strip().splitlines()[-1:]}
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured.update(stage=stage, threads=threads, load_avg_1min_before=load_before)
    print(f"  {stage:32s} wall {measured['wall_s']:8.2f} s  cpu {measured['cpu_s']:8.2f} s  "
          f"peak {measured['peak_rss_mb']:7.0f} MB", flush=True)
    return measured


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
def _mask_files(inputs, workdir):
    """Add the brain mask (median_otsu of the mean b=0; for the tensor stages) and the
    pipeline's denoising mask (brain + 10 mm) to ``inputs``: computed once, not timed."""
    import nibabel as nib

    from bids_ketamine.dwi.mask import brain_mask, denoising_mask

    image, data = _load(inputs["dwi"])
    mean_b0 = data[..., np.loadtxt(inputs["bval"], ndmin=1) <= 50].mean(-1)
    masks = {"mask": brain_mask(mean_b0),
             "denoise_mask": denoising_mask(mean_b0, image.header.get_zooms()[:3])}
    for key, mask in masks.items():
        inputs[key] = workdir / f"{Path(inputs['dwi']).name.split('.')[0]}_{key}.nii"
        nib.Nifti1Image(mask.astype(np.uint8), image.affine).to_filename(inputs[key])
    return inputs


def real_inputs(workdir):
    """sub-elition: 128x128x82, 1 b=0 + 16 directions (b=1000), 2 mm."""
    if not ELITION.with_suffix(".nii.gz").exists():
        return None
    inputs = {"dwi": ELITION.with_suffix(".nii.gz"), "bval": ELITION.with_suffix(".bval"),
              "bvec": ELITION.with_suffix(".bvec"), "bids_dir": REAL_DWI,
              "participant": "elition", "session": "1"}
    return _mask_files(inputs, workdir)


def simulated_session_from_simulator(workdir):
    """One session of ``bids-ketamine-simulate --preset realistic`` (None if unavailable)."""
    if shutil.which("bids-ketamine-simulate") is None:
        return None
    target = workdir / "simulated-bids"
    images = sorted(target.glob("sub-*/ses-*/dwi/*_dwi.nii*"))  # a kept --workdir: reuse it
    if not images:
        result = subprocess.run(["bids-ketamine-simulate", str(target), "--n-subjects", "1",
                                 "--preset", "realistic", "--seed", "1"], capture_output=True,
                                text=True)
        images = sorted(target.glob("sub-*/ses-*/dwi/*_dwi.nii*")) if result.returncode == 0 else []
    if not images:
        return None
    dwi = images[0]
    stem = str(dwi).split(".nii")[0]
    inputs = {"dwi": dwi, "bval": Path(stem + ".bval"), "bvec": Path(stem + ".bvec"),
              "bids_dir": target, "participant": dwi.name.split("_")[0][4:],
              "session": dwi.name.split("_")[1][4:]}
    return _mask_files(inputs, workdir)


def synthetic_session(workdir, shape=REALISTIC_SHAPE, gradients=REALISTIC_GRADIENTS, sigma=25.0,
                      seed=0):
    """A realistic-size synthetic session: 2 mm, 6 b=0 + 64 directions at b=1000, Rician noise.

    An ellipsoidal 'brain' (white matter core with a smoothly rotating fibre direction, grey-matter
    shell, CSF ventricles) in a noise-only background; S0 about 1000, sigma 25.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    n_b0, n_dirs = gradients
    directions = rng.normal(size=(n_dirs, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, 1000.0)]
    bvecs = np.vstack([np.zeros((n_b0, 3)), directions])
    centre = (np.array(shape) - 1) / 2
    semi_axes = np.array(shape) * np.array([0.42, 0.44, 0.44])
    data = np.empty(shape + (bvals.size,), dtype=np.float32)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z in range(shape[2]):
        radius = np.sqrt(((x - centre[0]) / semi_axes[0]) ** 2 + ((y - centre[1]) / semi_axes[1]) ** 2
                         + ((z - centre[2]) / semi_axes[2]) ** 2)
        ventricle = np.sqrt(((x - centre[0]) / 8) ** 2 + ((y - centre[1]) / 14) ** 2
                            + ((z - centre[2]) / 8) ** 2) < 1
        white = (radius < 0.75) & ~ventricle
        grey = (radius >= 0.75) & (radius < 1)
        angle = np.pi * (x / shape[0]) + 0.5 * np.pi * (z / shape[2])
        fibre = np.stack([np.cos(angle), np.sin(angle), np.full_like(angle, 0.3)], -1)
        fibre /= np.linalg.norm(fibre, axis=-1, keepdims=True)
        cosine2 = (fibre @ directions.T) ** 2  # (x, y, dirs)
        wm = 1.4e-3 * cosine2 + 0.35e-3 * (1 - cosine2)
        attenuation = np.where(white[..., None], np.exp(-1000 * wm), 0.0)
        attenuation += np.where(grey[..., None], np.exp(-1000 * 0.8e-3), 0.0)
        attenuation += np.where(ventricle[..., None], np.exp(-1000 * 3.0e-3), 0.0)
        s0 = 900 * white + 1000 * grey + 1500 * ventricle
        signal = np.concatenate([np.repeat(s0[..., None], n_b0, -1), s0[..., None] * attenuation], -1)
        noise = rng.normal(0, sigma, signal.shape + (2,))
        data[:, :, z] = np.hypot(signal + noise[..., 0], noise[..., 1])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -centre * 2
    dwi = workdir / "synthetic_dwi.nii"
    nib.Nifti1Image(data, affine).to_filename(dwi)
    np.savetxt(workdir / "synthetic_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(workdir / "synthetic_dwi.bvec", bvecs.T, fmt="%.6f")
    inputs = {"dwi": dwi, "bval": workdir / "synthetic_dwi.bval",
              "bvec": workdir / "synthetic_dwi.bvec"}
    return _mask_files(inputs, workdir)


# ---------------------------------------------------------------------------------------------
# The whole pipeline: participant level of the dataset's session, group level of 1000 subjects
# ---------------------------------------------------------------------------------------------
def _run_script(script, arguments, result_file):
    """Run one of the pipeline benchmark scripts; return the record it writes (or the error)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(HERE / script), *arguments], env=env,
                            capture_output=True, text=True)
    print(result.stdout.strip(), flush=True)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads((HERE / "results" / result_file).read_text())


def time_participant_level(inputs, threads):
    """``bids-ketamine BIDS OUT participant`` on the dataset's one session (nodes' wall time and
    peak memory per stage from nipype's resource monitor: ``participant_benchmark.py``)."""
    if "bids_dir" not in inputs:
        return None  # the synthetic array is not a BIDS dataset
    return _run_script("participant_benchmark.py",
                       ["--bids-dir", str(inputs["bids_dir"]), "--participant-label",
                        inputs["participant"], "--session-label", inputs["session"],
                        "--nprocs", str(threads)],
                       f"participant_{Path(inputs['bids_dir']).name}.json")


def time_group_level(n_subjects, threads):
    """The group level on ``n_subjects`` fabricated participants (``group_benchmark.py``)."""
    return _run_script("group_benchmark.py", ["--n-subjects", str(n_subjects), "--nprocs", str(threads)],
                       f"group_{n_subjects}.json")


# ---------------------------------------------------------------------------------------------
# Agreement between the tools' outputs (not timed)
# ---------------------------------------------------------------------------------------------
def _median_relative(a_path, b_path, mask_path, b_scale=1.0):
    a = _load(a_path, np.float64)[1]
    b = _load(b_path, np.float64)[1] * b_scale
    mask = (_load(mask_path, np.uint8)[1] > 0) & (b > 0) & (a > 0)
    return float(np.median(np.abs(a[mask] / b[mask] - 1)))


def agreement(outdirs, inputs):
    pairs = {
        "noise map ours vs dwidenoise -extent 5 (median rel. diff, brain mask)":
            ("denoise/ours", "denoise/mrtrix", "noise.nii", 1.0),
        "noise map ours vs dwidenoise, both in the denoising mask (median rel. diff, brain mask)":
            ("denoise-brain/ours", "denoise-brain/mrtrix", "noise.nii", 1.0),
        "noise map ours in the denoising mask vs ours everywhere (median rel. diff, brain mask)":
            ("denoise-brain/ours", "denoise/ours", "noise.nii", 1.0),
        "noise map ours vs DIPY mppca (median rel. diff, brain mask)":
            ("denoise/ours", "denoise/dipy", "noise.nii", 1.0),
        "MD ours vs dwi2tensor+tensor2metric (median rel. diff, brain mask)":
            ("tensor/ours", "tensor/mrtrix", "md.nii", 1000.0),  # MRtrix3 writes mm^2/s
        "FA ours vs dwi2tensor+tensor2metric (median rel. diff, brain mask)":
            ("tensor/ours", "tensor/mrtrix", "fa.nii", 1.0),
        "MD ours vs DIPY WLS (median rel. diff, brain mask)":
            ("tensor/ours", "tensor/dipy", "md.nii", 1.0),  # the DIPY stage writes um^2/ms
    }
    found = {}
    for label, (ours, other, name, scale) in pairs.items():
        if (outdirs.get(ours, Path("-")) / name).exists() and (outdirs.get(other, Path("-")) / name).exists():
            found[label] = _median_relative(outdirs[ours] / name, outdirs[other] / name,
                                            inputs["mask"], scale)
    return found


def _ratios(records):
    by_stage = {r["stage"]: r for r in records if "wall_s" in r}
    ratios = {}
    for step in ("denoise", "denoise-brain", "tensor"):
        ours = by_stage.get(f"{step}/ours")
        for other in ("mrtrix", "dipy"):
            theirs = by_stage.get(f"{step}/{other}")
            if ours and theirs:
                ratios[f"{step}: ours/{other} wall"] = ours["wall_s"] / theirs["wall_s"]
                ratios[f"{step}: ours/{other} cpu"] = ours["cpu_s"] / theirs["cpu_s"]
    return ratios


def benchmark_dataset(name, inputs, workdir, threads, stages):
    print(f"{name}: {inputs['dwi']}", flush=True)
    import nibabel as nib

    shape = nib.load(inputs["dwi"]).shape
    outdirs = {stage: workdir / name / stage.replace("/", "_") for stage in stages}
    records = [run_stage(stage, inputs, outdirs[stage], threads) for stage in stages]
    return {
        "dataset": name,
        "shape": list(shape),
        "mask_voxels": int((_load(inputs["mask"], np.uint8)[1] > 0).sum()),
        "threads": threads,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_after": os.getloadavg()},
        "stages": records,
        "ratios": _ratios(records),
        "agreement": agreement(outdirs, inputs),
    }


def markdown(results):
    lines = []
    for result in results:
        lines += [f"### {result['dataset']} ({' x '.join(map(str, result['shape']))}, "
                  f"{result['mask_voxels']} mask voxels), {result['threads']} threads, "
                  f"{result['date']}", "",
                  "| stage | wall (s) | CPU (s) | peak RSS (MB) | load avg before |",
                  "|---|---:|---:|---:|---:|"]
        for record in result["stages"]:
            if "wall_s" in record:
                lines.append(f"| {record['stage']} | {record['wall_s']:.1f} | {record['cpu_s']:.1f} "
                             f"| {record['peak_rss_mb']:.0f} | {record['load_avg_1min_before']:.1f} |")
            else:
                lines.append(f"| {record['stage']} | failed: {record['error']} | | | |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
        lines += ["", "| agreement | value |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.3f} % |" for k, v in result["agreement"].items()]
        lines.append("")
        participant = result.get("participant_level")
        if participant and "stages" in participant:
            lines += [f"Whole participant level of this session (`bids-ketamine ... participant`, "
                      f"{participant['nprocs']} processes): **{participant['wall_s']} s wall, peak "
                      f"RSS {participant['peak_rss_gb']} GB**; per stage (node wall times summed, "
                      "largest node's peak memory from nipype's resource monitor):", "",
                      "| stage | wall (s) | peak memory (GB) |", "|---|---:|---:|"]
            lines += [f"| {stage} | {usage['wall_s']} | {usage['peak_gb']} |"
                      for stage, usage in participant["stages"].items() if usage["wall_s"] >= 0.5]
            lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", default="real,simulated",
                        help="comma-separated: real (sub-elition), simulated (realistic preset)")
    parser.add_argument("--source", choices=("auto", "simulator", "synthetic"), default="auto",
                        help="simulated session: bids-ketamine-simulate --preset realistic, a "
                             "synthetic array of the same size, or the simulator when it works")
    parser.add_argument("--no-dipy-denoise", action="store_true",
                        help="skip DIPY's mppca (minutes on real data, hours on the simulated one)")
    parser.add_argument("--dipy-denoise-simulated", action="store_true",
                        help="also run DIPY's mppca on the simulated session (very slow)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stage names or prefixes to (re)run, e.g. 'tensor'; "
                             "the other stages' records are kept from the existing results JSON")
    parser.add_argument("--no-pipeline", action="store_true",
                        help="skip the whole participant level of each dataset and the group level")
    parser.add_argument("--group-subjects", type=int, default=1000,
                        help="participants of the group-level timing (0: skip it)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        _stage_main(json.loads(args.stage))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bids_ketamine_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    have_mrtrix = all(shutil.which(c) for c in ("dwidenoise", "dwi2tensor", "tensor2metric"))
    results = []
    for name in args.datasets.split(","):
        if name == "real":
            inputs = real_inputs(workdir)
            if inputs is None:
                print(f"real data not found at {ELITION}; skipped", file=sys.stderr)
                continue
        elif name == "simulated":
            inputs = None
            if args.source in ("auto", "simulator"):
                inputs = simulated_session_from_simulator(workdir)
                if inputs is None and args.source == "simulator":
                    raise SystemExit("bids-ketamine-simulate --preset realistic did not produce a DWI")
            if inputs is None:
                print("simulated: using a synthetic realistic-size array", flush=True)
                inputs = synthetic_session(workdir)
                name = "synthetic-realistic"
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        stages = ["denoise/ours", "denoise-brain/ours"]
        if have_mrtrix:
            stages += ["denoise/mrtrix", "denoise-brain/mrtrix"]
            import nibabel as nib

            if not 27 < nib.load(inputs["dwi"]).shape[-1] <= 125:  # default extent is not 5
                stages.append("denoise/mrtrix-default-extent")
        if not args.no_dipy_denoise and (name == "real" or args.dipy_denoise_simulated):
            stages.append("denoise/dipy")
        stages += ["tensor/ours"] + (["tensor/mrtrix"] if have_mrtrix else []) + ["tensor/dipy"]
        previous_file = args.out / f"{name}.json"
        if args.stages:
            wanted = args.stages.split(",")
            stages = [s for s in stages if any(s == w or s.startswith(w + "/") for w in wanted)]
        result = benchmark_dataset(name, inputs, workdir, args.threads, stages)
        if args.stages and previous_file.exists():  # keep the stages not re-run
            previous = json.loads(previous_file.read_text())
            rerun = {r["stage"] for r in result["stages"]}
            kept = [r for r in previous["stages"] if r["stage"] not in rerun]
            result["stages"] = kept + result["stages"]
            result["ratios"] = _ratios(result["stages"])
            result["agreement"] = {**previous.get("agreement", {}), **result["agreement"]}
            if args.no_pipeline and previous.get("participant_level"):
                result["participant_level"] = previous["participant_level"]
        if not args.no_pipeline:
            result["participant_level"] = time_participant_level(inputs, args.threads)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
        results.append(result)
    if not args.no_pipeline and args.group_subjects:
        time_group_level(args.group_subjects, args.threads)  # writes results/group_<n>.json
    every = [json.loads(path.read_text()) for path in sorted(args.out.glob("*.json"))
             if not path.name.startswith(("participant_", "group_"))]
    summary = markdown(every)  # every dataset measured so far, this run's included
    (args.out / "summary.md").write_text(summary)
    print(summary)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
