"""Loading and checking DWI series: gradient conventions and the bad-input matrix."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.dwi.gradients import (
    DwiInputError,
    dti_volumes,
    fsl_flip,
    load_dwi_series,
    shell_labels,
    shells,
)
from conftest import write_tiny_dwi


def _paths(image):
    stem = str(image).replace(".nii.gz", "")
    return image, f"{stem}.bval", f"{stem}.bvec"


def _world_directions(affine, bvecs_voxel):
    """Physical gradient directions: voxel-frame vectors through the affine's rotation."""
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    world = bvecs_voxel @ rotation.T
    norms = np.linalg.norm(world, axis=1, keepdims=True)
    return np.divide(world, norms, out=np.zeros_like(world), where=norms > 0)


@pytest.mark.parametrize("axcodes", [("L", "A", "S"), ("R", "P", "I"), ("A", "S", "R")])
def test_reorientation_keeps_physical_directions(tmp_path, axcodes):
    """A series stored in any orientation loads as RAS+ with the same physical gradients."""
    ras = write_tiny_dwi(tmp_path / "ras", "sub-01", shape=(8, 9, 10))
    img = nib.load(ras)
    from nibabel.orientations import axcodes2ornt, ornt_transform

    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    other = img.as_reoriented(transform)
    bvecs_file = np.loadtxt(str(ras).replace(".nii.gz", ".bvec")).T
    voxel_ras = bvecs_file * fsl_flip(img.affine)
    # the same physical directions in the other image's voxel frame, written the FSL way
    voxel_other = np.zeros_like(voxel_ras)
    for old_axis, (new_axis, flip) in enumerate(transform):
        voxel_other[:, int(new_axis)] = flip * voxel_ras[:, old_axis]
    folder = tmp_path / "other"
    folder.mkdir()
    other.to_filename(folder / "sub-01_dwi.nii.gz")
    np.savetxt(folder / "sub-01_dwi.bval", np.loadtxt(str(ras).replace(".nii.gz", ".bval"))[None], fmt="%g")
    np.savetxt(folder / "sub-01_dwi.bvec", (voxel_other * fsl_flip(other.affine)).T, fmt="%.6f")

    loaded = load_dwi_series(*_paths(folder / "sub-01_dwi.nii.gz"))
    assert nib.aff2axcodes(loaded.img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(loaded.img.get_fdata(), img.get_fdata(), atol=1e-4)
    np.testing.assert_allclose(_world_directions(loaded.img.affine, loaded.bvecs),
                               _world_directions(img.affine, voxel_ras), atol=1e-5)


def test_fsl_flip_follows_determinant():
    assert fsl_flip(np.diag([2.0, 2, 2, 1])).tolist() == [-1, 1, 1]
    assert fsl_flip(np.diag([-2.0, 2, 2, 1])).tolist() == [1, 1, 1]


def test_shells_and_dti_volumes():
    bvals = np.array([0, 5, 995, 1000, 1005, 2000, 3000])
    assert shell_labels(bvals).tolist() == [0, 0, 1000, 1000, 1000, 2000, 3000]
    assert shells(bvals) == {0.0: 2, 1000.0: 3, 2000.0: 1, 3000.0: 1}
    assert dti_volumes(bvals, 1500).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DwiInputError, match="raise --dti-max-bval"):
        dti_volumes(np.array([0, 3000]), 1500)


# --- the bad-input matrix (each row: the message names the file and the fix) -----------------

