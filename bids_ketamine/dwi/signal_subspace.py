"""Eigenvalues and signal eigenvectors of many small symmetric matrices (the MP-PCA kernel).

MP-PCA needs, for every patch Gram matrix ``G`` (``N x N``), *all* its eigenvalues (to find the
Marchenko-Pastur noise edge) but only the eigenvectors of the few signal components above it.
:func:`numpy.linalg.eigh` computes every eigenvector (LAPACK ``dsyevd``: about 400 us for a
70 x 70 matrix here), which is most of the denoising time. This module splits the problem into
the LAPACK steps it is made of and skips the unneeded work:

1. ``dsytrd``: Householder reduction of ``G`` to a tridiagonal ``T = Q^T G Q`` (``Q`` kept as
   reflectors);
2. ``dsterf``: all eigenvalues of ``T`` (= those of ``G``), without vectors;
3. the caller splits them into noise and signal (:func:`~bids_ketamine.dwi.denoise.mp_noise_components`);
4. ``dstein``: eigenvectors of ``T`` for the ``p`` signal eigenvalues only, by inverse iteration
   (``dstemr`` when ``T`` splits into blocks or ``dstein`` does not converge);
5. ``dormtr``: back-transformation ``V = Q Z`` of those ``p`` vectors.

For ``N = 70`` and a handful of signal components this takes about 150-200 us instead of 400 us,
with the same eigenvalues and the same signal subspace to rounding error (``tests/test_signal_subspace.py``
compares both paths). The LAPACK routines are SciPy's (``scipy.linalg.cython_lapack``), called
from loops compiled by Numba (``nogil``, so the caller's threads run them in parallel). Without
Numba, :func:`signal_decomposition` falls back to :func:`numpy.linalg.eigh`.
"""

from __future__ import annotations

import numpy as np

from bids_ketamine.utils.jit import HAVE_NUMBA, compile_kernel

if HAVE_NUMBA:
    import llvmlite.binding as llvm
    from numba import types
    from numba.extending import get_cython_function_address

__all__ = ["HAVE_NUMBA", "signal_decomposition"]


def _lapack(name, n_args):
    """``scipy.linalg.cython_lapack.<name>`` as a Numba external function (every argument a
    pointer), bound by symbol name so that the compiled kernels can be cached on disk."""
    symbol = f"bids_ketamine_{name}"
    llvm.add_symbol(symbol, get_cython_function_address("scipy.linalg.cython_lapack", name))
    return types.ExternalFunction(symbol, types.void(*([types.voidptr] * n_args)))


