"""The participant-level workflow: one sub-workflow per participant, run by a nipype plugin.

Per participant (:func:`init_single_subject_wf`):

1. every DWI series is preprocessed (:func:`~bids_ketamine.workflows.dwi_preproc.init_dwi_preproc_wf`)
   and its tensor fitted (:func:`~bids_ketamine.workflows.tensor.init_tensor_wf`) in its own space;
2. the series' mean b=0 images are registered to their unbiased within-subject midpoint
   (all sessions and acquisitions of the subject, none privileged), and the midpoint image to the
   template: through the participant's T1w when there is one (the anatomy processed once,
   :func:`~bids_ketamine.workflows.anat.init_anat_wf`; rigid b=0 -> T1w composed with the T1w's
   SyN), else directly (affine + SyN on the b=0): one template warp shared by every session
   (:func:`~bids_ketamine.workflows.longitudinal.init_longitudinal_wf`);
3. the atlas is brought into each series' native grid (nearest neighbour) through that shared
   path, and ROI statistics are taken there, on maps that were never interpolated, with a voxel
   selection shared by the participant's sessions (:func:`~bids_ketamine.workflows.roi.init_roi_wf`);
4. FA and MD are also resampled once into template space
   (:func:`~bids_ketamine.workflows.template_maps.init_template_maps_wf`), and everything is
   written with BIDS derivative names (:mod:`bids_ketamine.workflows.outputs`).

Every factory states what it does in its ``__desc__``
(:class:`~bids_ketamine.workflows.literate.LiterateWorkflow`): the methods text of a run is
assembled from the graph that was built.  This module builds the graph (wiring only);
:mod:`bids_ketamine.cli.workflow` runs it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine import __version__
from bids_ketamine.bids import DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.derivatives import subject_path
from bids_ketamine.interfaces.io import DerivativesSink
from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS, TemplateReference
from bids_ketamine.workflows.anat import init_anat_wf
from bids_ketamine.workflows.connections import pick
from bids_ketamine.workflows.dwi_preproc import init_dwi_preproc_wf, series_mem_gb, set_series_inputs
from bids_ketamine.workflows.literate import LiterateWorkflow
from bids_ketamine.workflows.longitudinal import ANAT_FIELDS, init_longitudinal_wf
from bids_ketamine.workflows.outputs import ANAT_OUTPUTS, init_anat_derivatives_wf, init_series_derivatives_wf
from bids_ketamine.workflows.roi import ANAT_TISSUE_FIELDS, init_roi_wf
from bids_ketamine.workflows.template_maps import init_template_maps_wf
from bids_ketamine.workflows.tensor import init_tensor_wf

LOGGER = logging.getLogger(__name__)


def init_single_subject_wf(subject: str, series: list[DwiSeries], config: Config, *,
                           template: str, atlas_file: str, labels_file: str, atlas_name: str,
                           gm_file: str | None = None, provenance: dict | None = None,
                           wm_file: str | None = None, csf_file: str | None = None,
                           t1w_files: list[str] | None = None):
    """Build the workflow of one participant (wiring only).

    Every series is preprocessed, its tensor fitted and its derivatives written; the series
    registered together (all of the participant's with ``--longitudinal``, else each alone)
    share a longitudinal registration (:func:`init_longitudinal_wf`), their ROI statistics
    (:func:`init_roi_wf`) and their template-space maps (:func:`init_template_maps_wf`).

    Parameters
    ----------
    subject : str
        Participant label (no prefix).
    series : list of DwiSeries
        Every DWI series of the participant (all sessions), as checked by :func:`bids_ketamine.cli.preflight.preflight`.
    config : Config
    template : str
        Template space actually used (name of :func:`bids_ketamine.resources.get_template`).
    atlas_file, labels_file : str
        Atlas label image in that template space, and its TSV.
    atlas_name : str
        Atlas label used in output names.
    gm_file : str, optional
        The template's grey-matter probability map (ROI voxels are restricted to grey matter);
        with a T1w the participant's own tissue fractions are used instead
        (:func:`~bids_ketamine.workflows.roi.init_roi_wf`, ``anatomical``).
    wm_file, csf_file : str, optional
        The template's white-matter and CSF probability maps: with ``gm_file``, the tissue
        fractions of the partial-volume-aware ROI values (issue 20).
    provenance : dict, optional
        Template and atlas files used, recorded in the atlas sidecar of every series.
    t1w_files : list of str, optional
        The participant's T1w images (one per session, :func:`bids_ketamine.bids.collect_t1w`):
        the anatomy is processed once (:func:`init_anat_wf`) and the DWI reaches the template
        through it.  None or empty: the DWI-only path.

    Inputs
    ------
    template_b0_file, template_grid_file
        The template's resources (:class:`~bids_ketamine.interfaces.registration.TemplateReference`).
    """
    workflow = LiterateWorkflow(name=f"sub_{subject}_wf")
    sessions = sorted({item.session for item in series if item.session}, key=str)
    workflow.__desc__ = (
        f"Diffusion MRI of sub-{subject} ({len(series)} series"
        + (f" in {len(sessions)} session{'s' if len(sessions) > 1 else ''}" if sessions else "")
        + f") was processed with bids_ketamine {__version__} [@bids_ketamine], a BIDS App built on "
        "nipype [@nipype], DIPY [@dipy], nibabel [@nibabel], nilearn [@nilearn] and pybids [@pybids].")
    workflow.__postdesc__ = "Group-level models use statsmodels [@statsmodels]."
    inputnode = pe.Node(niu.IdentityInterface(fields=["template_b0_file", "template_grid_file"]),
                        name="inputnode")
    anat = _init_anat(workflow, subject, config, t1w_files, template) if t1w_files else None
    series_wfs = [_init_series_wfs(workflow, item, config, template=template, atlas_name=atlas_name,
                                   labels_file=labels_file, provenance=provenance) for item in series]
    for item, (preproc, _, _) in zip(series, series_wfs):
        if item.fieldmap is not None and item.fieldmap.method == "syn":  # --use-syn-sdc: the field from the T1w
            if anat is None:
                raise ValueError(f"{item.prefix}: the fieldmap-less correction needs the participant's T1w, "
                                 "and none is given (a plan of bids_ketamine.cli.preflight.plan_fieldmaps "
                                 "for another participant?)")
            workflow.connect([(anat, preproc, [("outputnode.t1w_preproc", "inputnode.t1w_file"),
                                               ("outputnode.brain_mask", "inputnode.t1w_mask_file")])])
    groups = [list(range(len(series)))] if config.longitudinal else [[i] for i in range(len(series))]
    for members in groups:
        suffix = "" if len(groups) == 1 else f"_{series[members[0]].key}"
        keys = [series[index].key for index in members]
        preprocs = [series_wfs[index][0] for index in members]
        tensors = [series_wfs[index][1] for index in members]
        longitudinal = init_longitudinal_wf(len(members), template=template, omp_nthreads=config.omp_nthreads,
                                            anatomical=anat is not None, name=f"longitudinal{suffix}_wf")
        if anat is not None:
            workflow.connect([(anat, longitudinal, [(f"outputnode.{source}", f"inputnode.{target}")
                                                    for source, target in zip(ANAT_SOURCES, ANAT_FIELDS)])])
        roi = init_roi_wf(config, keys, atlas_file=atlas_file, labels_file=labels_file, atlas_name=atlas_name,
                          gm_file=gm_file, wm_file=wm_file, csf_file=csf_file, anatomical=anat is not None,
                          b_values=[series[index].fit_b_mean for index in members], name=f"roi{suffix}_wf")
        if anat is not None:  # the ROI values' tissue fractions are the participant's own
            workflow.connect([
                (anat, roi, [(f"outputnode.{source}", f"inputnode.{target}")
                             for source, target in zip(ANAT_TISSUE_SOURCES, ANAT_TISSUE_FIELDS)
                             if source is not None]),
                (longitudinal, roi, [("outputnode.t1w_xfm_file", "inputnode.t1w_xfm_file")]),
            ])
        template_maps = init_template_maps_wf(keys, template=template, name=f"template_maps{suffix}_wf")
        gathered = {field: _gather(workflow, preprocs, field, f"{field}s{suffix}")
                    for field in ("b0_file", "mask_file")}
        gathered.update({field: _gather(workflow, tensors, field, f"{field}s{suffix}")
                         for field in ("fa_file", "md_file", "ad_file", "rd_file")})
        workflow.connect([
            (gathered["b0_file"], longitudinal, [("out", "inputnode.b0_files")]),
            (gathered["mask_file"], longitudinal, [("out", "inputnode.mask_files")]),
            (inputnode, longitudinal, [("template_b0_file", "inputnode.template_b0_file")]),
            (inputnode, template_maps, [("template_grid_file", "inputnode.grid_file")]),
            (longitudinal, roi, [(f"outputnode.{field}", f"inputnode.{field}")
                                 for field in ("xfm_files", *REGISTRATION_FIELDS)]),
            (longitudinal, template_maps, [(f"outputnode.{field}", f"inputnode.{field}")
                                           for field in ("xfm_files", *REGISTRATION_FIELDS)]),
            (gathered["fa_file"], template_maps, [("out", "inputnode.fa_files")]),
            (gathered["md_file"], template_maps, [("out", "inputnode.md_files")]),
        ])
        workflow.connect([(merge, roi, [("out", f"inputnode.{field}s")]) for field, merge in gathered.items()])
        if len(groups) == 1 and len(members) >= 2:  # the subject's midpoint (docs/outputs.md)
            ds_midpoint = pe.Node(DerivativesSink(out_path=str(subject_path(
                config.output_dir, subject, "midpoint_b0"))), name="ds_midpoint_b0",
                run_without_submitting=True)
            workflow.connect([(longitudinal, ds_midpoint, [("outputnode.midpoint_file", "in_file")])])
        if len(groups) == 1 and anat is not None:  # T1w -> midpoint (one series: its own space)
            ds_t1w_xfm = pe.Node(DerivativesSink(out_path=str(subject_path(
                config.output_dir, subject, "t1w_to_midpoint_xfm"))), name="ds_t1w_to_midpoint_xfm",
                run_without_submitting=True)
            workflow.connect([(longitudinal, ds_t1w_xfm, [("outputnode.t1w_xfm_file", "in_file")])])
        for position, index in enumerate(members):
            derivatives = series_wfs[index][2]
            workflow.connect([
                (template_maps, derivatives, [(("outputnode.fa_files", pick, position), "inputnode.tpl_fa_file"),
                                              (("outputnode.md_files", pick, position), "inputnode.tpl_md_file")]),
                (longitudinal, derivatives, [(("outputnode.xfm_files", pick, position), "inputnode.midpoint_xfm")]),
                (roi, derivatives, [(("outputnode.dseg_files", pick, position), "inputnode.dseg_file"),
                                    (("outputnode.roistats_files", pick, position), "inputnode.roistats_file"),
                                    (("outputnode.tissuestats_files", pick, position),
                                     "inputnode.tissuestats_file")]),
            ])
    return workflow


#: :func:`init_anat_wf` outputs feeding :data:`~bids_ketamine.workflows.longitudinal.ANAT_FIELDS`.
ANAT_SOURCES = ("t1w_preproc", "brain_mask", "template_affine", "template_warp", "template_inverse_warp")

#: :func:`init_anat_wf` outputs feeding :data:`~bids_ketamine.workflows.roi.ANAT_TISSUE_FIELDS`
#: (None: the T1w -> midpoint map, from the longitudinal workflow).
ANAT_TISSUE_SOURCES = ("t1w_preproc", None, "gm_probseg", "wm_probseg", "csf_probseg",
                       "template_affine", "template_warp", "template_inverse_warp")


def _init_anat(workflow, subject: str, config: Config, t1w_files: list[str], template: str):
    """Add the participant's anatomical workflow and its derivatives to ``workflow``; return it."""
    anat = init_anat_wf(config, n_t1w=len(t1w_files), name="anat_wf")
    anat.inputs.inputnode.t1w_files = [str(path) for path in t1w_files]
    derivatives = init_anat_derivatives_wf(subject, config.output_dir, template=template,
                                           name="anat_derivatives_wf")
    workflow.connect([(anat, derivatives, [(f"outputnode.{field}", f"inputnode.{field}")
                                           for field in ANAT_OUTPUTS])])
    return anat


def _init_series_wfs(workflow, item: DwiSeries, config: Config, *, template: str, atlas_name: str,
                     labels_file: str, provenance: dict | None):
    """Add one series' preprocessing, tensor fit, summary and derivatives to ``workflow``;
    return the preprocessing, tensor and derivatives workflows."""
    mem_gb = item.mem_gb if item.mem_gb is not None else series_mem_gb(0, 0)
    runs = item.runs or (item,)
    preproc = init_dwi_preproc_wf(config, mem_gb=mem_gb, n_runs=len(runs), fieldmap=item.fieldmap,
                                  name=f"dwi_preproc_{item.key}_wf")
    set_series_inputs(preproc, item)
    tensor = init_tensor_wf(config, mem_gb=mem_gb, dti_max_bval=item.fit_bval, name=f"tensor_{item.key}_wf")
    summary = pe.Node(niu.Function(function=series_summary,
                                   input_names=["source", "bval_file", "warnings", "protocol_warnings", "options"],
                                   output_names=["summary"]),
                      name=f"summary_{item.key}", run_without_submitting=True)
    summary.inputs.source = [str(source) for source in item.sources]
    summary.inputs.protocol_warnings = list(item.notes)
    summary.inputs.options = {
        "denoise": config.denoise, "denoise_full_fov": config.denoise_full_fov,
        "degibbs": config.degibbs, "fit_method": config.fit_method,
        "b0_threshold": config.b0_threshold, "dti_max_bval": config.dti_max_bval,
        "template": template, "atlas": atlas_name, "csf_md_threshold": config.csf_md_threshold,
        "gm_threshold": config.gm_threshold,
        "longitudinal": config.longitudinal, "combine_runs": config.combine_runs,
        "version": __version__,
    }
    derivatives = init_series_derivatives_wf(item, config.output_dir, template=template, atlas=atlas_name,
                                             denoise=config.denoise, name=f"derivatives_{item.key}_wf")
    derivatives.inputs.inputnode.dseg_tsv = labels_file
    derivatives.inputs.inputnode.dseg_metadata = dict(provenance or {}, Space="dwi",
                                                      Interpolation="nearest neighbour")
    workflow.connect([
        (preproc, tensor, [(f"outputnode.{f}", f"inputnode.{f}")
                           for f in ("dwi_file", "bval_file", "bvec_file", "mask_file", "noise_file")]),
        (preproc, summary, [("outputnode.bval_file", "bval_file"), ("outputnode.warnings", "warnings")]),
        (summary, derivatives, [("summary", "inputnode.preproc_metadata")]),
        (preproc, derivatives, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                                ("dwi_file", "bval_file", "bvec_file", "b0_file", "mask_file", "motion_file")
                                + (("noise_file",) if config.denoise != "none" else ())
                                + (("field_file", "uncorrected_b0_file") if item.fieldmap is not None else ())]),
        (tensor, derivatives, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                               ("fa_file", "md_file", "ad_file", "rd_file")]
         + [("outputnode.metadata", "inputnode.model_metadata")]),
    ])
    return preproc, tensor, derivatives


