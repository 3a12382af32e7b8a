"""The participant workflow graph for a matrix of options (built only, never run).

In the manner of fMRIPrep's ``workflows/tests/test_base.py``: each case builds the graph of one
participant from small header-only inputs and checks which nodes exist and how they connect.
"""

from __future__ import annotations

import itertools

import pytest
from header_series import header_only_series
from nipype.interfaces.base import File, isdefined
from nipype.pipeline.engine.utils import generate_expanded_graph

from bids_ketamine import derivatives
from bids_ketamine.config import Config
from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS
from bids_ketamine.workflows.base import init_bids_ketamine_wf

CASES = list(itertools.product(("mppca", "none"), (True, False), (0.5, None), (1, 2)))


@pytest.mark.parametrize("denoise, longitudinal, gm_threshold, n_sessions", CASES)
def test_participant_graph(tmp_path, denoise, longitudinal, gm_threshold, n_sessions):
    series = [header_only_series(tmp_path / "bids", session) for session in ("pre", "post")[:n_sessions]]
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", denoise=denoise, longitudinal=longitudinal,
                    gm_threshold=gm_threshold)
    workflow, template, atlas = init_bids_ketamine_wf(config, {"01": series})
    flat = workflow._create_flat_graph()
    inputnode_edges = _edges(flat)  # the derivatives' inputnodes, before nipype removes them
    graph = generate_expanded_graph(workflow._create_flat_graph())  # as it runs: node to node
    nodes = {_name(node): node for node in graph.nodes()}
    nodes.update({_name(node): node for node in flat.nodes() if node.name == "inputnode"})
    names = set(nodes)
    edges = _edges(graph)

    # one midpoint + template registration per participant, or per series without --longitudinal
    n_registrations = 1 if longitudinal else n_sessions
    registration_wfs = ["longitudinal_wf"] if n_registrations == 1 else [f"longitudinal_{item.key}_wf" for item in series]
    assert sorted(name for name in names if name.endswith(".midpoint")) == sorted(
        f"{wf}.midpoint" for wf in registration_wfs)
    assert sum(name.endswith(".template_registration") for name in names) == n_registrations
    assert ("ds_midpoint_b0" in names) == (longitudinal and n_sessions == 2)
    # the template's resources are computed once per run and reach every registration as a file
    assert sum("template_reference" in name for name in names) == 1
    for wf in registration_wfs:
        assert ("b0_file", "fixed_file") in _pairs(edges[("template_reference", f"{wf}.template_registration")])

    for item in series:
        key = item.key
        sinks = {name.split(".")[-1] for name in names if name.startswith(f"derivatives_{key}_wf.ds_")}
        expected = {f"ds_{f}" for f in derivatives.SERIES_OUTPUTS if not (f == "noise_file" and denoise == "none")}
        expected |= {f"ds_{f}" for f in derivatives.SERIES_SIDECARS}
        expected -= {f"ds_{f}" for f in derivatives.FIELDMAP_OUTPUTS}  # no field-map data here
        assert sinks == expected
        inputnode = f"derivatives_{key}_wf.inputnode"
        fed = {dst for (_, b), pairs in inputnode_edges.items() if b == inputnode for _, dst in pairs}
        fed |= {name for name, value in nodes[inputnode].inputs.get().items() if value is not None}
        assert fed == {sink[3:] for sink in sinks}  # every sink is fed, nothing else
        for sink in sinks:
            assert (inputnode, f"derivatives_{key}_wf.{sink}") in inputnode_edges
        suffix = "" if n_registrations == 1 else f"_{key}"
        roi = f"roi{suffix}_wf"
        registration = f"longitudinal{suffix}_wf.template_registration"
        assert (f"{roi}.gm_to_native_{key}" in names) == (gm_threshold is not None)
        assert (f"{roi}.roi_weights_{key}" in names) == (gm_threshold is not None)
        assert ("gm_file" in {dst for _, dst in edges.get((f"{roi}.gm_to_native_{key}", f"{roi}.roistats_{key}"), [])}) \
            == (gm_threshold is not None)
        # ROI statistics: atlas warped into this series' own grid, maps of this series
        assert ("out_file", "dseg_file") in edges[(f"{roi}.atlas_to_native_{key}", f"{roi}.roistats_{key}")]
        for param in ("fa", "md", "ad", "rd"):
            assert _trace(edges, f"{roi}.roistats_{key}", f"{param}_file") == (
                f"tensor_{key}_wf.fit_tensor", f"{param}_file"), "the ROI statistics read this series' maps"
        # pv_gm's mixture: this series' b=0 image and the b-value of its tensor fit
        assert _trace(edges, f"{roi}.roistats_{key}", "b0_file")[0].startswith(f"dwi_preproc_{key}_wf.")
        assert nodes[f"{roi}.roistats_{key}"].inputs.b_value == item.fit_b_mean
        assert _trace(edges, f"{roi}.roistats_{key}", "mask_file") == (f"dwi_preproc_{key}_wf.brain_mask", "mask_file")
        # the brain mask leaves out what some volume did not see (motion out of the field of view)
        assert ("covered_file", "covered_file") in _pairs(
            edges[(f"dwi_preproc_{key}_wf.motion_correct", f"dwi_preproc_{key}_wf.brain_mask")])
        assert _trace(edges, f"{roi}.atlas_to_native_{key}", "reference_file") == (
            f"dwi_preproc_{key}_wf.motion_correct", "b0_file")
        # this series' table reaches this series' sink
        position = [other.key for other in series].index(key) if longitudinal else 0
        assert ("out_file", f"in{position + 1}") in edges[(f"{roi}.roistats_{key}", f"{roi}.merge_roistats")]
        ((source, sink_field),) = edges[(f"{roi}.merge_roistats", f"derivatives_{key}_wf.ds_roistats_file")]
        assert (source[0], source[2], sink_field) == ("out", (position,), "in_file")
        # each sink gets this series' file, through the lists of the sub-workflows
        sink = f"derivatives_{key}_wf.ds_{{}}"
        assert _trace(edges, sink.format("dseg_file"), "in_file") == (f"{roi}.atlas_to_native_{key}", "out_file")
        assert _trace(edges, sink.format("roistats_file"), "in_file") == (f"{roi}.roistats_{key}", "out_file")
        for param in ("fa", "md"):
            assert _trace(edges, sink.format(f"tpl_{param}_file"), "in_file") == (
                f"template_maps{suffix}_wf.maps_to_template_{key}", "out_files")
        # the participant's shared voxel selection feeds every series' statistics
        shared = _pairs(edges[(f"{roi}.shared_selection", f"{roi}.roistats_{key}")])
        assert {("shared_md_files", "shared_md_file"), ("shared_mask_files", "shared_mask_file")} <= shared
        roistats = nodes[f"{roi}.roistats_{key}"]
        assert roistats.inputs.csf_md_threshold == config.csf_md_threshold
        # the tissue table: the same maps, voxel selection and fractions as the ROI table
        tissuestats = f"{roi}.tissuestats_{key}"
        assert nodes[tissuestats].inputs.csf_md_threshold == config.csf_md_threshold
        for field in ("fa_file", "md_file", "ad_file", "rd_file", "mask_file"):
            assert _trace(edges, tissuestats, field) == _trace(edges, f"{roi}.roistats_{key}", field)
        assert _pairs(edges[(f"{roi}.shared_selection", tissuestats)]) == shared
        for tissue in ("gm", "wm"):
            assert (_pairs(edges.get((f"{roi}.{tissue}_to_native_{key}", tissuestats), []))
                    == ({("out_file", f"{tissue}_file")} if gm_threshold is not None else set()))
        assert _trace(edges, sink.format("tissuestats_file"), "in_file") == (tissuestats, "out_file")
        assert ("midpoint_file", "moving_file") in edges[(registration.replace("template_registration", "midpoint"),
                                                          registration)]
        # the registration travels as files (nipype hashes their content), to every warping node
        warping = [f"{roi}.{tissue}_to_native_{key}" for tissue in ("atlas", "gm", "wm", "csf")]
        warping += [f"{roi}.mask_to_atlas_{key}", f"{roi}.roi_weights_{key}",
                    f"template_maps{suffix}_wf.maps_to_template_{key}"]
        for node in (name for name in warping if name in names):
            assert _pairs(edges[(registration, node)]) == {(f, f) for f in REGISTRATION_FIELDS}, node
            assert "rigid_file" in {dst for _, dst in _pairs(edges[(registration.replace(
                "template_registration", "midpoint"), node)])}, node
            for field in ("rigid_file", *REGISTRATION_FIELDS):
                assert nodes[node].interface.inputs.traits()[field].is_trait_type(File), (node, field)

    # the methods text is the graph's: grey-matter restriction and shared selection as built
    methods = workflow.visit_desc()
    assert ("grey-matter probability" in methods) == (gm_threshold is not None)
    if gm_threshold is not None:
        assert f"below {gm_threshold:g}" in methods
    assert ("shared by the participant's sessions" in methods) == (longitudinal and n_sessions == 2)
    assert ("Marchenko-Pastur" in methods) == (denoise == "mppca")
    assert f"MD above {config.csf_md_threshold:g}" in methods
    assert "over the brain mask" in methods
    assert ("over its white matter (fraction at least 0.9)" in methods) == (gm_threshold is not None)


