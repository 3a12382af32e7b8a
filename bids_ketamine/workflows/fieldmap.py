"""Susceptibility-distortion correction of one DWI series (issue 19): estimate, then apply."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.bids import FieldmapPlan
from bids_ketamine.interfaces.sdc import PepolarField, Unwarp
from bids_ketamine.workflows.literate import LiterateWorkflow


def init_fieldmap_wf(plan: FieldmapPlan, *, b0_threshold: float = 50.0, omp_nthreads: int = 1,
                     mem_gb: float = 1.0, name: str = "fieldmap_wf"):
    """Build the workflow that corrects one series' susceptibility distortion.

    PEPOLAR only (:attr:`FieldmapPlan.method`): the field is estimated from the series' mean
    b=0 and the reverse phase-encoded references (:class:`~bids_ketamine.interfaces.sdc.PepolarField`)
    and every volume is corrected with it, Jacobian included
    (:class:`~bids_ketamine.interfaces.sdc.Unwarp`), before motion correction.

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

    Outputs
    -------
    dwi_file
        The corrected series.
    field_file
        The field (Hz) on the series' grid.
    b0_file, reference_file
        The mean b=0 of each polarity before correction (for the report).
    """
    if plan.method != "pepolar":
        raise ValueError(f"unknown field-map method {plan.method!r}: only 'pepolar' is implemented")
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        f"Susceptibility distortion was corrected with the b=0 volumes of {len(plan.reference_files)} "
        "reverse phase-encoded image(s) (PEPOLAR): the B0 field was estimated by nonlinear registration "
        "of the mean b=0 of each polarity restricted to the phase-encoding axis (ANTs SyN [@ants]), "
        "and every volume was unwarped along that axis, its intensity modulated by the Jacobian of the "
        "displacement, before motion correction.")
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "bval_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "field_file", "b0_file", "reference_file"]),
                         name="outputnode")
    encoding = {"axis": plan.axis, "sign": plan.sign, "total_readout_time": plan.total_readout_time}
    estimate = pe.Node(PepolarField(reference_files=list(plan.reference_files),
                                    reference_bvals=list(plan.reference_bvals), b0_threshold=b0_threshold,
                                    **encoding), name="pepolar_field", n_procs=omp_nthreads, mem_gb=mem_gb)
    apply = pe.Node(Unwarp(**encoding), name="unwarp", mem_gb=mem_gb * 2)
    workflow.connect([
        (inputnode, estimate, [("dwi_file", "dwi_file"), ("bval_file", "bval_file")]),
        (inputnode, apply, [("dwi_file", "dwi_file")]),
        (estimate, apply, [("field_file", "field_file")]),
        (apply, outputnode, [("dwi_file", "dwi_file")]),
        (estimate, outputnode, [("field_file", "field_file"), ("b0_file", "b0_file"),
                                ("reference_file", "reference_file")]),
    ])
    return workflow
