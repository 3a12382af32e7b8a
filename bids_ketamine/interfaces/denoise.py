"""Denoising interfaces: MP-PCA or Patch2Self, and Gibbs-ringing removal."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_ketamine.interfaces import series_file
from bids_ketamine.utils.images import open_image


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="DWI series, before any interpolation")
    bval_file = File(exists=True, mandatory=True, desc="b-values (Patch2Self needs them)")
    method = traits.Enum("mppca", "patch2self", "none", usedefault=True, desc="denoising method")
    patch_radius = traits.Either(None, traits.Int, usedefault=True,
                                 desc="MP-PCA patch radius; None: dwidenoise's rule (smallest cube "
                                      "with at least as many voxels as volumes)")
    n_threads = traits.Int(1, usedefault=True, desc="threads")
    full_fov = traits.Bool(False, usedefault=True,
                           desc="MP-PCA every voxel of the field of view; default: the brain mask "
                                "of the raw series plus a margin (bids_ketamine.dwi.mask.denoising_mask)")
    margin_mm = traits.Float(10.0, usedefault=True, desc="margin around the brain mask (mm)")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b-values at or below are b=0")


class _DenoiseOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="denoised DWI")
    noise_file = File(desc="noise level map (MP-PCA sigma or Patch2Self residual std)")


class Denoise(SimpleInterface):
    """Denoise a DWI series (:func:`bids_ketamine.dwi.denoise.mppca` or
    :func:`~bids_ketamine.dwi.denoise.patch2self_denoise`)."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        img = open_image(self.inputs.dwi_file)
        out = Path(runtime.cwd)
        if self.inputs.method == "none":
            self._results["dwi_file"] = self.inputs.dwi_file
            return runtime
        data = np.asarray(img.dataobj, dtype=np.float32)
        if self.inputs.method == "mppca":
            from bids_ketamine.dwi.denoise import mppca

            mask = None
            if not self.inputs.full_fov:
                from bids_ketamine.dwi.mask import denoising_mask

                bvals = np.loadtxt(self.inputs.bval_file, ndmin=1)
                mean_b0 = data[..., bvals <= self.inputs.b0_threshold].mean(axis=-1)
                mask = denoising_mask(mean_b0, img.header.get_zooms()[:3], self.inputs.margin_mm)
            denoised, noise = mppca(data, mask=mask, patch_radius=self.inputs.patch_radius,
                                    n_threads=self.inputs.n_threads)
        else:
            from bids_ketamine.dwi.denoise import patch2self_denoise

            bvals = np.loadtxt(self.inputs.bval_file, ndmin=1)
            denoised, noise = patch2self_denoise(data, bvals)
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        self._results["dwi_file"] = series_file(out, "dwi_denoised")
        nib.Nifti1Image(np.asarray(denoised, dtype=np.float32), img.affine, header).to_filename(
            self._results["dwi_file"])
        noise_header = header.copy()
        noise_header.set_data_shape(img.shape[:3])
        self._results["noise_file"] = str(out / "noise.nii.gz")
        nib.Nifti1Image(np.asarray(noise, dtype=np.float32), img.affine).to_filename(
            self._results["noise_file"])
        return runtime


class _DegibbsInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="denoised DWI series")
    n_threads = traits.Int(1, usedefault=True, desc="threads")


class _DegibbsOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="DWI with Gibbs ringing removed")


class Degibbs(SimpleInterface):
    """Remove Gibbs ringing (Kellner et al. 2016; :func:`dipy.denoise.gibbs.gibbs_removal`),
    in-plane (slice axis = the last spatial axis, as acquired in axial 2-D EPI)."""

    input_spec = _DegibbsInputSpec
    output_spec = _DegibbsOutputSpec

    def _run_interface(self, runtime):
        from dipy.denoise.gibbs import gibbs_removal

        img = open_image(self.inputs.dwi_file)
        data = np.asarray(img.dataobj, dtype=np.float32)
        corrected = gibbs_removal(data, slice_axis=2, num_processes=self.inputs.n_threads)
        self._results["dwi_file"] = series_file(runtime.cwd, "dwi_degibbs")
        nib.Nifti1Image(corrected.astype(np.float32), img.affine, img.header).to_filename(
            self._results["dwi_file"])
        return runtime
