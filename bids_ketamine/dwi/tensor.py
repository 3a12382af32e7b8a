"""Diffusion tensor fitting: fast vectorised WLS/OLS equal to DIPY's, NLLS/RESTORE through DIPY.

Units: b-values are converted to ms/um^2 (b / 1000 with b in s/mm^2), so the diffusivities come out
in um^2/ms (BEP016), 1000 times DIPY's mm^2/s.

The linear fits reproduce :class:`dipy.reconst.dti.TensorModel` (``fit_method="WLS"`` or ``"OLS"``)
step by step:

- the gradient table is DIPY's: bvecs are used as given (within 1 % of unit length), volumes with a
  non-unit bvec (b=0) get b=0;
- signals are clipped below at 1e-4 (DIPY's ``MIN_POSITIVE_SIGNAL``) before the log;
- OLS: ``beta = pinv(X) log(S)``;
- WLS (Chung et al. 2006): weights are the squared signal predicted by the OLS fit,
  ``W = diag(exp(X beta_OLS))^2``, and ``beta = (X^T W X)^-1 X^T W log(S)``, solved here as 7 x 7
  normal equations by a Cholesky factorisation vectorised over voxels (DIPY uses a per-voxel
  pseudo-inverse of ``sqrt(W) X``: same solution); voxels whose weights span more than 1e8 (zeros,
  garbage fits) use DIPY's pseudo-inverse itself;
- eigen-decomposition in closed form, vectorised (LAPACK for nearly equal eigenvalues); eigenvalues
  are sorted in decreasing order and clipped below at DIPY's ``min_diffusivity``
  (``1e-6 / max|B|`` with ``B`` the b-matrix in s/mm^2, converted to um^2/ms);
- FA, MD, AD, RD use DIPY's formulas (FA is 0 where all eigenvalues are 0).

Voxels outside the mask are 0 in every map, as in DIPY. The maps are stored as float32 (relative
precision 6e-8; the fit itself runs in float64).

Kept as one module (~440 lines): one algorithm (the fit and its scalar maps) with its private
kernels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

__all__ = ["TensorFit", "fit_tensor", "tensor_design_matrix"]

_METHODS = ("wls", "ols", "nlls", "restore")
_MIN_POSITIVE_SIGNAL = 1e-4  # dipy.reconst.dti.MIN_POSITIVE_SIGNAL
_EIGENVALUE_TOLERANCE = 1e-6  # DIPY's `tol` in wls/ols_fit_tensor
_B_UNIT = 1000.0  # s/mm^2 per ms/um^2
_MAX_WEIGHT_SPREAD = 1e8  # WLS weights spanning more than this: solve by pseudo-inverse
_MIN_RELATIVE_GAP = 1e-3  # closer eigenvalues: LAPACK eigh instead of the closed form


@dataclass(frozen=True)
class TensorFit:
    """Diffusion tensor maps.

    Attributes
    ----------
    fa : ndarray (x, y, z)
        Fractional anisotropy.
    md, ad, rd : ndarray (x, y, z)
        Mean, axial and radial diffusivity in um^2/ms.
    evals : ndarray (x, y, z, 3)
        Eigenvalues in um^2/ms, in decreasing order.
    evecs : ndarray (x, y, z, 3, 3)
        Eigenvectors as columns (``evecs[..., :, j]`` goes with ``evals[..., j]``), in the voxel
        frame of the bvecs given.
    s0 : ndarray (x, y, z)
        Fitted non-diffusion-weighted signal.
    method : str
        Fit method (``"wls"``, ``"ols"``, ``"nlls"`` or ``"restore"``).
    volumes : tuple of int
        Indices of the volumes of the input series the tensor was fitted to.
    bvals : tuple of float
        Their b-values (s/mm^2).
    """

    fa: np.ndarray
    md: np.ndarray
    ad: np.ndarray
    rd: np.ndarray
    evals: np.ndarray
    evecs: np.ndarray
    s0: np.ndarray
    method: str
    volumes: tuple
    bvals: tuple


def _gradient_table(bvals, bvecs):
    """DIPY's gradient handling: b-values (s/mm^2) and directions entering the design matrix.

    As :func:`dipy.core.gradients.gradient_table_from_bvals_bvecs`: NaN bvecs become 0, volumes
    whose bvec is not a unit vector (within 0.01: b=0 volumes) get b=0 and a zero direction, and
    the other bvecs are used as given (not renormalised).
    """
    bvecs = np.where(np.isnan(bvecs), 0.0, bvecs)
    unit = np.abs(np.linalg.norm(bvecs, axis=1) - 1) <= 0.01
    return bvals * unit, np.where(unit[:, None], bvecs, 0.0)


def tensor_design_matrix(bvals, bvecs):
    """Design matrix of the log-linear tensor model, b in ms/um^2.

    Parameters
    ----------
    bvals : array_like (N,)
        b-values in s/mm^2.
    bvecs : array_like (N, 3)
        Gradient directions (unit vectors; b=0 rows may be 0).

    Returns
    -------
    design : ndarray (N, 7)
        Columns multiply (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz) in um^2/ms and ln(S0):
        ``ln S = design @ params``.
    """
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    bvals, directions = _gradient_table(bvals, bvecs)
    gx, gy, gz = directions.T
    b = bvals / _B_UNIT
    return np.column_stack([-b * gx * gx, -2 * b * gx * gy, -b * gy * gy,
                            -2 * b * gx * gz, -2 * b * gy * gz, -b * gz * gz, np.ones_like(b)])


def _min_diffusivity(design):
    """DIPY's eigenvalue floor ``tol / -design.min()`` (s/mm^2 design), in um^2/ms."""
    dipy_design = design.copy()
    dipy_design[:, :6] *= _B_UNIT
    dipy_design[:, 6] = -1.0  # DIPY's design is -B with B[:, 6] = 1
    return _EIGENVALUE_TOLERANCE / -dipy_design.min() * _B_UNIT


