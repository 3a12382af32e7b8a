"""Between-volume motion correction interface."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_ketamine.dwi.sdc import JACOBIAN_SIGMA
from bids_ketamine.interfaces import series_file
from bids_ketamine.interfaces.io import read_voxel_gradients
from bids_ketamine.utils.images import open_image


class _MotionCorrectInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="denoised DWI (RAS+)")
    bval_file = File(exists=True, mandatory=True, desc="b-values")
    bvec_file = File(exists=True, mandatory=True, desc="b-vectors (FSL convention for this image)")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b=0 threshold")
    n_iter = traits.Int(2, usedefault=True, desc="model-prediction iterations")
    n_threads = traits.Int(1, usedefault=True, desc="threads")
    run_lengths = traits.List(traits.Int, desc="volumes of each joined run (--combine-runs average)")
    # distortion correction composed with the motion (dwi_file is then the unwarped series)
    distorted_file = File(exists=True, requires=["field_file", "axis", "sign", "total_readout_time"],
                          desc="the series before distortion correction: resampled once, through the "
                               "motion and the field composed")
    field_file = File(exists=True, desc="the field (Hz) on the series' grid")
    axis = traits.Enum(0, 1, 2, desc="phase-encoding voxel axis (RAS+ order)")
    sign = traits.Enum(1, -1, desc="its polarity")
    total_readout_time = traits.Float(desc="BIDS TotalReadoutTime (s)")
    jacobian_sigma = traits.Float(JACOBIAN_SIGMA, usedefault=True,
                                  desc="smoothing (voxels) of the displacement for the Jacobian")


class _MotionCorrectOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="motion-corrected DWI on the input grid, at the series' mean head position")
    bval_file = File(exists=True, desc="b-values")
    bvec_file = File(exists=True, desc="b-vectors rotated with each volume (FSL convention)")
    b0_file = File(exists=True, desc="mean of the aligned b=0 volumes")
    motion_file = File(exists=True, desc="per-volume motion parameters and framewise displacement")
    covered_file = File(exists=True, desc="voxels every volume saw (in its field of view), uint8")


class MotionCorrect(SimpleInterface):
    """Align every volume to the series' mean head position and rotate its b-vector
    (:func:`bids_ketamine.dwi.motion.correct_motion`); with ``distorted_file``, resample that
    series through the motion and the distortion together."""

    input_spec = _MotionCorrectInputSpec
    output_spec = _MotionCorrectOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.gradients import write_fsl_gradients
        from bids_ketamine.dwi.motion import correct_motion

        img = open_image(self.inputs.dwi_file)
        bvals, bvecs = read_voxel_gradients(self.inputs.bval_file, self.inputs.bvec_file, img.affine)
        distorted = distortion = None
        if isdefined(self.inputs.distorted_file):
            from bids_ketamine.dwi.sdc import DisplacementField

            distorted = np.asarray(open_image(self.inputs.distorted_file).dataobj, dtype=np.float32)
            field = np.asarray(open_image(self.inputs.field_file).dataobj, dtype=np.float32)
            distortion = DisplacementField.from_field(field, axis=self.inputs.axis, sign=self.inputs.sign,
                                                      total_readout_time=self.inputs.total_readout_time,
                                                      jacobian_sigma=self.inputs.jacobian_sigma)
        result = correct_motion(np.asarray(img.dataobj, dtype=np.float32), img.affine, bvals, bvecs,
                                b0_threshold=self.inputs.b0_threshold, n_iter=self.inputs.n_iter,
                                n_threads=self.inputs.n_threads, bvec_convention="voxel",
                                run_lengths=self.inputs.run_lengths or None,
                                distorted=distorted, distortion=distortion)
        out = Path(runtime.cwd)
        self._results["dwi_file"] = series_file(out, "dwi_mc")
        self._results["bval_file"] = str(out / "dwi_mc.bval")
        self._results["bvec_file"] = str(out / "dwi_mc.bvec")
        self._results["b0_file"] = str(out / "b0_ref.nii.gz")
        self._results["motion_file"] = str(out / "motion.tsv")
        self._results["covered_file"] = str(out / "covered.nii.gz")
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        nib.Nifti1Image(np.asarray(result.data, dtype=np.float32), img.affine, header).to_filename(
            self._results["dwi_file"])
        write_fsl_gradients(bvals, result.bvecs, img.affine, Path(self._results["bval_file"]),
                            Path(self._results["bvec_file"]))
        nib.Nifti1Image(np.asarray(result.b0_reference, dtype=np.float32), img.affine).to_filename(
            self._results["b0_file"])
        result.params.to_csv(self._results["motion_file"], sep="\t", index=False, float_format="%.6f")
        nib.Nifti1Image(result.covered.astype(np.uint8), img.affine).to_filename(self._results["covered_file"])
        return runtime