def _name(node) -> str:
    """A node's name below the participant's workflow (e.g. ``roi_wf.roistats_s01_sespre``)."""
    return node.fullname.split(".", 2)[-1]


def _edges(graph) -> dict:
    return {(_name(a), _name(b)): data["connect"] for a, b, data in graph.edges(data=True)}


def _trace(edges, node: str, field: str) -> tuple[str, str]:
    """The node and output that feed ``node.field``, through Merge nodes and ``pick`` connections."""
    ((source, src),) = [(a, src) for (a, b), pairs in edges.items() if b == node for src, dst in pairs if dst == field]
    if isinstance(src, tuple) and source.split(".")[-1].startswith(("merge", "b0_files", "mask_files", "fa_files",
                                                                    "md_files", "ad_files", "rd_files")):
        return _trace(edges, source, f"in{src[2][0] + 1}")
    return source, src[0] if isinstance(src, tuple) else src


def _pairs(connections):
    """Connections as (source field, destination field), a connection function dropped."""
    return {(src[0] if isinstance(src, tuple) else src, dst) for src, dst in connections}


def test_longitudinal_wf_wiring():
    """init_longitudinal_wf: the midpoint of the series' b=0 images, registered to the template's
    contrast; the outputs are the rigid transforms and the registration files."""
    from bids_ketamine.workflows.longitudinal import init_longitudinal_wf

    workflow = init_longitudinal_wf(3, template="MNI152NLin2009cAsym")
    edges = _edges(workflow._graph)
    assert set(workflow.get_node("inputnode").inputs.copyable_trait_names()) == {
        "b0_files", "mask_files", "template_b0_file"}
    assert _pairs(edges[("inputnode", "midpoint")]) == {("b0_files", "b0_files"), ("mask_files", "mask_files")}
    assert _pairs(edges[("inputnode", "template_registration")]) == {("template_b0_file", "fixed_file")}
    assert _pairs(edges[("template_registration", "outputnode")]) == {(f, f) for f in REGISTRATION_FIELDS}
    assert ("xfm_files", "xfm_files") in _pairs(edges[("midpoint", "outputnode")])
    assert "3 series" in workflow.visit_desc() and "midpoint" in workflow.visit_desc()
    assert "midpoint" not in init_longitudinal_wf(1, template="MNI152NLin2009cAsym").visit_desc()


