"""Time and peak memory of ANTsPy versus DIPY for the anatomical steps (issue 19).

Each step runs in its own Python process (so its peak resident memory is its own), on
one T1w image, with 2 threads.  Usage::

    python benchmarks/anat_tools.py T1W.nii.gz [STEP ...] > results.tsv

Steps: ants_n4, ants_atropos, ants_syn, dipy_hmrf, dipy_syn (library defaults at the T1w's
1 mm), and app_registration (what the app runs: the morphological brain region, then
:func:`bids_ketamine.anat.registration.register_to_template` at 2 mm).  The template is the app's
(``bids_ketamine.resources.get_template``).  Prints one TSV row per step: step, wall and CPU seconds,
peak resident memory (MiB) of the process, and the baseline memory after loading.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

STEPS = ("ants_n4", "ants_atropos", "ants_syn", "dipy_hmrf", "dipy_syn", "app_registration")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_step(step: str, t1w_path: str) -> None:
    import nibabel as nib
    import numpy as np

    from bids_ketamine.resources import get_template

    template = get_template()
    if step.startswith(("ants", "app")):
        import ants

        image = ants.image_read(t1w_path)
        fixed = ants.image_read(str(template.t1w))
        base = _peak_mib()
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        if step == "ants_n4":
            ants.n4_bias_field_correction(image)
        elif step == "ants_atropos":
            mask = ants.get_mask(image)
            ants.atropos(a=image, x=mask, i="kmeans[3]", m="[0.1,1x1x1]", c="[5,0]")
        elif step == "ants_syn":
            ants.registration(fixed=fixed, moving=image, type_of_transform="SyN")
        elif step == "app_registration":
            import tempfile

            from bids_ketamine.anat.brain_mask import rough_brain_mask
            from bids_ketamine.anat.registration import register_to_template

            t1w = nib.load(t1w_path)
            with tempfile.TemporaryDirectory() as scratch:
                register_to_template(t1w, template.t1w, f"{scratch}/reg_",
                                     template_mask=template.mask, t1w_mask=rough_brain_mask(t1w))
    else:
        image = nib.load(t1w_path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        fixed_img = nib.load(template.t1w)
        base = _peak_mib()
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        if step == "dipy_hmrf":
            from dipy.segment.tissue import TissueClassifierHMRF

            TissueClassifierHMRF(verbose=False).classify(data, 3, 0.1, max_iter=10)
        elif step == "dipy_syn":
            from dipy.align import affine_registration
            from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
            from dipy.align.metrics import CCMetric

            static = np.asarray(fixed_img.dataobj, dtype=np.float32)
            _, affine = affine_registration(
                data, static, moving_affine=image.affine, static_affine=fixed_img.affine,
                pipeline=["center_of_mass", "translation", "rigid", "affine"],
                level_iters=[100, 10, 5])
            sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), [10, 10, 5])
            sdr.optimize(static, data, fixed_img.affine, image.affine, affine)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    print(f"{step}\t{seconds:.1f}\t{cpu:.1f}\t{_peak_mib():.0f}\t{base:.0f}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--step":
        _run_step(argv[2], argv[3])
        return 0
    t1w_path, steps = argv[1], argv[2:] or list(STEPS)
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="2", OMP_NUM_THREADS="2",
               OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2", NUMBA_NUM_THREADS="2")
    print("step\twall_s\tcpu_s\tpeak_rss_mib\tbaseline_rss_mib", flush=True)
    for step in steps:
        subprocess.run([sys.executable, __file__, "--step", step, t1w_path], env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