def _gather(workflow, sources, field: str, name: str):
    """A Merge node collecting ``outputnode.<field>`` of each workflow of ``sources`` (in order)."""
    merge = pe.Node(niu.Merge(len(sources)), name=name, run_without_submitting=True)
    workflow.connect([(source, merge, [(f"outputnode.{field}", f"in{position}")])
                      for position, source in enumerate(sources, start=1)])
    return merge


def series_summary(source, bval_file, warnings, protocol_warnings, options):
    """Summary of one series for its preprocessed-DWI sidecar (a nipype Function node body).

    ``source`` is the raw image, or the list of runs fitted together.  ``warnings`` come from
    loading the series, ``protocol_warnings`` from the preflight (e.g. the tensor fitted on a
    shell above ``--dti-max-bval``) and from comparing its acquisition with the participant's
    other sessions (:func:`bids_ketamine.dwi.acquisition.longitudinal_acquisition_warnings`).
    """
    import numpy as np

    from bids_ketamine.derivatives import SeriesSummary
    from bids_ketamine.dwi.gradients import shells

    bvals = np.loadtxt(bval_file, ndmin=1)
    return SeriesSummary(
        Sources=[str(path) for path in (source if isinstance(source, (list, tuple)) else [source])],
        NumberOfVolumes=int(len(bvals)),
        Shells={f"{b:g}": n for b, n in shells(bvals).items()},
        Options=dict(options),
        Warnings=list(warnings or []) + list(protocol_warnings or []),
    ).to_dict()


