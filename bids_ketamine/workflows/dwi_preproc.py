"""Preprocessing of one DWI series: checks, denoising, Gibbs removal, motion correction, mask."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.bids import FieldmapPlan
from bids_ketamine.config import Config
from bids_ketamine.interfaces.denoise import Degibbs, Denoise
from bids_ketamine.interfaces.io import ConcatenateRuns, LoadDWI
from bids_ketamine.interfaces.mask import BrainMask
from bids_ketamine.interfaces.motion import MotionCorrect
from bids_ketamine.workflows.fieldmap import init_fieldmap_wf
from bids_ketamine.workflows.literate import LiterateWorkflow

#: Memory (GB) per million voxel-volumes of the heaviest steps, measured on the realistic preset.
_GB_PER_MVOX = 0.08


def init_dwi_preproc_wf(config: Config, *, mem_gb: float = 1.0, n_runs: int = 1,
                        fieldmap: FieldmapPlan | None = None, name: str = "dwi_preproc_wf"):
    """Build the preprocessing workflow of one DWI series.

    Denoising runs first, before any interpolation (MRtrix3's recommended order:
    denoising, then Gibbs removal, then motion correction).  With ``n_runs`` > 1
    (``--combine-runs average``) each run is loaded, denoised (and Gibbs-corrected) on its
    own, the runs are joined (:class:`~bids_ketamine.interfaces.io.ConcatenateRuns`) and
    motion correction aligns every volume to one reference.  With a ``fieldmap`` plan the
    susceptibility distortion is estimated after denoising and Gibbs removal
    (:func:`~bids_ketamine.workflows.fieldmap.init_fieldmap_wf`), motion is estimated on the
    unwarped series, and each volume is resampled once, through its motion and the distortion
    composed.

    Parameters
    ----------
    config : Config
        Uses ``denoise``, ``denoise_full_fov``, ``degibbs``, ``b0_threshold``, ``omp_nthreads``.
    mem_gb : float
        Memory estimate of the series' heavy nodes (for the scheduler).
    n_runs : int
        Number of runs fitted together as this series.
    fieldmap : FieldmapPlan, optional
        The series' distortion correction (None: not corrected).
    name : str
        Workflow name.

    Inputs
    ------
    dwi_file, bval_file, bvec_file
        The raw series (lists of ``n_runs`` files when ``n_runs`` > 1).
    t1w_file, t1w_mask_file
        With a ``syn`` plan (``--use-syn-sdc``): the participant's bias-corrected T1w and its brain
        mask, from which the field is estimated.

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
    field_file, uncorrected_b0_file
        With ``fieldmap``: the field (Hz) and the mean b=0 before correction (for the report).
    """
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _description(config, n_runs)
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "t1w_file",
                                                      "t1w_mask_file"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "b0_file", "mask_file",
                                      "noise_file", "motion_file", "warnings", "field_file",
                                      "uncorrected_b0_file"]),
        name="outputnode",
    )
    threads = config.omp_nthreads
    per_run = _per_run_node(n_runs)
    load = per_run(LoadDWI(b0_threshold=config.b0_threshold), ["dwi_file", "bval_file", "bvec_file"],
                   name="load_dwi", mem_gb=mem_gb / n_runs)
    denoise = per_run(Denoise(method=config.denoise, n_threads=threads,
                              full_fov=config.denoise_full_fov, b0_threshold=config.b0_threshold),
                      ["dwi_file", "bval_file"], name="denoise", n_procs=threads, mem_gb=mem_gb * 3 / n_runs)
    motion = pe.Node(MotionCorrect(b0_threshold=config.b0_threshold, n_threads=threads),
                     name="motion_correct", n_procs=threads, mem_gb=mem_gb * 2)
    mask = pe.Node(BrainMask(), name="brain_mask", mem_gb=mem_gb)

    workflow.connect([
        (inputnode, load, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                           ("bvec_file", "bvec_file")]),
        (load, denoise, [("dwi_file", "dwi_file"), ("bval_file", "bval_file")]),
        (motion, mask, [("b0_file", "b0_file"), ("dwi_file", "dwi_file"), ("covered_file", "covered_file")]),
        (motion, outputnode, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                              ("bvec_file", "bvec_file"), ("b0_file", "b0_file"),
                              ("motion_file", "motion_file")]),
        (mask, outputnode, [("mask_file", "mask_file")]),
    ])
    denoised = denoise
    if config.degibbs:
        denoised = per_run(Degibbs(n_threads=threads), ["dwi_file"], name="degibbs", n_procs=threads,
                           mem_gb=mem_gb * 2 / n_runs)
        workflow.connect([(denoise, denoised, [("dwi_file", "dwi_file")])])
    if n_runs == 1:
        to_motion = denoised
        workflow.connect([
            (load, motion, [("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
            (load, outputnode, [("warnings", "warnings")]),
            (denoise, outputnode, [("noise_file", "noise_file")]),
        ])
        bvals = (load, "bval_file")
    else:
        to_motion = concatenate = pe.Node(ConcatenateRuns(), name="concatenate_runs", mem_gb=mem_gb * 2)
        workflow.connect([
            (denoised, concatenate, [("dwi_file", "dwi_files")]),
            (load, concatenate, [("bval_file", "bval_files"), ("bvec_file", "bvec_files")]),
            (concatenate, motion, [("bval_file", "bval_file"), ("bvec_file", "bvec_file"),
                                   ("run_lengths", "run_lengths")]),
            (load, outputnode, [(("warnings", _flatten), "warnings")]),
        ])
        if config.denoise != "none":
            workflow.connect([(denoise, concatenate, [("noise_file", "noise_files")]),
                              (concatenate, outputnode, [("noise_file", "noise_file")])])
        bvals = (concatenate, "bval_file")
    if fieldmap is None:
        workflow.connect([(to_motion, motion, [("dwi_file", "dwi_file")])])
        return workflow
    sdc = init_fieldmap_wf(fieldmap, b0_threshold=config.b0_threshold, omp_nthreads=threads,
                           mem_gb=mem_gb, name="fieldmap_wf")
    # motion is estimated on the unwarped series; the output is resampled once from the
    # distorted one, through the field and the motion composed
    motion.inputs.axis, motion.inputs.sign = fieldmap.axis, fieldmap.sign
    motion.inputs.total_readout_time = fieldmap.total_readout_time
    workflow.connect([
        (to_motion, sdc, [("dwi_file", "inputnode.dwi_file")]),
        (to_motion, motion, [("dwi_file", "distorted_file")]),
        (bvals[0], sdc, [(bvals[1], "inputnode.bval_file")]),
        (inputnode, sdc, [("t1w_file", "inputnode.t1w_file"), ("t1w_mask_file", "inputnode.t1w_mask_file")]),
        (sdc, motion, [("outputnode.dwi_file", "dwi_file"), ("outputnode.field_file", "field_file")]),
        (sdc, outputnode, [("outputnode.field_file", "field_file"),
                           ("outputnode.b0_file", "uncorrected_b0_file")]),
    ])
    return workflow


def _description(config: Config, n_runs: int) -> str:
    """The methods paragraph of :func:`init_dwi_preproc_wf`."""
    text = []
    if config.denoise == "mppca":
        where = ("in every voxel" if config.denoise_full_fov else
                 "in the brain of the raw series plus a 10 mm margin")
        text.append(f"Noise was removed by Marchenko-Pastur PCA (MP-PCA) [@mppca] {where}, before any "
                    "interpolation.")
    elif config.denoise == "patch2self":
        text.append("Noise was removed with Patch2Self [@patch2self] before any interpolation.")
    else:
        text.append("No denoising was applied.")
    if config.degibbs:
        text.append("Gibbs ringing was removed after denoising with the local sub-voxel shift method [@gibbs].")
    if n_runs > 1:
        text.append(f"The {n_runs} runs of the session were then joined into one series.")
    text.append("Head motion was corrected by rigid registration of every volume (b=0 volumes to their "
                "mean, diffusion-weighted volumes to a tensor prediction of themselves; the motion the "
                "tensor cannot see, such as all diffusion-weighted volumes moving together, was set by "
                "smoothness in time and, where the b=0 volumes left it uncertain, by aligning the mean "
                "diffusion-weighted image to the mean b=0 with mutual information [@dipy]) and the gradient "
                "directions were rotated with each volume; all volumes were resampled once, at the "
                f"{'first run' if n_runs > 1 else 'series'}'s mean head position. Framewise "
                "displacement [@power2012] summarises the motion per volume. Voxels that some volume's "
                "motion had taken outside its field of view were left out of the brain mask.")
    return " ".join(text)


def set_series_inputs(workflow, series) -> None:
    """Give a preprocessing workflow its raw files: one series' image and gradient files, or
    the lists of its runs when it joins several (:attr:`bids_ketamine.bids.DwiSeries.runs`)."""
    for field in ("dwi", "bval", "bvec"):
        paths = [str(getattr(run, field)) for run in series.runs or (series,)]
        setattr(workflow.inputs.inputnode, f"{field}_file", paths if series.runs else paths[0])


def _per_run_node(n_runs: int):
    """A factory of the per-run nodes: plain nodes for one run, MapNodes over the runs otherwise."""

    def make(interface, iterfield, **kwargs):
        if n_runs == 1:
            return pe.Node(interface, **kwargs)
        return pe.MapNode(interface, iterfield=iterfield, **kwargs)

    return make


def _flatten(items):
    """The warnings of every run, as one list."""
    return [text for run in items for text in (run or [])]


def series_mem_gb(n_voxels: int, n_volumes: int) -> float:
    """Memory estimate (GB) of one series' heavy nodes, from its size."""
    return max(0.5, _GB_PER_MVOX * n_voxels * n_volumes / 1e6)
