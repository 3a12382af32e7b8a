"""Partial-volume-aware grey-matter MD of a region.

A voxel of a few millimetres holds grey matter (GM), white matter (WM) and CSF.  What mixes in
a voxel is the tissues' signal, not their MD: with tissue volume fractions ``f`` (summing to 1)
and each tissue's b=0 signal ``S0_t`` (proton density and T2 weighting; CSF is brighter than
tissue at b=0), the voxel's attenuation at b-value ``b`` is the signal-weighted mixture::

    exp(-b MD_v) = sum_t w_t,v exp(-b MD_t),   w_t,v = f_t,v S0_t / sum_s f_s,v S0_s

so that a voxel of 10 % CSF reads about 0.1 um^2/ms above its tissue at b = 1000 s/mm^2, not the
0.2 a fraction-weighted mixture of MD values (``sum_t f_t MD_t``) predicts: CSF's signal is
almost gone at that b-value (the MD-mixture model's bias, measured: docs/participant.md).

:func:`grey_matter_md` estimates the region's ``MD_gm`` by least squares in the attenuation,
where the model is linear, over the region's voxels with ``MD_wm`` and ``MD_csf`` known (the WM
value measured over the whole brain of the session, the CSF value that of free water) and the
b=0 signals from :func:`relative_s0`, so that a head repositioned by half a voxel, which changes
every voxel's mixture, changes the estimate only through the fractions, not through the voxel
choice.  :func:`gm_weighted_mean` is the simpler estimate that down-weights mixed voxels without
modelling them.
"""

from __future__ import annotations

import numpy as np

#: MD of free water at body temperature (um^2/ms), the CSF term of the mixture.
CSF_MD = 3.0
#: The tissues of the mixture, in the order of :func:`relative_s0`'s fit.
TISSUES = ("gm", "wm", "csf")


def _as_vectors(md, fractions: dict) -> tuple[np.ndarray, dict]:
    md = np.asarray(md, dtype=float).ravel()
    out = {}
    for name in TISSUES:
        if name not in fractions:
            raise ValueError(f"tissue fractions need 'gm', 'wm' and 'csf'; '{name}' is missing")
        values = np.asarray(fractions[name], dtype=float).ravel()
        if values.shape != md.shape:
            raise ValueError(f"{name} fractions have {values.size} values, MD {md.size}")
        out[name] = np.clip(values, 0.0, 1.0)
    total = out["gm"] + out["wm"] + out["csf"]
    scale = np.where(total > 0, 1.0 / np.maximum(total, 1e-12), 0.0)
    return md, {name: values * scale for name, values in out.items()}


def gm_weighted_mean(md, gm_fraction, *, min_weight: float = 1e-6) -> float:
    """Grey-matter-fraction-weighted mean MD of a region's voxels.

    Parameters
    ----------
    md : array-like
        MD of the region's voxels.
    gm_fraction : array-like
        Their grey-matter fraction (or probability) in [0, 1].
    min_weight : float
        The result is NaN when the weights sum to less than this.

    Returns
    -------
    float
    """
    md = np.asarray(md, dtype=float).ravel()
    weight = np.clip(np.asarray(gm_fraction, dtype=float).ravel(), 0.0, 1.0)
    if weight.shape != md.shape:
        raise ValueError(f"gm_fraction has {weight.size} values, MD {md.size}")
    usable = np.isfinite(md) & np.isfinite(weight)
    total = weight[usable].sum()
    return float(np.dot(weight[usable], md[usable]) / total) if total >= min_weight else float("nan")


def weighted_median(values, weights) -> float:
    """Weighted median, interpolated between the sorted values (continuous in the weights).

    Each value ``x_i`` (sorted) sits at the middle of its weight on the cumulative scale,
    ``c_i - w_i / 2``; the median is the value at half the total weight, linearly interpolated.
    With equal weights it is the ordinary median.

    Parameters
    ----------
    values, weights : array-like
        Same length; weights >= 0 (non-finite values and zero weights are ignored).

    Returns
    -------
    float
        NaN when no positive weight is left.
    """
    values = np.asarray(values, dtype=float).ravel()
    weights = np.asarray(weights, dtype=float).ravel()
    if values.shape != weights.shape:
        raise ValueError(f"{values.size} values but {weights.size} weights")
    usable = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    if not usable.any():
        return float("nan")
    order = np.argsort(values[usable], kind="stable")
    sorted_values, sorted_weights = values[usable][order], weights[usable][order]
    cumulative = np.cumsum(sorted_weights)
    return float(np.interp(0.5 * cumulative[-1], cumulative - 0.5 * sorted_weights, sorted_values))


