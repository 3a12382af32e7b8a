"""Voxel selection made once per participant, from all sessions together.

Each session's ROI statistics used to keep or drop a voxel from that session's own noisy MD
(the CSF exclusion) and its own brain mask, so that the sessions of a participant averaged
different voxels and noise decided which (issue 20).  Here every such decision is a function of
the *anatomical point* only, the same in every session:

- the point's MD used for the CSF exclusion is the average of every session's MD at that point
  (each session's map sampled at the point through its rigid transform to the midpoint space);
- the point is inside the brain when it is inside every session's brain mask (intersection).

For a voxel of session ``i`` the point is the voxel centre; session ``i``'s own value is read at
its voxel (no interpolation), the other sessions' values by trilinear interpolation.  The
average of two values does not depend on their order, so swapping baseline and follow-up gives
bit-identical selections.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check(maps, affines, to_midpoint) -> None:
    if not (len(maps) == len(affines) == len(to_midpoint)) or not maps:
        raise ValueError(
            f"need one map, affine and transform per session, got {len(maps)}, {len(affines)}, "
            f"{len(to_midpoint)}"
        )
    for index, (data, affine, rigid) in enumerate(zip(maps, affines, to_midpoint)):
        if np.ndim(data) != 3:
            raise ValueError(f"session {index}: a 3-D map is needed, got shape {np.shape(data)}")
        if np.shape(affine) != (4, 4) or np.shape(rigid) != (4, 4):
            raise ValueError(f"session {index}: affine and transform must be 4x4 matrices")


def sample_sessions_on_grid(maps, affines, to_midpoint, index: int, *, order: int = 1,
                            cval: float = np.nan) -> np.ndarray:
    """Every session's map sampled at the voxel centres of session ``index``.

    Parameters
    ----------
    maps : sequence of ndarray (3-D)
        One map per session, on that session's native grid.
    affines : sequence of ndarray (4, 4)
        Voxel -> native world (mm) of each session's grid.
    to_midpoint : sequence of ndarray (4, 4)
        Native world -> midpoint world of each session (the ``from-dwi_to-midpoint`` transforms).
    index : int
        The session whose grid is sampled.
    order : int
        Interpolation order for the other sessions (1: trilinear, 0: nearest).
    cval : float
        Value outside another session's field of view.

    Returns
    -------
    ndarray (n_sessions, X, Y, Z)
        Row ``index`` is ``maps[index]`` itself (exactly).
    """
    _check(maps, affines, to_midpoint)
    target = np.asarray(maps[index])
    shape = target.shape
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    # voxel centres of session `index` in midpoint world coordinates
    to_mid = np.asarray(to_midpoint[index], float) @ np.asarray(affines[index], float)
    stack = np.empty((len(maps),) + shape, dtype=float)
    for other, (data, affine, rigid) in enumerate(zip(maps, affines, to_midpoint)):
        if other == index:
            stack[other] = target
            continue
        # midpoint world -> voxel of session `other`
        voxel_map = np.linalg.inv(np.asarray(rigid, float) @ np.asarray(affine, float)) @ to_mid
        coords = voxel_map[:3, :3] @ ijk + voxel_map[:3, 3:4]
        stack[other] = ndimage.map_coordinates(np.asarray(data, float), coords, order=order,
                                               mode="constant", cval=cval).reshape(shape)
    return stack


def participant_selection_maps(md_maps, masks, affines, to_midpoint, index: int):
    """The participant's shared MD and brain mask on the grid of session ``index``.

    Parameters
    ----------
    md_maps : sequence of ndarray (3-D)
        Each session's MD map (um^2/ms) on its native grid.
    masks : sequence of ndarray (3-D, bool)
        Each session's brain mask.
    affines, to_midpoint : sequences of ndarray (4, 4)
        As in :func:`sample_sessions_on_grid`.
    index : int
        The session whose grid is returned.

    Returns
    -------
    shared_md : ndarray (3-D float32)
        Mean MD over the sessions at each voxel centre (NaN where a session has no finite value:
        outside its field of view); the CSF exclusion is applied to this map in every session.
    shared_mask : ndarray (3-D bool)
        Inside every session's brain mask (masks sampled with nearest neighbour).
    """
    for name, group in (("md_maps", md_maps), ("masks", masks)):
        if len(group) != len(affines):
            raise ValueError(f"{name}: {len(group)} maps for {len(affines)} sessions")
    for i, (md, mask) in enumerate(zip(md_maps, masks)):
        if np.shape(md) != np.shape(mask):
            raise ValueError(f"session {i}: MD map {np.shape(md)} and mask {np.shape(mask)} differ")
    md_stack = sample_sessions_on_grid(md_maps, affines, to_midpoint, index, order=1)
    mask_stack = sample_sessions_on_grid([np.asarray(m, float) for m in masks], affines, to_midpoint,
                                         index, order=0, cval=0.0)
    shared_mask = np.all(mask_stack > 0.5, axis=0)
    # mean of the sessions, written as a sum so that it does not depend on the sessions' order
    # for two sessions (a + b == b + a exactly)
    shared_md = np.sum(md_stack, axis=0) / len(md_maps)
    return shared_md.astype(np.float32), shared_mask
