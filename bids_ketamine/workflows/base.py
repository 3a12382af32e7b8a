"""The participant-level workflow: one sub-workflow per participant, run by a nipype plugin.

Per participant (:func:`init_single_subject_wf`):

1. every DWI series is preprocessed (:func:`~bids_ketamine.workflows.dwi_preproc.init_dwi_preproc_wf`)
   and its tensor fitted (:func:`~bids_ketamine.workflows.tensor.init_tensor_wf`) in its own space;
2. the series' mean b=0 images are registered to their unbiased within-subject midpoint
   (all sessions and acquisitions of the subject, none privileged), and the midpoint image to the
   template (affine + SyN): one template warp shared by every session;
3. the atlas is brought into each series' native grid (nearest neighbour) through that shared
   path, and ROI statistics are taken there, on maps that were never interpolated;
4. FA and MD are also resampled once into template space, and everything is written with BIDS
   derivative names (:mod:`bids_ketamine.workflows.outputs`).

This module builds the graph; :mod:`bids_ketamine.cli.workflow` runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine import __version__
from bids_ketamine.bids import DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.derivatives import subject_path
from bids_ketamine.dwi.acquisition import longitudinal_acquisition_warnings
from bids_ketamine.interfaces.registration import (
    MidpointSpace,
    ROICoverage,
    TemplateRegistration,
    WarpFromTemplate,
    WarpToTemplate,
)
from bids_ketamine.interfaces.io import DerivativesSink
from bids_ketamine.interfaces.roi import ROIStats, ROIWeights, SharedSelection
from bids_ketamine.workflows.dwi_preproc import init_dwi_preproc_wf, series_mem_gb, set_series_inputs
from bids_ketamine.workflows.outputs import init_series_derivatives_wf
from bids_ketamine.workflows.tensor import init_tensor_wf

LOGGER = logging.getLogger(__name__)


def init_single_subject_wf(subject: str, series: list[DwiSeries], config: Config, *,
                           template: str, atlas_file: str, labels_file: str, atlas_name: str,
                           gm_file: str | None = None, provenance: dict | None = None,
                           wm_file: str | None = None, csf_file: str | None = None):
    """Build the workflow of one participant.

    Parameters
    ----------
    subject : str
        Participant label (no prefix).
    series : list of DwiSeries
        Every DWI series of the participant (all sessions).
    config : Config
    template : str
        Template space actually used (name of :func:`bids_ketamine.resources.get_template`).
    atlas_file, labels_file : str
        Atlas label image in that template space, and its TSV.
    atlas_name : str
        Atlas label used in output names.
    gm_file : str, optional
        The template's grey-matter probability map (ROI voxels are restricted to grey matter).
    wm_file, csf_file : str, optional
        The template's white-matter and CSF probability maps: with ``gm_file``, the tissue
        fractions of the partial-volume-aware ROI values (issue 20).
    provenance : dict, optional
        Template and atlas files used, recorded in the atlas sidecar of every series.
    """
    workflow = pe.Workflow(name=f"sub_{subject}_wf")
    threads = config.omp_nthreads
    protocol_warnings = longitudinal_acquisition_warnings(series)
    for prefix, texts in protocol_warnings.items():
        for text in texts:
            LOGGER.warning("%s: %s", prefix, text)
    groups = [list(range(len(series)))] if config.longitudinal else [[i] for i in range(len(series))]
    series_nodes = []
    for item in series:
        runs = item.runs or (item,)
        shapes = [nib.load(str(run.dwi)).header.get_data_shape() for run in runs]
        n_volumes = sum(shape[3] if len(shape) > 3 else 1 for shape in shapes)
        mem_gb = series_mem_gb(int(np.prod(shapes[0][:3])), n_volumes)
        preproc = init_dwi_preproc_wf(config, mem_gb=mem_gb, n_runs=len(runs),
                                      name=f"dwi_preproc_{item.key}_wf")
        set_series_inputs(preproc, item)
        tensor = init_tensor_wf(config, mem_gb=mem_gb, dti_max_bval=item.fit_bval,
                                name=f"tensor_{item.key}_wf")
        summary = pe.Node(niu.Function(function=series_summary,
                                       input_names=["source", "bval_file", "warnings",
                                                    "protocol_warnings", "options"],
                                       output_names=["summary"]),
                          name=f"summary_{item.key}", run_without_submitting=True)
        summary.inputs.source = [str(source) for source in item.sources]
        summary.inputs.protocol_warnings = list(item.notes) + protocol_warnings.get(item.prefix, [])
        summary.inputs.options = {
            "denoise": config.denoise, "denoise_full_fov": config.denoise_full_fov,
            "degibbs": config.degibbs, "fit_method": config.fit_method,
            "b0_threshold": config.b0_threshold, "dti_max_bval": config.dti_max_bval,
            "template": template, "atlas": atlas_name, "csf_md_threshold": config.csf_md_threshold,
            "gm_threshold": config.gm_threshold,
            "longitudinal": config.longitudinal, "combine_runs": config.combine_runs,
            "version": __version__,
        }
        derivatives = init_series_derivatives_wf(item, config.output_dir, template=template,
                                                 atlas=atlas_name, denoise=config.denoise,
                                                 name=f"derivatives_{item.key}_wf")
        workflow.connect([
            (preproc, tensor, [("outputnode.dwi_file", "inputnode.dwi_file"),
                               ("outputnode.bval_file", "inputnode.bval_file"),
                               ("outputnode.bvec_file", "inputnode.bvec_file"),
                               ("outputnode.mask_file", "inputnode.mask_file"),
                               ("outputnode.noise_file", "inputnode.noise_file")]),
            (preproc, summary, [("outputnode.bval_file", "bval_file"), ("outputnode.warnings", "warnings")]),
            (summary, derivatives, [("summary", "inputnode.preproc_metadata")]),
            (preproc, derivatives, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                                    ("dwi_file", "bval_file", "bvec_file", "b0_file", "mask_file",
                                     "motion_file")
                                    + (("noise_file",) if config.denoise != "none" else ())]),
            (tensor, derivatives, [("outputnode.fa_file", "inputnode.fa_file"),
                                   ("outputnode.md_file", "inputnode.md_file"),
                                   ("outputnode.ad_file", "inputnode.ad_file"),
                                   ("outputnode.rd_file", "inputnode.rd_file"),
                                   ("outputnode.metadata", "inputnode.model_metadata")]),
        ])
        series_nodes.append((item, preproc, tensor, derivatives, mem_gb))

    for group_index, members in enumerate(groups):
        suffix = "" if len(groups) == 1 else f"_{series[members[0]].key}"
        merge_b0 = pe.Node(niu.Merge(len(members)), name=f"merge_b0{suffix}", run_without_submitting=True)
        merge_mask = pe.Node(niu.Merge(len(members)), name=f"merge_mask{suffix}", run_without_submitting=True)
        midpoint = pe.Node(MidpointSpace(n_threads=threads), name=f"midpoint{suffix}", n_procs=threads,
                           mem_gb=2.0)
        register = pe.Node(TemplateRegistration(template=template, n_threads=threads),
                           name=f"template_registration{suffix}", n_procs=threads, mem_gb=3.0)
        workflow.connect([
            (merge_b0, midpoint, [("out", "b0_files")]),
            (merge_mask, midpoint, [("out", "mask_files")]),
            (midpoint, register, [("midpoint_file", "moving_file"), ("midpoint_mask", "moving_mask")]),
        ])
        if len(groups) == 1 and len(members) >= 2:  # the subject's midpoint (docs/outputs.md)
            ds_midpoint = pe.Node(DerivativesSink(out_path=str(subject_path(
                config.output_dir, subject, "midpoint_b0"))), name="ds_midpoint_b0",
                run_without_submitting=True)
            workflow.connect([(midpoint, ds_midpoint, [("midpoint_file", "in_file")])])
        # Issue 20: the voxel selection (CSF exclusion, brain mask) is decided once per participant
        # from all series together (mean MD, intersection of masks), then used by every series.
        merge_md = pe.Node(niu.Merge(len(members)), name=f"merge_md{suffix}", run_without_submitting=True)
        shared = pe.Node(SharedSelection(), name=f"shared_selection{suffix}", mem_gb=1.0)
        workflow.connect([
            (merge_md, shared, [("out", "md_files")]),
            (merge_mask, shared, [("out", "mask_files")]),
            (midpoint, shared, [("xfm_files", "xfm_files")]),
        ])
        for position, index in enumerate(members, start=1):
            item, preproc, tensor, derivatives, mem_gb = series_nodes[index]
            workflow.connect([
                (preproc, merge_b0, [("outputnode.b0_file", f"in{position}")]),
                (preproc, merge_mask, [("outputnode.mask_file", f"in{position}")]),
                (tensor, merge_md, [("outputnode.md_file", f"in{position}")]),
            ])
            # issue 20: this series' copy of the participant's shared selection
            pick_shared = pe.Node(niu.Function(function=_pick_pair, input_names=["first", "second", "index"],
                                               output_names=["first", "second"]),
                                  name=f"pick_shared_{item.key}", run_without_submitting=True)
            pick_shared.inputs.index = position - 1
            workflow.connect([
                (shared, pick_shared, [("shared_md_files", "first"), ("shared_mask_files", "second")]),
            ])
            pick_rigid = pe.Node(niu.Select(index=position - 1), name=f"rigid_{item.key}",
                                 run_without_submitting=True)
            to_native = pe.Node(WarpFromTemplate(in_file=atlas_file, order=0),
                                name=f"atlas_to_native_{item.key}", mem_gb=1.0)
            to_template = pe.Node(WarpToTemplate(template=template), name=f"maps_to_template_{item.key}",
                                  mem_gb=1.0)
            mask_to_atlas = pe.Node(WarpToTemplate(template=template, reference_file=atlas_file, order=1),
                                    name=f"mask_to_atlas_{item.key}", mem_gb=1.5)
            merge_maps = pe.Node(niu.Merge(2), name=f"merge_maps_{item.key}", run_without_submitting=True)
            split_maps = pe.Node(niu.Split(splits=[1, 1], squeeze=True), name=f"split_maps_{item.key}",
                                 run_without_submitting=True)
            coverage = pe.Node(ROICoverage(atlas_file=atlas_file, labels_file=labels_file),
                               name=f"coverage_{item.key}", mem_gb=1.0)
            roistats = pe.Node(ROIStats(labels_file=labels_file, csf_md_threshold=config.csf_md_threshold,
                                        gm_threshold=config.gm_threshold),
                               name=f"roistats_{item.key}", mem_gb=1.0)
            if gm_file and config.gm_threshold is not None:
                gm_to_native = pe.Node(WarpFromTemplate(in_file=gm_file, order=1),
                                       name=f"gm_to_native_{item.key}", mem_gb=1.0)
                workflow.connect([
                    (pick_rigid, gm_to_native, [("out", "rigid_file")]),
                    (register, gm_to_native, [("registration_prefix", "registration_prefix")]),
                    (preproc, gm_to_native, [("outputnode.b0_file", "reference_file")]),
                    (gm_to_native, roistats, [("out_file", "gm_file")]),
                ])
                # issue 20: each ROI's grey-matter volume fraction per voxel (roi_gm_weighted_mean/median)
                roi_weights = pe.Node(ROIWeights(atlas_file=atlas_file, gm_file=gm_file, labels_file=labels_file),
                                      name=f"roi_weights_{item.key}", mem_gb=2.0)
                workflow.connect([
                    (pick_rigid, roi_weights, [("out", "rigid_file")]),
                    (register, roi_weights, [("registration_prefix", "registration_prefix")]),
                    (preproc, roi_weights, [("outputnode.b0_file", "reference_file")]),
                    (roi_weights, roistats, [("out_file", "roi_weights_file")]),
                ])
                # issue 20: WM and CSF fractions of the partial-volume-aware ROI values
                for tissue, tissue_file in (("wm", wm_file), ("csf", csf_file)):
                    if not tissue_file:
                        continue
                    tissue_to_native = pe.Node(WarpFromTemplate(in_file=tissue_file, order=1),
                                               name=f"{tissue}_to_native_{item.key}", mem_gb=1.0)
                    workflow.connect([
                        (pick_rigid, tissue_to_native, [("out", "rigid_file")]),
                        (register, tissue_to_native, [("registration_prefix", "registration_prefix")]),
                        (preproc, tissue_to_native, [("outputnode.b0_file", "reference_file")]),
                        (tissue_to_native, roistats, [("out_file", f"{tissue}_file")]),
                    ])
            derivatives.inputs.inputnode.dseg_tsv = labels_file
            derivatives.inputs.inputnode.dseg_metadata = dict(provenance or {}, Space="dwi",
                                                              Interpolation="nearest neighbour")
            workflow.connect([
                (midpoint, pick_rigid, [("xfm_files", "inlist")]),
                (pick_rigid, to_native, [("out", "rigid_file")]),
                (register, to_native, [("registration_prefix", "registration_prefix")]),
                (preproc, to_native, [("outputnode.b0_file", "reference_file")]),
                (tensor, merge_maps, [("outputnode.fa_file", "in1"), ("outputnode.md_file", "in2")]),
                (merge_maps, to_template, [("out", "in_files")]),
                (pick_rigid, to_template, [("out", "rigid_file")]),
                (register, to_template, [("registration_prefix", "registration_prefix")]),
                (to_template, split_maps, [("out_files", "inlist")]),
                (preproc, mask_to_atlas, [("outputnode.mask_file", "in_files")]),
                (pick_rigid, mask_to_atlas, [("out", "rigid_file")]),
                (register, mask_to_atlas, [("registration_prefix", "registration_prefix")]),
                (mask_to_atlas, coverage, [(("out_files", _first), "mask_file")]),
                (to_native, roistats, [("out_file", "dseg_file")]),
                (preproc, roistats, [("outputnode.mask_file", "mask_file")]),
                (tensor, roistats, [("outputnode.fa_file", "fa_file"), ("outputnode.md_file", "md_file"),
                                    ("outputnode.ad_file", "ad_file"), ("outputnode.rd_file", "rd_file")]),
                (coverage, roistats, [("coverage", "coverage")]),
                (pick_shared, roistats, [("first", "shared_md_file"), ("second", "shared_mask_file")]),
                (split_maps, derivatives, [("out1", "inputnode.tpl_fa_file"),
                                           ("out2", "inputnode.tpl_md_file")]),
                (pick_rigid, derivatives, [("out", "inputnode.midpoint_xfm")]),
                (to_native, derivatives, [("out_file", "inputnode.dseg_file")]),
                (roistats, derivatives, [("out_file", "inputnode.roistats_file")]),
            ])
    return workflow


def _first(items):
    return items[0] if isinstance(items, (list, tuple)) else items


def _pick_pair(first, second, index):
    """Item ``index`` of two parallel lists (a nipype Function node body).

    nipype hands a one-element output list over as its element (a participant with one
    series), so a plain path is taken as a list of one.
    """
    if isinstance(first, str):
        first = [first]
    if isinstance(second, str):
        second = [second]
    return first[index], second[index]


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


def init_bids_ketamine_wf(config: Config, series_by_subject: dict[str, list[DwiSeries]]):
    """Build the whole participant-level workflow (one sub-workflow per participant)."""
    from bids_ketamine.atlas import get_atlas
    from bids_ketamine.resources import get_template

    template = get_template(config.template)
    atlas = get_atlas(config.atlas, template, config.atlas_labels)
    labels_file = Path(config.work_dir or ".") / f"atlas-{atlas.name}_space-{template.name}_dseg.tsv"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    atlas.labels[["index", "name"]].to_csv(labels_file, sep="\t", index=False)
    workflow = pe.Workflow(name="bids_ketamine_wf")
    for subject, series in series_by_subject.items():
        workflow.add_nodes([init_single_subject_wf(
            subject, series, config, template=template.name, atlas_file=str(atlas.image),
            labels_file=str(labels_file), atlas_name=atlas.name, gm_file=str(template.gm),
            wm_file=str(template.wm), csf_file=str(template.csf),
            provenance={"Template": template.provenance(), "Atlas": atlas.provenance,
                        "AtlasFile": str(atlas.image)})])
    return workflow, template, atlas


def preflight(config: Config, series_by_subject: dict[str, list[DwiSeries]]):
    """Check every series from its headers and gradient files, before building the workflow.

    Fast (no image data is decoded: seconds for a whole dataset).  Per series: the checks of
    :func:`~bids_ketamine.dwi.gradients.check_series_files`; reverse phase-encoding references
    (a ``dir-`` entity and too few diffusion-weighted volumes for a tensor) are set aside; with ``--combine-runs average`` the runs of a session become one
    series (:func:`~bids_ketamine.bids.combine_runs`), which needs them on one voxel grid size;
    and the tensor's highest b-value is decided (:func:`~bids_ketamine.dwi.gradients.dti_fit_bval`:
    single-shell data above ``--dti-max-bval`` are fitted on their lowest shell, with a note).

    Returns
    -------
    usable : dict
        Participant -> the series that can be processed (``fit_bval`` and ``notes`` set).
    problems : list of str
        One message per series that cannot be processed (naming the file and the fix).  With
        ``--stop-on-first-crash`` the first problem raises instead.
    """
    from bids_ketamine.bids import combine_runs
    from bids_ketamine.dwi.gradients import (
        MIN_TENSOR_VOLUMES,
        DwiInputError,
        check_series_files,
        dti_fit_bval,
    )

    started = time.time()
    usable: dict[str, list[DwiSeries]] = {}
    problems: list[str] = []

    def reject(item: DwiSeries, err: DwiInputError) -> None:
        if config.stop_on_first_crash:
            raise err
        problems.append(str(err))
        LOGGER.error("Skipping %s: %s", item.prefix, err)

    n_checked = 0
    for subject, series in series_by_subject.items():
        checked = {}
        for item in series:
            n_checked += 1
            try:
                checked[item.dwi] = check_series_files(item.dwi, item.bval, item.bvec,
                                                       b0_threshold=config.b0_threshold)
            except DwiInputError as err:
                reject(item, err)
                continue
            n_weighted = int(np.sum(checked[item.dwi].bvals > 0))
            if n_weighted < MIN_TENSOR_VOLUMES and "direction" in item.entities:
                LOGGER.info("Skipping %s: %d diffusion-weighted volume(s) and a dir- entity (reverse phase "
                            "encoding reference), not a DWI series to fit", item.prefix, n_weighted)
                del checked[item.dwi]
        candidates = [item for item in series if item.dwi in checked]
        if config.combine_runs == "average":
            candidates = combine_runs(candidates)
        for item in candidates:
            runs = item.runs or (item,)
            first = checked[runs[0].dwi].img
            try:
                for run in runs[1:]:
                    if checked[run.dwi].img.shape[:3] != first.shape[:3]:
                        raise DwiInputError(
                            f"'{run.dwi}' has a {'x'.join(map(str, checked[run.dwi].img.shape[:3]))} grid but "
                            f"'{runs[0].dwi}' {'x'.join(map(str, first.shape[:3]))}: runs fitted together "
                            "(--combine-runs average) must share their matrix; use --combine-runs separate")
                bvals = np.concatenate([checked[run.dwi].bvals for run in runs])
                fit_bval, note = dti_fit_bval(bvals, config.dti_max_bval, item.bval, config.b0_threshold)
            except DwiInputError as err:
                reject(item, err)
                continue
            if note:
                LOGGER.warning("%s: %s", item.prefix, note)
            if item.runs:
                LOGGER.info("%s: runs %s fitted together as one series", item.prefix,
                            ", ".join(run.entities["run"] for run in item.runs))
            usable.setdefault(subject, []).append(
                dataclasses.replace(item, fit_bval=fit_bval, notes=item.notes + ((note,) if note else ())))
    LOGGER.info("Preflight: %d series checked in %.1f s, %d problem(s)", n_checked,
                time.time() - started, len(problems))
    return usable, problems
