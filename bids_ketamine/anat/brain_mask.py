"""Template-based brain extraction of a T1w image: the template's brain mask carried into
the T1w through the registration (no model weights, nothing downloaded)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.anat.registration import TemplateTransforms, from_template
from bids_ketamine.utils.images import as_image

__all__ = ["template_brain_mask"]


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
