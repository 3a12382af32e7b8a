"""Head-motion correction of a diffusion series, with b-vector rotation.

The b=0 volumes are aligned rigidly to the first b=0, then to the mean of the aligned
b=0s.  A diffusion-weighted volume cannot be registered to a b=0 (or to another
diffusion-weighted volume: the contrast depends on the gradient direction), so each one
is registered, by least squares with a global intensity scale, to a MODEL PREDICTION of
itself: a diffusion tensor is fitted to the current motion-corrected series in the
reference space (ordinary least squares on the log signal with DIPY's tensor design
matrix: fast, and only used as a registration target), and the signal of each volume is
predicted LEAVE-ONE-OUT (by the tensor fitted to the other volumes) from its gradient
rotated into the reference frame by the current estimate of its motion.  The DW volumes
start from the b=0 motion interpolated in time.  Fit, predict, register is repeated
``n_iter`` times (the idea of FSL eddy and of SHORELine, with the tensor model); see
:func:`correct_motion`'s Notes for what the tensor model cannot resolve and how it is
set (smoothness in time, and the mean DW image aligned to the mean b=0 by mutual
information).  The output's reference is then moved to the series' mean pose (no volume
privileged; see :func:`correct_motion`'s Notes), all volumes are resampled ONCE from the
input (cubic B-spline) and the b-vectors are rotated.

Conventions: every transform maps reference-world points to the volume's world points (see
:mod:`bids_ketamine.dwi.rigid`), so it equals the head's motion in that volume relative to
the reference (the series' mean pose), and its parameters are those reported in the
``params`` table (rotations about the world origin, ``R = Rz @ Ry @ Rx``). A gradient ``g``
applied by the scanner to a head rotated by ``R`` probes the direction ``R.T @ g`` of the
head in the reference position, so the corrected b-vector is ``R.T @ g``, with ``R``
expressed in the image's voxel axes (``R_vox = U.T @ R @ U``, ``U`` the orthogonal factor of
the affine's 3x3 part). b-vectors follow the BIDS/FSL convention: voxel axes, with the x
component negated when the affine has a positive determinant (FSL's radiological voxel
order; RAS+ data have it); ``bvec_convention="voxel"`` takes them as plain voxel-axis
vectors (DIPY's reading).

Kept as one module (~610 lines): one algorithm: the b=0 and diffusion-weighted passes share
their private helpers.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, ndimage
from threadpoolctl import threadpool_limits

from bids_ketamine.dwi.mask import brain_mask
from bids_ketamine.dwi.resample import inside_field_of_view
from bids_ketamine.dwi.rigid import (
    log_euclidean_mean,
    matrix_power,
    matrix_to_params,
    register,
    resample,
    sample_at_points,
)
from bids_ketamine.dwi.transforms import real_logm
from bids_ketamine.dwi.worldgrid import translation_matrix

__all__ = ["MotionResult", "correct_motion", "framewise_displacement", "rotate_bvecs"]

LOGGER = logging.getLogger(__name__)

PARAM_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass
class MotionResult:
    """Outcome of :func:`correct_motion`.

    Attributes
    ----------
    data : ndarray, shape (X, Y, Z, N)
        Motion-corrected series on the input grid, in the reference position: the series'
        mean pose (``reference="mean"``) or the first b=0's.
    bvecs : ndarray, shape (N, 3)
        b-vectors rotated into the reference frame (same convention as the input).
    transforms : ndarray, shape (N, 4, 4)
        Reference-world to volume-world transform of every volume (= its head motion).
    params : pandas.DataFrame
        One row per volume: ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z``
        (rad), ``framewise_displacement`` (mm).
    b0_reference : ndarray, shape (X, Y, Z)
        Mean of the aligned b=0 volumes.
    mask : ndarray of bool, shape (X, Y, Z)
        The brain mask used as the registration target's support (in the first b=0's
        position, where the registrations ran).
    covered : ndarray of bool, shape (X, Y, Z)
        The voxels of the output that every volume saw: their sampling position, moved by the
        volume's motion (and its distortion), lies in the acquired field of view (within half a
        voxel of an edge voxel's centre).  Elsewhere some volume holds no measurement (0 from
        outside its field of view), which a tensor fit reads as a signal: MD of 10^3-10^5 um^2/ms
        where an edge slice of real sub-canon was zeroed that way (by a resampling bug, fixed).
    """

    data: np.ndarray
    bvecs: np.ndarray
    transforms: np.ndarray
    params: pd.DataFrame
    b0_reference: np.ndarray
    mask: np.ndarray
    covered: np.ndarray


def framewise_displacement(params, radius: float = 50.0) -> np.ndarray:
    """Framewise displacement of Power et al. (2012).

    ``FD_i = sum |d trans| + radius * sum |d rot|`` over the three translations (mm) and
    the three rotations (rad) between volume ``i - 1`` and volume ``i``; 0 for the first.

    Parameters
    ----------
    params : pandas.DataFrame or array-like, shape (N, 6)
        Motion parameters; a DataFrame must have the columns ``trans_x ... rot_z``, an
        array the order ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)``.
    radius : float
        Radius (mm) of the sphere on which rotations are turned into displacements.

    Returns
    -------
    ndarray, shape (N,)
    """
    if isinstance(params, pd.DataFrame):
        missing = [c for c in PARAM_COLUMNS if c not in params.columns]
        if missing:
            raise ValueError(f"params table lacks the columns {missing}")
        values = params.loc[:, list(PARAM_COLUMNS)].to_numpy(dtype=float)
    else:
        values = np.asarray(params, dtype=float)
        if values.ndim != 2 or values.shape[1] != 6:
            raise ValueError(f"params must have shape (N, 6), got {values.shape}")
    if radius <= 0:
        raise ValueError(f"radius must be positive (mm), got {radius}")
    diff = np.abs(np.diff(values, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)
    return np.concatenate([[0.0], fd])


def _voxel_rotation_frame(affine: np.ndarray, bvec_convention: str) -> np.ndarray:
    """Matrix taking b-vector components to world directions (orthogonal)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    orthogonal, _ = linalg.polar(linear)  # strips voxel sizes and shears
    if bvec_convention == "fsl" and np.linalg.det(linear) > 0:
        orthogonal = orthogonal @ np.diag([-1.0, 1.0, 1.0])
    return orthogonal


