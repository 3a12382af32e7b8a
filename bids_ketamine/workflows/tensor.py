"""Tensor fitting of one preprocessed DWI series."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_ketamine.config import Config
from bids_ketamine.interfaces.tensor import FitTensor
from bids_ketamine.workflows.literate import LiterateWorkflow


def init_tensor_wf(config: Config, *, mem_gb: float = 1.0, dti_max_bval: float | None = None,
                   name: str = "tensor_wf"):
    """Build the tensor-fitting workflow.

    ``dti_max_bval``: the series' highest fitted b-value as decided by the preflight
    (default ``config.dti_max_bval``).

    Inputs
    ------
    dwi_file, bval_file, bvec_file, mask_file, noise_file

    Outputs
    -------
    fa_file, md_file, ad_file, rd_file
        Maps in the series' native space (diffusivities in um^2/ms).
    metadata
        Content of the model sidecar (FitMethod, volumes used).
    """
    fit_bval = dti_max_bval or config.dti_max_bval
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        f"The diffusion tensor [@dti] was fitted by {config.fit_method.upper()}"
        + (f" to b=0 and the shells at or below b = {config.dti_max_bval:g} s/mm²" if config.dti_max_bval else "")
        + "; diffusivities are reported in µm²/ms.")
    if config.dti_max_bval and fit_bval > config.dti_max_bval:
        workflow.__desc__ += (f" A series without such a shell was fitted to b=0 and its lowest shell "
                              f"(b = {fit_bval:g} s/mm²); its MD is not comparable with lower-b data.")
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file",
                                                      "mask_file", "noise_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["fa_file", "md_file", "ad_file", "rd_file",
                                                       "metadata"]), name="outputnode")
    fit = pe.Node(FitTensor(fit_method=config.fit_method,
                            dti_max_bval=fit_bval,
                            b0_threshold=config.b0_threshold, n_threads=config.omp_nthreads),
                  name="fit_tensor", n_procs=config.omp_nthreads, mem_gb=mem_gb * 2)
    workflow.connect([
        (inputnode, fit, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                          ("bvec_file", "bvec_file"), ("mask_file", "mask_file")]),
        (fit, outputnode, [("fa_file", "fa_file"), ("md_file", "md_file"), ("ad_file", "ad_file"),
                           ("rd_file", "rd_file"), ("metadata", "metadata")]),
    ])
    if config.fit_method == "restore":
        workflow.connect([(inputnode, fit, [("noise_file", "noise_file")])])
    return workflow
