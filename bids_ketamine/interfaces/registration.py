"""Registration interfaces: within-subject midpoint space, template registration, warping.

Transforms are stored as files so that every node can be rerun from its inputs:

- ``from-dwi_to-midpoint`` rigid transforms are 4x4 matrices (text) mapping a point's world
  coordinates (mm) in the session's DWI space to world coordinates in the midpoint space.
- The midpoint -> template registration is three files (affine, warp, inverse warp) written by
  :meth:`bids_ketamine.dwi.registration.TemplateRegistration.save`; they travel between nodes
  as ``File`` inputs (:class:`TransformInputSpec`), so that nipype's hashing sees a changed
  warp.  Every transform file has a JSON sidecar stating its convention.
- The template's resources (its b=0-like contrast, the grid of template-space maps) are
  computed once per run (:class:`TemplateReference`) and passed as files.

A native image is mapped through the midpoint into the template by giving it the affine
``rigid @ affine``: its voxels expressed in midpoint world coordinates.  No data are resampled
more than once.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_ketamine.dwi.registration import save_matrix
from bids_ketamine.utils.images import open_image

#: The convention of the rigid ``from-dwi_to-midpoint`` files (written into their sidecars).
RIGID_CONVENTION = ("4x4 matrix (text): a point's world coordinates (mm, RAS) in the series' DWI "
                    "space -> its world coordinates in the participant's midpoint space")

#: The files of a midpoint -> template registration (outputs of :class:`TemplateRegistration`).
REGISTRATION_FIELDS = ("affine_file", "warp_file", "inverse_warp_file")


def _in_midpoint_world(img: nib.Nifti1Image, rigid: np.ndarray) -> nib.Nifti1Image:
    """The same voxels, with an affine that places them in midpoint world coordinates."""
    return nib.Nifti1Image(np.asanyarray(img.dataobj), rigid @ img.affine, img.header)


class _MidpointInputSpec(BaseInterfaceInputSpec):
    b0_files = InputMultiObject(File(exists=True), mandatory=True, desc="mean b=0 of each series")
    mask_files = InputMultiObject(File(exists=True), mandatory=True, desc="brain mask of each series")
    n_threads = traits.Int(1, usedefault=True, desc="threads")


class _MidpointOutputSpec(TraitedSpec):
    xfm_files = OutputMultiObject(File(exists=True), desc="rigid series -> midpoint (4x4 text)")
    midpoint_file = File(exists=True, desc="mean b=0 in the midpoint space")
    midpoint_mask = File(exists=True, desc="brain mask in the midpoint space")


class MidpointSpace(SimpleInterface):
    """Register a subject's series to their unbiased within-subject midpoint
    (:func:`bids_ketamine.dwi.registration.midpoint_space`).  With one series, the midpoint is
    the series itself (identity transform)."""

    input_spec = _MidpointInputSpec
    output_spec = _MidpointOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.registration import midpoint_space

        out = Path(runtime.cwd)
        images = [open_image(f) for f in self.inputs.b0_files]
        masks = [open_image(f) for f in self.inputs.mask_files]
        if len(images) == 1:
            transforms = [np.eye(4)]
            midpoint_img, midpoint_mask = images[0], masks[0]
        else:
            result = midpoint_space(images, masks)
            # MidpointResult.transforms pull midpoint-world points into each session's world;
            # the files hold the inverse: session world -> midpoint world.
            transforms = [np.linalg.inv(t) for t in result.transforms]
            midpoint_img, midpoint_mask = result.template, result.mask
        self._results["xfm_files"] = [save_matrix(out / f"series{index:02d}_to_midpoint.txt", matrix, RIGID_CONVENTION)
                                      for index, matrix in enumerate(transforms)]
        self._results["midpoint_file"] = str(out / "midpoint_b0.nii.gz")
        self._results["midpoint_mask"] = str(out / "midpoint_mask.nii.gz")
        nib.Nifti1Image(np.asarray(midpoint_img.dataobj, dtype=np.float32), midpoint_img.affine).to_filename(
            self._results["midpoint_file"])
        nib.Nifti1Image((np.asarray(midpoint_mask.dataobj) > 0.5).astype(np.uint8),
                        midpoint_mask.affine).to_filename(self._results["midpoint_mask"])
        return runtime


class _TemplateReferenceInputSpec(BaseInterfaceInputSpec):
    template = traits.Str(mandatory=True, desc="template name (resources.get_template)")
    resolution = traits.Float(2.0, usedefault=True, desc="voxel size (mm) of template-space maps")


class _TemplateReferenceOutputSpec(TraitedSpec):
    b0_file = File(exists=True, desc="the template's b=0-like contrast (the fixed image of registration)")
    grid_file = File(exists=True, desc="empty image on the grid of template-space maps")


class TemplateReference(SimpleInterface):
    """The template's resources, computed once per run: its b=0-like contrast
    (:func:`bids_ketamine.dwi.registration.template_b0_contrast`) and the output grid of
    template-space maps (:func:`bids_ketamine.resources.template_grid`)."""

    input_spec = _TemplateReferenceInputSpec
    output_spec = _TemplateReferenceOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.registration import template_b0_contrast
        from bids_ketamine.resources import get_template, template_grid

        template = get_template(self.inputs.template)
        self._results["b0_file"] = str(Path(runtime.cwd) / "template_b0.nii.gz")
        self._results["grid_file"] = str(Path(runtime.cwd) / "template_grid.nii.gz")
        template_b0_contrast(template).to_filename(self._results["b0_file"])
        template_grid(template, self.inputs.resolution).to_filename(self._results["grid_file"])
        return runtime


class _TemplateRegistrationInputSpec(BaseInterfaceInputSpec):
    moving_file = File(exists=True, mandatory=True, desc="b=0 image to register (midpoint or session)")
    moving_mask = File(exists=True, mandatory=True, desc="its brain mask")
    fixed_file = File(exists=True, mandatory=True, desc="the template's b=0-like contrast (TemplateReference)")
    n_threads = traits.Int(1, usedefault=True, desc="threads")


class RegistrationFilesSpec(TraitedSpec):
    """The files of a midpoint -> template registration (:data:`REGISTRATION_FIELDS`)."""

    affine_file = File(exists=True, desc="affine part, 4x4 text (template world -> midpoint world)")
    warp_file = File(exists=True, desc="displacement field pulling midpoint images into the template")
    inverse_warp_file = File(exists=True, desc="its inverse, pulling template images onto a midpoint grid")


class _TemplateRegistrationOutputSpec(RegistrationFilesSpec):
    warped_file = File(exists=True, desc="moving image in template space (for QC)")


class TemplateRegistration(SimpleInterface):
    """Register a b=0 image to the template's b=0-like contrast: affine, then SyN
    (:func:`bids_ketamine.dwi.registration.register_to_template`)."""

    input_spec = _TemplateRegistrationInputSpec
    output_spec = _TemplateRegistrationOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.registration import register_to_template

        fixed = open_image(self.inputs.fixed_file)  # zero outside the brain: its own mask
        registration = register_to_template(open_image(self.inputs.moving_file), open_image(self.inputs.moving_mask),
                                            fixed, None, n_threads=self.inputs.n_threads)
        paths = registration.save(Path(runtime.cwd) / "to_template")
        self._results["affine_file"] = paths["affine"]
        self._results["warp_file"] = paths["warp"]
        self._results["inverse_warp_file"] = paths["invwarp"]
        self._results["warped_file"] = str(Path(runtime.cwd) / "warped_b0.nii.gz")
        registration.to_template(open_image(self.inputs.moving_file), order=1).to_filename(
            self._results["warped_file"])
        return runtime


class TransformInputSpec(BaseInterfaceInputSpec):
    """The path from a series' native space to the template (``rigid_file`` and :data:`REGISTRATION_FIELDS`)."""

    rigid_file = File(exists=True, mandatory=True, desc="native -> midpoint rigid transform")
    affine_file = File(exists=True, mandatory=True, desc="template -> midpoint affine (TemplateRegistration)")
    warp_file = File(exists=True, mandatory=True, desc="midpoint -> template displacement field")
    inverse_warp_file = File(exists=True, mandatory=True, desc="its inverse")


