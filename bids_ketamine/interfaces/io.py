"""Input and output interfaces: loading a DWI series, writing derivatives."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_ketamine.dwi.gradients import load_dwi_series, write_fsl_gradients
from bids_ketamine.interfaces import series_file
from bids_ketamine.utils.images import open_image


def read_voxel_gradients(bval_file: str, bvec_file: str, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL gradient files written for ``affine`` back into voxel-frame vectors."""
    from bids_ketamine.dwi.gradients import fsl_flip, read_gradients

    bvals, bvecs = read_gradients(Path(bval_file), Path(bvec_file))
    return bvals, bvecs * fsl_flip(affine)


class _LoadDWIInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="raw DWI series (4-D NIfTI)")
    bval_file = File(exists=True, mandatory=True, desc="its .bval")
    bvec_file = File(exists=True, mandatory=True, desc="its .bvec")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="b-values at or below count as b=0")


class _LoadDWIOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="checked DWI, RAS+ voxel order, float32")
    bval_file = File(exists=True, desc="b-values (b <= threshold set to 0)")
    bvec_file = File(exists=True, desc="FSL-convention b-vectors of the RAS+ image")
    warnings = traits.List(traits.Str, desc="problems repaired on loading")


class LoadDWI(SimpleInterface):
    """Check a DWI series and reorient it to RAS+ with its gradients (one call:
    :func:`bids_ketamine.dwi.gradients.load_dwi_series`)."""

    input_spec = _LoadDWIInputSpec
    output_spec = _LoadDWIOutputSpec

    def _run_interface(self, runtime):
        series = load_dwi_series(Path(self.inputs.dwi_file), Path(self.inputs.bval_file),
                                 Path(self.inputs.bvec_file), b0_threshold=self.inputs.b0_threshold)
        out = Path(runtime.cwd)
        self._results["dwi_file"] = series_file(out, "dwi_ras")
        self._results["bval_file"] = str(out / "dwi_ras.bval")
        self._results["bvec_file"] = str(out / "dwi_ras.bvec")
        series.img.to_filename(self._results["dwi_file"])
        write_fsl_gradients(series.bvals, series.bvecs, series.img.affine,
                            Path(self._results["bval_file"]), Path(self._results["bvec_file"]))
        self._results["warnings"] = list(series.warnings)
        return runtime


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, xor=["content"], desc="file to copy into the derivatives")
    content = traits.Dict(xor=["in_file"], desc="or: a dict written as JSON")
    out_path = traits.Str(mandatory=True, desc="final path, absolute")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the written derivative")


def _gzipped(path) -> bool:
    return str(path).endswith(".gz")


class DerivativesSink(SimpleInterface):
    """Copy one result to its BIDS-derivatives name, atomically, with its sidecar.

    The file appears under its final name only once complete (written to a temporary name
    in the same folder, then renamed), so an interrupted run never leaves half a file.  An
    uncompressed work-folder image (:data:`~bids_ketamine.interfaces.SERIES_EXTENSION`) going to
    a ``.nii.gz`` name is compressed on the way.
    """

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec
    #: always copy, even when nipype has the node cached: a deleted output is written again
    always_run = True

    def _run_interface(self, runtime):
        from bids_ketamine.utils.atomic import atomic_copy, atomic_write_nifti, atomic_write_text

        target = Path(self.inputs.out_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isdefined(self.inputs.in_file) and _gzipped(self.inputs.in_file) != _gzipped(target):
            atomic_write_nifti(nib.load(self.inputs.in_file), target)
        elif isdefined(self.inputs.in_file):
            atomic_copy(self.inputs.in_file, target)
        elif isdefined(self.inputs.content):
            atomic_write_text(target, json.dumps(self.inputs.content, indent=2, sort_keys=True,
                                                 default=str) + "\n")
        else:
            raise ValueError(f"nothing to write to {target}: give in_file or content")
        self._results["out_file"] = str(target)
        return runtime


class _ConcatenateRunsInputSpec(BaseInterfaceInputSpec):
    dwi_files = traits.List(File(exists=True), mandatory=True, minlen=1,
                            desc="runs of one session, loaded (RAS+) and denoised, in run order")
    bval_files = traits.List(File(exists=True), mandatory=True, desc="their b-values")
    bvec_files = traits.List(File(exists=True), mandatory=True, desc="their b-vectors (FSL convention)")
    noise_files = traits.List(File(exists=True), desc="their noise maps (optional)")


class _ConcatenateRunsOutputSpec(TraitedSpec):
    dwi_file = File(exists=True, desc="the runs as one series on the first run's grid")
    bval_file = File(exists=True, desc="b-values of every volume")
    bvec_file = File(exists=True, desc="b-vectors of every volume (FSL convention of dwi_file)")
    noise_file = File(desc="root mean square of the runs' noise maps")
    run_lengths = traits.List(traits.Int, desc="number of volumes of each run")


class ConcatenateRuns(SimpleInterface):
    """Join the runs of a session into one series (:func:`bids_ketamine.dwi.runs.concatenate_runs`);
    motion correction then aligns every volume to one reference."""

    input_spec = _ConcatenateRunsInputSpec
    output_spec = _ConcatenateRunsOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.runs import concatenate_runs, combine_noise_maps

        images = [open_image(path) for path in self.inputs.dwi_files]
        gradients = [read_voxel_gradients(bval, bvec, img.affine)
                     for bval, bvec, img in zip(self.inputs.bval_files, self.inputs.bvec_files, images)]
        img, bvals, bvecs = concatenate_runs(images, [g[0] for g in gradients], [g[1] for g in gradients])
        out = Path(runtime.cwd)
        self._results["run_lengths"] = [len(g[0]) for g in gradients]
        self._results["dwi_file"] = series_file(out, "dwi_runs")
        self._results["bval_file"] = str(out / "dwi_runs.bval")
        self._results["bvec_file"] = str(out / "dwi_runs.bvec")
        img.to_filename(self._results["dwi_file"])
        write_fsl_gradients(bvals, bvecs, img.affine, Path(self._results["bval_file"]),
                            Path(self._results["bvec_file"]))
        if isdefined(self.inputs.noise_files) and self.inputs.noise_files:
            self._results["noise_file"] = str(out / "noise_runs.nii.gz")
            combine_noise_maps([open_image(p) for p in self.inputs.noise_files], img).to_filename(
                self._results["noise_file"])
        return runtime
