"""Nonlinear registration of a T1w image to the template (ANTs SyN), written as files.

The transforms follow the ANTs/ITK convention (physical coordinates in LPS millimetres):

* ``affine`` (``*_desc-affine_xfm.mat``, ITK MatrixOffsetTransform) and ``warp``
  (``*_desc-warp_xfm.nii.gz``, a displacement field on the template grid) map *template*
  points to *T1w* points: a point ``x`` of the template is at ``affine(warp(x))`` in the
  T1w.  Resampling the T1w into the template therefore applies ``[warp, affine]`` (ANTs
  order: last listed applied first to the points).
* ``inverse_warp`` (``*_desc-inversewarp_xfm.nii.gz``) with the inverted affine maps T1w
  points to template points; resampling a template image into the T1w applies
  ``[affine (inverted), inverse_warp]``.

The sidecar (:func:`transform_sidecar`) states this in words and lists the files.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_ketamine.anat.antsimage import checked_volume, require_ants, seeded, to_ants, to_nibabel
from bids_ketamine.utils.atomic import atomic_copy, atomic_write_nifti, atomic_write_text
from bids_ketamine.utils.images import as_image

__all__ = ["TemplateTransforms", "register_to_template", "to_template", "from_template",
           "transform_sidecar"]

#: Margin kept around the T1w brain mask when the T1w is cut to it before registering (mm).
T1W_MASK_MARGIN_MM = 6.0

#: SyN iterations per level (coarse to fine: 8, 4 and 2 mm at the default 2-mm resolution).
#: ANTsPy's default ``(40, 20, 0)`` skips the finest level; its 10 iterations placed the ROIs
#: better on the simulator (mean Dice with the true labels 0.72 -> 0.76 in BA10_R, 0.71 -> 0.73
#: in the vACC; 3 mm, 6 subjects) for 20 s more per participant (docs/anatomy.md).
SYN_ITERATIONS = (40, 20, 10)

#: Interpolators accepted by :func:`to_template` and :func:`from_template`.
INTERPOLATORS = ("linear", "nearestNeighbor", "bSpline", "genericLabel")


@dataclass(frozen=True)
class TemplateTransforms:
    """The files of one T1w-to-template registration.

    Attributes
    ----------
    affine, warp, inverse_warp : Path
        See the module docstring for the convention.
    """

    affine: Path
    warp: Path
    inverse_warp: Path

    @property
    def to_template(self) -> list[str]:
        """ANTs transform list resampling T1w-space images into the template."""
        return [str(self.warp), str(self.affine)]

    @property
    def from_template(self) -> tuple[list[str], list[bool]]:
        """ANTs transform list (and which to invert) resampling template images into the T1w."""
        return [str(self.affine), str(self.inverse_warp)], [True, False]


def register_to_template(t1w, template_t1w, output_prefix, *, template_mask=None,
                         t1w_mask=None, transform: str = "SyN", resolution_mm: float | None = 2.0,
                         seed: int = 1) -> TemplateTransforms:
    """Register a T1w image to the template: affine, then symmetric diffeomorphic (SyN,
    :data:`SYN_ITERATIONS`).

    Parameters
    ----------
    t1w : path or nibabel image
        Bias-corrected T1w (whole head or brain).
    template_t1w : path or nibabel image
        The template's T1w (fixed image: the warp lives on its grid).
    output_prefix : path
        ``<prefix>desc-affine_xfm.mat``, ``<prefix>desc-warp_xfm.nii.gz`` and
        ``<prefix>desc-inversewarp_xfm.nii.gz`` are written (atomically).
    template_mask : path or nibabel image, optional
        Template brain mask: the similarity is measured inside it (dilated by 2 voxels).
    t1w_mask : path or nibabel image, optional
        Region of the T1w that holds the brain
        (:func:`~bids_ketamine.anat.brain_mask.rough_brain_mask`): the T1w is cut to it,
        dilated by :data:`T1W_MASK_MARGIN_MM`, before registering, so that a skull-stripped
        template is not stretched onto the scalp.
    transform : {"SyN", "SyNRA", "Affine"}
        ANTsPy ``type_of_transform``; ``"Affine"`` writes an identity warp.
    resolution_mm : float or None
        Both images are resampled to this voxel size before registering (the warp lives on
        the template at this resolution; 2 mm is 8 times cheaper than 1 mm and enough for
        brain extraction and for placing 2-3 mm DWI ROIs); None keeps the images' own grids.
    seed : int
        ANTs' random seed (sampling of the affine metric): the same inputs give the same
        transforms.

    Returns
    -------
    TemplateTransforms
    """
    ants = require_ants()
    if transform not in ("SyN", "SyNRA", "Affine"):
        raise ValueError(f"transform must be 'SyN', 'SyNRA' or 'Affine', got {transform!r}")
    if resolution_mm is not None and not 0.5 <= float(resolution_mm) <= 4.0:
        raise ValueError(f"resolution_mm must lie in [0.5, 4] mm (or None), got {resolution_mm}")
    moving_img = checked_volume(t1w)
    if t1w_mask is not None:
        moving_img = _cut_to_mask(moving_img, t1w_mask)
    moving = _at_resolution(ants, to_ants(moving_img), resolution_mm, 0)
    fixed = _at_resolution(ants, to_ants(checked_volume(template_t1w, "template T1w")),
                           resolution_mm, 0)
    kwargs = {}
    if template_mask is not None:
        mask = as_image(template_mask, "template mask", require_data=True)
        mask_image = to_ants(nib.Nifti1Image((np.asanyarray(mask.dataobj) > 0).astype(np.float32),
                                             mask.affine))
        mask_image = ants.resample_image_to_target(mask_image, fixed, interp_type="nearestNeighbor")
        kwargs["mask"] = ants.iMath(mask_image, "MD", 2)
    prefix = str(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(prefix).parent) as scratch, seeded(seed):
        result = ants.registration(fixed=fixed, moving=moving, type_of_transform=transform,
                                   reg_iterations=SYN_ITERATIONS, outprefix=str(Path(scratch) / "reg_"),
                                   **kwargs)
        affine = [f for f in result["fwdtransforms"] if f.endswith(".mat")][0]
        warps = [f for f in result["fwdtransforms"] if f.endswith(".nii.gz")]
        inverse = [f for f in result["invtransforms"] if f.endswith(".nii.gz")]
        out = TemplateTransforms(affine=Path(prefix + "desc-affine_xfm.mat"),
                                 warp=Path(prefix + "desc-warp_xfm.nii.gz"),
                                 inverse_warp=Path(prefix + "desc-inversewarp_xfm.nii.gz"))
        atomic_copy(affine, out.affine)
        if warps:
            atomic_copy(warps[0], out.warp)
            atomic_copy(inverse[0], out.inverse_warp)
        else:  # affine only: identity displacement fields keep the file set the same
            _identity_warp(fixed, out.warp)
            atomic_copy(out.warp, out.inverse_warp)
    return out


def _cut_to_mask(img: nib.Nifti1Image, mask) -> nib.Nifti1Image:
    """``img`` set to 0 farther than :data:`T1W_MASK_MARGIN_MM` from ``mask``."""
    from scipy import ndimage

    mask_img = as_image(mask, "T1w brain mask", require_data=True)
    if mask_img.shape[:3] != img.shape[:3]:
        raise ValueError(f"T1w brain mask shape {mask_img.shape} differs from the T1w's {img.shape}")
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    distance = ndimage.distance_transform_edt(np.asanyarray(mask_img.dataobj) == 0, sampling=zooms)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    return nib.Nifti1Image(np.where(distance <= T1W_MASK_MARGIN_MM, data, 0.0).astype(np.float32),
                           img.affine)


def _at_resolution(ants, image, resolution_mm, interpolation: int):
    """``image`` resampled to isotropic ``resolution_mm`` voxels (unchanged when None)."""
    if resolution_mm is None:
        return image
    if np.allclose(image.spacing, resolution_mm, atol=1e-3):
        return image
    return ants.resample_image(image, (float(resolution_mm),) * 3, use_voxels=False,
                               interp_type=interpolation)


def _identity_warp(fixed, path: Path) -> None:
    """A zero displacement field on ``fixed``'s grid (ITK vector image, NIfTI intent 1007)."""
    img = to_nibabel(fixed)
    data = np.zeros(img.shape[:3] + (1, 3), dtype=np.float32)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_intent("vector")
    atomic_write_nifti(out, path)


