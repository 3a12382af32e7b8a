"""The longitudinal registration of one participant: within-subject midpoint, then template."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS, MidpointSpace, TemplateRegistration
from bids_ketamine.workflows.literate import LiterateWorkflow


def init_longitudinal_wf(n_series: int, *, template: str, omp_nthreads: int = 1,
                         name: str = "longitudinal_wf"):
    """Register a participant's series to their midpoint space, and the midpoint to the template.

    The mean b=0 images of the series are registered to their unbiased within-subject midpoint
    (all sessions and acquisitions, none privileged; :class:`MidpointSpace`), and the midpoint
    image to the template's b=0-like contrast (affine + SyN; :class:`TemplateRegistration`):
    one template warp shared by every series.  With one series the midpoint is the series.

    Parameters
    ----------
    n_series : int
        Number of series registered together (1 without ``--longitudinal``).
    template : str
        Name of the template space (for the methods text).
    omp_nthreads : int
        Threads of the registration nodes.
    name : str
        Workflow name.

    Inputs
    ------
    b0_files, mask_files
        Mean b=0 image and brain mask of each series (lists, in the series' order).
    template_b0_file
        The template's b=0-like contrast (:class:`~bids_ketamine.interfaces.registration.TemplateReference`).

    Outputs
    -------
    xfm_files
        Rigid series -> midpoint transforms (4x4 text, one per series, with JSON sidecars).
    midpoint_file, midpoint_mask
        Mean b=0 image and brain mask in the midpoint space.
    affine_file, warp_file, inverse_warp_file
        The midpoint -> template registration (:data:`REGISTRATION_FIELDS`).
    """
    workflow = LiterateWorkflow(name=name)
    if n_series >= 2:
        workflow.__desc__ = (
            f"The mean b=0 images of the {n_series} series were rigidly registered to their unbiased "
            "within-subject midpoint space, so that no session is privileged; the midpoint image "
            f"was registered to the {template} template [@template:{template}] with an affine "
            "transform followed by symmetric diffeomorphic normalisation (SyN) [@syn], one "
            "template warp shared by every session.")
    else:
        workflow.__desc__ = (
            f"The mean b=0 image was registered to the {template} template [@template:{template}] "
            "with an affine transform followed by symmetric diffeomorphic normalisation (SyN) [@syn].")
    inputnode = pe.Node(niu.IdentityInterface(fields=["b0_files", "mask_files", "template_b0_file"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["xfm_files", "midpoint_file", "midpoint_mask", *REGISTRATION_FIELDS]), name="outputnode")
    midpoint = pe.Node(MidpointSpace(n_threads=omp_nthreads), name="midpoint", n_procs=omp_nthreads,
                       mem_gb=2.0)
    register = pe.Node(TemplateRegistration(n_threads=omp_nthreads), name="template_registration",
                       n_procs=omp_nthreads, mem_gb=3.0)
    workflow.connect([
        (inputnode, midpoint, [("b0_files", "b0_files"), ("mask_files", "mask_files")]),
        (inputnode, register, [("template_b0_file", "fixed_file")]),
        (midpoint, register, [("midpoint_file", "moving_file"), ("midpoint_mask", "moving_mask")]),
        (midpoint, outputnode, [("xfm_files", "xfm_files"), ("midpoint_file", "midpoint_file"),
                                ("midpoint_mask", "midpoint_mask")]),
        (register, outputnode, [(field, field) for field in REGISTRATION_FIELDS]),
    ])
    return workflow
