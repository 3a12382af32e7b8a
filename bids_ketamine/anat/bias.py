"""Intensity non-uniformity (bias field) correction of a T1w image: ANTs N4."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_ketamine.anat.antsimage import checked_volume, require_ants, to_ants, to_nibabel
from bids_ketamine.utils.images import as_image

__all__ = ["bias_field_correct"]


def bias_field_correct(t1w, mask=None, *, shrink_factor: int = 4,
                       iterations: tuple = (50, 50, 50, 50)) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Correct the smooth multiplicative intensity non-uniformity of a T1w image (N4).

    Parameters
    ----------
    t1w : path or nibabel image
        3-D T1-weighted image with positive signal.
    mask : path or nibabel image, optional
        Voxels where the field is estimated (the whole head by default: N4 uses the
        voxels above Otsu's threshold of the image).
    shrink_factor : int
        The field is estimated on the image shrunk by this factor (speed).
    iterations : tuple of int
        Iterations at each of N4's fitting levels.

    Returns
    -------
    corrected : nibabel.Nifti1Image
        ``t1w / field`` (float32).
    field : nibabel.Nifti1Image
        The estimated multiplicative field (float32, mean 1 inside the head).
    """
    ants = require_ants()
    img = checked_volume(t1w)
    if int(shrink_factor) < 1:
        raise ValueError(f"shrink_factor must be >= 1, got {shrink_factor}")
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    # N4 works on the log of the intensities: zero and negative voxels are left out.
    positive = np.where(data > 0, data, 0.0).astype(np.float32)
    image = to_ants(nib.Nifti1Image(positive, img.affine))
    if mask is None:
        head = ants.get_mask(image)
    else:
        mask_img = as_image(mask, "mask", require_data=True)
        if mask_img.shape[:3] != img.shape[:3]:
            raise ValueError(f"mask shape {mask_img.shape} differs from the T1w's {img.shape}")
        head = to_ants(nib.Nifti1Image((np.asanyarray(mask_img.dataobj) > 0).astype(np.float32),
                                       img.affine))
    result = ants.n4_bias_field_correction(
        image, mask=head, shrink_factor=int(shrink_factor),
        convergence={"iters": list(iterations), "tol": 1e-7}, return_bias_field=True)
    field = to_nibabel(result)
    field_data = np.asanyarray(field.dataobj, dtype=np.float32)
    inside = to_nibabel(head).get_fdata() > 0
    field_data = field_data / max(float(np.mean(field_data[inside])), 1e-12)
    corrected = np.where(field_data > 0, positive / np.maximum(field_data, 1e-12), 0.0)
    return (nib.Nifti1Image(corrected.astype(np.float32), img.affine),
            nib.Nifti1Image(field_data.astype(np.float32), img.affine))
