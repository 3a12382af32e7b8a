"""Tensor maps resampled into template space (once, through the participant's registration)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.interfaces.registration import REGISTRATION_FIELDS, WarpToTemplate
from bids_ketamine.workflows.connections import pick
from bids_ketamine.workflows.literate import LiterateWorkflow


def init_template_maps_wf(series_keys: list[str], *, template: str, name: str = "template_maps_wf"):
    """FA and MD of every series in template space, resampled once (rigid to the midpoint
    composed with the template warp; trilinear).

    Inputs
    ------
    fa_files, md_files, xfm_files
        One per series (in the order of ``series_keys``).
    affine_file, warp_file, inverse_warp_file
        The midpoint -> template registration.
    grid_file
        The output grid (:class:`~bids_ketamine.interfaces.registration.TemplateReference`).

    Outputs
    -------
    fa_files, md_files
        Per series, the maps in template space.
    """
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (f"FA and MD maps were also resampled once into {template} space "
                         "(2 mm voxels, trilinear) through the composed transforms.")
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["fa_files", "md_files", "xfm_files", "grid_file", *REGISTRATION_FIELDS]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["fa_files", "md_files"]), name="outputnode")
    merge_fa = pe.Node(niu.Merge(len(series_keys)), name="merge_fa", run_without_submitting=True)
    merge_md = pe.Node(niu.Merge(len(series_keys)), name="merge_md", run_without_submitting=True)
    workflow.connect([(merge_fa, outputnode, [("out", "fa_files")]),
                      (merge_md, outputnode, [("out", "md_files")])])
    for index, key in enumerate(series_keys):
        merge_maps = pe.Node(niu.Merge(2), name=f"merge_maps_{key}", run_without_submitting=True)
        to_template = pe.Node(WarpToTemplate(), name=f"maps_to_template_{key}", mem_gb=1.0)
        workflow.connect([
            (inputnode, merge_maps, [(("fa_files", pick, index), "in1"), (("md_files", pick, index), "in2")]),
            (merge_maps, to_template, [("out", "in_files")]),
            (inputnode, to_template, [(("xfm_files", pick, index), "rigid_file"), ("grid_file", "reference_file")]
             + [(field, field) for field in REGISTRATION_FIELDS]),
            (to_template, merge_fa, [(("out_files", pick, 0), f"in{index + 1}")]),
            (to_template, merge_md, [(("out_files", pick, 1), f"in{index + 1}")]),
        ])
    return workflow
