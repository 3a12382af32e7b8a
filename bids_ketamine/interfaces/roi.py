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
    isdefined,
    traits,
)

from bids_ketamine.interfaces.registration import TransformInputSpec
from bids_ketamine.utils.images import open_image


def _float_map(path: str) -> np.ndarray:
    """A map's voxel values as float32."""
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _tensor_maps(inputs) -> dict[str, np.ndarray]:
    """The ``fa``/``md``/``ad``/``rd`` maps of an interface's ``<param>_file`` inputs."""
    return {param: _float_map(getattr(inputs, f"{param}_file")) for param in ("fa", "md", "ad", "rd")}


def _brain_mask(inputs) -> np.ndarray:
    """The series' brain mask, within the participant's shared mask when given."""
    mask = _float_map(inputs.mask_file) > 0
    if inputs.shared_mask_file:
        mask &= _float_map(inputs.shared_mask_file) > 0
    return mask


class _TensorMapsInputSpec(BaseInterfaceInputSpec):
    """The inputs of every table of a series' tensor maps: the maps, the voxel selection and the
    tissue fractions."""

    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    fa_file = File(exists=True, mandatory=True, desc="FA map")
    md_file = File(exists=True, mandatory=True, desc="MD map (um^2/ms)")
    ad_file = File(exists=True, mandatory=True, desc="AD map (um^2/ms)")
    rd_file = File(exists=True, mandatory=True, desc="RD map (um^2/ms)")
    csf_md_threshold = traits.Either(None, traits.Float, usedefault=True,
                                     desc="exclude voxels with MD above this (um^2/ms)")
    gm_file = File(exists=True, desc="grey-matter probability on the native grid")
    # issue 20: the participant's shared voxel selection and tissue fractions (all optional)
    shared_md_file = File(exists=True, desc="participant MD (mean of sessions) for the CSF exclusion")
    shared_mask_file = File(exists=True, desc="participant brain mask (inside every session's)")
    wm_file = File(exists=True, desc="white-matter probability on the native grid")


class _ROIStatsInputSpec(_TensorMapsInputSpec):
    dseg_file = File(exists=True, mandatory=True, desc="atlas labels in the native DWI grid")
    labels_file = File(exists=True, mandatory=True, desc="TSV of the atlas labels (index, name)")
    coverage = traits.Dict(traits.Str, traits.Float, desc="ROI name -> coverage")
    gm_threshold = traits.Either(None, traits.Float, usedefault=True,
                                 desc="keep voxels with grey-matter probability at least this")
    roi_weights_file = File(exists=True, desc="4-D ROI grey-matter volume fractions (ROIWeights)")
    csf_file = File(exists=True, desc="CSF probability on the native grid")
    b0_file = File(exists=True, desc="mean b=0 image: the tissues' b=0 signals of pv_gm's mixture")
    b_value = traits.Float(desc="mean b-value of the fitted DW volumes (s/mm^2); enables pv_gm")


class _TableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the table (TSV)")


def _write_table(table: pd.DataFrame, runtime, name: str) -> str:
    """Write a statistics table into the node's folder (``n/a`` for missing values)."""
    path = str(Path(runtime.cwd) / name)
    table.to_csv(path, sep="\t", index=False, float_format="%.6g", na_rep="n/a")
    return path


class ROIStats(SimpleInterface):
    """Tabulate ROI statistics of the tensor maps
    (:func:`bids_ketamine.dwi.roi.roi_statistics`)."""

    input_spec = _ROIStatsInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.roi import roi_statistics

        maps = _tensor_maps(self.inputs)
        labels = pd.read_csv(self.inputs.labels_file, sep="\t")
        mask = _brain_mask(self.inputs)
        gm = _float_map(self.inputs.gm_file) if self.inputs.gm_file else None
        fractions = None
        if gm is not None and self.inputs.wm_file and self.inputs.csf_file:
            fractions = {"gm": gm, "wm": _float_map(self.inputs.wm_file), "csf": _float_map(self.inputs.csf_file)}
        roi_weights = _float_map(self.inputs.roi_weights_file) if self.inputs.roi_weights_file else None
        table = roi_statistics(
            maps,
            np.asarray(nib.load(self.inputs.dseg_file).dataobj).astype(int),
            labels,
            mask,
            md=_float_map(self.inputs.shared_md_file) if self.inputs.shared_md_file else None,
            csf_md_threshold=self.inputs.csf_md_threshold,
            tissue_fractions=fractions,
            roi_weights=roi_weights,
            gm_probability=gm,
            gm_threshold=self.inputs.gm_threshold,
            coverage=dict(self.inputs.coverage) if self.inputs.coverage else None,
            b_value=self.inputs.b_value if isdefined(self.inputs.b_value) else None,
            b0=_float_map(self.inputs.b0_file) if self.inputs.b0_file else None,
        )
        self._results["out_file"] = _write_table(table, runtime, "roistats.tsv")
        return runtime


