"""MP-PCA denoising (bids_ketamine.dwi.denoise) against ground truth, DIPY and MRtrix3."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.dwi.denoise import mp_noise_components, mppca, patch2self_denoise

TRUE_SIGMA = 20.0
needs_dwidenoise = pytest.mark.skipif(shutil.which("dwidenoise") is None,
                                      reason="MRtrix3 dwidenoise not installed (apt install mrtrix3)")


@pytest.fixture(scope="module")
def phantom():
    """20x20x20 voxels x 30 volumes: a rank-3 signal plus Gaussian noise of known sigma."""
    rng = np.random.default_rng(42)
    shape, n_vol = (20, 20, 20), 30
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    maps = np.stack([1000 + 200 * grid[0], 300 * np.sin(2 * grid[1]) + 100 * grid[2],
                     200 * grid[0] * grid[2]], -1)
    profiles = np.stack([np.ones(n_vol), rng.uniform(-1, 1, n_vol), rng.uniform(-1, 1, n_vol)])
    truth = maps @ profiles
    noisy = truth + rng.normal(0, TRUE_SIGMA, truth.shape)
    denoised, sigma = mppca(noisy, patch_radius=2)
    return truth, noisy, denoised, sigma


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_sigma_matches_truth(phantom):
    _, _, _, sigma = phantom
    assert abs(np.median(sigma) / TRUE_SIGMA - 1) < 0.03
    # every voxel's estimate (edges included) within 10 % of the truth
    assert np.all(np.abs(sigma / TRUE_SIGMA - 1) < 0.10)


def test_denoising_reduces_error(phantom):
    truth, noisy, denoised, _ = phantom
    # noise RMSE 20 -> about 7 on this rank-3 phantom: at least a 2.5-fold reduction
    assert _rmse(denoised, truth) < _rmse(noisy, truth) / 2.5


def test_equivalent_to_dipy_mppca(phantom):
    from dipy.denoise.localpca import mppca as dipy_mppca

    truth, noisy, denoised, sigma = phantom
    dipy_denoised, dipy_sigma = dipy_mppca(noisy, patch_radius=2, return_sigma=True)
    # DIPY subtracts the patch mean, uses Veraart's Exp1 rule and averages overlapping patches;
    # here: centre voxel, no mean, Exp2. Noise maps agree to 2 % (median) and 8 % (every voxel),
    # the denoised series differ by less than a quarter of the noise sigma (RMS)
    ratio = sigma / dipy_sigma
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.all(np.abs(ratio - 1) < 0.08)
    assert _rmse(denoised, dipy_denoised) < 0.25 * TRUE_SIGMA
    assert _rmse(denoised, truth) < 1.15 * _rmse(dipy_denoised, truth)


def test_chunking_threads_and_mask_do_not_change_result(phantom):
    _, noisy, denoised, sigma = phantom
    small, small_sigma = mppca(noisy, chunk_voxels=50, n_threads=2)
    np.testing.assert_allclose(small, denoised, rtol=0, atol=1e-9)
    np.testing.assert_allclose(small_sigma, sigma, rtol=0, atol=1e-9)
    mask = np.zeros(noisy.shape[:3], dtype=bool)
    mask[3:15, 0:9, 5:20] = True
    masked, masked_sigma = mppca(noisy, mask=mask)
    np.testing.assert_allclose(masked[mask], denoised[mask], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(masked[~mask], noisy[~mask])
    assert np.all(masked_sigma[~mask] == 0)


def test_pure_noise_keeps_no_component():
    """Pure Gaussian noise: the MP rule classes (nearly) all components as noise."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 5.0, size=(12, 12, 12, 20))
    denoised, sigma = mppca(noise)
    assert abs(np.median(sigma) / 5.0 - 1) < 0.05
    assert _rmse(denoised, 0) < 0.5 * _rmse(noise, 0)


def test_mp_rule_on_known_spectrum():
    """Eigenvalues of an exact MP bulk with one large spike: the spike alone is signal."""
    n_patch, n_vol, sigma2 = 125, 20, 4.0
    # quantiles of the MP law (ratio 20/125) scaled to Gram eigenvalues (x n_patch)
    rng = np.random.default_rng(0)
    bulk = np.sort(np.linalg.eigvalsh(np.cov(rng.normal(0, 2.0, (n_vol, 200000)), bias=True)))
    values = np.append(bulk[:-1] * n_patch, 1e6)  # 19 noise-like values + 1 spike
    n_noise, variance = mp_noise_components(values, n_patch)
    assert n_noise == n_vol - 1
    assert abs(variance / sigma2 - 1) < 0.02


