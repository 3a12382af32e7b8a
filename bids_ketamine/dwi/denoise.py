"""Denoising of diffusion MRI series: MP-PCA (fast, dwidenoise-equivalent) and Patch2Self.

:func:`mppca` is the Marchenko-Pastur PCA denoiser of Veraart et al. (2016, NeuroImage 142:394)
as implemented by MRtrix3's ``dwidenoise`` (3.0.x), computed with whole-array operations:

1. For every voxel, the ``N x N`` Gram matrix ``X X^T`` of its cuboid patch ``X`` (``N`` volumes x
   ``n`` patch voxels) is obtained for all patch centres at once as a box filter (sum over the
   patch window) of the voxel-wise outer products ``x x^T``, in tiles of the image so that memory
   stays bounded (``chunk_voxels``).
2. The Gram matrices are diagonalised in batches: all eigenvalues, but eigenvectors only for the
   signal components (:mod:`bids_ketamine.dwi.signal_subspace`, LAPACK called from Numba;
   :func:`numpy.linalg.eigh` without Numba).
3. The noise level is estimated from the eigenvalues with a vectorised Marchenko-Pastur rule
   (see *Noise estimator* below) and the centre voxel alone is reconstructed from the retained
   (signal) components, as ``dwidenoise`` does (DIPY's :func:`dipy.denoise.localpca.mppca`
   instead averages the reconstructions of all overlapping patches).
4. Tiles are processed by a pool of ``n_threads`` threads (NumPy and LAPACK release the GIL).

Noise estimator
---------------
MRtrix3 3.0.x ``dwidenoise`` (``cmd/dwidenoise.cpp``) defaults to ``-estimator Exp2``, the
estimator of Cordero-Grande et al. (2019, NeuroImage 200:391); ``Exp1`` is Veraart et al.'s
original. With the eigenvalues ``s_0 <= ... <= s_{r-1}`` of the Gram matrix (``r = min(N, n)``,
``q = max(N, n)``), ``lam_p = max(s_p, 0) / q``, and for ``p = 0 .. r-1`` (``p + 1`` candidate noise
components)::

    gamma_p  = (p + 1) / q                    (Exp1)
    gamma_p  = (p + 1) / (q - (r - p - 1))    (Exp2, default)
    sigma1_p = (lam_0 + ... + lam_p) / (p + 1)
    sigma2_p = (lam_p - lam_0) / (4 sqrt(gamma_p))

the number of noise components is the largest ``p + 1`` with ``sigma2_p < sigma1_p`` and the noise
variance is ``sigma1_p`` there (0 and no denoising when no ``p`` qualifies). No mean is subtracted
from the patch (as in ``dwidenoise``; DIPY subtracts the patch mean).

Image edges
-----------
As in ``dwidenoise`` 3.0.x, the patch never leaves the image: near an edge the window is shifted
inwards so that it lies entirely inside the field of view (its centre is clamped to
``[radius, size - 1 - radius]`` along each axis) while the voxel being denoised stays the
voxel itself. All voxels within ``radius`` of an edge therefore share the Gram matrix of the
clamped centre, which is diagonalised once.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from bids_ketamine.dwi.signal_subspace import signal_decomposition

__all__ = ["mppca", "patch2self_denoise", "mp_noise_components"]

_ESTIMATORS = ("exp1", "exp2")
_MIN_VOLUMES = 5


def _check_radius(patch_radius, shape, n_volumes):
    """Validate ``patch_radius`` (int, 3 ints, or None for dwidenoise's automatic choice)."""
    if patch_radius is None:
        # dwidenoise: the smallest odd isotropic extent whose cube reaches the number of volumes
        extent = 1
        while extent**3 < n_volumes:
            extent += 2
        radius = np.array([extent // 2] * 3)
        radius = np.minimum(radius, (np.asarray(shape) - 1) // 2)
    else:
        radius = np.atleast_1d(np.asarray(patch_radius))
        if radius.size == 1:
            radius = np.repeat(radius, 3)
        if radius.shape != (3,) or not np.issubdtype(radius.dtype, np.integer) or np.any(radius < 0):
            raise ValueError(
                f"patch_radius must be a non-negative integer or three of them, got {patch_radius!r}; "
                "use e.g. 2 for a 5x5x5 patch"
            )
    window = 2 * radius + 1
    if np.any(window > np.asarray(shape)):
        raise ValueError(
            f"patch of {tuple(int(w) for w in window)} voxels does not fit in an image of "
            f"{tuple(int(s) for s in shape)} voxels; use a smaller patch_radius (per axis, e.g. (2, 2, 0))"
        )
    n_patch = int(np.prod(window))
    if n_patch < n_volumes:
        needed = 0
        while (2 * needed + 1) ** 3 < n_volumes:
            needed += 1
        raise ValueError(
            f"the patch holds {n_patch} voxels but the series has {n_volumes} volumes; MP-PCA needs "
            f"at least as many patch voxels as volumes: use patch_radius={needed} (or None)"
        )
    return tuple(int(r) for r in radius), n_patch


def _check_inputs(data, mask):
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be a 4-D array (x, y, z, volumes), got {data.ndim}-D; "
                         "pass the whole DWI series")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"data must be real-valued numbers, got dtype {data.dtype}")
    if data.shape[-1] < _MIN_VOLUMES:
        raise ValueError(f"MP-PCA needs at least {_MIN_VOLUMES} volumes, got {data.shape[-1]}; "
                         "denoise the full series, not a subset of volumes")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ValueError("data contain NaN or infinite values; replace them (e.g. np.nan_to_num) "
                         "before denoising")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match the data's spatial shape "
                             f"{data.shape[:3]}; resample the mask to the DWI grid")
        mask = mask.astype(bool)
    return data, mask


def mp_noise_components(eigenvalues, n_patch, estimator="exp2"):
    """Marchenko-Pastur split of patch eigenvalues into noise and signal (vectorised).

    Parameters
    ----------
    eigenvalues : ndarray, shape (..., r)
        Eigenvalues of the patch Gram matrices ``X X^T`` (not divided by anything), in ascending
        order along the last axis; ``r = min(N, n)``.
    n_patch : int
        Number of columns ``n`` of the patch matrix ``X`` (voxels in the patch).
    estimator : {"exp2", "exp1"}
        ``"exp2"`` (Cordero-Grande et al. 2019; MRtrix3 3.0.x default) or ``"exp1"``
        (Veraart et al. 2016).

    Returns
    -------
    n_noise : ndarray of int, shape (...)
        Number of noise components (the smallest ``n_noise`` eigenvalues); 0 means no denoising.
    sigma2 : ndarray, shape (...)
        Noise variance estimate (0 where ``n_noise`` is 0).
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    r = eigenvalues.shape[-1]
    q = max(r, int(n_patch))
    lam = np.maximum(eigenvalues, 0.0) / q
    count = np.arange(1, r + 1, dtype=float)  # p + 1
    if estimator == "exp1":
        gamma = count / q
    else:
        gamma = count / (q - (r - count))
    sigma1 = np.cumsum(lam, axis=-1) / count
    sigma2 = (lam - lam[..., :1]) / (4.0 * np.sqrt(gamma))
    is_noise = sigma2 < sigma1
    # last p where the condition holds (dwidenoise keeps overwriting in its loop)
    last = r - 1 - np.argmax(is_noise[..., ::-1], axis=-1)
    any_noise = is_noise.any(axis=-1)
    n_noise = np.where(any_noise, last + 1, 0)
    variance = np.take_along_axis(sigma1, last[..., None], axis=-1)[..., 0]
    variance = np.where(any_noise, variance, 0.0)
    return n_noise, variance


def _box_sum(array, axis, window):
    """Sums over every run of ``window`` consecutive entries along ``axis`` ('valid' mode)."""
    if window == 1:
        return array
    length = array.shape[axis] - window + 1

    def part(shift):
        index = [slice(None)] * array.ndim
        index[axis] = slice(shift, shift + length)
        return array[tuple(index)]

    total = part(0) + part(1)
    for shift in range(2, window):
        total += part(shift)
    return total


def _centre_index(size, radius):
    """Patch centre (in 'valid' coordinates, 0 .. size-2r-1) of every voxel along one axis."""
    return np.clip(np.arange(size) - radius, 0, size - 2 * radius - 1)


def _tiles(valid_shape, chunk_voxels):
    """Split the grid of patch centres into near-cubic tiles of at most ``chunk_voxels`` centres."""
    side = max(1, int(round(chunk_voxels ** (1.0 / 3.0))))
    tile_x = min(valid_shape[0], side)
    tile_y = min(valid_shape[1], max(1, int(math.isqrt(max(1, chunk_voxels // tile_x)))))
    tile_z = min(valid_shape[2], max(1, chunk_voxels // (tile_x * tile_y)))
    sizes = (tile_x, tile_y, tile_z)
    starts = [range(0, n, t) for n, t in zip(valid_shape, sizes)]
    return [tuple((a, min(n, a + t)) for a, n, t in zip(corner, valid_shape, sizes))
            for corner in itertools.product(*starts)]


def _tile_gram(block, radius, n_vol):
    """Lower triangles of the patch Gram matrices of every centre of a data block.

    ``block`` holds the tile's centres plus a margin of ``radius`` voxels on each side; the result
    has shape (n_centres, N, N) (centres in C order) with the upper triangle left at 0.
    """
    windows = [2 * r + 1 for r in radius]
    n_centres = int(np.prod([s - w + 1 for s, w in zip(block.shape[:3], windows)]))
    gram = np.zeros((n_centres, n_vol, n_vol))
    for col in range(n_vol):  # one column of the lower triangle at a time bounds the memory
        products = block[..., col:] * block[..., col:col + 1]
        for axis in (2, 1, 0):  # shortest axes first: later passes see smaller arrays
            products = _box_sum(products, axis, windows[axis])
        gram[:, col:, col] = products.reshape(n_centres, n_vol - col)
    return gram


def _reconstruct(vectors, n_noise, signal):
    """Project each voxel's signal on the retained (non-noise) eigenvectors of its patch."""
    coefficients = np.matmul(signal[:, None, :], vectors)[:, 0, :]  # V^T x
    coefficients[np.arange(vectors.shape[-1]) < n_noise[:, None]] = 0.0
    restored = np.matmul(vectors, coefficients[:, :, None])[:, :, 0]
    return np.where(n_noise[:, None] > 0, restored, signal)


def _denoise_tile(tile, data, mask, radius, n_patch, estimator, denoised, sigma, use_numba):
    """Denoise the voxels whose (clamped) patch centre lies in ``tile``; write them in place."""
    n_vol = data.shape[-1]
    centre_of = [_centre_index(size, r) for size, r in zip(data.shape[:3], radius)]
    # voxels served by this tile along each axis: a contiguous range
    voxels = [np.flatnonzero((c >= lo) & (c < hi)) for c, (lo, hi) in zip(centre_of, tile)]
    region = tuple(slice(v[0], v[-1] + 1) for v in voxels)
    todo = np.ones([v.size for v in voxels], dtype=bool) if mask is None else mask[region]
    if not todo.any():
        return
    block = np.asarray(data[tuple(slice(lo, hi + 2 * r) for (lo, hi), r in zip(tile, radius))],
                       dtype=np.float64)
    if not block.any():
        return  # all-zero data: every Gram matrix is 0, nothing is noise, output = input
    tile_shape = tuple(hi - lo for lo, hi in tile)
    gram = _tile_gram(block, radius, n_vol)
    # local centre (tile coordinates) of every voxel of the region to process
    ix, iy, iz = np.nonzero(todo)
    local = [centre_of[a][voxels[a][i]] - tile[a][0] for a, i in enumerate((ix, iy, iz))]
    voxel_centre = np.ravel_multi_index(local, tile_shape)
    needed = np.zeros(gram.shape[0], dtype=bool)
    needed[voxel_centre] = True
    needed &= np.einsum("cii->c", gram) > 0  # zero Gram: no noise component, voxel unchanged
    rows = np.flatnonzero(needed)
    if rows.size == 0:
        return
    if rows.size < gram.shape[0]:
        gram = gram[rows]
    n_noise, variance, vectors = signal_decomposition(
        gram, lambda values: mp_noise_components(values, n_patch, estimator), use_numba=use_numba)
    del gram
    row_of_centre = np.full(needed.size, -1)
    row_of_centre[rows] = np.arange(rows.size)
    vox_row = row_of_centre[voxel_centre]
    keep = vox_row >= 0
    ix, iy, iz, vox_row = ix[keep], iy[keep], iz[keep], vox_row[keep]
    gx, gy, gz = voxels[0][ix], voxels[1][iy], voxels[2][iz]
    # voxels at their own patch centre (all but those within `radius` of the image edge) use the
    # eigenvectors in place when possible; edge voxels gather those of their clamped centre
    own = np.ones(vox_row.size, dtype=bool)
    for axis, (index, start) in enumerate(zip((gx, gy, gz), (lo for lo, _ in tile))):
        own &= index == np.asarray(local[axis])[keep] + start + radius[axis]
    for group in (np.flatnonzero(own), np.flatnonzero(~own)):
        if group.size == 0:
            continue
        group_rows = vox_row[group]
        if np.array_equal(group_rows, np.arange(rows.size)):
            group_vectors, group_noise = vectors, n_noise
        else:
            group_vectors, group_noise = vectors[group_rows], n_noise[group_rows]
        where = (gx[group], gy[group], gz[group])
        signal = np.asarray(data[where], dtype=np.float64)
        denoised[where] = _reconstruct(group_vectors, group_noise, signal)
        sigma[where] = np.sqrt(variance[group_rows])


def mppca(data, mask=None, patch_radius=2, *, n_threads=1, chunk_voxels=None, return_sigma=True,
          estimator="exp2", use_numba=None):
    """Marchenko-Pastur PCA denoising (Veraart et al. 2016), equivalent to MRtrix3 ``dwidenoise``.

    Parameters
    ----------
    data : ndarray, shape (x, y, z, N)
        The DWI series, before any interpolation (denoising must be the first step). ``N >= 5``.
    mask : ndarray of bool, shape (x, y, z), optional
        Voxels to denoise. Voxels outside the mask are returned unchanged with ``sigma`` 0;
        patches still use every voxel of the image (as ``dwidenoise -mask`` does).
    patch_radius : int, sequence of 3 ints, or None
        Half-width of the cuboid patch: 2 gives 5x5x5 voxels (DIPY's default). The patch must hold
        at least as many voxels as there are volumes. ``None`` picks the smallest isotropic patch
        that does, as ``dwidenoise`` does by default (3x3x3 up to 27 volumes, 5x5x5 up to 125);
        pass ``-extent 5`` to ``dwidenoise`` to compare with the default here.
    n_threads : int
        Number of worker threads (BLAS/LAPACK is kept single-threaded meanwhile).
    chunk_voxels : int, optional
        Patch centres processed at once per thread; memory per thread is roughly
        ``chunk_voxels * N**2 * 32`` bytes. Default: 32 MiB of Gram matrices per chunk.
    return_sigma : bool
        Return the noise map as well (``(denoised, sigma)``); if False, return ``denoised`` only.
    estimator : {"exp2", "exp1"}
        Marchenko-Pastur noise estimator; ``"exp2"`` is ``dwidenoise``'s default (see the module
        docstring).
    use_numba : bool, optional
        Diagonalise with the compiled kernel of :mod:`bids_ketamine.dwi.signal_subspace` (all
        eigenvalues, signal eigenvectors only; about 2x faster for 70 volumes) or, if False, with
        :func:`numpy.linalg.eigh`. Default: the kernel when Numba is installed. Both give the same
        result to rounding error.

    Returns
    -------
    denoised : ndarray, shape (x, y, z, N)
        Denoised series (float32 for float32 or integer input up to 16 bits, else float64).
    sigma : ndarray, shape (x, y, z)
        Noise standard deviation estimated in each voxel's patch (0 outside ``mask``, in all-zero
        regions, and where no component was classified as noise).

    Notes
    -----
    See the module docstring for the algorithm, the estimator and the edge handling. Differences
    with :func:`dipy.denoise.localpca.mppca`: no patch mean is subtracted, the centre voxel alone is
    reconstructed (no averaging of overlapping patches), and the default estimator is Exp2.
    """
    data, mask = _check_inputs(data, mask)
    if not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    n_vol = data.shape[-1]
    radius, n_patch = _check_radius(patch_radius, data.shape[:3], n_vol)
    if chunk_voxels is None:
        chunk_voxels = max(64, (32 << 20) // (8 * n_vol * n_vol))
    if not isinstance(chunk_voxels, (int, np.integer)) or chunk_voxels < 1:
        raise ValueError(f"chunk_voxels must be a positive integer, got {chunk_voxels!r}")
    out_dtype = np.result_type(data.dtype, np.float32)
    denoised = np.array(data, dtype=out_dtype, copy=True)
    sigma = np.zeros(data.shape[:3], dtype=out_dtype)
    valid = tuple(s - 2 * r for s, r in zip(data.shape[:3], radius))
    tiles = _tiles(valid, int(chunk_voxels))

    def work(tile):
        _denoise_tile(tile, data, mask, radius, n_patch, estimator, denoised, sigma, use_numba)

    with threadpool_limits(limits=1):  # parallelism: our own threads
        if n_threads == 1:
            for tile in tiles:
                work(tile)
        else:
            with ThreadPoolExecutor(max_workers=int(n_threads)) as pool:
                list(pool.map(work, tiles))
    return (denoised, sigma) if return_sigma else denoised


def patch2self_denoise(data, bvals, *, model="ols", b0_threshold=50, **patch2self_kwargs):
    """Patch2Self denoising (Fadnavis et al. 2020) through :func:`dipy.denoise.patch2self.patch2self`.

    Parameters
    ----------
    data : ndarray, shape (x, y, z, N)
        The DWI series.
    bvals : array_like, shape (N,)
        b-values (s/mm^2).
    model : str
        DIPY's regression model (``"ols"``, ``"ridge"``, ``"lasso"``).
    b0_threshold : float
        b-values at or below this count as b=0.
    **patch2self_kwargs
        Passed to DIPY's ``patch2self`` (e.g. ``version``, ``shift_intensity``).

    Returns
    -------
    denoised : ndarray, shape (x, y, z, N)
    residual_std : ndarray, shape (x, y, z)
        Standard deviation over volumes of ``data - denoised``: a noise map.
    """
    from dipy.denoise.patch2self import patch2self

    data, _ = _check_inputs(data, None)
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size != data.shape[-1]:
        raise ValueError(f"{bvals.size} b-values for {data.shape[-1]} volumes; pass the series' "
                         "own .bval")
    denoised = patch2self(data, bvals, model=model, b0_threshold=b0_threshold,
                          **patch2self_kwargs)
    residual_std = np.std(np.asarray(data, dtype=np.float64) - denoised, axis=-1)
    return denoised, residual_std.astype(np.result_type(denoised.dtype, np.float32))
