"""Susceptibility-distortion correction: the field from reverse phase-encoded b=0 images
(PEPOLAR), a GRE field map or the T1w (``--use-syn-sdc``), and its application to a DWI series
(:mod:`bids_ketamine.dwi.sdc`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_ketamine.dwi.sdc import JACOBIAN_SIGMA
from bids_ketamine.interfaces import series_file
from bids_ketamine.utils.images import open_image


def _mean_b0(dwi, bval_file: str, b0_threshold: float) -> np.ndarray:
    """The mean b=0 volume of a series (float32)."""
    bvals = np.loadtxt(bval_file, ndmin=1)
    return np.asarray(dwi.dataobj, dtype=np.float32)[..., bvals <= b0_threshold].mean(axis=-1)


def _write_outputs(results: dict, folder, images: dict) -> None:
    """Write each output image as ``<name>.nii.gz`` (its key without ``_file``) in ``folder``."""
    for key, img in images.items():
        results[key] = str(Path(folder) / f"{key[:-len('_file')]}.nii.gz")
        img.to_filename(results[key])


class _PhaseEncodingSpec(BaseInterfaceInputSpec):
    axis = traits.Enum(0, 1, 2, mandatory=True, desc="phase-encoding voxel axis of the DWI (RAS+ order)")
    sign = traits.Enum(1, -1, mandatory=True, desc="its polarity")
    total_readout_time = traits.Float(mandatory=True, desc="BIDS TotalReadoutTime (s)")


class _RegistrationFieldInputSpec(_PhaseEncodingSpec):
    """What the registration-based estimates (PEPOLAR, fieldmap-less) share."""

    dwi_file = File(exists=True, mandatory=True, desc="DWI series (RAS+), before motion correction")
    bval_file = File(exists=True, mandatory=True, desc="its b-values")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b-values at or below are b=0")
    seed = traits.Int(1, usedefault=True, desc="ANTs' random seed")


class _PepolarFieldInputSpec(_RegistrationFieldInputSpec):
    reference_files = traits.List(File(exists=True), mandatory=True, minlen=1,
                                  desc="reverse phase-encoded images (fmap/*_epi or DWI runs), as stored")
    reference_bvals = traits.List(traits.Str, desc="per reference, its .bval file (only its b=0 volumes "
                                                   "are used) or '' (every volume)")


class _FieldOutputSpec(TraitedSpec):
    field_file = File(exists=True, desc="the field (Hz) on the DWI grid, undistorted positions")
    b0_file = File(exists=True, desc="mean b=0 of the DWI, distorted (for the report)")


class _PepolarFieldOutputSpec(_FieldOutputSpec):
    reference_file = File(exists=True, desc="mean reverse phase-encoded b=0 on the DWI grid")


class PepolarField(SimpleInterface):
    """The B0 field from the DWI's b=0 and its reverse phase-encoded twin
    (:func:`bids_ketamine.dwi.sdc.pepolar_field`)."""

    input_spec = _PepolarFieldInputSpec
    output_spec = _PepolarFieldOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.mask import brain_mask
        from bids_ketamine.dwi.sdc import mean_reference_b0, pepolar_field

        dwi = open_image(self.inputs.dwi_file)
        b0 = _mean_b0(dwi, self.inputs.bval_file, self.inputs.b0_threshold)
        b0_img = nib.Nifti1Image(b0, dwi.affine)
        bval_files = self.inputs.reference_bvals or [""] * len(self.inputs.reference_files)
        volumes = [np.loadtxt(path, ndmin=1) <= self.inputs.b0_threshold if path else None for path in bval_files]
        reference = mean_reference_b0([open_image(path) for path in self.inputs.reference_files], dwi, volumes)
        # the mask of both polarities together covers the brain wherever either puts it
        mask = brain_mask(0.5 * (b0 + np.asarray(reference.dataobj)))
        field = pepolar_field(b0_img, reference, axis=self.inputs.axis, sign=self.inputs.sign,
                              total_readout_time=self.inputs.total_readout_time,
                              mask=nib.Nifti1Image(mask.astype(np.uint8), dwi.affine), seed=self.inputs.seed)
        _write_outputs(self._results, runtime.cwd,
                       {"field_file": field, "b0_file": b0_img, "reference_file": reference})
        return runtime


class _GreFieldInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="DWI series (RAS+): the grid of the field")
    bval_file = File(exists=True, mandatory=True, desc="its b-values")
    method = traits.Enum("phasediff", "phases", "fieldmap", mandatory=True, desc="BIDS field-map case")
    fieldmap_files = traits.List(File(exists=True), mandatory=True, minlen=1,
                                 desc="phasediff, phase1 and phase2, or fieldmap")
    magnitude_file = File(exists=True, desc="the (first) magnitude image (phase cases)")
    echo_times = traits.List(traits.Float, desc="TE1, TE2 (s) of the phase cases")
    units = traits.Str("Hz", usedefault=True, desc="Units of a fieldmap image (Hz or rad/s)")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b-values at or below are b=0")
    register = traits.Bool(True, usedefault=True, desc="place the field through a rigid registration of the "
                                                         "magnitude to the b=0 (else by scanner coordinates)")
    seed = traits.Int(1, usedefault=True, desc="ANTs' random seed")


class GreField(SimpleInterface):
    """The B0 field from a GRE field map, on the DWI's grid (:func:`bids_ketamine.dwi.gre_fieldmap.gre_field`)."""

    input_spec = _GreFieldInputSpec
    output_spec = _FieldOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.gre_fieldmap import gre_field
        from bids_ketamine.dwi.mask import brain_mask

        dwi = open_image(self.inputs.dwi_file)
        b0 = _mean_b0(dwi, self.inputs.bval_file, self.inputs.b0_threshold)
        magnitude = open_image(self.inputs.magnitude_file) if isdefined(self.inputs.magnitude_file) else None
        field = gre_field(self.inputs.method, [open_image(path) for path in self.inputs.fieldmap_files],
                          magnitude, dwi, echo_times=tuple(self.inputs.echo_times or ()), units=self.inputs.units,
                          b0=nib.Nifti1Image(b0, dwi.affine) if self.inputs.register else None,
                          b0_mask=brain_mask(b0) if self.inputs.register else None, seed=self.inputs.seed)
        _write_outputs(self._results, runtime.cwd,
                       {key: nib.Nifti1Image(np.asarray(data, dtype=np.float32), dwi.affine)
                        for key, data in (("field_file", field), ("b0_file", b0))})
        return runtime


