"""ROI statistics of a participant's series, on a voxel selection shared by the participant."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.config import Config
from bids_ketamine.dwi.tissue_stats import TISSUE_MIN_FRACTION
from bids_ketamine.interfaces.anat import TemplateToT1w
from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS, ROICoverage, WarpFromTemplate, WarpToTemplate
from bids_ketamine.interfaces.roi import (
    ROIStats,
    ROIWeights,
    SharedSelection,
    T1wFractionsToNative,
    T1wROIWeights,
    TissueStats,
)
from bids_ketamine.workflows.connections import pick
from bids_ketamine.workflows.literate import LiterateWorkflow

#: Per-series list inputs (one item per series, in the order of ``series_keys``).
SERIES_FIELDS = ("b0_files", "mask_files", "fa_files", "md_files", "ad_files", "rd_files", "xfm_files")

#: With ``anatomical``: the participant's T1w, its tissue fractions and its template registration
#: (:func:`~bids_ketamine.workflows.anat.init_anat_wf`), and the T1w -> midpoint map
#: (:func:`~bids_ketamine.workflows.longitudinal.init_longitudinal_wf`).
ANAT_TISSUE_FIELDS = ("t1w_file", "t1w_xfm_file", "gm_probseg", "wm_probseg", "csf_probseg",
                      "anat_affine_file", "anat_warp_file", "anat_inverse_warp_file")


def init_roi_wf(config: Config, series_keys: list[str], *, atlas_file: str, labels_file: str,
                atlas_name: str, gm_file: str | None = None, wm_file: str | None = None,
                csf_file: str | None = None, anatomical: bool = False,
                b_values: list[float | None] | None = None, name: str = "roi_wf"):
    """ROI statistics of every series registered together, in each series' own grid.

    The voxel selection (brain mask, CSF exclusion) is decided once from all series
    (:class:`SharedSelection`); the atlas is brought into each series' native grid (nearest
    neighbour) through the midpoint and the template warp, and with ``--gm-threshold`` the
    tissue fractions and each ROI's grey-matter volume fractions too; statistics are taken on
    maps that were never interpolated.  The tissue fractions are the participant's own, from the
    T1w segmentation, with ``anatomical`` (:class:`T1wFractionsToNative`, :class:`T1wROIWeights`:
    box-averaged to the DWI voxel and carried rigidly T1w -> midpoint -> series), else the
    template's probabilities warped in (:class:`WarpFromTemplate`, :class:`ROIWeights`).

    Parameters
    ----------
    config : Config
        Uses ``csf_md_threshold``, ``gm_threshold``.
    series_keys : list of str
        :attr:`DwiSeries.key` of each series (node names).
    atlas_file, labels_file : str
        Atlas label image in template space, and its labels TSV.
    atlas_name : str
        Atlas label (for the methods text).
    gm_file, wm_file, csf_file : str, optional
        The template's tissue probability maps (without ``anatomical``).
    anatomical : bool
        The participant has a T1w: tissue fractions from its segmentation (inputs
        :data:`ANAT_TISSUE_FIELDS`).
    b_values : list of float, optional
        Per series, the mean b-value of the tensor fit (:attr:`DwiSeries.fit_b_mean`): with the
        series' mean b=0 image it sets ``pv_gm``'s tissue mixture (n/a without).
    name : str
        Workflow name.

    Inputs
    ------
    b0_files, mask_files, fa_files, md_files, ad_files, rd_files, xfm_files
        One per series (:data:`SERIES_FIELDS`).
    affine_file, warp_file, inverse_warp_file
        The midpoint -> template registration (:func:`init_longitudinal_wf`).
    t1w_file, t1w_xfm_file, gm_probseg, wm_probseg, csf_probseg, anat_affine_file, anat_warp_file, anat_inverse_warp_file
        With ``anatomical`` (:data:`ANAT_TISSUE_FIELDS`).

    Outputs
    -------
    roistats_files, dseg_files, tissuestats_files
        Per series: the ROI table, the atlas on the native grid, and the table of the brain,
        white and grey matter (:class:`TissueStats`: a global change beside the ROIs').
    """
    gm_restricted = config.gm_threshold is not None and (anatomical or bool(gm_file))
    subject_tissues = anatomical and gm_restricted
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _description(config, len(series_keys), atlas_name, gm_restricted, anatomical)
    inputnode = pe.Node(niu.IdentityInterface(fields=[*SERIES_FIELDS, *REGISTRATION_FIELDS,
                                                      *(ANAT_TISSUE_FIELDS if anatomical else ())]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["roistats_files", "dseg_files", "tissuestats_files"]),
                         name="outputnode")
    n_series = len(series_keys)
    shared = pe.Node(SharedSelection(), name="shared_selection", mem_gb=1.0)
    merge_tables = pe.Node(niu.Merge(n_series), name="merge_roistats", run_without_submitting=True)
    merge_dseg = pe.Node(niu.Merge(n_series), name="merge_dseg", run_without_submitting=True)
    merge_tissuestats = pe.Node(niu.Merge(n_series), name="merge_tissuestats", run_without_submitting=True)
    workflow.connect([
        (inputnode, shared, [("md_files", "md_files"), ("mask_files", "mask_files"), ("xfm_files", "xfm_files")]),
        (merge_tables, outputnode, [("out", "roistats_files")]),
        (merge_dseg, outputnode, [("out", "dseg_files")]),
        (merge_tissuestats, outputnode, [("out", "tissuestats_files")]),
    ])
    # template-space images brought into each series' grid: (file, interpolation order)
    template_inputs = {"atlas": (atlas_file, 0)}
    if subject_tissues:  # the atlas on the T1w grid, once: each ROI's grey matter is the T1w's
        atlas_to_t1w = pe.Node(TemplateToT1w(in_file=atlas_file), name="atlas_to_t1w", mem_gb=1.5)
        workflow.connect([(inputnode, atlas_to_t1w, [("t1w_file", "t1w_file"), ("anat_affine_file", "affine_file"),
                                                     ("anat_warp_file", "warp_file"),
                                                     ("anat_inverse_warp_file", "inverse_warp_file")])])
    elif gm_restricted:
        template_inputs["gm"] = (gm_file, 1)
        template_inputs.update({tissue: (path, 1) for tissue, path in (("wm", wm_file), ("csf", csf_file)) if path})
    for index, key in enumerate(series_keys):
        roistats = pe.Node(ROIStats(labels_file=labels_file, csf_md_threshold=config.csf_md_threshold,
                                    gm_threshold=config.gm_threshold), name=f"roistats_{key}", mem_gb=1.0)
        if b_values and b_values[index] is not None:
            roistats.inputs.b_value = b_values[index]
        tissuestats = pe.Node(TissueStats(csf_md_threshold=config.csf_md_threshold),
                              name=f"tissuestats_{key}", mem_gb=1.0)
        coverage = pe.Node(ROICoverage(atlas_file=atlas_file, labels_file=labels_file),
                           name=f"coverage_{key}", mem_gb=1.0)
        mask_to_atlas = pe.Node(WarpToTemplate(reference_file=atlas_file, order=1),
                                name=f"mask_to_atlas_{key}", mem_gb=1.5)
        warps = [mask_to_atlas]
        workflow.connect([
            (inputnode, mask_to_atlas, [(("mask_files", pick, index), "in_files")]),
            (mask_to_atlas, coverage, [(("out_files", pick, 0), "mask_file")]),
            (coverage, roistats, [("coverage", "coverage")]),
            (inputnode, roistats, [(("b0_files", pick, index), "b0_file")]),
            (roistats, merge_tables, [("out_file", f"in{index + 1}")]),
            (tissuestats, merge_tissuestats, [("out_file", f"in{index + 1}")]),
        ])
        for table in (roistats, tissuestats):  # the same maps and voxel selection
            workflow.connect([
                (inputnode, table, [((f"{field}_files", pick, index), f"{field}_file")
                                    for field in ("mask", "fa", "md", "ad", "rd")]),
                (shared, table, [(("shared_md_files", pick, index), "shared_md_file"),
                                 (("shared_mask_files", pick, index), "shared_mask_file")]),
            ])
        for tissue, (path, order) in template_inputs.items():
            to_native = pe.Node(WarpFromTemplate(in_file=path, order=order),
                                name=f"{tissue}_to_native_{key}", mem_gb=1.0)
            warps.append(to_native)
            if tissue == "atlas":  # labels (nearest neighbour): also an output of the series
                workflow.connect([(to_native, roistats, [("out_file", "dseg_file")]),
                                  (to_native, merge_dseg, [("out_file", f"in{index + 1}")])])
            else:
                _connect_fractions(workflow, to_native, tissue, roistats, tissuestats)
        if subject_tissues:
            # the T1w's tissue fractions and each ROI's grey-matter fraction, rigidly to this grid
            roi_weights = pe.Node(T1wROIWeights(labels_file=labels_file), name=f"roi_weights_{key}", mem_gb=2.0)
            workflow.connect([(atlas_to_t1w, roi_weights, [("out_file", "atlas_file")]),
                              (inputnode, roi_weights, [("gm_probseg", "gm_file")])])
            for tissue in ("gm", "wm", "csf"):
                to_native = pe.Node(T1wFractionsToNative(), name=f"{tissue}_to_native_{key}", mem_gb=1.0)
                workflow.connect([(inputnode, to_native, [(f"{tissue}_probseg", "in_file")])])
                _connect_fractions(workflow, to_native, tissue, roistats, tissuestats)
                _connect_t1w_path(workflow, inputnode, to_native, index)
            _connect_t1w_path(workflow, inputnode, roi_weights, index)
        elif gm_restricted:
            # each ROI's grey-matter volume fraction per voxel (roi_gm_weighted_mean/median)
            roi_weights = pe.Node(ROIWeights(atlas_file=atlas_file, gm_file=gm_file, labels_file=labels_file),
                                  name=f"roi_weights_{key}", mem_gb=2.0)
            warps.append(roi_weights)
        if gm_restricted:
            workflow.connect([(roi_weights, roistats, [("out_file", "roi_weights_file")])])
        for node in warps:
            workflow.connect([
                (inputnode, node, [(("xfm_files", pick, index), "rigid_file")]
                 + [(field, field) for field in REGISTRATION_FIELDS]),
            ])
            if node is not mask_to_atlas:
                workflow.connect([(inputnode, node, [(("b0_files", pick, index), "reference_file")])])
    return workflow


def _connect_fractions(workflow, to_native, tissue: str, roistats, tissuestats) -> None:
    """Feed one tissue's fractions on the series' grid to the ROI table, and to the tissue
    table where it has a row of that tissue (grey and white matter)."""
    workflow.connect([(to_native, roistats, [("out_file", f"{tissue}_file")])])
    if tissue in TISSUE_MIN_FRACTION:
        workflow.connect([(to_native, tissuestats, [("out_file", f"{tissue}_file")])])


def _connect_t1w_path(workflow, inputnode, node, index: int) -> None:
    """Feed ``node`` the rigid T1w -> midpoint -> series path and the grid of series ``index``."""
    workflow.connect([(inputnode, node, [("t1w_xfm_file", "t1w_xfm_file"),
                                         (("xfm_files", pick, index), "rigid_file"),
                                         (("b0_files", pick, index), "reference_file")])])


def _description(config: Config, n_series: int, atlas_name: str, gm_restricted: bool,
                 anatomical: bool = False) -> str:
    """The methods paragraph of :func:`init_roi_wf`."""
    where = "each session's" if n_series > 1 else "the"
    text = [f"Regions of interest of the {atlas_name} atlas [@atlas:{atlas_name}] were mapped into "
            f"{where} native DWI space (nearest neighbour) through the template warp and the "
            "midpoint transform, so that statistics are taken on tensor maps that were never "
            "interpolated."]
    selection = []
    if config.csf_md_threshold is not None:
        selection.append(f"voxels with MD above {config.csf_md_threshold:g} µm²/ms were excluded as "
                         "CSF-contaminated")
    source = ("the participant's, from the T1w segmentation, averaged over each DWI voxel" if anatomical
              else "the template's, warped into the session")
    weights = ("the atlas carried into the T1w times the participant's grey-matter fraction, averaged "
               "over each DWI voxel" if anatomical
               else "the template's atlas and grey-matter probability, warped into the session")
    if gm_restricted:
        selection.append(f"voxels whose grey-matter {'fraction' if anatomical else 'probability'} ({source}) "
                         f"was below {config.gm_threshold:g} were excluded as not grey matter")
    if n_series > 1:
        text.append("The voxel selection was shared by the participant's sessions: the brain mask "
                    "is the intersection of every session's mask and the CSF exclusion uses the "
                    "mean MD of all sessions, so that a voxel counts in every session or in none"
                    + ("; " + "; ".join(selection) if selection else "") + ".")
    elif selection:
        sentence = "; ".join(selection)
        text.append(sentence[0].upper() + sentence[1:] + ".")
    text.append("The mean, median and standard deviation of each tensor parameter were computed per ROI"
                + (f"; with each ROI's grey-matter volume fraction of every voxel ({weights}), "
                   "grey-matter-weighted values too" if gm_restricted else "")
                + ".")
    tissues = (f", over its white matter (fraction at least {TISSUE_MIN_FRACTION['wm']:g}) and over its grey "
               f"matter (at least {TISSUE_MIN_FRACTION['gm']:g}), on the same voxel selection,"
               if gm_restricted else "")
    text.append(f"The median of each parameter over the brain mask{tissues} was tabulated too, to show "
                "a change of the whole brain beside the ROIs' changes.")
    return " ".join(text)
