"""The unbiased within-subject T1w template of a participant scanned at several sessions.

Each session's (bias-corrected) T1w is rigidly registered to the *midpoint* of all of them
with :func:`bids_ketamine.dwi.midpoint.midpoint_space`, the algorithm of the DWI midpoint:
inverse-consistent pairwise registrations, log-Euclidean mean, so that no session is the
reference and permuting the sessions permutes the transforms and leaves the template
unchanged.  The template is the mean of the sessions resampled once into the midpoint
grid, each scaled to a common median brain intensity first (scanner gains differ between
sessions).  With one T1w the template is that image and the transform the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from bids_ketamine.anat.antsimage import checked_volume
from bids_ketamine.dwi.midpoint import midpoint_space

__all__ = ["WithinSubjectTemplate", "within_subject_template"]


@dataclass(frozen=True)
class WithinSubjectTemplate:
    """The within-subject template and where each session sits in it.

    Attributes
    ----------
    template : nibabel.Nifti1Image
        Mean of the sessions' T1w in the midpoint grid (float32).
    transforms : list of ndarray (4, 4)
        Per input (input order): the rigid map from template world (scanner RAS mm) to the
        session's world.
    """

    template: nib.Nifti1Image
    transforms: list


def _normalised(img: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    head = data[data > np.percentile(data[data > 0], 50)]
    return nib.Nifti1Image(data / max(float(np.median(head)), 1e-12), img.affine)


def within_subject_template(t1ws, *, factors=(8, 4, 2), voxel_size: float | None = None
                            ) -> WithinSubjectTemplate:
    """Unbiased within-subject template of a participant's T1w images.

    Parameters
    ----------
    t1ws : sequence of paths or nibabel images
        One bias-corrected T1w per session (at least one).
    factors : sequence of 3 int
        Pyramid factors of the rigid registrations (coarse to fine; the finest level at
        half the T1w's resolution is enough for a rigid fit and four times cheaper).
    voxel_size : float, optional
        Voxel size of the template grid (the finest input voxel size by default).

    Returns
    -------
    WithinSubjectTemplate
    """
    images = [checked_volume(img, f"T1w image {k + 1}") for k, img in enumerate(t1ws)]
    if not images:
        raise ValueError("within_subject_template needs at least one T1w image")
    if len(images) == 1:
        return WithinSubjectTemplate(template=images[0], transforms=[np.eye(4)])
    result = midpoint_space([_normalised(img) for img in images], factors=tuple(factors),
                            voxel_size=voxel_size)
    return WithinSubjectTemplate(template=result.template, transforms=list(result.transforms))