def test_bval_count_mismatch(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    np.savetxt(str(image).replace(".nii.gz", ".bval"), np.zeros((1, 5)), fmt="%g")
    with pytest.raises(DwiInputError, match=r"lists 5 b-values but .* 14 vectors"):
        load_dwi_series(*_paths(image))


def test_volume_count_mismatch(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    img = nib.load(image)
    nib.Nifti1Image(img.get_fdata()[..., :10], img.affine).to_filename(image)
    with pytest.raises(DwiInputError, match=r"has 10 volumes but .*\.bval' lists 14 b-values"):
        load_dwi_series(*_paths(image))


def test_zero_bvec_for_weighted_volume(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    bvec_file = str(image).replace(".nii.gz", ".bvec")
    bvecs = np.loadtxt(bvec_file)
    bvecs[:, 5] = 0
    np.savetxt(bvec_file, bvecs, fmt="%.6f")
    with pytest.raises(DwiInputError, match=r"zero or non-unit vector.*volume 5.*must have length 1"):
        load_dwi_series(*_paths(image))


def test_non_unit_bvec(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    bvec_file = str(image).replace(".nii.gz", ".bvec")
    bvecs = np.loadtxt(bvec_file)
    bvecs[:, 3] *= 2
    np.savetxt(bvec_file, bvecs, fmt="%.6f")
    with pytest.raises(DwiInputError, match="norm 2.000"):
        load_dwi_series(*_paths(image))


def test_no_b0(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01", n_b0=0, n_dirs=8)
    with pytest.raises(DwiInputError, match=r"no b=0 volume .*--b0-threshold"):
        load_dwi_series(*_paths(image))


def test_3d_image(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    img = nib.load(image)
    nib.Nifti1Image(img.get_fdata()[..., 0], img.affine).to_filename(image)
    with pytest.raises(DwiInputError, match="is 3-D but a DWI series must be 4-D"):
        load_dwi_series(*_paths(image))


def test_empty_file(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    image.write_bytes(b"")
    with pytest.raises(DwiInputError, match=r"is empty \(0 bytes\)"):
        load_dwi_series(*_paths(image))


def test_truncated_file(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    content = image.read_bytes()
    image.write_bytes(content[: len(content) // 2])
    with pytest.raises(DwiInputError, match="truncated or corrupt"):
        load_dwi_series(*_paths(image))


def test_missing_gradients(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    (tmp_path / "sub-01_dwi.bvec").unlink()
    with pytest.raises(DwiInputError, match=r"has no sub-01_dwi.bval/sub-01_dwi.bvec beside it"):
        load_dwi_series(image, tmp_path / "sub-01_dwi.bval", tmp_path / "sub-01_dwi.bvec")


def test_nan_voxels_are_zeroed_and_reported(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    img = nib.load(image)
    data = img.get_fdata().astype(np.float32)
    data[2, 3, 4, 1] = np.nan
    data[5, 5, 5, 0] = np.inf
    nib.Nifti1Image(data, img.affine).to_filename(image)
    loaded = load_dwi_series(*_paths(image))
    assert np.isfinite(loaded.img.get_fdata()).all()
    assert loaded.warnings and "2 voxel(s) with NaN or Inf" in loaded.warnings[0]


def test_gzip_of_garbage(tmp_path):
    image = write_tiny_dwi(tmp_path, "sub-01")
    image.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DwiInputError, match="cannot be read as NIfTI"):
        load_dwi_series(*_paths(image))


# --- header-only checks, shells with a tolerance, the tensor's shell (issue 14) ------------------

@pytest.mark.parametrize("compressed", [True, False])
def test_header_check_finds_truncation_without_decoding(tmp_path, compressed):
    """check_series_files reads headers and text only, yet a truncated image is an error."""
    from bids_ketamine.dwi.gradients import check_series_files

    image = write_tiny_dwi(tmp_path, "sub-01")
    if not compressed:
        plain = tmp_path / "sub-01_dwi.nii"
        nib.load(image).to_filename(plain)
        image.unlink()
        image = plain
    stem = str(image).split(".nii")[0]
    checked = check_series_files(image, f"{stem}.bval", f"{stem}.bvec")
    assert checked.img.shape[3] == 14 and not checked.img.in_memory
    content = image.read_bytes()
    image.write_bytes(content[: len(content) - 200])
    with pytest.raises(DwiInputError, match=f"'{image}' cannot be read as NIfTI.*truncated or corrupt"):
        check_series_files(image, f"{stem}.bval", f"{stem}.bvec")


def test_header_check_accepts_multimember_gzip(tmp_path):
    """A valid gzip of several members (bgzip-style) has a misleading trailer: counted, accepted."""
    from bids_ketamine.dwi.gradients import check_series_files

    image = write_tiny_dwi(tmp_path, "sub-01")
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert check_series_files(*_paths(image)).img.shape[3] == 14


def test_shells_grouped_with_a_tolerance():
    """Real b-values: UIH 928.289 and 929.75 are one shell, b=1.25 is b=0 (../shared/data/real-sdc)."""
    bvals = np.array([1.25194, 928.289, 928.289, 1.25126, 929.75, 929.75, 929.75])
    assert shells(bvals) == {0.0: 2, 930.0: 5}  # the median b-value, rounded
    # 974 and 976 straddle a 50-rounding boundary, yet are one shell
    assert shells(np.array([0, 974, 976, 2000, 2010])) == {0.0: 1, 975.0: 2, 2005.0: 2}


def test_same_shells_across_sessions():
    """The two UIH sessions' schemes (b=928.289 and b=929.75) are the same protocol."""
    from bids_ketamine.dwi.gradients import same_shells

    first = shells(np.r_[1.25194, np.full(16, 928.289)])
    second = shells(np.r_[1.25126, np.full(16, 929.75)])
    assert first == {0.0: 1, 928.0: 16} and second == {0.0: 1, 930.0: 16}
    assert same_shells(first, second)
    assert not same_shells(first, shells(np.r_[0, np.full(16, 1500.0)]))
    assert not same_shells(first, shells(np.r_[0, np.full(15, 929.0)]))


@pytest.mark.parametrize("high_b", [2000.0, 2400.0, 3000.0])
def test_single_high_shell_fitted_on_lowest_shell_with_warning(high_b):
    from bids_ketamine.dwi.gradients import dti_fit_bval

    bvals = np.r_[np.zeros(3), np.full(30, high_b) + np.linspace(-3, 3, 30)]
    fit_bval, warning = dti_fit_bval(bvals, 1500.0, "/d/sub-01_dwi.bval")
    assert fit_bval == high_b
    assert warning.startswith(f"no shell at or below --dti-max-bval 1500 in 'sub-01_dwi.bval' (shells b={high_b:g})")
    assert f"lowest shell, b={high_b:g}" in warning
    assert dti_volumes(bvals, fit_bval).tolist() == list(range(33))


def test_multishell_keeps_the_option():
    from bids_ketamine.dwi.gradients import dti_fit_bval

    bvals = np.r_[0, np.full(6, 1000.0), np.full(6, 2500.0)]
    assert dti_fit_bval(bvals, 1500.0) == (1500.0, None)
    assert dti_volumes(bvals, 1500.0).tolist() == list(range(7))
    with pytest.raises(DwiInputError, match="'x.bval' lists no diffusion-weighted volume"):
        dti_fit_bval(np.zeros(3), 1500.0, "x.bval")


def test_mean_fit_bval_averages_the_fitted_volumes_as_written():
    from bids_ketamine.dwi.gradients import mean_fit_bval

    bvals = np.r_[0, 5, np.full(4, 995.0), np.full(2, 1005.0), np.full(6, 2500.0)]
    assert mean_fit_bval(bvals, 1500.0) == pytest.approx((4 * 995 + 2 * 1005) / 6)
    assert mean_fit_bval(bvals, 2500.0) == pytest.approx((4 * 995 + 2 * 1005 + 6 * 2500) / 12)
    with pytest.raises(ValueError, match="at or below b = 500"):
        mean_fit_bval(bvals, 500.0)
