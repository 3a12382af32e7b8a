"""ROI statistics interface."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


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
        table = roi_statistics(
            maps,
            np.asarray(nib.load(self.inputs.dseg_file).dataobj).astype(int),
            labels,
            _load(self.inputs.mask_file) > 0,
            csf_md_threshold=self.inputs.csf_md_threshold,
            gm_probability=_load(self.inputs.gm_file) if self.inputs.gm_file else None,
            gm_threshold=self.inputs.gm_threshold,
            coverage=dict(self.inputs.coverage) if self.inputs.coverage else None,
        )
        self._results["out_file"] = str(Path(runtime.cwd) / "roistats.tsv")
        table.to_csv(self._results["out_file"], sep="\t", index=False, float_format="%.6g", na_rep="n/a")
        return runtime