def _apply(image, reference, transforms, invert, interpolation):
    ants = require_ants()
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATORS)}, got {interpolation!r}")
    img = as_image(image, require_data=True)
    ref = as_image(reference, "reference", require_data=True)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"only 3-D images can be warped, got shape {data.shape}")
    moved = ants.apply_transforms(fixed=to_ants(nib.Nifti1Image(np.zeros(ref.shape[:3], np.float32),
                                                                ref.affine)),
                                  moving=to_ants(nib.Nifti1Image(data, img.affine)),
                                  transformlist=transforms, whichtoinvert=invert,
                                  interpolator=interpolation)
    return to_nibabel(moved)


def to_template(image, template_reference, transforms: TemplateTransforms, *,
                interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample a T1w-space image onto a template-space grid (``template_reference``)."""
    return _apply(image, template_reference, transforms.to_template, [False, False], interpolation)


def from_template(image, t1w_reference, transforms: TemplateTransforms, *,
                  interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample a template-space image onto a T1w-space grid (``t1w_reference``)."""
    files, invert = transforms.from_template
    return _apply(image, t1w_reference, files, invert, interpolation)


def transform_sidecar(transforms: TemplateTransforms, space: str, path, *,
                      transform: str = "SyN") -> Path:
    """Write the JSON sidecar that states the transforms' convention (atomically)."""
    content = {
        "Convention": "ANTs/ITK: physical coordinates in LPS millimetres",
        "FromSpace": "T1w",
        "ToSpace": space,
        "Files": {"affine": transforms.affine.name, "warp": transforms.warp.name,
                  "inverse_warp": transforms.inverse_warp.name},
        "PointMapping": "a template point x lies at affine(warp(x)) in the T1w; "
                        "a T1w point y lies at inverse_warp(affine^-1(y)) in the template",
        "ResampleT1wIntoTemplate": "antsApplyTransforms -r template -t warp -t affine "
                                   "(ANTsPy transformlist=[warp, affine])",
        "ResampleTemplateIntoT1w": "antsApplyTransforms -r T1w -t [affine,1] -t inverse_warp "
                                   "(ANTsPy transformlist=[affine, inverse_warp], "
                                   "whichtoinvert=[True, False])",
        "Software": "ANTsPy (antspyx) registration, type_of_transform " + transform
                    + ("" if transform == "Affine" else f", reg_iterations {list(SYN_ITERATIONS)}"),
    }
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n")
