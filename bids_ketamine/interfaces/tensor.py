"""Tensor fitting interface."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.interfaces.io import read_voxel_gradients
from bids_ketamine.utils.images import open_image


class _FitTensorInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="preprocessed DWI")
    bval_file = File(exists=True, mandatory=True, desc="b-values")
    bvec_file = File(exists=True, mandatory=True, desc="b-vectors (FSL convention for this image)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    fit_method = traits.Enum("wls", "ols", "nlls", "restore", usedefault=True, desc="fit method")
    dti_max_bval = traits.Float(1500.0, usedefault=True, desc="highest shell used")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b=0 threshold")
    noise_file = File(exists=True, desc="noise map (sigma for RESTORE)")
    n_threads = traits.Int(1, usedefault=True, desc="threads")


class _FitTensorOutputSpec(TraitedSpec):
    fa_file = File(exists=True, desc="fractional anisotropy")
    md_file = File(exists=True, desc="mean diffusivity, um^2/ms")
    ad_file = File(exists=True, desc="axial diffusivity, um^2/ms")
    rd_file = File(exists=True, desc="radial diffusivity, um^2/ms")
    volumes = traits.List(traits.Int, desc="volumes used for the fit")
    metadata = traits.Dict(desc="model sidecar content")


class FitTensor(SimpleInterface):
    """Fit the diffusion tensor (:func:`bids_ketamine.dwi.tensor.fit_tensor`) to b=0 and the
    shells at or below ``dti_max_bval``; write FA, MD, AD, RD (um^2/ms)."""

    input_spec = _FitTensorInputSpec
    output_spec = _FitTensorOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.gradients import dti_volumes
        from bids_ketamine.dwi.tensor import fit_tensor

        img = open_image(self.inputs.dwi_file)
        bvals, bvecs = read_voxel_gradients(self.inputs.bval_file, self.inputs.bvec_file, img.affine)
        volumes = dti_volumes(bvals, self.inputs.dti_max_bval)
        data = np.asarray(img.dataobj, dtype=np.float32)[..., volumes]
        mask = np.asarray(open_image(self.inputs.mask_file).dataobj) > 0
        kwargs = {}
        if self.inputs.fit_method == "restore" and self.inputs.noise_file:
            noise = np.asarray(open_image(self.inputs.noise_file).dataobj, dtype=np.float32)
            kwargs["sigma"] = float(np.median(noise[mask & (noise > 0)])) if np.any(noise[mask] > 0) else None
        fit = fit_tensor(data, bvals[volumes], bvecs[volumes], mask=mask, method=self.inputs.fit_method,
                         b0_threshold=self.inputs.b0_threshold, n_threads=self.inputs.n_threads, **kwargs)
        out = Path(runtime.cwd)
        for param in TENSOR_PARAMS:
            values = np.where(mask, np.nan_to_num(getattr(fit, param)), 0).astype(np.float32)
            path = out / f"{param}.nii.gz"
            nib.Nifti1Image(values, img.affine).to_filename(path)
            self._results[f"{param}_file"] = str(path)
        self._results["volumes"] = [int(v) for v in volumes]
        self._results["metadata"] = {
            "Model": "tensor",
            "FitMethod": self.inputs.fit_method.upper(),
            "Units": {"md": "um^2/ms", "ad": "um^2/ms", "rd": "um^2/ms", "fa": "arbitrary"},
            "VolumesUsed": [int(v) for v in volumes],
            "BValuesUsed": sorted({float(b) for b in bvals[volumes]}),
        }
        return runtime