class TissueStats(SimpleInterface):
    """Tabulate the tensor maps over the brain, white and grey matter
    (:func:`bids_ketamine.dwi.tissue_stats.tissue_statistics`)."""

    input_spec = _TensorMapsInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.tissue_stats import tissue_statistics

        fractions = {tissue: _float_map(getattr(self.inputs, f"{tissue}_file")) for tissue in ("gm", "wm")
                     if getattr(self.inputs, f"{tissue}_file")}
        table = tissue_statistics(
            _tensor_maps(self.inputs),
            _brain_mask(self.inputs),
            tissue_fractions=fractions,
            md=_float_map(self.inputs.shared_md_file) if self.inputs.shared_md_file else None,
            csf_md_threshold=self.inputs.csf_md_threshold,
        )
        self._results["out_file"] = _write_table(table, runtime, "tissuestats.tsv")
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


class _ROIWeightsInputSpec(TransformInputSpec):
    atlas_file = File(exists=True, mandatory=True, desc="atlas labels in template space")
    gm_file = File(exists=True, mandatory=True, desc="template grey-matter probability (atlas grid)")
    labels_file = File(exists=True, mandatory=True, desc="TSV of the atlas labels (index, name)")
    reference_file = File(exists=True, mandatory=True, desc="an image on the native DWI grid")


class _NativeMapOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="volume fractions on the native DWI grid (ROI weights: 4-D, one per label)")


def _roi_fractions(atlas_img, gm, labels_file, reference) -> np.ndarray:
    """Per label, ``(atlas == k) * GM`` box-averaged to the native voxel size, on the atlas grid."""
    from bids_ketamine.dwi.partial_volume import box_side, roi_grey_matter_volume_fractions

    labels = pd.read_csv(labels_file, sep="\t")
    return roi_grey_matter_volume_fractions(np.rint(np.asarray(atlas_img.dataobj)).astype(int), gm,
                                            labels["index"].tolist(), box_side(atlas_img.affine, reference.affine))


def _weights_inputs(inputs):
    """The atlas, grey-matter and native reference images of a weights interface, and whether
    the grey-matter map is on the atlas grid."""
    atlas_img, gm_img, reference = (open_image(getattr(inputs, name))
                                    for name in ("atlas_file", "gm_file", "reference_file"))
    on_grid = gm_img.shape[:3] == atlas_img.shape[:3] and np.allclose(gm_img.affine, atlas_img.affine, atol=1e-3)
    return atlas_img, gm_img, reference, on_grid


def _write_native(data, reference, path) -> str:
    nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine).to_filename(path)
    return str(path)


class ROIWeights(SimpleInterface):
    """Each ROI's grey-matter volume fraction of every native voxel (issue 20): the template's
    ``(atlas == k) * GM`` box-averaged to the DWI voxel size
    (:func:`bids_ketamine.dwi.partial_volume.roi_grey_matter_volume_fractions`), then warped in
    (trilinear) through the template warp and the midpoint."""

    input_spec = _ROIWeightsInputSpec
    output_spec = _NativeMapOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.interfaces.registration import warp_to_native

        atlas_img, gm_img, reference, on_grid = _weights_inputs(self.inputs)
        gm = np.asarray(gm_img.dataobj, dtype=np.float32)
        if not on_grid:
            from nilearn.image import resample_to_img

            gm = np.asarray(resample_to_img(gm_img, atlas_img, interpolation="continuous").dataobj, np.float32)
        fractions = _roi_fractions(atlas_img, gm, self.inputs.labels_file, reference)
        maps = [nib.Nifti1Image(fractions[..., k], atlas_img.affine) for k in range(fractions.shape[-1])]
        warped = [np.asarray(image.dataobj, dtype=np.float32)
                  for image in warp_to_native(maps, reference, self.inputs, order=1)]
        self._results["out_file"] = _write_native(np.stack(warped, axis=-1), reference,
                                                  Path(runtime.cwd) / "roi_gm_fractions.nii.gz")
        return runtime


