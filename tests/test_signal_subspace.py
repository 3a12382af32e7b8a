"""The compiled MP-PCA eigen-kernel (bids_ketamine.dwi.signal_subspace) against numpy.linalg.eigh."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.dwi.denoise import mp_noise_components, mppca
from bids_ketamine.dwi.signal_subspace import HAVE_NUMBA, signal_decomposition

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed (pip install numba)")


def _gram(rng, count, n_vol, n_patch, rank, scale=3.0):
    """Patch Gram matrices X X^T of a rank-``rank`` signal plus unit Gaussian noise."""
    signal = rng.normal(size=(count, n_vol, rank)) @ rng.normal(size=(count, rank, n_patch)) * scale
    patches = signal + rng.normal(size=(count, n_vol, n_patch))
    return patches @ patches.transpose(0, 2, 1)


def _projector(vectors, n_noise):
    """Projector on the span of the signal columns (k >= n_noise) of each matrix."""
    columns = np.arange(vectors.shape[-1])
    kept = np.where(columns[None, None, :] >= n_noise[:, None, None], vectors, 0.0)
    return kept @ kept.transpose(0, 2, 1)


@pytest.mark.parametrize(("n_vol", "n_patch", "rank"), [(6, 27, 2), (17, 27, 4), (70, 125, 8)])
def test_same_eigenvalues_and_signal_subspace_as_eigh(n_vol, n_patch, rank):
    rng = np.random.default_rng(n_vol)
    gram = _gram(rng, 200, n_vol, n_patch, rank)
    gram_before = gram.copy()

    def split(values):
        return mp_noise_components(values, n_patch)

    n_noise, variance, vectors = signal_decomposition(gram, split, use_numba=True)
    np.testing.assert_array_equal(gram, gram_before)  # input left alone
    ref_values, ref_vectors = np.linalg.eigh(gram, UPLO="L")
    ref_noise, ref_variance = split(ref_values)
    np.testing.assert_array_equal(n_noise, ref_noise)
    np.testing.assert_allclose(variance, ref_variance, rtol=1e-10)
    assert np.median(n_noise) == n_vol - rank  # the MP rule finds the planted rank (mostly)
    np.testing.assert_allclose(_projector(vectors, n_noise), _projector(ref_vectors, n_noise),
                               rtol=0, atol=1e-9)
    # the noise eigenvectors are not computed (left at 0); the signal ones are orthonormal
    for matrix_vectors, noise in zip(vectors, n_noise):
        assert not np.any(matrix_vectors[:, :noise])
        signal = matrix_vectors[:, noise:]
        np.testing.assert_allclose(signal.T @ signal, np.eye(n_vol - noise), atol=1e-12)


def test_edge_cases_no_noise_all_noise_and_split_tridiagonal():
    rng = np.random.default_rng(1)
    n_vol = 12
    gram = _gram(rng, 3, n_vol, 30, 3)
    # a block-diagonal matrix: its tridiagonal form splits, handled by the dstemr fallback
    block = _gram(rng, 2, 6, 30, 2)
    gram[2] = 0.0
    gram[2, :6, :6] = block[0]
    gram[2, 6:, 6:] = block[1] * 5.0
    wanted = np.array([0, n_vol, 7])  # no noise (untouched), all noise, 7 noise components

    n_noise, _, vectors = signal_decomposition(gram, lambda values: (wanted, None), use_numba=True)
    np.testing.assert_array_equal(n_noise, wanted)
    assert not np.any(vectors[0]) and not np.any(vectors[1])
    ref_vectors = np.linalg.eigh(gram[2:], UPLO="L")[1]
    np.testing.assert_allclose(_projector(vectors[2:], wanted[2:]),
                               _projector(ref_vectors, wanted[2:]), atol=1e-9)


def test_mppca_same_result_with_and_without_kernel():
    rng = np.random.default_rng(5)
    shape, n_vol = (14, 13, 12), 30
    maps = rng.uniform(500, 1500, size=shape + (3,))
    profiles = np.stack([np.ones(n_vol), rng.uniform(-1, 1, n_vol), rng.uniform(-1, 1, n_vol)])
    noisy = maps @ profiles + rng.normal(0, 20.0, shape + (n_vol,))
    fast, fast_sigma = mppca(noisy, patch_radius=2, n_threads=2, use_numba=True)
    slow, slow_sigma = mppca(noisy, patch_radius=2, n_threads=2, use_numba=False)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fast_sigma, slow_sigma, rtol=1e-10)
    assert abs(np.median(fast_sigma) / 20.0 - 1) < 0.05  # and it does denoise


def test_rejects_non_square_input():
    with pytest.raises(ValueError, match="square"):
        signal_decomposition(np.zeros((2, 3, 4)), lambda values: (np.zeros(2, int), None))