def load_transforms(inputs):
    """The rigid matrix and the template registration named by a :class:`TransformInputSpec`."""
    from bids_ketamine.dwi.registration import TemplateRegistration

    registration = TemplateRegistration.from_files(inputs.affine_file, inputs.warp_file,
                                                   inputs.inverse_warp_file)
    return np.loadtxt(inputs.rigid_file), registration


def warp_to_native(images, reference, inputs, *, order: int):
    """Template-space images on a series' native grid, through the template warp and the midpoint.

    Parameters
    ----------
    images : sequence of nibabel images
        Template-space images.
    reference : nibabel image
        An image on the series' native grid.
    inputs : traited inputs of a :class:`TransformInputSpec`
        The series' native -> midpoint rigid transform and the participant's midpoint ->
        template registration files.
    order : int
        0: nearest neighbour (labels), 1: trilinear.

    Returns
    -------
    list of nibabel images
        On the midpoint-aligned native grid (data in the order of ``images``).
    """
    rigid, registration = load_transforms(inputs)
    grid = nib.Nifti1Image(np.zeros(reference.shape[:3], dtype=np.uint8), rigid @ reference.affine)
    return [registration.from_template(image, grid, order=order) for image in images]


class _WarpFromTemplateInputSpec(TransformInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space image (labels or a map)")
    order = traits.Int(0, usedefault=True, desc="0: nearest neighbour (labels), 1: trilinear")
    reference_file = File(exists=True, mandatory=True, desc="an image on the native DWI grid")


class _WarpFromTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the native grid")


class WarpFromTemplate(SimpleInterface):
    """Bring a template-space image (atlas labels with nearest neighbour, or a probability
    map) into a series' native grid, through the template warp and the midpoint."""

    input_spec = _WarpFromTemplateInputSpec
    output_spec = _WarpFromTemplateOutputSpec

    def _run_interface(self, runtime):
        reference = open_image(self.inputs.reference_file)
        (warped,) = warp_to_native([open_image(self.inputs.in_file)], reference, self.inputs,
                                   order=self.inputs.order)
        if self.inputs.order == 0:
            data = np.rint(np.asarray(warped.dataobj)).astype(np.int16)
        else:
            data = np.asarray(warped.dataobj, dtype=np.float32)
        self._results["out_file"] = str(Path(runtime.cwd) / ("dseg.nii.gz" if self.inputs.order == 0 else "warped.nii.gz"))
        nib.Nifti1Image(data, reference.affine).to_filename(self._results["out_file"])
        return runtime


class _WarpToTemplateInputSpec(TransformInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="native maps")
    reference_file = File(exists=True, mandatory=True,
                          desc="output grid (TemplateReference's grid_file, or the atlas)")
    order = traits.Int(1, usedefault=True, desc="interpolation order")


class _WarpToTemplateOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="maps in template space")


