"""Brain and denoising masks (bids_ketamine.dwi.mask) on a phantom with a known brain."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_ketamine.dwi.mask import brain_mask, denoising_mask


@pytest.fixture(scope="module")
def head():
    """An ellipsoidal 'brain' (b=0 1000) in Rician-like background noise (sigma 20), 2 mm voxels."""
    rng = np.random.default_rng(0)
    shape = (60, 70, 50)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    inside = ((grid[0] / 20) ** 2 + (grid[1] / 25) ** 2 + (grid[2] / 16) ** 2) <= 1
    b0 = np.where(inside, 1000.0, 0.0)
    b0 = np.hypot(b0 + rng.normal(0, 20, shape), rng.normal(0, 20, shape))
    return b0, inside


def test_brain_mask_finds_the_brain(head):
    b0, inside = head
    mask = brain_mask(b0)
    dice = 2 * (mask & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.97
    # the `valid` restriction is applied
    valid = np.ones_like(inside)
    valid[:, :, :25] = False
    assert not brain_mask(b0, valid)[:, :, :25].any()


def test_denoising_mask_is_brain_plus_margin(head):
    b0, inside = head
    voxel = (2.0, 2.0, 2.0)
    mask = denoising_mask(b0, voxel, margin_mm=10.0)
    brain = brain_mask(b0)
    assert mask[brain].all()
    distance = ndimage.distance_transform_edt(~brain, sampling=voxel)
    np.testing.assert_array_equal(mask, distance <= 10.0)
    assert mask[distance <= 9.9].all() and not mask[distance > 10.0].any()
    assert 0.2 < mask.mean() < 0.6  # the point: most of the field of view is skipped


def test_denoising_mask_without_brain_keeps_everything():
    flat = np.zeros((10, 10, 10))
    assert denoising_mask(flat, (2, 2, 2)).all()
    with pytest.raises(ValueError, match="margin_mm"):
        denoising_mask(flat, (2, 2, 2), margin_mm=-1)


def test_brain_mask_interface_leaves_out_what_a_volume_did_not_see(head, tmp_path):
    """BrainMask: the brain of the mean b=0, less the voxels outside some volume's field of view
    (the motion correction's ``covered``) and those with no signal in any volume."""
    import nibabel as nib

    from bids_ketamine.interfaces.mask import BrainMask

    b0, inside = head
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    covered = np.ones(inside.shape, np.uint8)
    covered[:, :, 40:] = 0  # the top slices: out of some volume's view
    dwi = np.repeat(b0[..., None], 3, axis=-1).astype(np.float32)
    dwi[30:, :, :] = 0  # no signal in any volume
    files = {}
    for name, values in (("b0", b0.astype(np.float32)), ("covered", covered), ("dwi", dwi)):
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.Nifti1Image(values, affine).to_filename(files[name])
    result = BrainMask(b0_file=files["b0"], dwi_file=files["dwi"], covered_file=files["covered"]).run(
        cwd=str(tmp_path))
    mask = np.asarray(nib.load(result.outputs.mask_file).dataobj) > 0
    expected = brain_mask(b0, (covered > 0) & (dwi.max(axis=-1) > 0))
    assert inside[:30, :, 40:].any() and inside[30:, :, :40].any()  # both rules remove brain
    assert not mask[:, :, 40:].any() and not mask[30:].any()
    np.testing.assert_array_equal(mask, expected)
    (tmp_path / "alone").mkdir()
    alone = BrainMask(b0_file=files["b0"]).run(cwd=str(tmp_path / "alone")).outputs.mask_file
    assert (np.asarray(nib.load(alone).dataobj) > 0)[:30, :, 40:].any()