def relative_s0(b0, fractions: dict, mask) -> dict:
    """Each tissue's b=0 signal relative to grey matter's, from a session's mean b=0 image.

    The least-squares fit of ``b0_v = sum_t f_t,v S0_t`` over the voxels of ``mask``, divided
    by ``S0_gm``: the weights of the signal mixture of the module docstring, measured on the
    session's own contrast (which depends on the sequence's echo and repetition times).

    Parameters
    ----------
    b0 : ndarray
        Mean b=0 image.
    fractions : dict
        ``"gm"``, ``"wm"``, ``"csf"`` -> fraction maps on the same grid (rescaled to sum to 1
        where they do not).
    mask : ndarray of bool
        Voxels of the fit (the brain).

    Returns
    -------
    dict
        ``"gm"`` (1.0), ``"wm"``, ``"csf"``.

    Raises
    ------
    ValueError
        If the shapes differ, or a tissue's b=0 signal is not positive (tissue maps that do
        not match the image).
    """
    b0 = np.asarray(b0, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != b0.shape:
        raise ValueError(f"b=0 image {b0.shape} and mask {mask.shape} differ")
    for name in TISSUES:
        if np.shape(fractions.get(name, ())) != b0.shape:
            raise ValueError(f"{name} fractions {np.shape(fractions.get(name, ()))} and b=0 image {b0.shape} differ")
    usable = mask & np.isfinite(b0)
    values, f = _as_vectors(b0[usable], {name: np.asarray(fractions[name])[usable] for name in TISSUES})
    design = np.stack([f[name] for name in TISSUES], axis=1)
    s0 = np.linalg.lstsq(design, values, rcond=None)[0]
    if not (np.all(np.isfinite(s0)) and np.all(s0 > 0)):
        raise ValueError(f"tissue b=0 signals {np.round(s0, 3).tolist()} (GM, WM, CSF) are not all "
                         "positive: the tissue maps do not match the b=0 image")
    return {name: float(value / s0[0]) for name, value in zip(TISSUES, s0)}


def grey_matter_md(md, fractions: dict, *, wm_md: float, b_value: float, csf_md: float = CSF_MD,
                   s0: dict | None = None, min_gm_weight: float = 0.5) -> float:
    """Grey-matter MD of a region from the voxels' tissue mixture (least squares).

    The signal mixture of the module docstring with ``MD_wm`` and ``MD_csf`` fixed has one
    unknown, the GM attenuation ``a_gm = exp(-b MD_gm)``, linear in the voxels' attenuations
    ``a_v = exp(-b MD_v)``; its least-squares estimate over the region's voxels ``v`` is::

        a_gm = sum_v w_gm,v (a_v - w_wm,v a_wm - w_csf,v a_csf) / sum_v w_gm,v^2

    and ``MD_gm = -ln(a_gm) / b``.  Exact for isotropic compartments and one b-value; for a
    tensor fitted over several shells, ``b_value`` is their mean (an approximation).

    Parameters
    ----------
    md : array-like
        MD of the region's voxels (um^2/ms).
    fractions : dict
        ``"gm"``, ``"wm"``, ``"csf"`` -> fractions of the same voxels (rescaled to sum to 1
        where they do not).
    wm_md : float
        White-matter MD (um^2/ms), e.g. :func:`tissue_md` of the session's WM.
    b_value : float
        b-value of the MD (s/mm^2), e.g. the mean of the diffusion-weighted volumes fitted.
    csf_md : float
        CSF MD (um^2/ms).
    s0 : dict, optional
        Each tissue's b=0 signal (:func:`relative_s0`); default equal.
    min_gm_weight : float
        NaN when ``sum w_gm^2`` is below this (too little grey matter to estimate).

    Returns
    -------
    float
        NaN also when the GM attenuation comes out non-positive (the mixture cannot explain
        the voxels).
    """
    if not (np.isfinite(wm_md) and np.isfinite(csf_md)):
        raise ValueError(f"wm_md and csf_md must be finite, got {wm_md} and {csf_md}")
    if not (np.isfinite(b_value) and b_value > 0):
        raise ValueError(f"b_value must be a positive number of s/mm^2, got {b_value}")
    s0 = s0 or dict.fromkeys(TISSUES, 1.0)
    if not all(np.isfinite(s0.get(name, np.nan)) and s0[name] > 0 for name in TISSUES):
        raise ValueError(f"s0 needs positive 'gm', 'wm' and 'csf' values, got {s0}")
    md, f = _as_vectors(md, fractions)
    usable = np.isfinite(md)
    signal = {name: f[name][usable] * s0[name] for name in TISSUES}
    total = sum(signal.values())
    share = {name: np.where(total > 0, values / np.maximum(total, 1e-12), 0.0) for name, values in signal.items()}
    b = b_value * 1e-3  # s/mm^2 x um^2/ms -> dimensionless
    residual = (np.exp(-b * md[usable]) - share["wm"] * np.exp(-b * wm_md)
                - share["csf"] * np.exp(-b * csf_md))
    weight = float(np.dot(share["gm"], share["gm"]))
    if weight < min_gm_weight:
        return float("nan")
    attenuation = float(np.dot(share["gm"], residual) / weight)
    return float(-np.log(attenuation) / b) if attenuation > 0 else float("nan")


#: A voxel with at least this fraction of one tissue counts as that tissue alone (the white
#: matter's MD of ``pv_gm``'s mixture, the white-matter row of the tissue table).
PURE_TISSUE_FRACTION = 0.9


def tissue_md(md, fraction, mask, *, min_fraction: float = PURE_TISSUE_FRACTION) -> float:
    """Median MD of the nearly pure voxels of one tissue (e.g. the session's white matter).

    Parameters
    ----------
    md, fraction, mask : ndarray
        MD map, the tissue's fraction map and the brain mask, on one grid.
    min_fraction : float
        Voxels with at least this fraction count as pure.

    Returns
    -------
    float
        NaN when no voxel qualifies.
    """
    md = np.asarray(md, dtype=float)
    if np.shape(fraction) != md.shape or np.shape(mask) != md.shape:
        raise ValueError(f"MD {md.shape}, fraction {np.shape(fraction)} and mask {np.shape(mask)} differ")
    pure = np.asarray(mask, bool) & (np.asarray(fraction) >= min_fraction) & np.isfinite(md)
    return float(np.median(md[pure])) if pure.any() else float("nan")


def roi_grey_matter_volume_fractions(atlas: np.ndarray, gm_probability: np.ndarray, label_indices,
                                     box_voxels) -> np.ndarray:
    """Per label, the grey matter of the label averaged over a box the size of an acquired voxel.

    On the template grid, ``box(atlas == k) * gm)`` is, at each point, the share of a box of
    ``box_voxels`` template voxels per side (the acquired voxel's size) that is grey matter of
    label ``k``.  Sampled at an acquired voxel's centre (warped in with trilinear interpolation),
    it approximates the voxel's volume fraction of that label's grey matter, a weight that moves
    smoothly with the head instead of jumping by whole voxels as a nearest-neighbour label and
    a threshold do.

    Parameters
    ----------
    atlas : ndarray of int (3-D)
        Labels on the template grid.
    gm_probability : ndarray (3-D)
        The template's grey-matter probability on the same grid.
    label_indices : sequence of int
        Labels, in the order of the output's last axis.
    box_voxels : float or sequence of 3 float
        Box side in template voxels, per axis (at least 1; :func:`box_side`).

    Returns
    -------
    ndarray float32 (X, Y, Z, n_labels)
    """
    from scipy import ndimage

    atlas = np.asarray(atlas)
    gm = np.clip(np.asarray(gm_probability, dtype=np.float32), 0.0, 1.0)
    if atlas.shape != gm.shape:
        raise ValueError(f"atlas grid {atlas.shape} and grey-matter grid {gm.shape} differ")
    sides = np.broadcast_to(np.asarray(box_voxels, dtype=float), (3,))
    if not np.all(sides >= 1):
        raise ValueError(f"box_voxels must be at least 1, got {box_voxels}")
    pad = [int(np.ceil(side)) for side in sides]
    out = np.zeros(atlas.shape + (len(label_indices),), dtype=np.float32)
    for position, index in enumerate(label_indices):
        inside = atlas == int(index)
        if not inside.any():
            continue
        # Filtered within the label's bounding box padded by a box: outside it the box average
        # is 0 (mode "constant"), and the whole grid costs 10-50 times more than an ROI.
        block = tuple(slice(max(extent.start - margin, 0), extent.stop + margin)
                      for extent, margin in zip(ndimage.find_objects(inside.astype(np.uint8))[0], pad))
        out[block + (position,)] = box_average(np.where(inside[block], gm[block], 0.0), sides)
    return out


def box_weights(side: float) -> np.ndarray:
    """1-D weights of a box ``side`` voxels wide centred on a voxel, over piecewise-constant voxels.

    Voxel ``k`` (offset from the centre) counts for its overlap with ``[-side/2, side/2]``,
    divided by ``side``: an odd integer side covers whole voxels, an even or fractional side
    ends part-way through the outermost voxels.  The weights sum to 1 and are symmetric.
    """
    side = float(side)
    if not side >= 1.0:
        raise ValueError(f"a box must be at least 1 voxel wide, got {side}")
    reach = int(np.ceil(side / 2.0 - 0.5))
    offsets = np.arange(-reach, reach + 1, dtype=float)
    overlap = np.clip(np.minimum(offsets + 0.5, side / 2.0) - np.maximum(offsets - 0.5, -side / 2.0), 0.0, None)
    return overlap / side


def box_average(data, side) -> np.ndarray:
    """Each voxel's average over a box of ``side`` voxels centred on it (:func:`box_weights`).

    The voxels are treated as piecewise constant, so the box is centred whatever its side
    (scipy's ``uniform_filter`` of even size sits half a voxel off) and a side that is not a
    whole number of voxels (a 3-mm DWI voxel over a 2-mm T1w: 1.5) is honoured.  Outside the
    grid counts as 0.

    Parameters
    ----------
    data : ndarray (X, Y, Z) or (X, Y, Z, N)
        The maps (4-D: each volume alike; the last axis is not averaged).
    side : float or sequence of 3 float
        Box side along each axis, in voxels (1: unchanged).

    Returns
    -------
    ndarray float32, the shape of ``data``
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    sides = np.broadcast_to(np.asarray(side, dtype=float), (3,))
    for axis, width in enumerate(sides):
        weights = box_weights(width)
        if weights.size > 1:
            data = ndimage.correlate1d(data, weights, axis=axis, mode="constant")
    return data


def box_side(fine_affine, coarse_affine) -> np.ndarray:
    """The size of a coarse grid's voxel in voxels of a fine grid, per axis.

    Parameters
    ----------
    fine_affine, coarse_affine : array-like (4, 4)
        Voxel-to-world affines.  Each fine axis takes the size of the coarse axis closest to it
        in direction (grids rotated against each other are approximated by aligned boxes).

    Returns
    -------
    ndarray (3,)
        At least 1 voxel per axis.
    """
    def _sizes(affine):
        return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)

    fine, coarse = _sizes(fine_affine), _sizes(coarse_affine)
    # each fine axis gets the coarse size of the coarse axis closest to it in direction
    fine_dirs = np.asarray(fine_affine, float)[:3, :3] / fine
    coarse_dirs = np.asarray(coarse_affine, float)[:3, :3] / coarse
    closest = np.argmax(np.abs(fine_dirs.T @ coarse_dirs), axis=1)
    return np.maximum(coarse[closest] / fine, 1.0)


def supersample_counts(fine_affine, coarse_affine) -> np.ndarray:
    """Points per axis of :func:`volume_fractions_on_grid`'s supersampling of a coarse voxel:
    one more than the coarse voxel's side in fine voxels (the finest fine axis), so that every
    fine voxel a coarse voxel overlaps is sampled and each point stands for less than a fine
    voxel's width.

    Parameters
    ----------
    fine_affine, coarse_affine : array-like (4, 4)
        Voxel-to-world affines.

    Returns
    -------
    ndarray of int (3,), one count per coarse axis
    """
    fine = np.linalg.norm(np.asarray(fine_affine, dtype=float)[:3, :3], axis=0)
    coarse = np.linalg.norm(np.asarray(coarse_affine, dtype=float)[:3, :3], axis=0)
    return np.ceil(coarse / fine.min() - 1e-6).astype(int) + 1


def volume_fractions_on_grid(fractions, affine, ref_shape, ref_affine, transform=None) -> np.ndarray:
    """Volume fractions of a fine-grid map in the voxels of a coarser grid, by supersampling.

    Each reference voxel is split into ``n_x x n_y x n_z`` points at the centres of equal
    sub-boxes (:func:`supersample_counts`); each point takes the value of the fine voxel it
    falls in (the map is piecewise constant; outside the fine grid, 0), and the voxel's value
    is their mean: the share of the voxel the tissue (or label) occupies, the way the scanner
    integrates partial volume, whatever the rotation between the grids.  As the head moves, a
    value changes in steps, each point that crosses into another fine voxel moving it by
    ``1 / (n_x n_y n_z)`` of the two voxels' difference.

    Until 2026-12-06 the map was box-averaged to the reference voxel's size on the fine grid and
    interpolated trilinearly at the reference voxel centres: exact for a flat boundary between
    fine voxels when the box spans an odd whole number of them on an aligned grid, but the
    interpolation blurs a thin sheet such as the cortex into its neighbours.  A wavy 3-mm sheet on a 2-mm grid carried into a rotated 3-mm grid,
    against its fractions integrated there directly: mean absolute error 0.117 and bias -0.031
    then, 0.071 and -0.008 supersampled
    (``tests/test_roi_precision.py::test_volume_fractions_of_a_thin_sheet_keep_their_partial_volume``).
    The price is a step: a flat boundary's fraction is within half of ``1 / n`` of exact.

    Parameters
    ----------
    fractions : ndarray (X, Y, Z) or (X, Y, Z, N)
        Fractions in [0, 1] on the fine grid (4-D: every map alike, e.g. one per ROI).
    affine : array-like (4, 4)
        Voxel-to-world affine of ``fractions``.
    ref_shape : tuple of 3 int
        Shape of the coarse (e.g. native DWI) grid.
    ref_affine : array-like (4, 4)
        Its voxel-to-world affine.
    transform : array-like (4, 4), optional
        Reference-world to fine-image-world points (e.g. native DWI -> T1w); identity by default.

    Returns
    -------
    ndarray float32, ``ref_shape`` (+ (N,))
    """
    import itertools

    from bids_ketamine.dwi.resample import check_affine

    data = np.clip(np.asarray(fractions, dtype=np.float32), 0.0, 1.0)
    if data.ndim not in (3, 4):
        raise ValueError(f"fractions must be 3-D or 4-D, got shape {data.shape}")
    affine, ref_affine = check_affine(affine, "affine"), check_affine(ref_affine, "ref_affine")
    transform = np.eye(4) if transform is None else check_affine(transform, "transform")
    ref_shape = tuple(int(n) for n in ref_shape)[:3]
    counts = supersample_counts(affine, ref_affine)
    index_map = np.linalg.inv(affine) @ transform @ ref_affine  # reference index -> fine index
    centres = index_map[:3, :3] @ np.indices(ref_shape, dtype=float).reshape(3, -1) + index_map[:3, 3:4]
    dims = np.array(data.shape[:3])[:, None]
    total = np.zeros((centres.shape[1],) + data.shape[3:], dtype=np.float64)
    for shift in itertools.product(*((np.arange(n) + 0.5) / n - 0.5 for n in counts)):
        nearest = np.rint(centres + index_map[:3, :3] @ np.asarray(shift)[:, None]).astype(np.intp)
        inside = np.all((nearest >= 0) & (nearest < dims), axis=0)  # outside the fine grid: 0
        total[inside] += data[tuple(nearest[:, inside])]
    return (total / np.prod(counts)).reshape(ref_shape + data.shape[3:]).astype(np.float32)