class WarpToTemplate(SimpleInterface):
    """Resample native maps into template space (rigid to midpoint, then the template warp)."""

    input_spec = _WarpToTemplateInputSpec
    output_spec = _WarpToTemplateOutputSpec

    def _run_interface(self, runtime):
        rigid, registration = load_transforms(self.inputs)
        reference = open_image(self.inputs.reference_file)
        outputs = []
        for index, path in enumerate(self.inputs.in_files):
            img = _in_midpoint_world(open_image(path), rigid)
            warped = registration.to_template(img, order=self.inputs.order, reference=reference)
            out = Path(runtime.cwd) / f"warped{index:02d}_{Path(path).name}"
            nib.Nifti1Image(np.asarray(warped.dataobj, dtype=np.float32), warped.affine).to_filename(out)
            outputs.append(str(out))
        self._results["out_files"] = outputs
        return runtime


class _CoverageInputSpec(BaseInterfaceInputSpec):
    atlas_file = File(exists=True, mandatory=True, desc="atlas in template space")
    labels_file = File(exists=True, mandatory=True, desc="atlas labels TSV")
    mask_file = File(exists=True, mandatory=True, desc="brain mask resampled onto the atlas grid")


class _CoverageOutputSpec(TraitedSpec):
    coverage = traits.Dict(traits.Str, traits.Float, desc="ROI name -> coverage")


class ROICoverage(SimpleInterface):
    """Fraction of each ROI's template voxels inside the session's brain mask
    (:func:`bids_ketamine.dwi.roi.roi_coverage`)."""

    input_spec = _CoverageInputSpec
    output_spec = _CoverageOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.dwi.roi import roi_coverage
        from bids_ketamine.utils.tsv import read_tsv

        self._results["coverage"] = roi_coverage(
            np.asarray(open_image(self.inputs.atlas_file).dataobj).astype(int),
            np.asarray(open_image(self.inputs.mask_file).dataobj, dtype=np.float32),
            read_tsv(self.inputs.labels_file),
        )
        return runtime
