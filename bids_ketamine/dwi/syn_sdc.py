"""Fieldmap-less susceptibility-distortion correction (``--use-syn-sdc``): the field from the
subject's T1w.

Without reverse phase-encoded images or a field map, the distortion can still be estimated by
registering the distorted b=0 to an undistorted image of the same head, the T1w, with a
nonlinear registration allowed to move voxels along the phase-encoding axis only (the idea of
fMRIPrep's SyN-SDC; Wang et al., Front Neuroinform 2017;11:17, compared it with field maps on
DWI; SDCflows' ``init_syn_sdc_wf``).  Here:

1. the mean b=0 is registered rigidly to the T1w (mutual information,
   :func:`bids_ketamine.anat.dwi_to_t1w.register_b0_to_t1w`), and the T1w and its brain mask are
   resampled onto the b=0 grid (linear);
2. the T1w's contrast is inverted inside the brain (the 99th percentile minus the T1w, clipped at
   0) so that, like the b=0, CSF is bright and white matter dark;
3. ANTs SyN registers the b=0 (moving) to that image (fixed), in the images' index space so
   that the restricted axis is the voxel axis, cross-correlation radius 2, metric inside the
   T1w brain dilated by 2 voxels, three levels down to full resolution; the warp's component
   along the axis is the displacement ``s d(u)`` on the undistorted grid directly (no inversion,
   unlike :func:`bids_ketamine.dwi.sdc.pepolar_field`).

Settings (:data:`SYN_SDC_SETTINGS`), measured on the simulator's 3 mm subject (small preset,
100 Hz, seed 5, ses-pre; 2 mm T1w with its true bias divided out and its true brain; error
against the true field inside the brain, where the true displacement exceeds 1 voxel, 1.94
voxel with no correction):

============================================  =====  ==========  ==========  ======
setting                                        r      median err  err |d|>1   SyN s
============================================  =====  ==========  ==========  ======
CC on the inverted T1w, stop at half res       0.53   0.43        0.83        7
MI (Mattes) on the T1w as is, half res         0.76   0.22        0.53        6
MI on the T1w as is, full res (20 its)         0.81   0.11        0.50        6
CC inverted, full res (20 its)                 0.88   0.11        0.37        ~15
CC inverted, full res, total sigma 0.5         0.97   0.07        0.18        28
CC inverted, full res, total sigma 1           0.96   0.06        0.31        29
============================================  =====  ==========  ==========  ======

The simulator draws the T1w and the b=0 from the same tissue fractions, so the inverted T1w is
a better likeness of the b=0 than a real one is: these numbers flatter the method.  Real data
(``benchmarks/syn_sdc_real.py``) compare it with the PEPOLAR estimate of the same series.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["SYN_SDC_SETTINGS", "syn_sdc_field", "inverted_t1w_on_b0"]

#: ANTs SyN settings of :func:`syn_sdc_field` (module docstring: measurements).
SYN_SDC_SETTINGS = {"syn_metric": "CC", "syn_sampling": 2, "reg_iterations": (100, 50, 20),
                    "flow_sigma": 3.0, "total_sigma": 0.5}


def inverted_t1w_on_b0(t1w, t1w_mask, b0, t1w_to_b0: np.ndarray):
    """The T1w on the b=0 grid with a b=0-like contrast, and its brain mask there.

    Parameters
    ----------
    t1w, t1w_mask : nibabel images
        Bias-corrected T1w and its brain mask (same grid).
    b0 : nibabel image
        The b=0 whose grid the result is on.
    t1w_to_b0 : ndarray (4, 4)
        T1w world -> b=0 world (RAS mm; :func:`bids_ketamine.anat.dwi_to_t1w.register_b0_to_t1w`).

    Returns
    -------
    image : ndarray, float32
        The 99th percentile of the T1w inside the brain minus the T1w, clipped at 0, and 0
        outside the brain.
    brain : ndarray of bool
        The T1w brain mask on the b=0 grid.
    """
    from bids_ketamine.dwi.resample import resample

    grid = {"ref_shape": b0.shape[:3], "ref_affine": b0.affine, "transform": np.linalg.inv(t1w_to_b0),
            "order": 1}
    intensity = resample(np.asanyarray(t1w.dataobj, dtype=np.float32), t1w.affine, **grid)
    brain = resample((np.asanyarray(t1w_mask.dataobj) > 0).astype(np.float32), t1w_mask.affine, **grid) > 0.5
    if not brain.any():
        raise ValueError("the T1w brain mask does not overlap the b=0 after rigid registration; check the "
                         "T1w and the DWI of this session (the same participant? a failed registration?)")
    top = np.percentile(intensity[brain], 99)
    image = np.where(brain, np.clip(top - intensity, 0.0, None), 0.0).astype(np.float32)
    return image, brain


def syn_sdc_field(b0, b0_mask, t1w, t1w_mask, *, axis: int, sign: int, total_readout_time: float,
                  seed: int = 1, settings: dict | None = None) -> nib.Nifti1Image:
    """The B0 field (Hz) of a DWI series from its distorted mean b=0 and the subject's T1w.

    Parameters
    ----------
    b0 : nibabel image, 3-D
        Mean b=0 of the series (RAS+ voxel order), distorted.
    b0_mask : nibabel image
        Its brain mask (for the rigid registration).
    t1w, t1w_mask : nibabel images
        Bias-corrected T1w and its brain mask.
    axis : {0, 1, 2}
        Phase-encoding voxel axis of ``b0``.
    sign : {+1, -1}
        Its polarity (``j`` is +1, ``j-`` is -1).
    total_readout_time : float
        BIDS ``TotalReadoutTime`` (s).
    seed : int
        ANTs' random seed (:func:`bids_ketamine.anat.antsimage.seeded`).
    settings : dict, optional
        ``ants.registration`` keywords replacing those of :data:`SYN_SDC_SETTINGS`.

    Returns
    -------
    nibabel.Nifti1Image
        The field in Hz on the b=0's grid (undistorted positions), as
        :func:`bids_ketamine.dwi.sdc.pepolar_field` returns it.
    """
    from bids_ketamine.anat.antsimage import require_ants, seeded
    from bids_ketamine.anat.dwi_to_t1w import register_b0_to_t1w
    from bids_ketamine.dwi.sdc import index_space_image

    ants = require_ants()
    if axis not in (0, 1, 2) or sign not in (-1, 1):
        raise ValueError(f"axis must be 0, 1 or 2 and sign +1 or -1, got {axis}, {sign}")
    if not 0 < total_readout_time < 1:
        raise ValueError(f"total_readout_time must lie in (0, 1) s, got {total_readout_time}")
    moving_data = np.asanyarray(b0.dataobj, dtype=np.float32)
    if moving_data.ndim != 3:
        raise ValueError(f"the b=0 image must be 3-D, got shape {moving_data.shape}")
    t1w_to_b0 = register_b0_to_t1w(b0, b0_mask, t1w, t1w_mask, seed=seed)
    fixed_data, brain = inverted_t1w_on_b0(t1w, t1w_mask, b0, t1w_to_b0)
    zooms = np.sqrt((b0.affine[:3, :3] ** 2).sum(axis=0))
    head = ndimage.binary_dilation(np.asanyarray(b0_mask.dataobj) > 0, iterations=2)
    fixed = index_space_image(ants, fixed_data, zooms)
    moving = index_space_image(ants, np.where(head, moving_data, 0.0), zooms)
    metric_mask = index_space_image(ants, ndimage.binary_dilation(brain, iterations=2).astype(np.float32), zooms)
    restrict = tuple(1 if k == axis else 0 for k in range(3))
    with tempfile.TemporaryDirectory() as scratch, seeded(seed):
        result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNOnly",
                                   initial_transform="identity", restrict_transformation=restrict,
                                   mask=metric_mask, outprefix=f"{scratch}/syn_sdc_",
                                   **{**SYN_SDC_SETTINGS, **(settings or {})})
        warp = [f for f in result["fwdtransforms"] if f.endswith(".nii.gz")][0]
        displacement = np.asarray(nib.load(warp).dataobj, dtype=np.float64).reshape(fixed_data.shape + (3,))
    # the b=0 sampled at u + w(u) matches the undistorted T1w at u: w = s d(u) (mm along the axis)
    shift = displacement[..., axis] / zooms[axis]
    field = shift * sign / total_readout_time
    return nib.Nifti1Image(field.astype(np.float32), b0.affine)
