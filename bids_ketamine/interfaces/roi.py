"""ROI statistics interface."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _ROIStatsInputSpec(BaseInterfaceInputSpec):
    dseg_file = File(exists=True, mandatory=True, desc="atlas labels in the native DWI grid")
    labels_file = File(exists=True, mandatory=True, desc="TSV of the atlas labels (index, name)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    fa_file = File(exists=True, mandatory=True, desc="FA map")
    md_file = File(exists=True, mandatory=True, desc="MD map (um^2/ms)")
    ad_file = File(exists=True, mandatory=True, desc="AD map (um^2/ms)")
    rd_file = File(exists=True, mandatory=True, desc="RD map (um^2/ms)")
    coverage = traits.Dict(traits.Str, traits.Float, desc="ROI name -> coverage")
    csf_md_threshold = traits.Either(None, traits.Float, usedefault=True,
                                     desc="exclude voxels with MD above this (um^2/ms)")
    gm_file = File(exists=True, desc="grey-matter probability on the native grid")
    gm_threshold = traits.Either(None, traits.Float, usedefault=True,
                                 desc="keep voxels with grey-matter probability at least this")
    # issue 20: the participant's shared voxel selection and tissue fractions (all optional)
    shared_md_file = File(exists=True, desc="participant MD (mean of sessions) for the CSF exclusion")
    shared_mask_file = File(exists=True, desc="participant brain mask (inside every session's)")
    wm_file = File(exists=True, desc="white-matter probability on the native grid")
    csf_file = File(exists=True, desc="CSF probability on the native grid")


class _ROIStatsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="roistats TSV")


class ROIStats(SimpleInterface):
    """Tabulate ROI statistics of the tensor maps
    (:func:`bids_ketamine.dwi.roi.roi_statistics`)."""

    input_spec = _ROIStatsInputSpec
    output_spec = _ROIStatsOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.roi import roi_statistics

        def _load(path):
            return np.asarray(nib.load(path).dataobj, dtype=np.float32)

        maps = {p: _load(getattr(self.inputs, f"{p}_file")) for p in ("fa", "md", "ad", "rd")}
        labels = pd.read_csv(self.inputs.labels_file, sep="\t")
        mask = _load(self.inputs.mask_file) > 0
        if self.inputs.shared_mask_file:
            mask &= _load(self.inputs.shared_mask_file) > 0
        gm = _load(self.inputs.gm_file) if self.inputs.gm_file else None
        fractions = None
        if gm is not None and self.inputs.wm_file and self.inputs.csf_file:
            fractions = {"gm": gm, "wm": _load(self.inputs.wm_file), "csf": _load(self.inputs.csf_file)}
        table = roi_statistics(
            maps,
            np.asarray(nib.load(self.inputs.dseg_file).dataobj).astype(int),
            labels,
            mask,
            md=_load(self.inputs.shared_md_file) if self.inputs.shared_md_file else None,
            csf_md_threshold=self.inputs.csf_md_threshold,
            tissue_fractions=fractions,
            gm_probability=gm,
            gm_threshold=self.inputs.gm_threshold,
            coverage=dict(self.inputs.coverage) if self.inputs.coverage else None,
        )
        self._results["out_file"] = str(Path(runtime.cwd) / "roistats.tsv")
        table.to_csv(self._results["out_file"], sep="\t", index=False, float_format="%.6g", na_rep="n/a")
        return runtime


class _SharedSelectionInputSpec(BaseInterfaceInputSpec):
    md_files = InputMultiObject(File(exists=True), mandatory=True, desc="MD map of each series")
    mask_files = InputMultiObject(File(exists=True), mandatory=True, desc="brain mask of each series")
    xfm_files = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="rigid series -> midpoint (4x4 text) of each series")


class _SharedSelectionOutputSpec(TraitedSpec):
    shared_md_files = OutputMultiObject(File(exists=True), desc="participant MD on each series' grid")
    shared_mask_files = OutputMultiObject(File(exists=True), desc="participant mask on each series' grid")


class SharedSelection(SimpleInterface):
    """The participant's voxel-selection maps on every series' grid, from all series together
    (:func:`bids_ketamine.dwi.shared_selection.participant_selection_maps`, issue 20)."""

    input_spec = _SharedSelectionInputSpec
    output_spec = _SharedSelectionOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.shared_selection import participant_selection_maps

        md_imgs = [nib.load(f) for f in self.inputs.md_files]
        md_maps = [np.asarray(img.dataobj, dtype=np.float32) for img in md_imgs]
        masks = [np.asarray(nib.load(f).dataobj) > 0 for f in self.inputs.mask_files]
        affines = [img.affine for img in md_imgs]
        rigids = [np.loadtxt(f) for f in self.inputs.xfm_files]
        self._results["shared_md_files"], self._results["shared_mask_files"] = [], []
        for index, img in enumerate(md_imgs):
            shared_md, shared_mask = participant_selection_maps(md_maps, masks, affines, rigids, index)
            md_path = Path(runtime.cwd) / f"series{index:02d}_shared_md.nii.gz"
            mask_path = Path(runtime.cwd) / f"series{index:02d}_shared_mask.nii.gz"
            nib.Nifti1Image(shared_md, img.affine).to_filename(md_path)
            nib.Nifti1Image(shared_mask.astype(np.uint8), img.affine).to_filename(mask_path)
            self._results["shared_md_files"].append(str(md_path))
            self._results["shared_mask_files"].append(str(mask_path))
        return runtime