def rotate_bvecs(bvecs, transforms, affine, *, bvec_convention: str = "fsl") -> np.ndarray:
    """Rotate b-vectors by the inverse rotation of each volume's motion.

    Parameters
    ----------
    bvecs : array-like, shape (N, 3) or (3, N)
        b-vectors as the scanner wrote them (zero vectors for b=0 stay zero).
    transforms : array-like, shape (N, 4, 4)
        Reference-world to volume-world transforms (the head motion of each volume).
    affine : array-like, shape (4, 4)
        Voxel-to-world affine of the series.
    bvec_convention : {"fsl", "voxel"}
        ``"fsl"``: BIDS/FSL (x negated for a positive-determinant affine); ``"voxel"``:
        plain voxel axes.  The output has the same convention as the input.

    Returns
    -------
    ndarray, shape (N, 3)
    """
    if bvec_convention not in ("fsl", "voxel"):
        raise ValueError(f"bvec_convention must be 'fsl' or 'voxel', got {bvec_convention!r}")
    transforms = np.asarray(transforms, dtype=float)
    bvecs = _as_rows(bvecs, transforms.shape[0])
    frame = _voxel_rotation_frame(affine, bvec_convention)
    out = np.empty_like(bvecs)
    for n, (vec, matrix) in enumerate(zip(bvecs, transforms)):
        rotation, _ = linalg.polar(matrix[:3, :3])
        world = frame @ vec
        out[n] = frame.T @ (rotation.T @ world)
    return out


def _as_rows(bvecs, n_volumes: int) -> np.ndarray:
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.shape == (3, n_volumes) and n_volumes != 3:
        bvecs = bvecs.T
    if bvecs.shape != (n_volumes, 3):
        raise ValueError(
            f"bvecs must have shape ({n_volumes}, 3) or (3, {n_volumes}), got {bvecs.shape}"
        )
    return bvecs


