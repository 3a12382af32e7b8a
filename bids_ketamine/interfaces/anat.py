"""Anatomical (T1w) interfaces, one :mod:`bids_ketamine.anat` function each.

Transforms are files: the within-subject rigid maps and the T1w -> DWI midpoint map as 4x4
text matrices (RAS mm), the T1w's template registration as ANTs/ITK files with a JSON sidecar
stating their convention (:mod:`bids_ketamine.anat.registration`), and the DWI's template
registration composed through the T1w in the files of the DWI-only path
(:mod:`bids_ketamine.anat.dwi_to_t1w`).
"""

from __future__ import annotations

from pathlib import Path

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

from bids_ketamine.interfaces.registration import RegistrationFilesSpec
from bids_ketamine.utils.atomic import atomic_write_nifti


class _ThreadsInputSpec(BaseInterfaceInputSpec):
    n_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _BiasFieldInputSpec(_ThreadsInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="T1w image")


class _BiasFieldOutputSpec(TraitedSpec):
    corrected_file = File(exists=True, desc="bias-corrected T1w")
    field_file = File(exists=True, desc="estimated multiplicative bias field")


class BiasFieldCorrection(SimpleInterface):
    """N4 bias-field correction (:func:`bids_ketamine.anat.bias.bias_field_correct`)."""

    input_spec = _BiasFieldInputSpec
    output_spec = _BiasFieldOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.bias import bias_field_correct

        set_threads(self.inputs.n_threads)
        corrected, field = bias_field_correct(self.inputs.t1w_file)
        for key, img, name in (("corrected_file", corrected, "t1w_n4.nii.gz"),
                               ("field_file", field, "bias_field.nii.gz")):
            self._results[key] = str(atomic_write_nifti(img, Path(runtime.cwd) / name))
        return runtime


class _WithinSubjectInputSpec(BaseInterfaceInputSpec):
    t1w_files = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="bias-corrected T1w of each session")


class _WithinSubjectOutputSpec(TraitedSpec):
    template_file = File(exists=True, desc="unbiased within-subject T1w template")
    xfm_files = OutputMultiObject(File(exists=True),
                                  desc="per input: template world -> session world (4x4 text)")


#: The convention of the within-subject template's per-session transforms (their sidecars).
SESSION_CONVENTION = ("4x4 matrix (text): a point's world coordinates (mm, RAS) in the within-subject "
                      "T1w template -> its world coordinates in the session's T1w")


class WithinSubjectTemplate(SimpleInterface):
    """Unbiased within-subject T1w template
    (:func:`bids_ketamine.anat.within_subject.within_subject_template`)."""

    input_spec = _WithinSubjectInputSpec
    output_spec = _WithinSubjectOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.within_subject import within_subject_template
        from bids_ketamine.dwi.registration import save_matrix

        result = within_subject_template(list(self.inputs.t1w_files))
        cwd = Path(runtime.cwd)
        self._results["template_file"] = str(atomic_write_nifti(result.template,
                                                                cwd / "t1w_template.nii.gz"))
        self._results["xfm_files"] = [
            save_matrix(cwd / f"from-template_to-t1w{index:02d}_xfm.txt", matrix, SESSION_CONVENTION)
            for index, matrix in enumerate(result.transforms)]
        return runtime


class _RoughMaskInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")


class _RoughMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="brain-sized region of the T1w")


class RoughBrainMask(SimpleInterface):
    """Brain region from morphology (:func:`bids_ketamine.anat.brain_mask.rough_brain_mask`)."""

    input_spec = _RoughMaskInputSpec
    output_spec = _RoughMaskOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.brain_mask import rough_brain_mask

        mask = rough_brain_mask(self.inputs.t1w_file)
        self._results["mask_file"] = str(atomic_write_nifti(mask, Path(runtime.cwd) /
                                                            "rough_brain_mask.nii.gz"))
        return runtime