def init_bids_ketamine_wf(config: Config, series_by_subject: dict[str, list[DwiSeries]],
                          t1w_by_subject: dict[str, list] | None = None):
    """Build the whole participant-level workflow (one sub-workflow per participant).

    ``t1w_by_subject`` maps a participant to its T1w images (:class:`bids_ketamine.bids.T1wImage`
    or paths); participants absent from it take the DWI-only path.
    """
    from bids_ketamine.atlas import get_atlas
    from bids_ketamine.resources import get_template

    template = get_template(config.template)
    atlas = get_atlas(config.atlas, template, config.atlas_labels)
    labels_file = Path(config.work_dir or ".") / f"atlas-{atlas.name}_space-{template.name}_dseg.tsv"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    atlas.labels[["index", "name"]].to_csv(labels_file, sep="\t", index=False)
    workflow = LiterateWorkflow(name="bids_ketamine_wf")
    # the template's resources: computed once per run, passed to every participant as files
    template_reference = pe.Node(TemplateReference(template=template.name), name="template_reference",
                                 mem_gb=2.0)
    for subject, series in series_by_subject.items():
        single_subject = init_single_subject_wf(
            subject, series, config, template=template.name, atlas_file=str(atlas.image),
            labels_file=str(labels_file), atlas_name=atlas.name, gm_file=str(template.gm),
            wm_file=str(template.wm), csf_file=str(template.csf),
            t1w_files=[str(getattr(image, "path", image)) for image in (t1w_by_subject or {}).get(subject, [])],
            provenance={"Template": template.provenance(), "Atlas": atlas.provenance,
                        "AtlasFile": str(atlas.image)})
        workflow.connect([(template_reference, single_subject, [
            ("b0_file", "inputnode.template_b0_file"), ("grid_file", "inputnode.template_grid_file")])])
    return workflow, template, atlas