def _tensor_design(bvals, bvecs_rotated, affine, bvec_convention, dwi_idx) -> np.ndarray:
    """DIPY's tensor design matrix (N, 7): ``log S = design @ [Dxx, Dxy, ..., log S0]``."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import design_matrix

    # DIPY reads gradients in voxel axes: undo FSL's flip (flipping every gradient would
    # give the same prediction, but keep the geometry honest).
    vectors = bvecs_rotated.copy()
    if bvec_convention == "fsl" and np.linalg.det(affine[:3, :3]) > 0:
        vectors[:, 0] *= -1
    norms = np.linalg.norm(vectors, axis=1)
    vectors[norms > 0] /= norms[norms > 0, None]
    vectors[~dwi_idx] = 0.0
    gtab = gradient_table(bvals, bvecs=vectors, b0_threshold=float(bvals[~dwi_idx].max()))
    return design_matrix(gtab)


def _predict_dwis(signal: np.ndarray, design: np.ndarray, dwi_idx) -> np.ndarray:
    """Leave-one-out tensor predictions of the DW volumes.

    Parameters
    ----------
    signal : ndarray, shape (n_voxels, N)
        Current motion-corrected signals in the reference space (masked voxels).
    design : ndarray, shape (N, 7)
        Tensor design matrix (:func:`_tensor_design`).

    Returns
    -------
    ndarray, shape (n_voxels, n_dwi)
        For every DW volume, the signal predicted by the tensor fitted (ordinary least
        squares on the log signal) to all the OTHER volumes.  Leaving the volume out
        matters: a fit that includes it still carries its uncorrected position and pulls
        its registration back towards no motion.  For a linear fit the leave-one-out
        prediction is closed-form: ``(yhat_i - h_ii y_i) / (1 - h_ii)`` with ``h`` the
        hat matrix.
    """
    hat = design @ np.linalg.pinv(design)  # (N, N)
    log_signal = np.log(np.clip(signal, 1e-3, None)).astype(float)
    fitted = log_signal @ hat.T
    leverage = np.clip(np.diag(hat), 0.0, 0.99)
    loo = (fitted - leverage * log_signal) / (1.0 - leverage)
    predicted = np.exp(np.clip(loo[:, dwi_idx], -30.0, 30.0))
    return np.nan_to_num(predicted, nan=0.0, posinf=0.0).astype(np.float32)


def _rigid_log(matrix: np.ndarray) -> np.ndarray:
    """6-vector (translation part, rotation vector) of the logarithm of a rigid transform."""
    log = real_logm(matrix)
    return np.array([*log[:3, 3], log[2, 1], log[0, 2], log[1, 0]])


def _rigid_exp(vector: np.ndarray) -> np.ndarray:
    gen = np.zeros((4, 4))
    wx, wy, wz = vector[3:]
    gen[:3, :3] = [[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]]
    gen[:3, 3] = vector[:3]
    out = linalg.expm(gen)
    out[3] = [0.0, 0.0, 0.0, 1.0]
    return out


#: Precision (SD) credited to the mutual-information alignment of the mean DW image to the mean
#: b=0 (:func:`_block_offset`), per component of the rigid logarithm about the brain's centre:
#: translations (mm), rotations (radians).  Measured on the simulator (small preset, 3 mm;
#: 5 moderate-motion sessions): its error on the DW volumes' common position was 0.05-0.25 mm.
BLOCK_ALIGNMENT_SD = np.array([0.2, 0.2, 0.2, *np.radians([0.2, 0.2, 0.2])])
#: The b=0-pinned position's standard error computed from the volume-to-volume steps (a random
#: walk's) is too optimistic for a head whose motion reverts (the simulator's AR(1), real
#: jitter): measured 0.06 mm predicted against 0.25 mm actual (moderate motion), 0.25 against
#: 1.1 mm (heavy).  It is multiplied by this before the two estimates are weighted.
PINNED_SD_FACTOR = 3.0
#: The mean-DW alignment is used only where the b=0-pinned standard error (before the factor)
#: exceeds this (mm, largest translation component): on the motion tests' blob phantom, whose
#: S0 and MD fields are unrelated (unlike tissue), it was 0.8 mm off while the b=0s pinned the
#: block to 0.08 mm; on the simulator's heads it was 0.05-0.3 mm off.
BLOCK_ALIGNMENT_FROM_SD = 0.1


def _centred_log(matrix: np.ndarray, centre) -> np.ndarray:
    """:func:`_rigid_log` of ``matrix`` with rotations about ``centre`` (world mm)."""
    return _rigid_log(translation_matrix(-np.asarray(centre)) @ matrix @ translation_matrix(centre))


def _centred_exp(vector: np.ndarray, centre) -> np.ndarray:
    return translation_matrix(centre) @ _rigid_exp(vector) @ translation_matrix(-np.asarray(centre))


def _smoothest_model_components(transforms, start, dwi_list, design_dwi, centre,
                                run_index=None) -> tuple[np.ndarray, np.ndarray]:
    """Set the DW motion that the tensor model cannot see to the value smoothest in time.

    A motion pattern across the DW volumes that is itself a quadratic function of the
    gradient direction (a column of the tensor design matrix, including the constant:
    every DW volume moving together) changes the images the way a different tensor
    field would, so model-based registration cannot tell them apart and would let them
    wander from round to round.  Those components (per rigid parameter) are chosen so
    that the whole series' motion, the b=0 volumes' included, changes least from one volume
    to the next (least squares on the first differences of the rigid logarithms, within a
    run).  Registration information alone cannot do better; with nothing else known this is
    the b=0 motion interpolated in time (linear interpolation minimises the differences), so
    it generalises that rule while keeping what the registrations did resolve.

    Returns
    -------
    transforms : ndarray (N, 4, 4)
    common_sd : ndarray (6,)
        Standard error of the common (constant) component, from the scatter of the
        volume-to-volume steps left: how well the b=0 volumes pin the DW volumes' position.
    """
    n_vol = len(transforms)
    deltas = np.zeros((n_vol, 6))
    for volume in dwi_list:
        deltas[volume] = _centred_log(np.linalg.inv(start[volume]) @ transforms[volume], centre)
    trajectory = np.array([_centred_log(matrix, centre) for matrix in start]) + deltas
    steps = [t for t in range(1, n_vol) if run_index is None or run_index[t] == run_index[t - 1]]
    difference = np.zeros((len(steps), n_vol))
    for row, t in enumerate(steps):
        difference[row, t], difference[row, t - 1] = 1.0, -1.0
    # the design's column space (rank 6 for one shell: the squared components sum to the
    # constant), as the constant and an orthonormal basis of the rest
    constant = np.ones((len(dwi_list), 1))
    span = linalg.orth(design_dwi)
    patterns = np.hstack([constant, linalg.orth(span - constant @ (constant.T @ span) / len(dwi_list))])
    design = np.zeros((n_vol, patterns.shape[1]))
    design[dwi_list] = patterns
    lhs, rhs = difference @ design, difference @ trajectory
    coef = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    dof = max(len(steps) - patterns.shape[1], 1)
    step_variance = ((rhs - lhs @ coef) ** 2).sum(axis=0) / dof
    common_sd = np.sqrt(step_variance * np.linalg.pinv(lhs.T @ lhs)[0, 0])
    deltas[dwi_list] -= patterns @ coef
    out = transforms.copy()
    for volume in dwi_list:
        out[volume] = start[volume] @ _centred_exp(deltas[volume], centre)
    return out, common_sd


def _block_offset(b0_mean, dw_mean, affine, mask, centre) -> np.ndarray:
    """Centred rigid logarithm of the transform that aligns the mean DW image to the mean b=0.

    Mutual information (DIPY's :class:`~dipy.align.imaffine.AffineRegistration`, rigid): the
    two contrasts differ (CSF is bright at b=0 and dark at b=1000), which least squares cannot
    bridge.  One registration per round, of images averaged over many volumes.
    """
    import warnings

    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    static_mask = ndimage.binary_dilation(mask, iterations=2).astype(np.int32)
    registration = AffineRegistration(
        metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
        level_iters=[100, 50], sigmas=[1.0, 0.0], factors=[2, 1], verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DIPY's optimizer notes on its stopping rule
        correction = registration.optimize(b0_mean, dw_mean, RigidTransform3D(), None, affine, affine,
                                           static_mask=static_mask).affine
    return _centred_log(correction, centre)


def _interpolate_between_b0s(transforms: np.ndarray, b0_idx: np.ndarray,
                             run_index: np.ndarray | None = None) -> np.ndarray:
    """Starting transforms of every volume: the b=0 motion interpolated in time.

    Between two b=0 volumes the log-Euclidean (geodesic) interpolation of their
    transforms; before the first and after the last b=0, the nearest one.  This follows
    slow head drift, and sets the overall position of the diffusion-weighted volumes,
    which their model-based registration cannot (see :func:`correct_motion`).  With
    ``run_index`` (the run of each volume, for joined runs) only the b=0s of a volume's
    own run are used: the head moves between runs, not gradually across them.
    """
    out = transforms.copy()
    for index in range(len(transforms)):
        own = b0_idx if run_index is None else b0_idx[run_index[b0_idx] == run_index[index]]
        before = own[own <= index]
        after = own[own >= index]
        if before.size and after.size and before[-1] != after[0]:
            start, stop = before[-1], after[0]
            weight = (index - start) / (stop - start)
            step = np.linalg.inv(transforms[start]) @ transforms[stop]
            out[index] = transforms[start] @ matrix_power(step, weight)
        else:
            out[index] = transforms[before[-1] if before.size else after[0]]
    return out


def correct_motion(
    data,
    affine,
    bvals,
    bvecs,
    *,
    b0_threshold: float = 50,
    mask=None,
    n_iter: int = 2,
    n_threads: int = 1,
    bvec_convention: str = "fsl",
    factors=(4, 2, 1),
    constrain_model_space: bool = True,
    run_lengths=None,
    distorted=None,
    distortion=None,
    reference: str = "mean",
) -> MotionResult:
    """Rigid motion correction of a DWI series to model predictions, rotating b-vectors.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        The DWI series (denoised first, if at all: this interpolates).
    affine : array-like, shape (4, 4)
        Voxel-to-world affine (RAS+ oriented data expected, as the caller provides).
    bvals : array-like, shape (N,)
        b-values (s/mm^2).
    bvecs : array-like, shape (N, 3) or (3, N)
        b-vectors in the BIDS/FSL convention (see ``bvec_convention``).
    b0_threshold : float
        Volumes with ``bval <= b0_threshold`` are b=0.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask in the reference position; by default
        :func:`bids_ketamine.dwi.mask.brain_mask` of the first b=0.
    n_iter : int
        Rounds of tensor fit, prediction and registration of the DW volumes (>= 1).
    n_threads : int
        Volumes registered in parallel.
    bvec_convention : {"fsl", "voxel"}
        See :func:`rotate_bvecs`.
    factors : sequence of int
        Pyramid factors of the registrations of the b=0s to the first; the later ones
        (b=0s to their mean, DW volumes to predictions), which start close, use the
        last two.
    run_lengths : sequence of int, optional
        For runs joined into one series (``--combine-runs average``): the number of volumes
        of each run, in order.  Every run needs a b=0; the DW volumes start from the b=0
        motion of their own run only.
    constrain_model_space : bool
        Set the DW motion components that the tensor model cannot distinguish from
        anisotropy by smoothness in time and the mean DW image's alignment to the mean b=0
        (see Notes); False leaves them to the registrations.
    distorted : ndarray, shape (X, Y, Z, N), optional
        With ``distortion``: the series before distortion correction, ``data`` being its
        unwarped copy.  The motion is estimated on ``data``; the output is resampled once from
        ``distorted`` through the motion and the distortion composed (one interpolation instead
        of two).
    distortion : bids_ketamine.dwi.sdc.DisplacementField, optional
        The distortion of ``distorted`` on its grid: the same for every volume, in the
        scanner's frame (where it was estimated, from the series' mean b=0).
    reference : {"mean", "first_b0"}
        The head position of the output: the series' mean pose (log-Euclidean mean of every
        volume's motion, b=0 and DW alike; of the first run's volumes with ``run_lengths``), or
        the first b=0's (the registrations' frame, the rule before 2026-12-05).  See Notes.

    Returns
    -------
    MotionResult

    Raises
    ------
    ValueError
        On inconsistent shapes, no b=0 volume, or a bad option.

    Notes
    -----
    What a tensor prediction can and cannot tell.  A pattern of motion across the DW
    volumes that is itself a quadratic function of the gradient direction (the column
    space of the tensor design matrix, the constant included, i.e. all DW volumes moving
    together) changes the images the way a slightly different tensor field would; a
    voxel-wise tensor fit absorbs it, so registration to predictions cannot recover it (to
    first order), and left free these components wander from round to round.  Two other
    sources of information set them (issue 20):

    1. time: they are chosen so that the whole series' motion, the b=0 volumes' included,
       changes least from one volume to the next (:func:`_smoothest_model_components`; with
       no registration information this is the b=0 motion interpolated in time, the rule
       used before);
    2. contrast: the mean DW image is aligned to the mean b=0 by mutual information
       (:func:`_block_offset`), which sees the DW volumes' common position directly.  The
       two estimates of that common position are weighted by their precision
       (:data:`BLOCK_ALIGNMENT_SD`, and the b=0-pinned one's from the scatter of the
       volume-to-volume steps, :data:`PINNED_SD_FACTOR`).  It is computed only where the
       b=0s pin the position poorly (:data:`BLOCK_ALIGNMENT_FROM_SD`): under slow motion
       the b=0s decide, under heavy motion the alignment does.

    Measured on the simulator's small preset (30 directions, a b=0 every 6 volumes, AR(1)
    motion about the scanner origin; ``benchmarks/precision_benchmark.py``'s sessions), RMS
    error of the DW volumes' position (translation at the brain, rotation), before -> after:
    moderate motion (mean FD 0.8 mm, 5 sessions; smoothness only) 0.24 mm / 0.21 deg ->
    0.19 mm / 0.16 deg; heavy motion (mean FD 3.2 mm, 24 sessions) 1.05 -> 0.63 mm (3 of them:
    0.79 -> 0.36 deg), where holding the components at the b=0 interpolation had left the
    whole DW block 1.2 mm away from the b=0s in one session.  What is left lies in the
    non-constant patterns.  The components outside the model are recovered to about 0.03 mm.

    The output's reference. The registrations run in the first b=0's frame, but the output is
    resampled to the series' mean pose: with the first b=0's, that volume is never interpolated
    while every other is, and under slow drift the DW volumes sit on one side of it; the likely
    mechanism (not measured apart) is that interpolation then smooths the b=0 mean and the DW
    volumes differently where the signal changes fast (at CSF edges), which biases MD there. At
    the mean pose every volume is interpolated, with the least total displacement (the
    within-series analogue of the sessions' midpoint). Measured on 12 null subjects
    (``benchmarks/null_sources.py``'s noise-free arm: moderate motion, exact sampling,
    repositioning 2 mm / 2 degrees), the false MD change, RMS over 12 subjects x 7 ROIs and
    worst: ``roi_gm_weighted_median`` 0.53 % and 2.41 % with the first b=0's reference, 0.22 %
    and 0.79 % with the mean pose; ``median`` 0.47 % and 2.08 %, 0.24 % and 0.74 %. The motion
    estimates themselves are the same (docs/participant.md, "Moderate motion: where the error
    comes from"). Under heavy motion (mean FD 3 mm, noisy null trial, 12 subjects) the mean pose
    is the less precise of the two (``roi_gm_weighted_median`` SD 0.46 % against 0.35 %, worst
    1.46 % against 0.89 %), for a reason not known; the pose of the b=0 nearest the mean pose
    falls between the two at both levels (moderate 0.38 %, worst 1.25 %; heavy 0.39 %, 1.51 %).

    Joined runs (``run_lengths``) take the first run's mean pose.  What matters is that the b=0
    and DW volumes are displaced alike on average, which holds within every run at that pose
    (a later run's volumes share their run's repositioning), whereas the mean over all runs sits
    between the runs, where no volume is, and displaces every volume by about half the
    repositioning.  On the demo subject's two runs (4 mm, the second a whole voxel away,
    ``tests/test_combine_runs.py``) BA10_L's MD was -1.8 % of the truth with the first b=0's
    pose, -5.5 % with the mean over both runs and -4.4 % with the first run's mean pose (the
    other ROIs within 2.6 % in all three).
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be a 4-D series, got shape {data.shape}")
    n_vol = data.shape[3]
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.shape != (n_vol,):
        raise ValueError(f"{bvals.size} b-values for {n_vol} volumes")
    bvecs = _as_rows(bvecs, n_vol)
    if bvec_convention not in ("fsl", "voxel"):
        raise ValueError(f"bvec_convention must be 'fsl' or 'voxel', got {bvec_convention!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if reference not in ("mean", "first_b0"):
        raise ValueError(f"reference must be 'mean' or 'first_b0', got {reference!r}")
    is_b0 = bvals <= b0_threshold
    if not is_b0.any():
        raise ValueError(
            f"no b=0 volume (bval <= {b0_threshold}): motion correction needs one as reference"
        )
    b0_idx = np.flatnonzero(is_b0)
    dwi_idx = ~is_b0
    run_index = None
    if run_lengths is not None:
        if sum(run_lengths) != n_vol or min(run_lengths) < 1:
            raise ValueError(f"run_lengths {list(run_lengths)} do not add up to the {n_vol} volumes")
        run_index = np.repeat(np.arange(len(run_lengths)), run_lengths)
        if len(np.unique(run_index[b0_idx])) != len(run_lengths):
            raise ValueError("every joined run needs a b=0 volume")
    first_b0 = np.asarray(data[..., b0_idx[0]], dtype=float)
    if mask is None:
        mask = brain_mask(first_b0)
        if not mask.any():
            raise ValueError("could not find the brain in the first b=0: pass a mask")
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != data.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} differs from the image {data.shape[:3]}")
        if not mask.any():
            raise ValueError("mask is empty")
    if (distorted is None) != (distortion is None):
        raise ValueError("give both distorted and distortion, or neither")
    if distorted is not None and np.shape(distorted) != data.shape:
        raise ValueError(f"distorted series shape {np.shape(distorted)} differs from the series {data.shape}")
    shape = data.shape[:3]
    transforms = np.tile(np.eye(4), (n_vol, 1, 1))

    def _map(function, items):
        """``[function(item) for item in items]``, on ``n_threads`` threads."""
        if n_threads == 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(n_threads) as pool:
            return list(pool.map(function, items))

    def _volume(index):
        return np.asarray(data[..., index], dtype=np.float32)

    def _register_all(indices, target_of, **options):
        def _one(index):
            return register(
                target_of(index), affine, _volume(index), affine, fixed_mask=mask,
                init=transforms[index], **options,
            ).matrix

        for index, matrix in zip(indices, _map(_one, indices)):
            transforms[index] = matrix

    def _resampled(index, order):
        return resample(_volume(index), affine, shape, affine, transforms[index], order=order)

    mask_points = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]

    def _masked(index):
        return sample_at_points(_volume(index), affine, mask_points, transforms[index], order=1)

    with threadpool_limits(limits=1, user_api="blas"):
        # 1. b=0s: to the first, then to the mean of the aligned ones.
        if b0_idx.size > 1:
            _register_all(b0_idx[1:], lambda _: first_b0, metric="ls", intensity_scale=True,
                          factors=factors)
            b0_mean = np.mean([_resampled(i, order=1) for i in b0_idx], axis=0)
            _register_all(b0_idx, lambda _: b0_mean, metric="ls", intensity_scale=True,
                          factors=factors[-2:], max_iter=(10, 5))
        # 2. DW volumes: to tensor predictions of themselves (masked voxels only).
        dwi_list = np.flatnonzero(dwi_idx)
        column = {index: k for k, index in enumerate(dwi_list)}
        transforms[:] = _interpolate_between_b0s(transforms, b0_idx, run_index)
        start = transforms.copy()
        centre = mask_points.mean(axis=0)

        @functools.cache
        def _aligned_b0_mean():
            # the b=0s do not move after step 1: their mean is computed once, when first needed
            return np.mean([_resampled(i, order=1) for i in b0_idx], axis=0)

        for round_ in range(n_iter if dwi_list.size else 0):
            signal = np.stack(_map(_masked, range(n_vol)), axis=1)
            rotated = rotate_bvecs(bvecs, transforms, affine, bvec_convention=bvec_convention)
            design = _tensor_design(bvals, rotated, affine, bvec_convention, dwi_idx)
            predicted = _predict_dwis(signal, design, dwi_idx)
            del signal

            def _prediction(index, predicted=predicted):
                image = np.zeros(shape, dtype=np.float32)
                image[mask] = predicted[:, column[index]]
                return image

            # The DW volumes start close (b=0 interpolation, previous round): two levels.
            _register_all(dwi_list, _prediction, metric="ls", intensity_scale=True,
                          factors=factors[-2:], max_iter=(10, 5))
            if constrain_model_space and dwi_list.size > design.shape[1]:
                transforms[:], common_sd = _smoothest_model_components(
                    transforms, start, dwi_list, design[dwi_list], centre, run_index)
                if common_sd[:3].max() > BLOCK_ALIGNMENT_FROM_SD:
                    # the DW volumes' common position, also seen through their mean image:
                    # each estimate weighted by its precision
                    dw_mean = np.mean([_resampled(i, order=1) for i in dwi_list], axis=0)
                    offset = _block_offset(_aligned_b0_mean(), dw_mean, affine, mask, centre)
                    pinned_sd = PINNED_SD_FACTOR * common_sd
                    weight = pinned_sd ** 2 / (pinned_sd ** 2 + BLOCK_ALIGNMENT_SD ** 2)
                    transforms[dwi_list] = transforms[dwi_list] @ _centred_exp(weight * offset, centre)
                    LOGGER.debug("DW block: b=0-pinned SD %s, MI offset %s, weight %s",
                                 common_sd.round(3), offset.round(3), weight.round(2))
            LOGGER.debug("motion correction round %d done", round_ + 1)
        if reference == "mean":
            # 3. The output's reference at the series' mean pose (joined runs: the first run's):
            # a point y there is the first b=0 frame's point mean^-1 y (Notes).
            own = transforms if run_index is None else transforms[run_index == 0]
            transforms[:] = transforms @ np.linalg.inv(log_euclidean_mean(own))
        # 4. Resample everything once from the input.
        corrected = np.empty(shape + (n_vol,), dtype=np.float32)

        grid = np.indices(shape, dtype=float).reshape(3, -1)

        def _positions(index):
            to_voxel = np.linalg.inv(affine) @ transforms[index] @ affine
            return to_voxel[:3, :3] @ grid + to_voxel[:3, 3:4]

        uncovered = [None] * n_vol  # per volume: the output voxels outside its field of view

        def _final(index):
            positions = _positions(index)
            if distortion is None:
                corrected[..., index] = _resampled(index, order=3)
            else:
                shifted = distortion.positions(positions)
                volume = np.asarray(distorted[..., index], dtype=np.float32)
                corrected[..., index] = distortion.sample(volume, positions, order=3,
                                                          shifted=shifted).reshape(shape)
                positions = shifted
            uncovered[index] = np.flatnonzero(~inside_field_of_view(positions, shape))

        _map(_final, range(n_vol))
        covered = np.ones(shape, dtype=bool)
        covered.flat[np.concatenate(uncovered)] = False
    if np.min(data if distorted is None else distorted) >= 0:
        # cubic splines overshoot: keep non-negative data non-negative
        np.clip(corrected, 0, None, out=corrected)
    b0_reference = corrected[..., b0_idx].mean(axis=-1)
    params = pd.DataFrame(
        [matrix_to_params(m, atol=1e-3) for m in transforms], columns=list(PARAM_COLUMNS)
    )
    params.index.name = "volume"
    params["framewise_displacement"] = framewise_displacement(params)
    return MotionResult(
        data=corrected,
        bvecs=rotate_bvecs(bvecs, transforms, affine, bvec_convention=bvec_convention),
        transforms=transforms,
        params=params,
        b0_reference=b0_reference,
        mask=mask,
        covered=covered,
    )
