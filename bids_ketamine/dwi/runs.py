"""Several DWI runs of one session as one series (``--combine-runs average``).

Each run is loaded and denoised on its own (denoising needs the run's own noise, before any
interpolation); the runs are then joined here, on the first run's grid, and motion correction
aligns every volume of every run to one reference, so the tensor is fitted to all of them.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

#: Voxel-to-world affines that differ by less than this (mm) are the same grid.
SAME_GRID_MM = 1e-3


def _rotation(affine: np.ndarray) -> np.ndarray:
    """The rotation part of a voxel-to-world affine (columns normalised)."""
    return affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)


def same_grid(first: nib.Nifti1Image, other: nib.Nifti1Image) -> bool:
    """Whether two images share their voxel grid (shape and affine)."""
    return (first.shape[:3] == other.shape[:3]
            and np.allclose(first.affine, other.affine, atol=SAME_GRID_MM))


def concatenate_runs(images: list[nib.Nifti1Image], bvals: list[np.ndarray],
                     bvecs: list[np.ndarray]) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """Join DWI runs into one 4-D series on the first run's grid.

    A run on another grid (repositioned field of view) is resampled onto the first run's
    (trilinear, after its denoising) and its gradient directions are turned with it.

    Parameters
    ----------
    images : list of Nifti1Image
        4-D runs.
    bvals : list of ndarray, shape (n_i,)
    bvecs : list of ndarray, shape (n_i, 3)
        Voxel-frame directions of each run's own grid (no FSL flip).

    Returns
    -------
    img : Nifti1Image
        float32, ``sum(n_i)`` volumes, the first run's affine and header.
    bvals : ndarray, shape (sum(n_i),)
    bvecs : ndarray, shape (sum(n_i), 3)
        Voxel-frame directions of the first run's grid.
    """
    if not images or not (len(images) == len(bvals) == len(bvecs)):
        raise ValueError("concatenate_runs needs one b-value and one b-vector table per run")
    reference = images[0]
    data, directions = [], []
    for img, run_bvals, run_bvecs in zip(images, bvals, bvecs):
        run_bvecs = np.asarray(run_bvecs, dtype=float)
        if img.ndim != 4 or img.shape[3] != len(run_bvals) or run_bvecs.shape != (len(run_bvals), 3):
            raise ValueError(f"a run of shape {img.shape} has {len(run_bvals)} b-values and "
                             f"{run_bvecs.shape} b-vectors: one of each per volume is needed")
        if same_grid(reference, img):
            data.append(np.asarray(img.dataobj, dtype=np.float32))
            directions.append(run_bvecs)
            continue
        volumes = [np.asarray(resample_from_to(img.slicer[..., v], reference.slicer[..., 0], order=1).dataobj,
                              dtype=np.float32) for v in range(img.shape[3])]
        data.append(np.stack(volumes, axis=-1))
        turn = _rotation(reference.affine).T @ _rotation(img.affine)
        directions.append(run_bvecs @ turn.T)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    joined = nib.Nifti1Image(np.concatenate(data, axis=-1), reference.affine, header)
    joined.header.set_xyzt_units("mm", "sec")
    return joined, np.concatenate([np.asarray(b, dtype=float) for b in bvals]), np.concatenate(directions)


def combine_noise_maps(noise: list[nib.Nifti1Image], reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """Root mean square of the runs' noise maps, on the reference grid (3-D)."""
    maps = []
    for img in noise:
        if not same_grid(reference, img):
            img = resample_from_to(img, reference.slicer[..., 0], order=1)
        maps.append(np.asarray(img.dataobj, dtype=np.float64) ** 2)
    return nib.Nifti1Image(np.sqrt(np.mean(maps, axis=0)).astype(np.float32), reference.affine)
