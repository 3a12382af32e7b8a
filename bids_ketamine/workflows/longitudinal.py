"""The longitudinal registration of one participant: within-subject midpoint, then template
(directly from the b=0, or through the subject's T1w when there is one)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.interfaces.anat import B0ToT1wRegistration, ComposeThroughT1w
from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS, MidpointSpace, TemplateRegistration
from bids_ketamine.workflows.literate import LiterateWorkflow


#: Inputs of the T1w path (:func:`bids_ketamine.workflows.anat.init_anat_wf`'s outputs).
ANAT_FIELDS = ("t1w_file", "t1w_mask", "anat_affine_file", "anat_warp_file", "anat_inverse_warp_file")


def init_longitudinal_wf(n_series: int, *, template: str, omp_nthreads: int = 1,
                         anatomical: bool = False, name: str = "longitudinal_wf"):
    """Register a participant's series to their midpoint space, and the midpoint to the template.

    The mean b=0 images of the series are registered to their unbiased within-subject midpoint
    (all sessions and acquisitions, none privileged; :class:`MidpointSpace`), and the midpoint
    image to the template's b=0-like contrast (affine + SyN; :class:`TemplateRegistration`):
    one template warp shared by every series.  With one series the midpoint is the series.

    With ``anatomical``, the template is reached through the subject's T1w instead: the
    midpoint b=0 is rigidly registered to the T1w (mutual information;
    :class:`~bids_ketamine.interfaces.anat.B0ToT1wRegistration`) and that map is composed with
    the T1w's own template registration (:class:`~bids_ketamine.interfaces.anat.ComposeThroughT1w`),
    written in the same files, so that everything downstream is unchanged.

    Parameters
    ----------
    n_series : int
        Number of series registered together (1 without ``--longitudinal``).
    template : str
        Name of the template space (for the methods text).
    omp_nthreads : int
        Threads of the registration nodes.
    anatomical : bool
        Register through the T1w (inputs :data:`ANAT_FIELDS`).
    name : str
        Workflow name.

    Inputs
    ------
    b0_files, mask_files
        Mean b=0 image and brain mask of each series (lists, in the series' order).
    template_b0_file
        The template's b=0-like contrast (:class:`~bids_ketamine.interfaces.registration.TemplateReference`);
        unused with ``anatomical``.
    t1w_file, t1w_mask, anat_affine_file, anat_warp_file, anat_inverse_warp_file
        With ``anatomical``: the bias-corrected T1w, its brain mask and its registration to the
        template (ANTs files).

    Outputs
    -------
    xfm_files
        Rigid series -> midpoint transforms (4x4 text, one per series, with JSON sidecars).
    midpoint_file, midpoint_mask
        Mean b=0 image and brain mask in the midpoint space.
    affine_file, warp_file, inverse_warp_file
        The midpoint -> template registration (:data:`REGISTRATION_FIELDS`).
    t1w_xfm_file
        With ``anatomical``: T1w world -> midpoint world (4x4 text).
    """
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _description(n_series, template, anatomical)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["b0_files", "mask_files", "template_b0_file", *(ANAT_FIELDS if anatomical else ())]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["xfm_files", "midpoint_file", "midpoint_mask", *REGISTRATION_FIELDS,
                *(["t1w_xfm_file"] if anatomical else [])]), name="outputnode")
    midpoint = pe.Node(MidpointSpace(n_threads=omp_nthreads), name="midpoint", n_procs=omp_nthreads,
                       mem_gb=2.0)
    workflow.connect([
        (inputnode, midpoint, [("b0_files", "b0_files"), ("mask_files", "mask_files")]),
        (midpoint, outputnode, [("xfm_files", "xfm_files"), ("midpoint_file", "midpoint_file"),
                                ("midpoint_mask", "midpoint_mask")]),
    ])
    if not anatomical:
        register = pe.Node(TemplateRegistration(n_threads=omp_nthreads), name="template_registration",
                           n_procs=omp_nthreads, mem_gb=3.0)
        workflow.connect([
            (inputnode, register, [("template_b0_file", "fixed_file")]),
            (midpoint, register, [("midpoint_file", "moving_file"), ("midpoint_mask", "moving_mask")]),
            (register, outputnode, [(field, field) for field in REGISTRATION_FIELDS]),
        ])
        return workflow
    to_t1w = pe.Node(B0ToT1wRegistration(n_threads=omp_nthreads), name="b0_to_t1w",
                     n_procs=omp_nthreads, mem_gb=1.5)
    compose = pe.Node(ComposeThroughT1w(), name="template_through_t1w", mem_gb=1.5)
    workflow.connect([
        (midpoint, to_t1w, [("midpoint_file", "b0_file"), ("midpoint_mask", "b0_mask")]),
        (inputnode, to_t1w, [("t1w_file", "t1w_file"), ("t1w_mask", "t1w_mask")]),
        (to_t1w, compose, [("xfm_file", "t1w_xfm_file")]),
        (midpoint, compose, [("midpoint_file", "reference_file")]),
        (inputnode, compose, [("anat_affine_file", "affine_file"), ("anat_warp_file", "warp_file"),
                              ("anat_inverse_warp_file", "inverse_warp_file")]),
        (to_t1w, outputnode, [("xfm_file", "t1w_xfm_file")]),
        (compose, outputnode, [(field, field) for field in REGISTRATION_FIELDS]),
    ])
    return workflow


def _description(n_series: int, template: str, anatomical: bool) -> str:
    """The methods paragraph of :func:`init_longitudinal_wf`."""
    text = []
    if n_series >= 2:
        text.append(f"The mean b=0 images of the {n_series} series were rigidly registered to their "
                    "unbiased within-subject midpoint space, so that no session is privileged.")
    image = "The midpoint b=0 image" if n_series >= 2 else "The mean b=0 image"
    shared = "; one template warp is shared by every session" if n_series >= 2 else ""
    if anatomical:
        text.append(f"{image} was rigidly registered to the participant's T1-weighted image (ANTs, "
                    "Mattes mutual information) [@ants], and reached the "
                    f"{template} template [@template:{template}] through the T1w's own nonlinear "
                    f"registration, the two composed into one transform{shared}.")
    else:
        text.append(f"{image} was registered to the {template} template [@template:{template}] with "
                    f"an affine transform followed by symmetric diffeomorphic normalisation (SyN) "
                    f"[@syn]{shared}.")
    return " ".join(text)
