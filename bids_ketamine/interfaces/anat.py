"""Anatomical (T1w) interfaces, one :mod:`bids_ketamine.anat` function each.

Transforms are files: the within-subject rigid maps as 4x4 text matrices (template world ->
session world, RAS mm), the template registration as ANTs/ITK files with a JSON sidecar
stating their convention (:mod:`bids_ketamine.anat.registration`).
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

from bids_ketamine.utils.atomic import atomic_write_nifti, atomic_write_text


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


class WithinSubjectTemplate(SimpleInterface):
    """Unbiased within-subject T1w template
    (:func:`bids_ketamine.anat.within_subject.within_subject_template`)."""

    input_spec = _WithinSubjectInputSpec
    output_spec = _WithinSubjectOutputSpec

    def _run_interface(self, runtime):
        from bids_ketamine.anat.within_subject import within_subject_template

        result = within_subject_template(list(self.inputs.t1w_files))
        cwd = Path(runtime.cwd)
        self._results["template_file"] = str(atomic_write_nifti(result.template,
                                                                cwd / "t1w_template.nii.gz"))
        xfms = []
        for index, matrix in enumerate(result.transforms):
            path = cwd / f"from-template_to-t1w{index:02d}_xfm.txt"
            text = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in np.asarray(matrix))
            xfms.append(str(atomic_write_text(path, text + "\n")))
        self._results["xfm_files"] = xfms
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


class TemplateRegistration(SimpleInterface):
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
