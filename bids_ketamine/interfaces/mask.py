"""Brain mask of a DWI series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

from bids_ketamine.dwi.mask import brain_mask
from bids_ketamine.utils.images import open_image


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    b0_file = File(exists=True, mandatory=True, desc="mean b=0 image")
    dwi_file = File(exists=True, desc="the DWI series: voxels non-finite in any volume, or zero in all, "
                                      "are excluded")
    covered_file = File(exists=True, desc="voxels every volume saw (motion correction): the others are excluded")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="brain mask (uint8)")


class BrainMask(SimpleInterface):
    """Brain mask of the mean b=0 (:func:`bids_ketamine.dwi.mask.brain_mask`), within the voxels
    that hold a measurement in every volume."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        img = open_image(self.inputs.b0_file)
        valid = None
        if self.inputs.dwi_file:
            dwi = np.asarray(open_image(self.inputs.dwi_file).dataobj, dtype=np.float32)
            valid = np.all(np.isfinite(dwi), axis=-1) & (dwi.max(axis=-1) > 0)
        if self.inputs.covered_file:
            covered = np.asarray(open_image(self.inputs.covered_file).dataobj) > 0
            valid = covered if valid is None else valid & covered
        mask = brain_mask(np.asarray(img.dataobj, dtype=np.float32), valid)
        self._results["mask_file"] = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        nib.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(self._results["mask_file"])
        return runtime