class _SynSdcFieldInputSpec(_RegistrationFieldInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="the participant's bias-corrected T1w")
    t1w_mask_file = File(exists=True, mandatory=True, desc="its brain mask")


class SynSdcField(SimpleInterface):
    """The B0 field from the DWI's b=0 and the participant's T1w, without field map
    (:func:`bids_ketamine.dwi.syn_sdc.syn_sdc_field`)."""

    input_spec = _SynSdcFieldInputSpec
    output_spec = _FieldOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.mask import brain_mask
        from bids_ketamine.dwi.syn_sdc import syn_sdc_field

        dwi = open_image(self.inputs.dwi_file)
        b0 = _mean_b0(dwi, self.inputs.bval_file, self.inputs.b0_threshold)
        b0_img = nib.Nifti1Image(b0, dwi.affine)
        field = syn_sdc_field(b0_img, nib.Nifti1Image(brain_mask(b0).astype(np.uint8), dwi.affine),
                              open_image(self.inputs.t1w_file), open_image(self.inputs.t1w_mask_file),
                              axis=self.inputs.axis, sign=self.inputs.sign,
                              total_readout_time=self.inputs.total_readout_time, seed=self.inputs.seed)
        _write_outputs(self._results, runtime.cwd, {"field_file": field, "b0_file": b0_img})
        return runtime


class _UnwarpInputSpec(_PhaseEncodingSpec):
    dwi_file = File(exists=True, mandatory=True, desc="DWI series (RAS+), before motion correction")
    field_file = File(exists=True, mandatory=True, desc="the field (Hz) on its grid")
    jacobian_sigma = traits.Float(JACOBIAN_SIGMA, usedefault=True,
                                  desc="smoothing (voxels) of the displacement for the Jacobian "
                                       "(bids_ketamine.dwi.sdc.JACOBIAN_SIGMA)")


class _UnwarpOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="the corrected series")


class Unwarp(SimpleInterface):
    """Correct every volume of a DWI series with a field (:func:`bids_ketamine.dwi.sdc.unwarp`)."""

    input_spec = _UnwarpInputSpec
    output_spec = _UnwarpOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.sdc import unwarp

        dwi = open_image(self.inputs.dwi_file)
        field = np.asarray(open_image(self.inputs.field_file).dataobj, dtype=np.float32)
        corrected = unwarp(np.asarray(dwi.dataobj, dtype=np.float32), field, axis=self.inputs.axis,
                           sign=self.inputs.sign, total_readout_time=self.inputs.total_readout_time,
                           jacobian_sigma=self.inputs.jacobian_sigma)
        header = dwi.header.copy()
        header.set_data_dtype(np.float32)
        self._results["dwi_file"] = series_file(runtime.cwd, "dwi_sdc")
        nib.Nifti1Image(corrected, dwi.affine, header).to_filename(self._results["dwi_file"])
        return runtime
