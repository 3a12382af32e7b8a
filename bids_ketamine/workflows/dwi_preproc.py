"""Preprocessing of one DWI series: checks, denoising, Gibbs removal, motion correction, mask."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.config import Config
from bids_ketamine.interfaces.denoise import Degibbs, Denoise
from bids_ketamine.interfaces.io import LoadDWI
from bids_ketamine.interfaces.mask import BrainMask
from bids_ketamine.interfaces.motion import MotionCorrect

#: Memory (GB) per million voxel-volumes of the heaviest steps, measured on the realistic preset.
_GB_PER_MVOX = 0.08


def init_dwi_preproc_wf(config: Config, *, mem_gb: float = 1.0, name: str = "dwi_preproc_wf"):
    """Build the preprocessing workflow of one DWI series.

    Denoising runs first, before any interpolation (MRtrix3's recommended order:
    denoising, then Gibbs removal, then motion correction).

    Parameters
    ----------
    config : Config
        Uses ``denoise``, ``denoise_full_fov``, ``degibbs``, ``b0_threshold``, ``omp_nthreads``.
    mem_gb : float
        Memory estimate of the series' heavy nodes (for the scheduler).
    name : str
        Workflow name.

    Inputs
    ------
    dwi_file, bval_file, bvec_file
        The raw series.

    Outputs
    -------
    dwi_file, bval_file, bvec_file
        Preprocessed series (RAS+, motion-corrected, b-vectors rotated; FSL convention).
    b0_file
        Mean b=0 after motion correction.
    mask_file
        Brain mask.
    noise_file
        Noise map of the denoising step (undefined with ``--denoise none``).
    motion_file
        Per-volume motion parameters and framewise displacement (TSV).
    warnings
        Problems repaired while loading.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file"]),
                        name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "b0_file", "mask_file",
                                      "noise_file", "motion_file", "warnings"]),
        name="outputnode",
    )
    threads = config.omp_nthreads
    load = pe.Node(LoadDWI(b0_threshold=config.b0_threshold), name="load_dwi", mem_gb=mem_gb)
    denoise = pe.Node(Denoise(method=config.denoise, n_threads=threads,
                              full_fov=config.denoise_full_fov, b0_threshold=config.b0_threshold),
                      name="denoise", n_procs=threads, mem_gb=mem_gb * 3)
    motion = pe.Node(MotionCorrect(b0_threshold=config.b0_threshold, n_threads=threads),
                     name="motion_correct", n_procs=threads, mem_gb=mem_gb * 2)
    mask = pe.Node(BrainMask(), name="brain_mask", mem_gb=mem_gb)

    workflow.connect([
        (inputnode, load, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                           ("bvec_file", "bvec_file")]),
        (load, denoise, [("dwi_file", "dwi_file"), ("bval_file", "bval_file")]),
        (load, motion, [("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
        (load, outputnode, [("warnings", "warnings")]),
        (denoise, outputnode, [("noise_file", "noise_file")]),
        (motion, mask, [("b0_file", "b0_file"), ("dwi_file", "dwi_file")]),
        (motion, outputnode, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                              ("bvec_file", "bvec_file"), ("b0_file", "b0_file"),
                              ("motion_file", "motion_file")]),
        (mask, outputnode, [("mask_file", "mask_file")]),
    ])
    if config.degibbs:
        degibbs = pe.Node(Degibbs(n_threads=threads), name="degibbs", n_procs=threads, mem_gb=mem_gb * 2)
        workflow.connect([(denoise, degibbs, [("dwi_file", "dwi_file")]),
                          (degibbs, motion, [("dwi_file", "dwi_file")])])
    else:
        workflow.connect([(denoise, motion, [("dwi_file", "dwi_file")])])
    return workflow


def series_mem_gb(n_voxels: int, n_volumes: int) -> float:
    """Memory estimate (GB) of one series' heavy nodes, from its size."""
    return max(0.5, _GB_PER_MVOX * n_voxels * n_volumes / 1e6)