@pytest.mark.parametrize("gm_threshold", [0.5, None])
def test_roi_wf_wiring(tmp_path, gm_threshold):
    """init_roi_wf: one shared selection for all series; per series the atlas (and, restricted
    to grey matter, the tissue maps and ROI weights) warped in with that series' transforms."""
    from bids_ketamine.workflows.roi import SERIES_FIELDS, init_roi_wf

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    gm_threshold=gm_threshold)
    keys = ["a", "b"]
    files = {name: tmp_path / name for name in ("atlas.nii.gz", "labels.tsv", "gm.nii.gz", "wm.nii.gz", "csf.nii.gz")}
    for path in files.values():
        path.touch()  # the interfaces check that their fixed inputs exist
    workflow = init_roi_wf(config, keys, atlas_file=str(files["atlas.nii.gz"]), labels_file=str(files["labels.tsv"]),
                           atlas_name="x", gm_file=str(files["gm.nii.gz"]), wm_file=str(files["wm.nii.gz"]),
                           csf_file=str(files["csf.nii.gz"]), b_values=[1000.0, None])
    edges = _edges(workflow._graph)
    # pv_gm's mixture: each series' own b-value (none given: left undefined, pv_gm n/a)
    assert workflow.get_node("roistats_a").inputs.b_value == 1000.0
    assert not isdefined(workflow.get_node("roistats_b").inputs.b_value)
    names = {node.name for node in workflow._graph.nodes()}
    assert sum(name == "shared_selection" for name in names) == 1
    for index, key in enumerate(keys):
        warped = {"atlas", "gm", "wm", "csf"} if gm_threshold is not None else {"atlas"}
        assert {name.split("_to_native")[0] for name in names if name.endswith(f"_to_native_{key}")} == warped
        assert (f"roi_weights_{key}" in names) == (gm_threshold is not None)
        for tissue in warped:
            connections = edges[("inputnode", f"{tissue}_to_native_{key}")]
            picked = {src[0]: src[2] for src, _ in connections if isinstance(src, tuple)}
            assert picked == {"xfm_files": (index,), "b0_files": (index,)}  # this series' transform and grid
            assert {(f, f) for f in REGISTRATION_FIELDS} <= _pairs(connections)
        statistics = {dst: src for src, dst in edges[("inputnode", f"roistats_{key}")]}
        assert {field[:-1] for field in SERIES_FIELDS if field[:-6] in ("mask", "fa", "md", "ad", "rd", "b0")} \
            == set(statistics)
        assert all(src[2] == (index,) for src in statistics.values())
        assert ("out_file", f"in{index + 1}") in edges[(f"roistats_{key}", "merge_roistats")]
    methods = workflow.visit_desc()
    assert ("grey-matter probability" in methods) == (gm_threshold is not None)
    assert "The voxel selection was shared by the participant's sessions" in methods