def _linear_fit(signal, design, pinv_design, weighted):
    """Log-linear OLS or WLS tensor parameters of a (voxels, N) signal block."""
    log_signal = np.log(signal)
    params = log_signal @ pinv_design.T
    if not weighted:
        return params
    with np.errstate(over="ignore", under="ignore"):
        predicted = np.exp(params @ design.T)  # OLS-predicted signal: sqrt of the WLS weights
    weights = predicted**2
    # normal equations where they are well conditioned; DIPY's own per-voxel pseudo-inverse of
    # sqrt(W) X where the weights span too many orders of magnitude (garbage voxels, zeros)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = weights.max(axis=1) / weights.min(axis=1)
    robust = ~(np.isfinite(spread) & (spread < _MAX_WEIGHT_SPREAD))
    n_par = design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(design.shape[0], n_par * n_par)
    good = np.flatnonzero(~robust)
    normal = (weights[good] @ outer).reshape(-1, n_par, n_par)
    rhs = (weights[good] * log_signal[good]) @ design
    solution = _solve_spd(normal, rhs)
    solved = np.isfinite(solution).all(axis=1)
    params[good[solved]] = solution[solved]
    robust[good[~solved]] = True
    bad = np.flatnonzero(robust)
    if bad.size:
        weighted_design = design * predicted[bad][:, :, None]
        params[bad] = np.einsum("vij,vj->vi", np.linalg.pinv(weighted_design),
                                predicted[bad] * log_signal[bad])
    return params


def _solve_spd(matrices, rhs):
    """Solve many small symmetric positive-definite systems by Cholesky, vectorised over the
    systems (NaN where a matrix is not numerically positive definite)."""
    size = matrices.shape[-1]
    a = np.moveaxis(matrices, 0, -1)  # (size, size, n): one contiguous row per entry
    lower = [[None] * size for _ in range(size)]
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(size):
            diagonal = a[j, j] - sum(lower[j][k] ** 2 for k in range(j))
            lower[j][j] = np.sqrt(np.where(diagonal > 0, diagonal, np.nan))
            for i in range(j + 1, size):
                lower[i][j] = (a[i, j] - sum(lower[i][k] * lower[j][k] for k in range(j))) / lower[j][j]
        b = rhs.T
        forward = []
        for i in range(size):
            forward.append((b[i] - sum(lower[i][k] * forward[k] for k in range(i))) / lower[i][i])
        solution = [None] * size
        for i in reversed(range(size)):
            solution[i] = (forward[i] - sum(lower[k][i] * solution[k]
                                            for k in range(i + 1, size))) / lower[i][i]
    return np.stack(solution, axis=-1)