class _RegistrationInputSpec(_ThreadsInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    t1w_mask = File(exists=True, desc="brain region of the T1w (the T1w is cut to it)")
    template_t1w = File(exists=True, mandatory=True, desc="template T1w (fixed)")
    template_mask = File(exists=True, desc="template brain mask (metric region)")
    space = traits.Str(mandatory=True, desc="template space name (sidecar)")
    transform = traits.Enum("SyN", "SyNRA", "Affine", usedefault=True, desc="ANTsPy transform")


class _RegistrationOutputSpec(TraitedSpec):
    affine_file = File(exists=True, desc="ITK affine (template -> T1w points)")
    warp_file = File(exists=True, desc="displacement field on the template grid")
    inverse_warp_file = File(exists=True, desc="inverse displacement field")
    sidecar_file = File(exists=True, desc="JSON stating the convention")


class T1wTemplateRegistration(SimpleInterface):
    """Nonlinear T1w-to-template registration
    (:func:`bids_ketamine.anat.registration.register_to_template`)."""

    input_spec = _RegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.registration import register_to_template, transform_sidecar

        set_threads(self.inputs.n_threads)
        prefix = Path(runtime.cwd) / f"from-T1w_to-{self.inputs.space}_"
        mask = self.inputs.template_mask or None
        xfm = register_to_template(self.inputs.t1w_file, self.inputs.template_t1w, str(prefix),
                                   template_mask=mask, t1w_mask=self.inputs.t1w_mask or None,
                                   transform=self.inputs.transform)
        sidecar = transform_sidecar(xfm, self.inputs.space, str(prefix) + "xfm.json",
                                    transform=self.inputs.transform)
        self._results.update(affine_file=str(xfm.affine), warp_file=str(xfm.warp),
                             inverse_warp_file=str(xfm.inverse_warp), sidecar_file=str(sidecar))
        return runtime


class _TransformsInputSpec(_ThreadsInputSpec):
    affine_file = File(exists=True, mandatory=True, desc="ITK affine of the registration")
    warp_file = File(exists=True, mandatory=True, desc="warp of the registration")
    inverse_warp_file = File(exists=True, mandatory=True, desc="inverse warp of the registration")


class _BrainMaskInputSpec(_TransformsInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="T1w (output grid)")
    template_mask = File(exists=True, mandatory=True, desc="template brain mask")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="brain mask on the T1w grid")
    probability_file = File(exists=True, desc="warped template brain fraction")


def _transforms(inputs):
    from bids_ketamine.anat.registration import TemplateTransforms

    return TemplateTransforms(affine=Path(inputs.affine_file), warp=Path(inputs.warp_file),
                              inverse_warp=Path(inputs.inverse_warp_file))


