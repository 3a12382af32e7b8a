"""Writing one series' results to their BIDS-derivatives names (docs/outputs.md)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.bids import DwiSeries
from bids_ketamine.interfaces.io import DerivativesSink

#: inputnode field -> file-name suffix after the series prefix.  ``{tpl}``, ``{atlas}`` and
#: ``{denoise}`` are filled in per run.
SERIES_OUTPUTS = {
    "dwi_file": "space-dwi_desc-preproc_dwi.nii.gz",
    "bval_file": "space-dwi_desc-preproc_dwi.bval",
    "bvec_file": "space-dwi_desc-preproc_dwi.bvec",
    "b0_file": "space-dwi_desc-b0_dwiref.nii.gz",
    "mask_file": "space-dwi_desc-brain_mask.nii.gz",
    "noise_file": "space-dwi_model-{denoise}_param-noise_dwimap.nii.gz",
    "motion_file": "desc-motion_timeseries.tsv",
    "fa_file": "space-dwi_model-tensor_param-fa_dwimap.nii.gz",
    "md_file": "space-dwi_model-tensor_param-md_dwimap.nii.gz",
    "ad_file": "space-dwi_model-tensor_param-ad_dwimap.nii.gz",
    "rd_file": "space-dwi_model-tensor_param-rd_dwimap.nii.gz",
    "tpl_fa_file": "space-{tpl}_model-tensor_param-fa_dwimap.nii.gz",
    "tpl_md_file": "space-{tpl}_model-tensor_param-md_dwimap.nii.gz",
    "midpoint_xfm": "from-dwi_to-midpoint_mode-image_xfm.txt",
    "dseg_file": "space-dwi_atlas-{atlas}_dseg.nii.gz",
    "dseg_tsv": "space-dwi_atlas-{atlas}_dseg.tsv",
    "roistats_file": "atlas-{atlas}_model-tensor_roistats.tsv",
}

def output_path(output_dir: Path, series: DwiSeries, field: str, **names: str) -> Path:
    """The derivative path of one output of ``series``."""
    return Path(output_dir) / series.out_dir / f"{series.prefix}_{SERIES_OUTPUTS[field].format(**names)}"


def init_series_derivatives_wf(series: DwiSeries, output_dir: Path, *, template: str, atlas: str,
                               denoise: str, name: str = "derivatives_wf"):
    """Build the workflow that writes one series' derivatives.

    Each output is copied atomically (temporary name, then rename) by its own
    :class:`~bids_ketamine.interfaces.io.DerivativesSink` node, so an output appears only once
    it is complete.  The tensor model sidecar (``..._model-tensor_dwimap.json``) is written
    once per series beside the maps; the atlas sidecar records the template and atlas files.
    """
    workflow = pe.Workflow(name=name)
    fields = [f for f in SERIES_OUTPUTS if not (f == "noise_file" and denoise == "none")]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields + ["preproc_metadata", "model_metadata", "dseg_metadata"]),
                        name="inputnode")
    names = {"tpl": template, "atlas": atlas, "denoise": denoise}
    for field in fields:
        target = output_path(output_dir, series, field, **names)
        sink = pe.Node(DerivativesSink(out_path=str(target)), name=f"ds_{field}", run_without_submitting=True)
        workflow.connect([(inputnode, sink, [(field, "in_file")])])
    for field, path in (
        ("model_metadata", Path(output_dir) / series.out_dir
         / f"{series.prefix}_space-dwi_model-tensor_dwimap.json"),
        ("preproc_metadata", Path(str(output_path(output_dir, series, "dwi_file", **names))
                                  .replace(".nii.gz", ".json"))),
        ("dseg_metadata", Path(str(output_path(output_dir, series, "dseg_file", **names))
                               .replace(".nii.gz", ".json"))),
    ):
        sink = pe.Node(DerivativesSink(out_path=str(path)), name=f"ds_{field}", run_without_submitting=True)
        workflow.connect([(inputnode, sink, [(field, "content")])])
    return workflow

