"""Susceptibility-distortion correction of one DWI series (issue 19): estimate, then apply."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.bids import FieldmapPlan
from bids_ketamine.dwi.sdc import PEPOLAR_SETTINGS
from bids_ketamine.interfaces.sdc import GreField, PepolarField, SynSdcField, Unwarp
from bids_ketamine.workflows.literate import LiterateWorkflow

#: What the methods paragraph says of each way of estimating the field.
_ESTIMATES = {
    "pepolar": "with the b=0 volumes of {n} reverse phase-encoded image(s) (PEPOLAR): the B0 field was "
               "estimated by nonlinear registration of the mean b=0 of each polarity restricted to the "
               "phase-encoding axis (ANTs SyN [@ants]; cross-correlation, gradient step {grad_step}, the "
               "total field smoothed by a Gaussian of {total_sigma} voxel)",
    "phasediff": "with a gradient-echo field map (phase difference): the phase was unwrapped in 3-D inside "
                 "the brain of the magnitude image (scikit-image [@skimage], the algorithm of [@unwrap3d]), divided by the echo-time "
                 "difference and put on the DWI grid {placement}",
    "phases": "with a gradient-echo field map (two phase images): their wrapped difference was unwrapped in "
              "3-D inside the brain of the magnitude image (scikit-image [@skimage], the algorithm of [@unwrap3d]), divided by the "
              "echo-time difference and put on the DWI grid {placement}",
    "fieldmap": "with a gradient-echo field map given in {units}, put on the DWI grid {placement}",
    "syn": "without field map, from the participant's T1w (fieldmap-less, the approach of fMRIPrep's "
           "SyN-SDC [@synsdc]): the mean b=0 was registered rigidly to the T1w and then nonlinearly to the "
           "T1w's inverted contrast, the deformation restricted to the phase-encoding axis (ANTs SyN "
           "[@ants], cross-correlation)",
}
#: How a GRE field is put on the DWI grid, with and without a magnitude image.
_PLACEMENT = {True: "through a rigid registration of its magnitude image to the mean b=0 (ANTs [@ants], "
                    "mutual information)",
              False: "by scanner coordinates"}


def init_fieldmap_wf(plan: FieldmapPlan, *, b0_threshold: float = 50.0, omp_nthreads: int = 1,
                     mem_gb: float = 1.0, name: str = "fieldmap_wf"):
    """Build the workflow that corrects one series' susceptibility distortion.

    The field comes from the reverse phase-encoded references (``plan.method == "pepolar"``:
    :class:`~bids_ketamine.interfaces.sdc.PepolarField`), from a GRE field map (``phasediff``,
    ``phases``, ``fieldmap``: :class:`~bids_ketamine.interfaces.sdc.GreField`) or from the
    participant's T1w (``syn``, ``--use-syn-sdc``: :class:`~bids_ketamine.interfaces.sdc.SynSdcField`).  Every volume is
    corrected with it, Jacobian included (:class:`~bids_ketamine.interfaces.sdc.Unwarp`, linear
    interpolation): motion is estimated on that copy, and motion correction resamples the
    uncorrected series once through the field and the motion composed
    (:class:`~bids_ketamine.interfaces.motion.MotionCorrect`).

    Parameters
    ----------
    plan : FieldmapPlan
        What the preflight found (:func:`bids_ketamine.cli.preflight.plan_fieldmaps`).
    b0_threshold : float
    omp_nthreads : int
        Threads of the registration (for the scheduler).
    mem_gb : float
        Memory estimate of the series' heavy nodes.
    name : str

    Inputs
    ------
    dwi_file, bval_file
        The series (RAS+, denoised), before motion correction.
    t1w_file, t1w_mask_file
        ``syn`` only: the participant's bias-corrected T1w and its brain mask
        (:func:`~bids_ketamine.workflows.anat.init_anat_wf`).

    Outputs
    -------
    dwi_file
        The corrected series (for motion estimation).
    field_file
        The field (Hz) on the series' grid.
    b0_file
        The mean b=0 before correction (for the report).
    """
    if plan.method not in _ESTIMATES:
        raise ValueError(f"unknown field-map method {plan.method!r}: one of {sorted(_ESTIMATES)}")
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        "Susceptibility distortion was corrected "
        + _ESTIMATES[plan.method].format(n=len(plan.reference_files), units=plan.units,
                                         placement=_PLACEMENT[bool(plan.magnitude_file)], **PEPOLAR_SETTINGS)
        + ". The displacement along the phase-encoding axis, with the intensity modulation of its "
        "Jacobian, was composed with each volume's head motion, so that every volume was resampled once.")
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "bval_file", "t1w_file", "t1w_mask_file"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "field_file", "b0_file"]),
                         name="outputnode")
    encoding = {"axis": plan.axis, "sign": plan.sign, "total_readout_time": plan.total_readout_time}
    if plan.is_pepolar:
        estimate = pe.Node(PepolarField(reference_files=list(plan.reference_files),
                                        reference_bvals=list(plan.reference_bvals), b0_threshold=b0_threshold,
                                        **encoding), name="pepolar_field", n_procs=omp_nthreads, mem_gb=mem_gb)
    elif plan.method == "syn":
        estimate = pe.Node(SynSdcField(b0_threshold=b0_threshold, **encoding), name="syn_sdc_field",
                           n_procs=omp_nthreads, mem_gb=mem_gb)
        workflow.connect([(inputnode, estimate, [("t1w_file", "t1w_file"), ("t1w_mask_file", "t1w_mask_file")])])
    else:
        estimate = pe.Node(GreField(method=plan.method, fieldmap_files=list(plan.reference_files),
                                    echo_times=list(plan.echo_times), units=plan.units,
                                    b0_threshold=b0_threshold), name="gre_field", n_procs=omp_nthreads,
                           mem_gb=mem_gb)
        if plan.magnitude_file:
            estimate.inputs.magnitude_file = plan.magnitude_file
    apply = pe.Node(Unwarp(**encoding), name="unwarp", mem_gb=mem_gb * 2)
    workflow.connect([
        (inputnode, estimate, [("dwi_file", "dwi_file"), ("bval_file", "bval_file")]),
        (inputnode, apply, [("dwi_file", "dwi_file")]),
        (estimate, apply, [("field_file", "field_file")]),
        (apply, outputnode, [("dwi_file", "dwi_file")]),
        (estimate, outputnode, [("field_file", "field_file"), ("b0_file", "b0_file")]),
    ])
    return workflow