class TemplateBrainMask(SimpleInterface):
    """Template-based brain extraction (:func:`bids_ketamine.anat.brain_mask.template_brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.brain_mask import template_brain_mask

        set_threads(self.inputs.n_threads)
        mask, probability = template_brain_mask(self.inputs.t1w_file, self.inputs.template_mask,
                                                _transforms(self.inputs))
        cwd = Path(runtime.cwd)
        self._results["mask_file"] = str(atomic_write_nifti(mask, cwd / "brain_mask.nii.gz"))
        self._results["probability_file"] = str(atomic_write_nifti(probability,
                                                                   cwd / "brain_probseg.nii.gz"))
        return runtime


class _TemplateToT1wInputSpec(_TransformsInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space image (e.g. atlas labels)")
    t1w_file = File(exists=True, mandatory=True, desc="T1w (output grid)")
    interpolation = traits.Enum("genericLabel", "linear", usedefault=True,
                                desc="genericLabel: labels; linear: a map")


class _TemplateToT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the T1w grid")


class TemplateToT1w(SimpleInterface):
    """Carry a template-space image onto the T1w grid through the T1w's template registration
    (:func:`bids_ketamine.anat.registration.from_template`); labels stay integers."""

    input_spec = _TemplateToT1wInputSpec
    output_spec = _TemplateToT1wOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.registration import from_template

        set_threads(self.inputs.n_threads)
        moved = from_template(self.inputs.in_file, self.inputs.t1w_file, _transforms(self.inputs),
                              interpolation=self.inputs.interpolation)
        data = np.asarray(moved.dataobj, dtype=np.float32)
        if self.inputs.interpolation == "genericLabel":
            data = np.rint(data).astype(np.int16)
        self._results["out_file"] = str(atomic_write_nifti(nib.Nifti1Image(data, moved.affine),
                                                           Path(runtime.cwd) / "in_t1w.nii.gz"))
        return runtime


class _TissueInputSpec(_ThreadsInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")


class _TissueOutputSpec(TraitedSpec):
    gm_file = File(exists=True, desc="GM partial-volume fraction")
    wm_file = File(exists=True, desc="WM partial-volume fraction")
    csf_file = File(exists=True, desc="CSF partial-volume fraction")
    dseg_file = File(exists=True, desc="hard segmentation (1 CSF, 2 GM, 3 WM)")


class TissueFractions(SimpleInterface):
    """GM/WM/CSF partial-volume maps (:func:`bids_ketamine.anat.tissues.tissue_fractions`)."""

    input_spec = _TissueInputSpec
    output_spec = _TissueOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.tissues import tissue_fractions

        set_threads(self.inputs.n_threads)
        maps = tissue_fractions(self.inputs.t1w_file, self.inputs.mask_file)
        cwd = Path(runtime.cwd)
        for key, name in (("gm", "GM"), ("wm", "WM"), ("csf", "CSF")):
            path = cwd / f"label-{name}_probseg.nii.gz"
            self._results[f"{key}_file"] = str(atomic_write_nifti(maps[key], path))
        self._results["dseg_file"] = str(atomic_write_nifti(maps["labels"], cwd / "dseg.nii.gz"))
        return runtime


class _B0ToT1wInputSpec(_ThreadsInputSpec):
    b0_file = File(exists=True, mandatory=True, desc="DWI midpoint b=0")
    b0_mask = File(exists=True, mandatory=True, desc="its brain mask")
    t1w_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    t1w_mask = File(exists=True, mandatory=True, desc="T1w brain mask")


class _B0ToT1wOutputSpec(TraitedSpec):
    xfm_file = File(exists=True, desc="T1w world -> DWI midpoint world (4x4 text, JSON sidecar)")


class B0ToT1wRegistration(SimpleInterface):
    """Rigid b=0 -> T1w registration, mutual information
    (:func:`bids_ketamine.anat.dwi_to_t1w.register_b0_to_t1w`)."""

    input_spec = _B0ToT1wInputSpec
    output_spec = _B0ToT1wOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.antsimage import set_threads
        from bids_ketamine.anat.dwi_to_t1w import T1W_CONVENTION, register_b0_to_t1w
        from bids_ketamine.dwi.registration import save_matrix

        set_threads(self.inputs.n_threads)
        matrix = register_b0_to_t1w(self.inputs.b0_file, self.inputs.b0_mask, self.inputs.t1w_file,
                                    self.inputs.t1w_mask)
        self._results["xfm_file"] = save_matrix(Path(runtime.cwd) / "from-T1w_to-midpoint_xfm.txt", matrix,
                                                T1W_CONVENTION)
        return runtime


class _ComposeInputSpec(_TransformsInputSpec):
    t1w_xfm_file = File(exists=True, mandatory=True, desc="T1w world -> DWI midpoint world (4x4 text)")
    reference_file = File(exists=True, mandatory=True, desc="DWI midpoint b=0 (the subject grid)")


class ComposeThroughT1w(SimpleInterface):
    """The DWI midpoint's template registration composed through the T1w, in the files of the
    DWI-only path (:func:`bids_ketamine.anat.dwi_to_t1w.compose_through_t1w`)."""

    input_spec = _ComposeInputSpec
    output_spec = RegistrationFilesSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.dwi_to_t1w import compose_through_t1w

        registration = compose_through_t1w(_transforms(self.inputs), np.loadtxt(self.inputs.t1w_xfm_file),
                                           self.inputs.reference_file)
        paths = registration.save(Path(runtime.cwd) / "to_template")
        self._results.update(affine_file=paths["affine"], warp_file=paths["warp"],
                             inverse_warp_file=paths["invwarp"])
        return runtime
