"""Tensor fitting (bids_ketamine.dwi.tensor) against closed form, DIPY and MRtrix3."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.dwi.tensor import TensorFit, fit_tensor

needs_mrtrix = pytest.mark.skipif(
    shutil.which("dwi2tensor") is None or shutil.which("tensor2metric") is None,
    reason="MRtrix3 dwi2tensor/tensor2metric not installed (apt install mrtrix3)")


def _gradients(rng, n_b0=6, n_dirs=64, bval=1000.0):
    dirs = rng.normal(size=(n_dirs, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, bval) + rng.uniform(-5, 5, n_dirs)]
    return bvals, np.vstack([np.zeros((n_b0, 3)), dirs])


@pytest.fixture(scope="module")
def tensors():
    """Known tensors (eigenvalues in mm^2/s, random orientations) on a 16x16x12 grid."""
    rng = np.random.default_rng(0)
    shape = (16, 16, 12)
    evals = np.sort(np.stack([rng.uniform(1.2, 1.9, shape), rng.uniform(0.3, 0.7, shape),
                              rng.uniform(0.2, 0.6, shape)], -1), axis=-1)[..., ::-1] * 1e-3
    rotations = np.linalg.qr(rng.normal(size=shape + (3, 3)))[0]
    tensor = np.einsum("...ij,...j,...kj->...ik", rotations, evals, rotations)
    bvals, bvecs = _gradients(rng)
    s0 = rng.uniform(800, 1200, shape)
    signal = s0[..., None] * np.exp(-bvals * np.einsum("ni,...ij,nj->...n", bvecs, tensor, bvecs))
    noisy = np.abs(signal + rng.normal(0, 25.0, signal.shape))
    noisy[0, 0, 0, 8] = 0.0  # a zero sample (clipped to DIPY's minimum signal)
    return dict(evals=evals, rotations=rotations, s0=s0, signal=signal, noisy=noisy,
                bvals=bvals, bvecs=bvecs)


@pytest.mark.parametrize("method", ["wls", "ols"])
def test_noise_free_tensors_recovered(tensors, method):
    fit = fit_tensor(tensors["signal"], tensors["bvals"], tensors["bvecs"], method=method)
    true_um = tensors["evals"] * 1000  # um^2/ms
    np.testing.assert_allclose(fit.evals, true_um, rtol=1e-6)
    np.testing.assert_allclose(fit.md, true_um.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(fit.ad, true_um[..., 0], rtol=1e-6)
    np.testing.assert_allclose(fit.rd, true_um[..., 1:].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(fit.s0, tensors["s0"], rtol=1e-6)
    e1, e2, e3 = np.moveaxis(true_um, -1, 0)
    fa = np.sqrt(0.5 * ((e1 - e2) ** 2 + (e2 - e3) ** 2 + (e3 - e1) ** 2) / (e1**2 + e2**2 + e3**2))
    np.testing.assert_allclose(fit.fa, fa, rtol=1e-6)
    # principal eigenvector = first column of the rotation (up to sign)
    cosine = np.abs(np.einsum("...i,...i", fit.evecs[..., :, 0], tensors["rotations"][..., :, 0]))
    np.testing.assert_allclose(cosine, 1.0, atol=1e-6)


@pytest.mark.parametrize("method", ["WLS", "OLS"])
def test_linear_fits_equal_dipy(tensors, method):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(tensors["bvals"], bvecs=tensors["bvecs"])
    data = tensors["noisy"].copy()
    data[0, 0, 0] = 0.0  # a signal-free voxel, a dropped-out volume
    data[1, 1, 1, 3] = 0.0
    data[2, 2, 2, ::2] = 0.0  # garbage: weights spanning > 1e8, DIPY's pseudo-inverse path
    data[3, 3, 3, 1:6] = 0.0
    mask = np.ones(data.shape[:3], dtype=bool)
    mask[5, 5, :] = False
    reference = TensorModel(gtab, fit_method=method, return_S0_hat=True).fit(data, mask=mask)
    fit = fit_tensor(data, tensors["bvals"], tensors["bvecs"], mask=mask, method=method,
                     n_threads=2, chunk_voxels=500)
    for name in ("md", "ad", "rd"):  # DIPY's mm^2/s -> um^2/ms
        np.testing.assert_allclose(getattr(fit, name), 1000 * getattr(reference, name), rtol=1e-6)
    np.testing.assert_allclose(fit.evals, 1000 * reference.evals, rtol=1e-6)
    np.testing.assert_allclose(fit.fa, reference.fa, rtol=1e-6)
    np.testing.assert_allclose(fit.s0, reference.S0_hat, rtol=1e-6)
    assert np.all(fit.md[~mask] == 0)


def test_units_are_um2_per_ms(tensors):
    fit = fit_tensor(tensors["signal"], tensors["bvals"], tensors["bvecs"])
    # white/grey-matter-like tensors: MD ~ 0.5-1.0 um^2/ms, not 5e-4 (mm^2/s)
    assert 0.4 < np.median(fit.md) < 1.1


def test_record_and_volume_selection(tensors):
    bvals = np.r_[tensors["bvals"], np.full(4, 3000.0)]
    bvecs = np.r_[tensors["bvecs"], tensors["bvecs"][-4:]]
    data = np.concatenate([tensors["signal"], tensors["signal"][..., -4:] * 0.3], axis=-1)
    fit = fit_tensor(data, bvals, bvecs, max_bval=1500)
    assert isinstance(fit, TensorFit) and fit.method == "wls"
    assert fit.volumes == tuple(range(tensors["bvals"].size))
    np.testing.assert_allclose(fit.md, tensors["evals"].mean(-1) * 1000, rtol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.md = None


def test_memory_layout_and_volume_subset_do_not_change_result(tensors):
    """Fortran-ordered series (as nibabel returns them) are read volume by volume."""
    data = tensors["noisy"]
    volumes = np.arange(0, data.shape[-1], 2)
    reference = fit_tensor(np.ascontiguousarray(data[..., volumes]), tensors["bvals"][volumes],
                           tensors["bvecs"][volumes])
    fortran = np.asfortranarray(np.concatenate([data, data[..., :4]], axis=-1))
    bvals = np.r_[tensors["bvals"], np.full(4, 3000.0)]  # a b=3000 shell, excluded by max_bval
    bvecs = np.r_[tensors["bvecs"], tensors["bvecs"][4:8] * 0 + [1.0, 0, 0]]
    subset = fit_tensor(fortran[..., volumes], bvals[volumes], bvecs[volumes])
    np.testing.assert_array_equal(subset.md, reference.md)
    full = fit_tensor(fortran, bvals, bvecs, max_bval=1500)
    np.testing.assert_allclose(full.md, fit_tensor(data, tensors["bvals"], tensors["bvecs"]).md,
                               rtol=1e-12)


def test_nlls_and_restore_call_dipy(tensors):
    subset = tensors["signal"][:4, :4, :2]
    for method in ("nlls", "restore"):
        fit = fit_tensor(subset, tensors["bvals"], tensors["bvecs"], method=method, sigma=25.0)
        np.testing.assert_allclose(fit.md, tensors["evals"][:4, :4, :2].mean(-1) * 1000, rtol=1e-4)


def test_input_checks(tensors):
    data, bvals, bvecs = tensors["signal"], tensors["bvals"], tensors["bvecs"]
    with pytest.raises(ValueError, match="one b-value"):
        fit_tensor(data, bvals[:-1], bvecs)
    with pytest.raises(ValueError, match="unit vectors"):
        fit_tensor(data, bvals, bvecs * 2)
    with pytest.raises(ValueError, match="method"):
        fit_tensor(data, bvals, bvecs, method="dki")
    with pytest.raises(ValueError, match="mask shape"):
        fit_tensor(data, bvals, bvecs, mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="does not determine a tensor"):
        fit_tensor(data[..., :8], bvals[:8], bvecs[:8])


@pytest.mark.mrtrix
@pytest.mark.realdata
@needs_mrtrix
def test_md_agrees_with_dwi2tensor_on_real_data(real_dwi, tmp_path):
    from dipy.segment.mask import median_otsu

    folder = real_dwi / "sub-elition" / "ses-1" / "dwi"
    stem = folder / "sub-elition_ses-1_dwi"
    image = nib.load(f"{stem}.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    bvals = np.loadtxt(f"{stem}.bval")
    bvecs = np.loadtxt(f"{stem}.bvec").T
    _, mask = median_otsu(data[..., bvals < 50].mean(-1), median_radius=2, numpass=1)
    mask_file = tmp_path / "mask.nii"
    nib.Nifti1Image(mask.astype(np.uint8), image.affine).to_filename(mask_file)
    subprocess.run(["dwi2tensor", "-quiet", "-nthreads", "2", "-mask", str(mask_file),
                    "-fslgrad", f"{stem}.bvec", f"{stem}.bval", f"{stem}.nii.gz",
                    str(tmp_path / "dt.mif")], check=True)
    subprocess.run(["tensor2metric", "-quiet", "-mask", str(mask_file), "-adc",
                    str(tmp_path / "md.nii"), str(tmp_path / "dt.mif")], check=True)
    mrtrix_md = np.asarray(nib.load(tmp_path / "md.nii").dataobj, dtype=float) * 1000  # mm^2/s
    fit = fit_tensor(data, bvals, bvecs, mask=mask, n_threads=2)
    valid = mask & (mrtrix_md > 0) & (fit.md > 0)
    assert valid.sum() > 50000
    assert abs(np.median(fit.md[valid]) - 0.80) < 0.05  # README: MD ~ 0.80 um^2/ms
    assert np.median(np.abs(fit.md[valid] / mrtrix_md[valid] - 1)) < 0.01