def test_roi_wf_wiring_with_t1w_tissues(tmp_path):
    """init_roi_wf with ``anatomical``: the atlas is carried into the T1w once; per series the
    participant's own tissue fractions and ROI weights come rigidly from the T1w (T1w ->
    midpoint -> this series), not from the template's probabilities through the warp."""
    from bids_ketamine.workflows.roi import ANAT_TISSUE_FIELDS, init_roi_wf

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    files = {name: tmp_path / name for name in ("atlas.nii.gz", "labels.tsv", "gm.nii.gz", "wm.nii.gz", "csf.nii.gz")}
    for path in files.values():
        path.touch()
    keys = ["a", "b"]
    workflow = init_roi_wf(config, keys, atlas_file=str(files["atlas.nii.gz"]), labels_file=str(files["labels.tsv"]),
                           atlas_name="x", gm_file=str(files["gm.nii.gz"]), wm_file=str(files["wm.nii.gz"]),
                           csf_file=str(files["csf.nii.gz"]), anatomical=True)
    edges = _edges(workflow._graph)
    names = {node.name for node in workflow._graph.nodes()}
    assert set(ANAT_TISSUE_FIELDS) <= set(workflow.get_node("inputnode").inputs.copyable_trait_names())
    assert sum(name == "atlas_to_t1w" for name in names) == 1
    assert _pairs(edges[("inputnode", "atlas_to_t1w")]) == {
        ("t1w_file", "t1w_file"), ("anat_affine_file", "affine_file"), ("anat_warp_file", "warp_file"),
        ("anat_inverse_warp_file", "inverse_warp_file")}
    for index, key in enumerate(keys):
        for tissue in ("gm", "wm", "csf"):
            node = f"{tissue}_to_native_{key}"
            assert type(workflow.get_node(node).interface).__name__ == "T1wFractionsToNative"
            connections = edges[("inputnode", node)]
            assert _pairs(connections) == {(f"{tissue}_probseg", "in_file"), ("t1w_xfm_file", "t1w_xfm_file"),
                                           ("xfm_files", "rigid_file"), ("b0_files", "reference_file")}
            assert {src[0]: src[2] for src, _ in connections if isinstance(src, tuple)} == {
                "xfm_files": (index,), "b0_files": (index,)}
            assert ("out_file", f"{tissue}_file") in edges[(node, f"roistats_{key}")]
            # the tissue table reads the same fractions (it has no CSF row)
            assert (("out_file", f"{tissue}_file") in edges.get((node, f"tissuestats_{key}"), [])) == (tissue != "csf")
        weights = f"roi_weights_{key}"
        assert type(workflow.get_node(weights).interface).__name__ == "T1wROIWeights"
        assert ("out_file", "atlas_file") in edges[("atlas_to_t1w", weights)]
        assert {("gm_probseg", "gm_file"), ("xfm_files", "rigid_file")} <= _pairs(edges[("inputnode", weights)])
        assert ("out_file", "roi_weights_file") in edges[(weights, f"roistats_{key}")]
        # the atlas labels themselves still come through the composed template warp
        assert {(f, f) for f in REGISTRATION_FIELDS} <= _pairs(edges[("inputnode", f"atlas_to_native_{key}")])
    assert "from the T1w segmentation" in workflow.visit_desc()


