"""Writing one series' results to their BIDS-derivatives names (:mod:`bids_ketamine.derivatives`)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine import derivatives
from bids_ketamine.bids import DwiSeries
from bids_ketamine.interfaces.io import DerivativesSink

#: inputnode field -> output entities (the contract lives in :mod:`bids_ketamine.derivatives`).
SERIES_OUTPUTS = derivatives.SERIES_OUTPUTS


def output_path(output_dir: Path, series: DwiSeries, field: str, **names: str) -> Path:
    """The derivative path of one output (or sidecar) of ``series``."""
    return derivatives.series_path(output_dir, series_entities(series), field, **names)


def series_entities(series: DwiSeries) -> dict[str, str]:
    """The entities that name ``series``' outputs (subject, session, acq/dir/run)."""
    return {"subject": series.subject, "session": series.session, **series.entities}


def series_output_fields(denoise: str, fieldmap: bool) -> list[str]:
    """The :data:`SERIES_OUTPUTS` a series writes: no noise map without denoising, no field
    without a distortion correction."""
    return [f for f in SERIES_OUTPUTS if not (f == "noise_file" and denoise == "none")
            and not (f in derivatives.FIELDMAP_OUTPUTS and not fieldmap)]


def init_series_derivatives_wf(series: DwiSeries, output_dir: Path, *, template: str, atlas: str,
                               denoise: str, name: str = "derivatives_wf"):
    """Build the workflow that writes one series' derivatives.

    Each output is copied atomically (temporary name, then rename) by its own
    :class:`~bids_ketamine.interfaces.io.DerivativesSink` node, so an output appears only once
    it is complete.  The tensor model sidecar (``..._model-tensor_dwimap.json``) is written
    once per series beside the maps; the atlas sidecar records the template and atlas files.
    A series with a distortion correction (``series.fieldmap``) also writes its field to
    ``fmap/`` with a sidecar (:data:`~bids_ketamine.derivatives.FIELDMAP_OUTPUTS`).
    """
    workflow = pe.Workflow(name=name)
    fields = series_output_fields(denoise, series.fieldmap is not None)
    sidecars = ["preproc_metadata", "model_metadata", "dseg_metadata"]
    if series.fieldmap is not None:
        sidecars.append("field_metadata")
    inputnode = pe.Node(niu.IdentityInterface(fields=fields + sidecars), name="inputnode")
    if series.fieldmap is not None:
        inputnode.inputs.field_metadata = series.fieldmap.metadata()
    names = {"tpl": template, "atlas": atlas, "denoise": denoise}
    for field in fields:
        target = output_path(output_dir, series, field, **names)
        sink = pe.Node(DerivativesSink(out_path=str(target)), name=f"ds_{field}", run_without_submitting=True)
        workflow.connect([(inputnode, sink, [(field, "in_file")])])
    for field in sidecars:
        path = output_path(output_dir, series, field, **names)
        sink = pe.Node(DerivativesSink(out_path=str(path)), name=f"ds_{field}", run_without_submitting=True)
        workflow.connect([(inputnode, sink, [(field, "content")])])
    return workflow



#: :func:`~bids_ketamine.workflows.anat.init_anat_wf` output -> its participant-level output
#: (a key of :data:`bids_ketamine.derivatives.SUBJECT_OUTPUTS`).
ANAT_OUTPUTS = {
    "t1w_preproc": "t1w_preproc",
    "brain_mask": "t1w_mask",
    "dseg": "t1w_dseg",
    "gm_probseg": "t1w_gm_probseg",
    "wm_probseg": "t1w_wm_probseg",
    "csf_probseg": "t1w_csf_probseg",
    "template_affine": "t1w_to_template_affine",
    "template_warp": "t1w_to_template_warp",
    "template_inverse_warp": "t1w_to_template_inverse_warp",
    "template_xfm_sidecar": "t1w_to_template_sidecar",
}


def init_anat_derivatives_wf(subject: str, output_dir: Path, *, template: str,
                             name: str = "anat_derivatives_wf"):
    """Build the workflow that writes a participant's anatomical derivatives (``anat/``):
    the inputs are :data:`ANAT_OUTPUTS`' keys, each copied atomically to its name."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_OUTPUTS)), name="inputnode")
    for field, output in ANAT_OUTPUTS.items():
        target = derivatives.subject_path(output_dir, subject, output, tpl=template)
        sink = pe.Node(DerivativesSink(out_path=str(target)), name=f"ds_{output}", run_without_submitting=True)
        workflow.connect([(inputnode, sink, [(field, "in_file")])])
    return workflow
