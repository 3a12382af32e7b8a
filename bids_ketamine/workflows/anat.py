"""The anatomical (T1w) workflow of one participant: run when the participant has a T1w
(``--ignore t1w`` skips it), its template registration then replaces the b=0-based one
(:func:`bids_ketamine.workflows.longitudinal.init_longitudinal_wf`)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.config import Config
from bids_ketamine.interfaces.anat import (
    BiasFieldCorrection,
    RoughBrainMask,
    TemplateBrainMask,
    T1wTemplateRegistration,
    TissueFractions,
    WithinSubjectTemplate,
)
from bids_ketamine.resources import get_template
from bids_ketamine.workflows.literate import LiterateWorkflow

OUTPUT_FIELDS = ["t1w_preproc", "t1w_to_session_xfms", "brain_mask", "gm_probseg", "wm_probseg",
                 "csf_probseg", "dseg", "template_affine", "template_warp",
                 "template_inverse_warp", "template_xfm_sidecar", "space"]


def init_anat_wf(config: Config, *, n_t1w: int = 1, name: str = "anat_wf"):
    """Build the anatomical workflow: N4, within-subject template, template registration,
    template-based brain extraction, GM/WM/CSF partial-volume maps.

    Parameters
    ----------
    config : Config
        Uses ``template`` and ``omp_nthreads``.
    n_t1w : int
        Number of T1w images (one per session): with more than one, the anatomy runs once
        on their unbiased within-subject template.
    name : str

    Inputs
    ------
    t1w_files
        One T1w per session (list, session order).

    Outputs
    -------
    t1w_preproc
        Bias-corrected T1w (the within-subject template with several sessions).
    t1w_to_session_xfms
        Per session: 4x4 text matrix, anatomical-template world -> session T1w world.
    brain_mask, gm_probseg, wm_probseg, csf_probseg, dseg
        On the grid of ``t1w_preproc``.
    template_affine, template_warp, template_inverse_warp, template_xfm_sidecar
        The registration to the template (ANTs/ITK files, convention in the sidecar).
    space
        The template space's name.
    """
    if int(n_t1w) < 1:
        raise ValueError(f"init_anat_wf needs at least one T1w, got n_t1w={n_t1w}")
    template = get_template(config.template)
    threads = config.omp_nthreads
    workflow = LiterateWorkflow(name=name)
    sessions = "one session's T1w" if n_t1w == 1 else (
        f"the unbiased within-subject template of the {n_t1w} sessions' T1w images (each rigidly "
        "registered to their midpoint, no session privileged)")
    workflow.__desc__ = (
        "Anatomical data were processed with ANTsPy [@ants]: each T1-weighted image was corrected for "
        "intensity non-uniformity (N4) [@n4]; the anatomy was processed once, on "
        f"{sessions}. It was registered to the {template.name} template (affine, then symmetric "
        "diffeomorphic SyN [@syn], at 2 mm, after cutting the T1w to a brain-sized region found by "
        "morphology); the brain was extracted by carrying the template's brain mask into "
        "the T1w through that registration; grey-matter, white-matter and CSF partial-volume "
        "maps came from a three-class Atropos segmentation [@atropos] (k-means initialisation, Markov "
        "random field), with two-compartment intensity mixing between pure tissue intensities "
        "measured in the interior of the CSF and white-matter classes and over confident grey matter "
        "(voxels confidently grey matter kept pure)."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_files"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    outputnode.inputs.space = template.name

    n4 = pe.MapNode(BiasFieldCorrection(n_threads=threads), iterfield=["t1w_file"],
                    name="bias_field_correction", n_procs=threads, mem_gb=1.5)
    within = pe.Node(WithinSubjectTemplate(), name="within_subject_template", mem_gb=2.0)
    rough = pe.Node(RoughBrainMask(), name="rough_brain_mask", mem_gb=1.0)
    register = pe.Node(T1wTemplateRegistration(n_threads=threads, template_t1w=str(template.t1w),
                                            template_mask=str(template.mask), space=template.name),
                       name="template_registration", n_procs=threads, mem_gb=2.0)
    brain = pe.Node(TemplateBrainMask(n_threads=threads, template_mask=str(template.mask)),
                    name="brain_mask", n_procs=threads, mem_gb=1.0)
    tissues = pe.Node(TissueFractions(n_threads=threads), name="tissue_fractions",
                      n_procs=threads, mem_gb=1.5)
    xfm_fields = [("affine_file", "affine_file"), ("warp_file", "warp_file"),
                  ("inverse_warp_file", "inverse_warp_file")]
    workflow.connect([
        (inputnode, n4, [("t1w_files", "t1w_file")]),
        (n4, within, [("corrected_file", "t1w_files")]),
        (within, rough, [("template_file", "t1w_file")]),
        (within, register, [("template_file", "t1w_file")]),
        (rough, register, [("mask_file", "t1w_mask")]),
        (within, brain, [("template_file", "t1w_file")]),
        (register, brain, xfm_fields),
        (within, tissues, [("template_file", "t1w_file")]),
        (brain, tissues, [("mask_file", "mask_file")]),
        (within, outputnode, [("template_file", "t1w_preproc"),
                              ("xfm_files", "t1w_to_session_xfms")]),
        (brain, outputnode, [("mask_file", "brain_mask")]),
        (tissues, outputnode, [("gm_file", "gm_probseg"), ("wm_file", "wm_probseg"),
                               ("csf_file", "csf_probseg"), ("dseg_file", "dseg")]),
        (register, outputnode, [("affine_file", "template_affine"), ("warp_file", "template_warp"),
                                ("inverse_warp_file", "template_inverse_warp"),
                                ("sidecar_file", "template_xfm_sidecar")]),
    ])
    return workflow