@pytest.mark.parametrize("longitudinal, n_sessions", [(True, 2), (False, 2), (True, 1)])
def test_participant_graph_with_t1w(tmp_path, longitudinal, n_sessions):
    """With a T1w the anatomy runs once per participant, its derivatives are written, and every
    registration of the DWI reaches the template through it (no b=0-to-template registration):
    each warping node reads the composed files."""
    from bids_ketamine.workflows.outputs import ANAT_OUTPUTS

    sessions = ("pre", "post")[:n_sessions]
    series = [header_only_series(tmp_path / "bids", session) for session in sessions]
    t1w_files = [str(tmp_path / f"sub-01_ses-{session}_T1w.nii.gz") for session in sessions]
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", longitudinal=longitudinal)
    workflow, _, _ = init_bids_ketamine_wf(config, {"01": series}, {"01": t1w_files})
    flat = workflow._create_flat_graph()
    graph = generate_expanded_graph(workflow._create_flat_graph())
    names = {_name(node) for node in graph.nodes()}
    edges = _edges(graph)
    assert sum(name.endswith("template_registration") for name in names) == 1  # the T1w's only
    assert "anat_wf.template_registration" in names
    anat_inputnode = [node for node in flat.nodes() if _name(node) == "anat_wf.inputnode"][0]
    assert anat_inputnode.inputs.t1w_files == t1w_files
    registrations = ["longitudinal_wf"] if longitudinal else [f"longitudinal_{item.key}_wf" for item in series]
    for wf in registrations:
        assert _pairs(edges[("anat_wf.template_registration", f"{wf}.template_through_t1w")]) == {
            ("affine_file", "affine_file"), ("warp_file", "warp_file"), ("inverse_warp_file", "inverse_warp_file")}
        assert ("xfm_file", "t1w_xfm_file") in _pairs(edges[(f"{wf}.b0_to_t1w", f"{wf}.template_through_t1w")])
        assert {("template_file", "t1w_file")} <= _pairs(edges[("anat_wf.within_subject_template", f"{wf}.b0_to_t1w")])
        assert ("mask_file", "t1w_mask") in _pairs(edges[("anat_wf.brain_mask", f"{wf}.b0_to_t1w")])
    for item in series:
        suffix = "" if longitudinal else f"_{item.key}"
        for node in (f"roi{suffix}_wf.atlas_to_native_{item.key}", f"template_maps{suffix}_wf.maps_to_template_{item.key}"):
            assert _pairs(edges[(f"longitudinal{suffix}_wf.template_through_t1w", node)]) == {
                (f, f) for f in REGISTRATION_FIELDS}, node
        # the ROI values' tissue fractions are the participant's: the T1w's maps, rigidly in
        assert ("gm_file", "in_file") in _pairs(edges[("anat_wf.tissue_fractions", f"roi{suffix}_wf.gm_to_native_{item.key}")])
        assert ("xfm_file", "t1w_xfm_file") in _pairs(
            edges[(f"longitudinal{suffix}_wf.b0_to_t1w", f"roi{suffix}_wf.gm_to_native_{item.key}")])
        assert ("gm_file", "gm_file") in _pairs(edges[("anat_wf.tissue_fractions", f"roi{suffix}_wf.roi_weights_{item.key}")])
    sinks = {name.split(".")[-1] for name in names if name.startswith("anat_derivatives_wf.ds_")}
    assert sinks == {f"ds_{output}" for output in ANAT_OUTPUTS.values()}
    assert ("ds_t1w_to_midpoint_xfm" in names) == (longitudinal or n_sessions == 1)
    methods = workflow.visit_desc()
    assert "T1-weighted image" in methods and "Atropos" in methods
    assert ("within-subject template" in methods) == (n_sessions == 2)