def _params_to_tensor(params):
    """3 x 3 symmetric tensors from (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz)."""
    dxx, dxy, dyy, dxz, dyz, dzz = params[:, :6].T
    return np.stack([np.stack([dxx, dxy, dxz], -1),
                     np.stack([dxy, dyy, dyz], -1),
                     np.stack([dxz, dyz, dzz], -1)], -2)


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _unit_null_vector(a, b, c, d, e, f, value):
    """Unit v with (T - value I) v = 0 for T = [[a, d, e], [d, b, f], [e, f, c]] (1-D arrays):
    the longest cross product of two rows of T - value I."""
    rows = ((a - value, d, e), (d, b - value, f), (e, f, c - value))
    best = None
    for i, j in ((0, 1), (0, 2), (1, 2)):
        vector = _cross(rows[i], rows[j])
        length = vector[0] ** 2 + vector[1] ** 2 + vector[2] ** 2
        if best is None:
            best, best_length = vector, length
        else:
            longer = length > best_length
            best = tuple(np.where(longer, new, old) for new, old in zip(vector, best))
            best_length = np.where(longer, length, best_length)
    norm = np.sqrt(best_length)
    return np.stack([component / norm for component in best], axis=-1)


def _decompose(tensors, min_diffusivity):
    """Eigenvalues (decreasing, floored) and eigenvectors (columns) of symmetric 3 x 3 tensors.

    Closed form (trigonometric solution of the characteristic cubic, eigenvectors from cross
    products of rows), vectorised over voxels, for every tensor whose eigenvalues are separated by
    more than ``_MIN_RELATIVE_GAP`` of the largest magnitude; LAPACK (:func:`numpy.linalg.eigh`, as
    DIPY) for the others. Agreement with LAPACK: ~1e-13 relative on the eigenvalues.
    """
    a, b, c = tensors[:, 0, 0], tensors[:, 1, 1], tensors[:, 2, 2]
    d, e, f = tensors[:, 0, 1], tensors[:, 0, 2], tensors[:, 1, 2]
    mean = (a + b + c) / 3.0
    da, db, dc = a - mean, b - mean, c - mean
    spread = np.sqrt((da * da + db * db + dc * dc + 2.0 * (d * d + e * e + f * f)) / 6.0)
    determinant = da * (db * dc - f * f) - d * (d * dc - f * e) + e * (d * f - db * e)
    with np.errstate(divide="ignore", invalid="ignore"):
        half_det = determinant / (2.0 * spread**3)
    angle = np.arccos(np.clip(half_det, -1.0, 1.0)) / 3.0
    largest = mean + 2.0 * spread * np.cos(angle)
    smallest = mean + 2.0 * spread * np.cos(angle + 2.0 * np.pi / 3.0)
    middle = 3.0 * mean - largest - smallest
    scale = np.maximum(np.abs(largest), np.abs(smallest))
    gap = np.minimum(largest - middle, middle - smallest)
    closed = np.isfinite(gap) & (gap > _MIN_RELATIVE_GAP * scale)
    evals = np.stack([largest, middle, smallest], axis=-1)
    evecs = np.empty(tensors.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        principal = _unit_null_vector(a, b, c, d, e, f, largest)
        minor = _unit_null_vector(a, b, c, d, e, f, smallest)
    evecs[:, :, 0] = principal
    evecs[:, :, 2] = minor
    evecs[:, :, 1] = np.cross(minor, principal)
    slow = np.flatnonzero(~closed)
    if slow.size:
        values, vectors = np.linalg.eigh(tensors[slow])
        evals[slow], evecs[slow] = values[:, ::-1], vectors[:, :, ::-1]
    return evals.clip(min=min_diffusivity), evecs


def _scalar_maps(evals):
    """FA, MD, AD, RD from decreasing eigenvalues (DIPY's formulas)."""
    ev1, ev2, ev3 = evals[..., 0], evals[..., 1], evals[..., 2]
    all_zero = (evals == 0).all(axis=-1)
    fa = np.sqrt(0.5 * ((ev1 - ev2) ** 2 + (ev2 - ev3) ** 2 + (ev3 - ev1) ** 2)
                 / ((evals * evals).sum(-1) + all_zero))
    return fa, evals.mean(-1), ev1, 0.5 * (ev2 + ev3)


def _check_inputs(data, bvals, bvecs, mask, method, b0_threshold, n_threads):
    data = np.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"data must have volumes on its last axis, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"data must be real-valued numbers, got dtype {data.dtype}")
    n_vol = data.shape[-1]
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.ndim == 2 and bvecs.shape == (3, n_vol) and n_vol != 3:
        bvecs = bvecs.T  # FSL's 3-row layout
    if bvals.size != n_vol or bvecs.shape != (n_vol, 3):
        raise ValueError(f"{bvals.size} b-values and bvecs of shape {bvecs.shape} for {n_vol} volumes; "
                         "pass one b-value and one (x, y, z) direction per volume")
    if np.any(bvals < 0) or not np.all(np.isfinite(bvals)):
        raise ValueError("b-values must be finite and >= 0 (s/mm^2)")
    norms = np.linalg.norm(np.nan_to_num(bvecs), axis=1)
    weighted = bvals > b0_threshold
    if np.any(np.abs(norms[weighted] - 1) > 0.01):
        raise ValueError("bvecs of diffusion-weighted volumes must be unit vectors (within 1 %); "
                         "normalise them or check the .bvec file")
    method = str(method).lower()
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    if mask is None:
        mask = np.ones(data.shape[:-1], dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != data.shape[:-1]:
            raise ValueError(f"mask shape {mask.shape} does not match the data's spatial shape "
                             f"{data.shape[:-1]}; resample the mask to the DWI grid")
        mask = mask.astype(bool)
    return data, bvals, bvecs, mask, method


def _select_volumes(bvals, max_bval):
    """Indices of the volumes at or below ``max_bval`` (rounded shells), or all volumes."""
    if max_bval is None:
        return np.arange(bvals.size)
    from bids_ketamine.dwi.gradients import dti_volumes

    return np.asarray(dti_volumes(bvals, max_bval))


def _fit_linear_maps(voxels, design, weighted, min_diffusivity, maps, n_threads, chunk_voxels):
    """Fit the voxels of ``voxels`` (a :class:`_MaskedSignal`) in chunks on a thread pool and write
    each chunk's results into ``maps`` (flat full-image arrays, keyed by TensorFit field)."""
    pinv_design = np.linalg.pinv(design)
    chunks = [slice(a, min(voxels.size, a + chunk_voxels)) for a in range(0, voxels.size, chunk_voxels)]

    def work(chunk):
        block = np.maximum(np.asarray(voxels.signal(chunk), dtype=np.float64), _MIN_POSITIVE_SIGNAL)
        params = _linear_fit(block, design, pinv_design, weighted)
        evals, evecs = _decompose(_params_to_tensor(params), min_diffusivity)
        with np.errstate(over="ignore"):
            s0 = np.exp(params[:, 6])  # inf where the fit is garbage, as in DIPY
        _store(maps, voxels.index[chunk], evals, evecs, s0)

    if n_threads == 1 or len(chunks) == 1:
        for chunk in chunks:
            work(chunk)
    else:
        with ThreadPoolExecutor(max_workers=int(n_threads)) as pool:
            list(pool.map(work, chunks))


def _store(maps, index, evals, evecs, s0):
    """Write fitted voxels (flat image indices ``index``) into the flat output maps."""
    maps["fa"][index], maps["md"][index], maps["ad"][index], maps["rd"][index] = _scalar_maps(evals)
    maps["evals"][index] = evals
    maps["evecs"][index] = evecs
    with np.errstate(over="ignore"):  # an infinite S0 (garbage fit) stays infinite in float32
        maps["s0"][index] = s0


class _MaskedSignal:
    """Signals of the voxels in a mask, for the volumes fitted, gathered chunk by chunk.

    Reads volume by volume when the series is stored volume-major (nibabel's Fortran order), voxel
    by voxel otherwise, so that the gathers walk memory in order; the whole series is never copied.
    """

    def __init__(self, data, mask, volumes):
        self.data = data
        self.coords = np.nonzero(mask)
        self.index = np.flatnonzero(mask)
        self.volumes = np.arange(data.shape[-1]) if volumes is None else np.asarray(volumes)
        self.size = self.index.size
        self.fortran = data.flags.f_contiguous and not data.flags.c_contiguous
        if self.fortran:
            self.fortran_index = np.ravel_multi_index(self.coords, mask.shape, order="F")

    def signal(self, chunk=slice(None)):
        if self.fortran:
            index = self.fortran_index[chunk]
            block = np.empty((index.size, self.volumes.size), dtype=self.data.dtype)
            for column, volume in enumerate(self.volumes):
                block[:, column] = self.data[..., volume].ravel(order="F")[index]
            return block
        block = self.data[tuple(c[chunk] for c in self.coords)]
        return block if self.volumes.size == self.data.shape[-1] else block[:, self.volumes]


def _fit_dipy(signal, bvals, bvecs, method, b0_threshold, sigma):
    """NLLS / RESTORE through DIPY; returns eigenvalues (um^2/ms), eigenvectors and S0."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)
    kwargs = {"sigma": sigma} if method == "restore" else {}
    model = TensorModel(gtab, fit_method=method.upper(), return_S0_hat=True, **kwargs)
    fit = model.fit(np.asarray(signal, dtype=np.float64))
    return fit.evals * _B_UNIT, fit.evecs, np.asarray(fit.S0_hat).reshape(-1)


def fit_tensor(data, bvals, bvecs, mask=None, method="wls", *, b0_threshold=50, n_threads=1,
               max_bval=None, sigma=None, chunk_voxels=20000):
    """Fit the diffusion tensor and return FA, MD, AD, RD (um^2/ms), eigen-system and S0.

    Parameters
    ----------
    data : ndarray (x, y, z, N)
        DWI series (any number of spatial dimensions; volumes on the last axis).
    bvals : array_like (N,)
        b-values in s/mm^2.
    bvecs : array_like (N, 3)
        Unit gradient directions in the voxel frame of ``data`` (FSL/BIDS convention); a
        (3, N) array is accepted too.
    mask : ndarray of bool (x, y, z), optional
        Voxels to fit; the maps are 0 elsewhere. Default: every voxel.
    method : {"wls", "ols", "nlls", "restore"}
        ``"wls"`` and ``"ols"`` use the vectorised fits here (equal to DIPY's
        ``TensorModel(fit_method="WLS"/"OLS")``, see the module docstring); ``"nlls"`` and
        ``"restore"`` call DIPY.
    b0_threshold : float
        b-values at or below this count as b=0 (DIPY's gradient table; the bvec of such volumes
        need not be a unit vector).
    n_threads : int
        Worker threads for ``"wls"``/``"ols"`` (BLAS kept single-threaded). DIPY's fits run on one.
    max_bval : float, optional
        Fit only b=0 and the shells at or below this b-value (b-values rounded to the nearest 50,
        :func:`bids_ketamine.dwi.gradients.dti_volumes`); default: all volumes given.
    sigma : float, optional
        Noise standard deviation for ``"restore"``; default (None): DIPY's per-voxel robust
        estimate ``1.4826 * sqrt(N / (N - 7)) * MAD(residuals)`` of the NLLS fit.
    chunk_voxels : int
        Voxels per chunk for the linear fits (memory ~ ``chunk_voxels * N * 100`` bytes).

    Returns
    -------
    TensorFit
        Frozen record with ``fa``, ``md``, ``ad``, ``rd``, ``evals``, ``evecs``, ``s0``,
        ``method``, ``volumes`` and ``bvals``.
    """
    data, bvals, bvecs, mask, method = _check_inputs(data, bvals, bvecs, mask, method,
                                                     b0_threshold, n_threads)
    if not isinstance(chunk_voxels, (int, np.integer)) or chunk_voxels < 1:
        raise ValueError(f"chunk_voxels must be a positive integer, got {chunk_voxels!r}")
    volumes = _select_volumes(bvals, max_bval)
    bvals, bvecs = bvals[volumes], bvecs[volumes]
    design = tensor_design_matrix(bvals, bvecs)
    if volumes.size < 7 or np.linalg.matrix_rank(design) < 7:
        raise ValueError("the gradient table does not determine a tensor: it needs b=0 (or a second "
                         "shell) and at least 6 non-collinear diffusion-weighted directions")
    voxels = _MaskedSignal(data, mask, volumes)
    tails = {"fa": (), "md": (), "ad": (), "rd": (), "evals": (3,), "evecs": (3, 3), "s0": ()}
    # float32 maps: 6e-8 relative precision, half the memory of float64 (computation is float64)
    maps = {name: np.zeros((mask.size,) + tail, dtype=np.float32) for name, tail in tails.items()}
    if voxels.size and method in ("wls", "ols"):
        with threadpool_limits(limits=1):  # parallelism: our own threads
            _fit_linear_maps(voxels, design, method == "wls", _min_diffusivity(design), maps,
                             n_threads, int(chunk_voxels))
    elif voxels.size:
        if sigma is not None and not (np.isscalar(sigma) and np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        _store(maps, voxels.index, *_fit_dipy(voxels.signal(), bvals, bvecs, method, b0_threshold,
                                              sigma))
    images = {name: maps[name].reshape(mask.shape + tail) for name, tail in tails.items()}
    return TensorFit(**images, method=method, volumes=tuple(int(v) for v in volumes),
                     bvals=tuple(float(b) for b in bvals))