class _T1wToNativeInputSpec(BaseInterfaceInputSpec):
    """The path from the participant's T1w to a series' native grid (both rigid)."""

    rigid_file = File(exists=True, mandatory=True, desc="series -> midpoint rigid transform (4x4 text)")
    t1w_xfm_file = File(exists=True, mandatory=True, desc="T1w world -> midpoint world (4x4 text)")
    reference_file = File(exists=True, mandatory=True, desc="an image on the native DWI grid")


def _native_to_t1w(inputs) -> np.ndarray:
    """Native-world -> T1w-world points: the series' map to the midpoint, then the midpoint's to the T1w."""
    return np.linalg.inv(np.loadtxt(inputs.t1w_xfm_file)) @ np.loadtxt(inputs.rigid_file)


class _T1wFractionsInputSpec(_T1wToNativeInputSpec):
    in_file = File(exists=True, mandatory=True, desc="a tissue fraction map on the T1w grid")


class T1wFractionsToNative(SimpleInterface):
    """A tissue fraction map of the participant's T1w as volume fractions of a series' native
    voxels (:func:`bids_ketamine.dwi.partial_volume.volume_fractions_on_grid`), through the
    rigid T1w -> midpoint -> series maps (issues 19, 20)."""

    input_spec = _T1wFractionsInputSpec
    output_spec = _NativeMapOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.partial_volume import volume_fractions_on_grid

        image = open_image(self.inputs.in_file)
        reference = open_image(self.inputs.reference_file)
        fractions = volume_fractions_on_grid(np.asarray(image.dataobj, dtype=np.float32), image.affine,
                                             reference.shape[:3], reference.affine, _native_to_t1w(self.inputs))
        self._results["out_file"] = _write_native(fractions, reference, Path(runtime.cwd) / "fractions.nii.gz")
        return runtime


class _T1wROIWeightsInputSpec(_T1wToNativeInputSpec):
    atlas_file = File(exists=True, mandatory=True,
                      desc="atlas labels on the T1w grid (interfaces.anat.TemplateToT1w)")
    gm_file = File(exists=True, mandatory=True, desc="the participant's grey-matter fraction (T1w grid)")
    labels_file = File(exists=True, mandatory=True, desc="TSV of the atlas labels (index, name)")


class T1wROIWeights(SimpleInterface):
    """Each ROI's grey-matter volume fraction of every native voxel from the participant's own
    anatomy: ``(atlas == k) * GM`` on the T1w grid (the atlas carried into the T1w, the T1w's
    grey-matter fraction) supersampled in each DWI voxel through the rigid T1w -> midpoint ->
    series maps (:func:`bids_ketamine.dwi.partial_volume.volume_fractions_on_grid`).  The T1w
    counterpart of :class:`ROIWeights`."""

    input_spec = _T1wROIWeightsInputSpec
    output_spec = _NativeMapOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.partial_volume import roi_grey_matter_volume_fractions, volume_fractions_on_grid

        atlas_img, gm_img, reference, on_grid = _weights_inputs(self.inputs)
        if not on_grid:
            raise ValueError(f"the atlas {self.inputs.atlas_file} is not on the grid of the grey-matter map "
                             f"{self.inputs.gm_file}; carry it into the T1w onto that grid (TemplateToT1w)")
        labels = pd.read_csv(self.inputs.labels_file, sep="\t")
        # a box of one T1w voxel: each label's grey matter itself, averaged by the supersampling
        label_gm = roi_grey_matter_volume_fractions(np.rint(np.asarray(atlas_img.dataobj)).astype(int),
                                                    np.asarray(gm_img.dataobj, dtype=np.float32),
                                                    labels["index"].tolist(), 1.0)
        weights = volume_fractions_on_grid(label_gm, atlas_img.affine, reference.shape[:3], reference.affine,
                                           _native_to_t1w(self.inputs))
        self._results["out_file"] = _write_native(weights, reference, Path(runtime.cwd) / "roi_gm_fractions.nii.gz")
        return runtime