@pytest.mark.parametrize("method, degibbs", [("pepolar", True), ("pepolar", False), ("phasediff", True)])
def test_participant_graph_with_fieldmap(tmp_path, method, degibbs):
    """A series with a field-map plan (PEPOLAR or a GRE phase difference) has its field estimated
    from the denoised (Gibbs-corrected) series and unwarped for motion estimation; motion
    correction resamples the uncorrected series once, through the field and the motion; the field
    is written to fmap/ with a sidecar and the methods say how it was estimated.  A series
    without a plan keeps the plain chain."""
    import dataclasses

    from bids_ketamine.bids import FieldmapPlan

    fmap = tmp_path / "bids" / "sub-01" / "ses-pre" / "fmap"
    fmap.mkdir(parents=True)
    reference = fmap / ("sub-01_ses-pre_dir-PA_epi.nii.gz" if method == "pepolar" else "sub-01_ses-pre_phasediff.nii.gz")
    reference.write_bytes(b"")
    (fmap / "sub-01_ses-pre_magnitude1.nii.gz").write_bytes(b"")
    gre = {} if method == "pepolar" else {"magnitude_file": str(fmap / "sub-01_ses-pre_magnitude1.nii.gz"),
                                          "echo_times": (0.00492, 0.00738)}
    plan = FieldmapPlan(method=method, reference_files=(str(reference),),
                        reference_bvals=("",) if method == "pepolar" else (), axis=1, sign=-1,
                        total_readout_time=0.05, phase_encoding_direction="j-", **gre)
    corrected = dataclasses.replace(header_only_series(tmp_path / "bids", "pre"), fieldmap=plan)
    plain = header_only_series(tmp_path / "bids", "post")
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", degibbs=degibbs)
    workflow, _, _ = init_bids_ketamine_wf(config, {"01": [corrected, plain]})
    graph = generate_expanded_graph(workflow._create_flat_graph())
    names = {_name(node) for node in graph.nodes()}
    edges = _edges(graph)
    pre, post = f"dwi_preproc_{corrected.key}_wf", f"dwi_preproc_{plain.key}_wf"
    before = "degibbs" if degibbs else "denoise"
    estimate = f"{pre}.fieldmap_wf.{'pepolar_field' if method == 'pepolar' else 'gre_field'}"
    assert ("dwi_file", "dwi_file") in _pairs(edges[(f"{pre}.{before}", estimate)])
    assert ("dwi_file", "dwi_file") in _pairs(edges[(f"{pre}.{before}", f"{pre}.fieldmap_wf.unwarp")])
    assert ("field_file", "field_file") in _pairs(edges[(estimate, f"{pre}.fieldmap_wf.unwarp")])
    # motion estimated on the unwarped copy, the uncorrected series resampled once through both
    assert _pairs(edges[(f"{pre}.fieldmap_wf.unwarp", f"{pre}.motion_correct")]) == {("dwi_file", "dwi_file")}
    assert _pairs(edges[(f"{pre}.{before}", f"{pre}.motion_correct")]) == {("dwi_file", "distorted_file")}
    assert ("field_file", "field_file") in _pairs(edges[(estimate, f"{pre}.motion_correct")])
    motion = [n for n in graph.nodes() if _name(n) == f"{pre}.motion_correct"][0]
    assert (motion.inputs.axis, motion.inputs.sign, motion.inputs.total_readout_time) == (1, -1, 0.05)
    assert ("dwi_file", "dwi_file") in _pairs(edges[(f"{post}.{before}", f"{post}.motion_correct")])
    assert not [name for name in names if name.startswith(f"{post}.fieldmap_wf")]
    node = [n for n in graph.nodes() if _name(n) == estimate][0]
    if method == "pepolar":
        assert node.inputs.reference_files == [str(reference)]
        assert (node.inputs.axis, node.inputs.sign, node.inputs.total_readout_time) == (1, -1, 0.05)
    else:
        assert node.inputs.fieldmap_files == [str(reference)]
        assert (node.inputs.method, node.inputs.echo_times) == ("phasediff", [0.00492, 0.00738])
    sinks = {name: [n for n in graph.nodes() if _name(n) == name][0] for name in names if ".ds_field" in name}
    assert sorted(sinks) == [f"derivatives_{corrected.key}_wf.ds_field_file",
                             f"derivatives_{corrected.key}_wf.ds_field_metadata"]
    assert ("b0_file", "in_file") in _pairs(edges[(estimate, f"derivatives_{corrected.key}_wf.ds_uncorrected_b0_file")])
    path = sinks[f"derivatives_{corrected.key}_wf.ds_field_file"].inputs.out_path
    assert path == str(tmp_path / "out" / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_desc-preproc_fieldmap.nii.gz")
    metadata = sinks[f"derivatives_{corrected.key}_wf.ds_field_metadata"].inputs.content
    assert (metadata["Units"], metadata["Method"]) == ("Hz", method)
    methods = workflow.visit_desc()
    assert ("reverse phase-encoded" in methods) == (method == "pepolar")
    assert ("phase difference" in methods) == (method == "phasediff")
    assert ("registration of its magnitude image" in methods) == (method == "phasediff")
    assert "resampled once" in methods