if HAVE_NUMBA:
    _dsytrd = _lapack("dsytrd", 10)
    _dsterf = _lapack("dsterf", 4)
    _dstein = _lapack("dstein", 13)
    _dstemr = _lapack("dstemr", 21)
    _dormtr = _lapack("dormtr", 13)

    @compile_kernel
    def _tridiagonal_eigenvalues(matrices):  # pragma: no cover - compiled
        """Reduce each matrix to tridiagonal form in place; return its eigenvalues and ``T``.

        ``matrices`` (m, N, N), C order, lower triangle filled (= the upper triangle of the
        column-major matrix LAPACK sees). Returns eigenvalues (ascending), the diagonal and
        off-diagonal of ``T`` and the reflector scalars ``tau``; the reflectors overwrite
        ``matrices``.
        """
        count, n, _ = matrices.shape
        upper = np.array([ord("U")], dtype=np.uint8)
        order = np.array([n], dtype=np.int32)
        info = np.zeros(1, dtype=np.int32)
        lwork = np.array([16 * n], dtype=np.int32)
        work = np.empty(16 * n)
        diagonal = np.empty((count, n))
        off_diagonal = np.zeros((count, n))
        tau = np.zeros((count, n))
        eigenvalues = np.empty((count, n))
        scratch = np.empty(n)
        status = np.zeros(count, dtype=np.int32)
        for i in range(count):
            _dsytrd(upper.ctypes, order.ctypes, matrices[i].ctypes, order.ctypes,
                    diagonal[i].ctypes, off_diagonal[i].ctypes, tau[i].ctypes, work.ctypes,
                    lwork.ctypes, info.ctypes)
            eigenvalues[i, :] = diagonal[i]
            scratch[:] = off_diagonal[i]
            _dsterf(order.ctypes, eigenvalues[i].ctypes, scratch.ctypes, info.ctypes)
            status[i] = info[0]
        return eigenvalues, diagonal, off_diagonal, tau, status

    @compile_kernel
    def _signal_eigenvectors(reflectors, diagonal, off_diagonal, tau, eigenvalues, n_noise):  # pragma: no cover
        """Eigenvectors of the eigenvalues ``n_noise[i]:`` of each matrix; noise columns are 0.

        Returns (m, N, N) arrays in :func:`numpy.linalg.eigh`'s layout (column ``k`` is the
        eigenvector of the ``k``-th smallest eigenvalue) and a status per matrix (0: ok).
        """
        count, n, _ = reflectors.shape
        out = np.zeros((count, n, n))
        status = np.zeros(count, dtype=np.int32)
        order = np.array([n], dtype=np.int32)
        n_wanted = np.zeros(1, dtype=np.int32)
        info = np.zeros(1, dtype=np.int32)
        # dstein: one block (checked below), inverse iteration from the dsterf eigenvalues
        block = np.ones(n, dtype=np.int32)
        split = np.zeros(n, dtype=np.int32)
        split[0] = n
        wanted = np.empty(n)
        vectors = np.empty(n * n)
        work = np.empty(18 * n)
        iwork = np.empty(10 * n, dtype=np.int32)
        failed = np.empty(n, dtype=np.int32)
        # dstemr (fallback)
        job_vectors = np.array([ord("V")], dtype=np.uint8)
        by_index = np.array([ord("I")], dtype=np.uint8)
        lower_value = np.zeros(1)
        upper_value = np.zeros(1)
        first = np.zeros(1, dtype=np.int32)
        last = np.array([n], dtype=np.int32)
        n_found = np.zeros(1, dtype=np.int32)
        support = np.empty(2 * n, dtype=np.int32)
        try_accuracy = np.ones(1, dtype=np.int32)
        lwork_mr = np.array([18 * n], dtype=np.int32)
        liwork_mr = np.array([10 * n], dtype=np.int32)
        diag_copy = np.empty(n)
        off_copy = np.empty(n)
        # dormtr: unblocked back-transformation (lwork = number of columns)
        left = np.array([ord("L")], dtype=np.uint8)
        upper = np.array([ord("U")], dtype=np.uint8)
        no_transpose = np.array([ord("N")], dtype=np.uint8)
        lwork_or = np.zeros(1, dtype=np.int32)
        safe = np.finfo(np.float64).eps
        for i in range(count):
            noise = n_noise[i]
            n_signal = n - noise
            if noise == 0 or n_signal == 0:
                continue  # nothing to denoise (0 noise components) or everything is noise
            n_wanted[0] = n_signal
            splits = False
            for k in range(n - 1):
                if off_diagonal[i, k] ** 2 <= safe * safe * abs(diagonal[i, k] * diagonal[i, k + 1]):
                    splits = True
                    break
            info[0] = 1
            if not splits:
                wanted[:n_signal] = eigenvalues[i, noise:]
                _dstein(order.ctypes, diagonal[i].ctypes, off_diagonal[i].ctypes, n_wanted.ctypes,
                        wanted.ctypes, block.ctypes, split.ctypes, vectors.ctypes, order.ctypes,
                        work.ctypes, iwork.ctypes, failed.ctypes, info.ctypes)
            if info[0] != 0:
                diag_copy[:] = diagonal[i]
                off_copy[:] = off_diagonal[i]
                off_copy[n - 1] = 0.0
                first[0] = noise + 1
                try_accuracy[0] = 1
                _dstemr(job_vectors.ctypes, by_index.ctypes, order.ctypes, diag_copy.ctypes,
                        off_copy.ctypes, lower_value.ctypes, upper_value.ctypes, first.ctypes,
                        last.ctypes, n_found.ctypes, wanted.ctypes, vectors.ctypes, order.ctypes,
                        order.ctypes, support.ctypes, try_accuracy.ctypes, work.ctypes,
                        lwork_mr.ctypes, iwork.ctypes, liwork_mr.ctypes, info.ctypes)
                if info[0] != 0 or n_found[0] != n_signal:
                    status[i] = 1
                    continue
            lwork_or[0] = n_signal
            _dormtr(left.ctypes, upper.ctypes, no_transpose.ctypes, order.ctypes, n_wanted.ctypes,
                    reflectors[i].ctypes, order.ctypes, tau[i].ctypes, vectors.ctypes, order.ctypes,
                    work.ctypes, lwork_or.ctypes, info.ctypes)
            if info[0] != 0:
                status[i] = 1
                continue
            for column in range(n_signal):
                for row in range(n):
                    out[i, row, noise + column] = vectors[column * n + row]
        return out, status


def signal_decomposition(gram, noise_split, *, use_numba=None):
    """Eigenvalues of symmetric matrices and the eigenvectors of their signal components.

    Parameters
    ----------
    gram : ndarray, shape (m, N, N), float64
        Symmetric matrices with the lower triangle filled (the upper one is not read); not
        modified.
    noise_split : callable
        ``noise_split(eigenvalues) -> (n_noise, extra)``: given the ascending eigenvalues (m, N),
        returns the number of noise components per matrix (the smallest ones) and anything else
        to pass through (e.g. the noise variance).
    use_numba : bool, optional
        Force (True) or avoid (False) the compiled path; default: compiled when Numba is installed.

    Returns
    -------
    n_noise : ndarray of int, shape (m,)
    extra : object
        The second output of ``noise_split``.
    vectors : ndarray, shape (m, N, N)
        Column ``k`` is the eigenvector of the ``k``-th smallest eigenvalue for the signal
        components ``k >= n_noise``; the noise columns are 0 on the compiled path (they are not
        computed) and filled on the NumPy path. Only the signal columns are to be used.
    """
    gram = np.asarray(gram)
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must hold square matrices, shape (m, N, N); got {gram.shape}")
    if use_numba is None:
        use_numba = HAVE_NUMBA
    if use_numba and not HAVE_NUMBA:
        raise RuntimeError("use_numba=True but numba is not installed; pip install numba")
    if not use_numba or gram.shape[0] == 0:
        eigenvalues, vectors = np.linalg.eigh(gram, UPLO="L")
        n_noise, extra = noise_split(eigenvalues)
        return n_noise, extra, vectors
    matrices = np.array(gram, dtype=np.float64, order="C")  # LAPACK overwrites it
    eigenvalues, diagonal, off_diagonal, tau, status = _tridiagonal_eigenvalues(matrices)
    if status.any():  # dsterf did not converge (not seen in practice): redo those with eigh
        eigenvalues[status != 0] = np.linalg.eigvalsh(gram[status != 0], UPLO="L")
    n_noise, extra = noise_split(eigenvalues)
    n_noise = np.asarray(n_noise, dtype=np.int64)
    vectors, failed = _signal_eigenvectors(matrices, diagonal, off_diagonal, tau, eigenvalues,
                                           n_noise)
    if status.any() or failed.any():
        redo = (status != 0) | (failed != 0)
        vectors[redo] = np.linalg.eigh(gram[redo], UPLO="L")[1]
    return n_noise, extra, vectors
