"""Brain extraction of a T1w image without model weights.

Two steps, because the offline template (nilearn's MNI152 2009) is already skull-stripped
and a whole-head T1w registered to it stretches the template brain onto the scalp:

1. :func:`rough_brain_mask`: morphology on the T1w itself (tissue brighter than CSF and
   bone, eroded to cut the thin bridges to the scalp and the neck, largest part kept,
   dilated back inside the tissue, holes filled) gives a brain-sized region;
2. the T1w masked with it is registered to the template, and
   :func:`template_brain_mask` carries the template's brain mask back into the T1w
   through that registration: the final boundary is the template's.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.anat.registration import TemplateTransforms, from_template
from bids_ketamine.utils.images import as_image

__all__ = ["rough_brain_mask", "template_brain_mask"]


#: Height of the region searched for the brain below the top of the head (mm).
BRAIN_HEIGHT_MM = 110.0


def _ball(radius_mm: float, zooms) -> np.ndarray:
    half = [int(np.ceil(radius_mm / z)) for z in zooms]
    grid = np.meshgrid(*[np.arange(-h, h + 1) * z for h, z in zip(half, zooms)], indexing="ij")
    return sum(g**2 for g in grid) <= radius_mm**2


def rough_brain_mask(t1w, *, erosion_mm: float = 5.0, tissue_level: float = 0.6,
                     working_mm: float = 2.0) -> nib.Nifti1Image:
    """A brain-sized region of a bias-corrected T1w image, from morphology alone.

    Parameters
    ----------
    t1w : path or nibabel image
        Bias-corrected T1w (whole head).
    erosion_mm : float
        Radius of the erosion that separates the brain from the scalp.
    tissue_level : float
        Tissue is above this fraction of Otsu's threshold of the head's intensities.
    working_mm : float
        The morphology runs on the image resampled to this voxel size (speed).

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask on the T1w grid.
    """
    from skimage.filters import threshold_otsu

    from bids_ketamine.anat.antsimage import checked_volume

    from nibabel.processing import resample_from_to, resample_to_output

    original = checked_volume(t1w)
    img = resample_to_output(original, voxel_sizes=float(working_mm), order=1)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    head = data > threshold_otsu(data[data > 0])
    head = ndimage.binary_fill_holes(ndimage.binary_closing(head, _ball(4.0, zooms)))
    # inside the head: tissue (GM, WM) is brighter than CSF and bone
    tissue = head & (data > threshold_otsu(data[head]) * float(tissue_level))
    core = ndimage.binary_erosion(tissue, _ball(erosion_mm, zooms))
    # the brain fills the top of the head: below it, the neck and face can be larger parts
    superior = (np.indices(data.shape).reshape(3, -1).T @ img.affine[2, :3]
                + img.affine[2, 3]).reshape(data.shape)
    core &= superior > superior[head].max() - BRAIN_HEIGHT_MM
    labels, count = ndimage.label(core)
    if count == 0:
        raise ValueError("no brain-like tissue found in the T1w (empty after erosion): "
                         "check that the image is a T1w of a head")
    sizes = ndimage.sum(core, labels, index=np.arange(1, count + 1))
    core = labels == (1 + int(np.argmax(sizes)))
    brain = ndimage.binary_dilation(core, _ball(erosion_mm + 1.0, zooms)) & head
    brain = ndimage.binary_closing(brain, _ball(3.0, zooms))
    brain = ndimage.binary_fill_holes(brain)
    back = resample_from_to(nib.Nifti1Image(brain.astype(np.float32), img.affine), original, order=1)
    return nib.Nifti1Image((np.asanyarray(back.dataobj) >= 0.5).astype(np.uint8), original.affine)


def template_brain_mask(t1w, template_mask, transforms: TemplateTransforms, *,
                        threshold: float = 0.5) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Brain mask of a T1w image from the template's brain mask.

    The template mask is resampled into the T1w with linear interpolation, which gives the
    probability-like fraction of each T1w voxel inside the warped template brain; the mask
    is that fraction >= ``threshold``, reduced to its largest connected part, holes filled.

    Parameters
    ----------
    t1w : path or nibabel image
        The T1w (its grid is the output grid).
    template_mask : path or nibabel image
        The template's brain mask (or brain probability map in [0, 1]).
    transforms : TemplateTransforms
        The T1w-to-template registration (:func:`~bids_ketamine.anat.registration.register_to_template`).
    threshold : float
        In (0, 1).

    Returns
    -------
    mask : nibabel.Nifti1Image
        uint8 brain mask on the T1w grid.
    probability : nibabel.Nifti1Image
        float32 warped template brain fraction on the T1w grid.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    t1w_img = as_image(t1w, "T1w image", require_data=True)
    template_img = as_image(template_mask, "template mask", require_data=True)
    fraction = np.clip(np.asanyarray(template_img.dataobj, dtype=np.float32), 0.0, 1.0)
    warped = from_template(nib.Nifti1Image(fraction, template_img.affine), t1w_img, transforms)
    probability = np.clip(np.asanyarray(warped.dataobj, dtype=np.float32), 0.0, 1.0)
    mask = probability >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        raise ValueError("the warped template brain mask is empty: the T1w-to-template "
                         "registration failed (check the T1w's orientation and field of view)")
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_fill_holes(mask)
    return (nib.Nifti1Image(mask.astype(np.uint8), t1w_img.affine),
            nib.Nifti1Image(probability, t1w_img.affine))