def test_input_checks():
    good = np.ones((8, 8, 8, 10))
    with pytest.raises(ValueError, match="4-D"):
        mppca(good[..., 0])
    with pytest.raises(ValueError, match="at least 5 volumes"):
        mppca(good[..., :4])
    bad = good.copy()
    bad[1, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mppca(bad)
    with pytest.raises(ValueError, match="mask shape"):
        mppca(good, mask=np.ones((8, 8, 7), bool))
    with pytest.raises(ValueError, match="patch_radius=2"):
        mppca(np.ones((8, 8, 8, 30)), patch_radius=1)
    with pytest.raises(ValueError, match="does not fit"):
        mppca(np.ones((8, 8, 3, 10)), patch_radius=2)
    with pytest.raises(ValueError, match="n_threads"):
        mppca(good, n_threads=0)
    with pytest.raises(ValueError, match="estimator"):
        mppca(good, estimator="median")


def test_patch2self_wrapper():
    rng = np.random.default_rng(1)
    bvals = np.r_[0, 0, np.full(10, 1000.0)]
    truth = np.broadcast_to(1000 * np.exp(-bvals * 0.8e-3), (10, 10, 10, 12))
    noisy = truth + rng.normal(0, 20.0, truth.shape)
    denoised, residual_std = patch2self_denoise(noisy, bvals)
    assert denoised.shape == noisy.shape and residual_std.shape == noisy.shape[:3]
    np.testing.assert_allclose(residual_std, np.std(noisy - denoised, axis=-1), rtol=1e-5)
    assert _rmse(denoised, truth) < _rmse(noisy, truth)
    with pytest.raises(ValueError, match="b-values"):
        patch2self_denoise(noisy, bvals[:-1])


@pytest.mark.mrtrix
@needs_dwidenoise
def test_identical_to_dwidenoise_on_phantom(phantom, tmp_path):
    """Same patch (-extent 5) and double precision: dwidenoise's output to rounding error."""
    _, noisy, denoised, sigma = phantom
    nib.Nifti1Image(noisy, np.eye(4)).to_filename(tmp_path / "noisy.nii")
    subprocess.run(["dwidenoise", "-quiet", "-extent", "5", "-datatype", "float64",
                    "-nthreads", "1", str(tmp_path / "noisy.nii"), str(tmp_path / "den.nii"),
                    "-noise", str(tmp_path / "noise.nii")], check=True)
    mrtrix_denoised = np.asarray(nib.load(tmp_path / "den.nii").dataobj)
    mrtrix_sigma = np.asarray(nib.load(tmp_path / "noise.nii").dataobj)  # stored as float32
    np.testing.assert_allclose(denoised, mrtrix_denoised, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigma, mrtrix_sigma, rtol=1e-5)


@pytest.mark.mrtrix
@pytest.mark.realdata
@needs_dwidenoise
def test_noise_map_agrees_with_dwidenoise_on_real_data(real_dwi, tmp_path):
    """sub-elition (17 volumes), 20 central slices, dwidenoise's default single precision."""
    from dipy.segment.mask import median_otsu

    image = nib.load(real_dwi / "sub-elition" / "ses-1" / "dwi" / "sub-elition_ses-1_dwi.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)[:, :, 30:50]
    cropped = tmp_path / "dwi.nii"
    nib.Nifti1Image(data, image.affine).to_filename(cropped)
    subprocess.run(["dwidenoise", "-quiet", "-extent", "5", "-nthreads", "2", str(cropped),
                    str(tmp_path / "den.nii"), "-noise", str(tmp_path / "noise.nii")], check=True)
    mrtrix_sigma = np.asarray(nib.load(tmp_path / "noise.nii").dataobj, dtype=float)
    _, sigma = mppca(data, patch_radius=2, n_threads=2)
    _, brain = median_otsu(data[..., 0], median_radius=2, numpass=1)
    inside = brain & (mrtrix_sigma > 0)
    relative = np.abs(sigma[inside] / mrtrix_sigma[inside] - 1)
    assert inside.sum() > 10000
    assert np.median(relative) < 0.05
