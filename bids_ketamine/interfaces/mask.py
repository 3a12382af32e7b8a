"""Brain mask of a DWI series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    b0_file = File(exists=True, mandatory=True, desc="mean b=0 image")
    dwi_file = File(exists=True, desc="the DWI series: voxels non-finite or zero in any volume are excluded")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="brain mask (uint8)")


class BrainMask(SimpleInterface):
    """Brain mask by Otsu thresholding of the median-filtered mean b=0
    (:func:`dipy.segment.mask.median_otsu`), holes filled."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from dipy.segment.mask import median_otsu
        from scipy import ndimage

        img = nib.load(self.inputs.b0_file)
        b0 = np.asarray(img.dataobj, dtype=np.float32)
        _, mask = median_otsu(b0, median_radius=2, numpass=1)
        mask = ndimage.binary_fill_holes(mask)
        if self.inputs.dwi_file:
            dwi = np.asarray(nib.load(self.inputs.dwi_file).dataobj, dtype=np.float32)
            mask &= np.all(np.isfinite(dwi), axis=-1) & (dwi.max(axis=-1) > 0)
        # keep the largest connected component (the brain), dropping specks of background
        labels, n_labels = ndimage.label(mask)
        if n_labels > 1:
            sizes = ndimage.sum(mask, labels, range(1, n_labels + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
        self._results["mask_file"] = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        nib.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(self._results["mask_file"])
        return runtime
