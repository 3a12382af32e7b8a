"""Within-subject midpoint space and registration to a template.

Transforms are 4x4 world (mm) matrices in the "pull" convention of
:mod:`bids_ketamine.dwi.rigid`: a transform from space A to space B maps a point of A's
world to the corresponding point of B's world, so that an image of B resampled into A is
``image_B(T @ x)``.

Midpoint space (:func:`midpoint_space`), unbiased between sessions:

1. every ordered pair ``(i, j)`` is registered rigidly (normalised correlation), each
   from the scanner coordinates and from the centres of mass, keeping the better fit;
   each direction is then registered again from the inverse of the other's result (the
   better fit kept), so that both directions end in the same minimum;
   the two directions are combined in the log
   domain, ``S_ij = expm((logm(T_ij) - logm(T_ji)) / 2)``, so ``S_ji = S_ij^-1``
   exactly and swapping two inputs swaps the results;
2. seen from reference ``r``, the midpoint is the log-Euclidean mean of the transforms
   ``S_ri``: ``M_i^(r) = S_ri @ expm(-mean_k logm(S_rk))`` (midpoint -> session ``i``);
   for two sessions this is ``T^(1/2)`` and ``T^(-1/2)``; the final ``M_i`` is the
   log-Euclidean mean of ``M_i^(r)`` over all references, so no session is privileged
   and the result does not depend on the input order;
3. the midpoint grid is axis-aligned in world space, with isotropic voxels of the finest
   input voxel size, covering the union of all inputs' fields of view (again
   order-independent);
4. the midpoint template is the mean of the sessions, each resampled ONCE (cubic
   B-spline) through its ``M_i``.

Template registration (:func:`register_to_template`): centre-of-mass translation, then
rigid and affine (12 dof) registration by normalised correlation with this package's
Gauss-Newton optimiser (:func:`bids_ketamine.dwi.rigid.register`; DIPY's
``AffineRegistration`` with mutual information is available as ``affine_metric="mi"``
and is slower), then DIPY's ``SymmetricDiffeomorphicRegistration`` (SyN) with the
cross-correlation metric, both on brain-masked images.  The default fixed image is
:func:`template_b0_contrast`: a b=0-like (T2-weighted: CSF bright, grey matter brighter
than white) image synthesised from the template's tissue probability maps at the working
resolution (2.5 mm), because a DWI b=0 does not look like a T1w image.

Kept as one module (~440 lines): the template contrast and the template registration (affine,
SyN, saving and loading the mapping) that uses it.  The midpoint space is computed in
:mod:`bids_ketamine.dwi.midpoint` (re-exported here), the image and grid helpers both use in
:mod:`bids_ketamine.dwi.worldgrid`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.dwi.midpoint import MidpointResult, midpoint_space
from bids_ketamine.dwi.rigid import register, resample
from bids_ketamine.dwi.worldgrid import (as_volume, centre_of_mass, float_data, fov_corners,
                                         translation_matrix, world_image)
from bids_ketamine.utils.images import as_image

__all__ = [
    "MidpointResult",
    "TemplateRegistration",
    "midpoint_space",
    "save_matrix",
    "register_to_template",
    "template_b0_contrast",
]

#: b=0 (T2-weighted) intensities of the tissue classes, relative to white matter.
B0_TISSUE_INTENSITY = {"wm": 1.0, "gm": 1.35, "csf": 2.5}


# ---------------------------------------------------------------------------------------
# Template contrast
# ---------------------------------------------------------------------------------------
def template_b0_contrast(template, resolution: float = 2.5, *, intensities=None) -> nib.Nifti1Image:
    """A b=0-like (T2-weighted) image of a template, from its tissue probability maps.

    ``S = I_wm * wm + I_gm * gm + I_csf * csf`` inside the template's brain mask (zero
    outside, so ``image > 0`` is the brain mask at this resolution), smoothed with a
    Gaussian of FWHM = ``resolution`` and resampled onto an axis-aligned grid of
    ``resolution`` mm.

    Parameters
    ----------
    template : bids_ketamine.resources.Template
        Needs ``.gm``, ``.wm``, ``.csf``, ``.mask`` paths (same grid).
    resolution : float
        Working voxel size (mm); 2-3 mm suits DWI.
    intensities : dict, optional
        ``{"wm": ..., "gm": ..., "csf": ...}``; :data:`B0_TISSUE_INTENSITY` by default
        (CSF brightest, as in a b=0 at a typical echo time).

    Returns
    -------
    nibabel.Nifti1Image
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive (mm), got {resolution}")
    intensities = dict(B0_TISSUE_INTENSITY, **(intensities or {}))
    maps = {key: nib.load(str(getattr(template, key))) for key in ("wm", "gm", "csf", "mask")}
    affine = maps["gm"].affine
    signal = sum(intensities[key] * float_data(maps[key]) for key in ("wm", "gm", "csf"))
    signal = signal * (float_data(maps["mask"]) > 0)
    in_vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = np.sqrt(max(resolution**2 - in_vox.max() ** 2, 0.0)) / 2.355 / in_vox
    smoothed = ndimage.gaussian_filter(signal, sigma)
    extent = np.asarray(maps["gm"].shape) * in_vox
    shape = tuple(int(np.ceil(e / resolution)) for e in extent)
    corners = fov_corners(maps["gm"].shape, affine)
    grid = np.diag([resolution, resolution, resolution, 1.0])
    grid[:3, 3] = corners.min(axis=0) + resolution / 2.0
    out = resample(smoothed, affine, shape, grid, order=1)
    brain = resample((float_data(maps["mask"]) > 0).astype(np.float32), affine, shape, grid, order=1)
    out = np.where(brain >= 0.5, out, 0.0).astype(np.float32)
    return world_image(out, grid)


# ---------------------------------------------------------------------------------------
# Template registration
# ---------------------------------------------------------------------------------------
#: What each file of a saved registration means (written into its JSON sidecar).
CONVENTIONS = {
    "affine": "4x4 matrix (text), template world (mm, RAS) -> subject world: a subject image "
              "resampled to the template is subject(affine @ x) before the nonlinear part",
    "warp": "displacement field v (mm, world RAS axes) on the template grid, 5-D NIfTI "
            "(X, Y, Z, 1, 3): template point x corresponds to subject point affine @ (x + v(x)); "
            "pulls subject images into the template (DIPY mapping.backward, is_inverse=True)",
    "invwarp": "inverse displacement field w on the same grid: subject point y corresponds to "
               "template point z + w(z) with z = inv(affine) @ y (DIPY mapping.forward); pulls "
               "template images onto a subject grid",
}


def sidecar_path(path) -> str:
    """The JSON sidecar of a transform file (``x_warp.nii.gz`` -> ``x_warp.json``)."""
    path = str(path)
    for extension in (".nii.gz", ".nii", ".txt"):
        if path.endswith(extension):
            return path[: -len(extension)] + ".json"
    return path + ".json"


def save_matrix(path, matrix, convention: str) -> str:
    """Write a 4x4 transform as text (one row per line, 10 decimals: ``np.loadtxt`` reads it)
    with a JSON sidecar stating its ``convention``, both atomically; returns the path."""
    from bids_ketamine.utils.atomic import atomic_write_text

    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"a transform must be a 4x4 matrix, got shape {matrix.shape}")
    atomic_write_text(path, "".join(" ".join(f"{value:.10f}" for value in row) + "\n" for row in matrix))
    atomic_write_text(sidecar_path(path), json.dumps({"Convention": convention}, indent=2))
    return str(path)


@dataclass
class TemplateRegistration:
    """Affine + SyN registration of a subject image to a template.

    Attributes
    ----------
    affine : ndarray (4, 4)
        Template-world to subject-world transform (DIPY's ``prealign``).
    mapping : dipy.align.imwarp.DiffeomorphicMap
        The nonlinear map (it includes ``affine``).
    template_shape, template_affine :
        The template (working) grid.
    moving_shape, moving_affine :
        The subject grid the registration used.
    """

    affine: np.ndarray
    mapping: object
    template_shape: tuple
    template_affine: np.ndarray
    moving_shape: tuple
    moving_affine: np.ndarray

    def to_template(self, img, order: int = 1, reference=None) -> nib.Nifti1Image:
        """Warp a subject image (any grid of the subject, 3-D or 4-D) to the template grid.

        ``order`` 0: nearest neighbour (labels), otherwise trilinear.  ``reference`` (an
        image on any grid of the template space) sets the output grid; by default the
        registration's working grid.
        """
        img = as_image(img)
        out_shape, out_affine = self.template_shape, self.template_affine
        if reference is not None:
            reference = as_image(reference)
            out_shape, out_affine = tuple(reference.shape[:3]), reference.affine
        interpolation = "nearest" if order == 0 else "linear"
        data = np.asanyarray(img.dataobj)

        def _one(volume):
            volume = volume if order == 0 else np.asarray(volume, dtype=np.float32)
            return self.mapping.transform(
                volume, interpolation=interpolation,
                image_world2grid=np.linalg.inv(img.affine),
                out_shape=out_shape, out_grid2world=out_affine,
            )

        out = _one(data) if data.ndim == 3 else np.stack(
            [_one(data[..., k]) for k in range(data.shape[3])], axis=-1)
        return world_image(out.astype(data.dtype if order == 0 else np.float32), out_affine)

    def from_template(self, img, ref_img, order: int = 0) -> nib.Nifti1Image:
        """Warp a template-space image (e.g. atlas labels) onto a subject grid.

        Parameters
        ----------
        img : nibabel image
            On any grid of the template space.
        ref_img : nibabel image
            Defines the output grid (any grid of the subject, e.g. the DWI grid).
        order : int
            0: nearest neighbour (labels, the default), otherwise trilinear.
        """
        img, ref_img = as_image(img), as_image(ref_img)
        interpolation = "nearest" if order == 0 else "linear"
        data = np.asanyarray(img.dataobj)
        if order == 0:
            data = data.astype(np.int32) if np.issubdtype(data.dtype, np.integer) else data.astype(np.float32)
        else:
            data = data.astype(np.float32)
        out = self.mapping.transform_inverse(
            data, interpolation=interpolation,
            image_world2grid=np.linalg.inv(img.affine),
            out_shape=ref_img.shape[:3], out_grid2world=ref_img.affine,
        )
        dtype = np.asanyarray(img.dataobj).dtype if order == 0 else np.float32
        return world_image(np.asarray(out).astype(dtype), ref_img.affine)

    def save(self, prefix) -> dict:
        """Write the registration; returns the paths written.

        Files (``prefix`` + suffix):

        - ``_affine.txt``: the 4x4 template-world to subject-world matrix (mm, RAS world
          coordinates, the pull convention: a subject image resampled to the template
          is ``subject(affine @ x)`` before the nonlinear part).
        - ``_warp.nii.gz``: displacement field ``v`` (mm, world RAS axes) on the
          template grid, a 5-D NIfTI vector image (X, Y, Z, 1, 3; intent VECTOR):
          the template-world point ``x`` corresponds to the subject-world point
          ``A @ (x + v(x))`` with ``A`` the affine above.  This is the map that pulls
          subject images into the template (:meth:`to_template`).  (DIPY's
          ``mapping.backward`` of the map SyN returns, which has ``is_inverse`` set.)
        - ``_invwarp.nii.gz``: the inverse field ``w`` on the same grid: the
          subject-world point ``y`` corresponds to the template point ``z + w(z)`` with
          ``z = A^-1 @ y`` (DIPY's ``mapping.forward``); used by :meth:`from_template`.
        - ``_warp.json``: the rest of DIPY's map (grids, ``prealign``, ``is_inverse``) so
          that :meth:`load` rebuilds the identical ``DiffeomorphicMap``, and the warp's
          convention; ``_affine.json`` and ``_invwarp.json`` state the convention of the
          other two files (as DIPY's ``write_mapping`` documents its files).
        """
        prefix = str(prefix)
        paths = {
            "affine": prefix + "_affine.txt",
            "warp": prefix + "_warp.nii.gz",
            "invwarp": prefix + "_invwarp.nii.gz",
            "json": prefix + "_warp.json",
        }
        np.savetxt(paths["affine"], self.affine, fmt="%.10f")
        for key in ("affine", "invwarp"):
            Path(sidecar_path(paths[key])).write_text(json.dumps({"Convention": CONVENTIONS[key]}, indent=2))
        mp = self.mapping
        if not mp.is_inverse:
            raise ValueError("save expects the map as SyN returns it (is_inverse=True)")
        for key, field_ in (("warp", mp.backward), ("invwarp", mp.forward)):
            vec = nib.Nifti1Image(
                np.asarray(field_, dtype=np.float32)[:, :, :, None, :], mp.disp_grid2world
            )
            vec.header.set_intent("vector")
            vec.header.set_xyzt_units("mm")
            vec.to_filename(paths[key])

        def _mat(m):
            return None if m is None else np.asarray(m, dtype=float).tolist()

        meta = {
            "Description": "DIPY DiffeomorphicMap of a bids_ketamine template registration",
            "Convention": CONVENTIONS["warp"],
            "is_inverse": bool(mp.is_inverse),
            "prealign": _mat(mp.prealign),
            "disp_shape": [int(v) for v in mp.disp_shape],
            "disp_grid2world": _mat(mp.disp_grid2world),
            "domain_shape": [int(v) for v in mp.domain_shape],
            "domain_grid2world": _mat(mp.domain_grid2world),
            "codomain_shape": [int(v) for v in mp.codomain_shape],
            "codomain_grid2world": _mat(mp.codomain_grid2world),
            "template_shape": [int(v) for v in self.template_shape],
            "template_affine": _mat(self.template_affine),
            "moving_shape": [int(v) for v in self.moving_shape],
            "moving_affine": _mat(self.moving_affine),
        }
        Path(paths["json"]).write_text(json.dumps(meta, indent=2))
        return paths

    @classmethod
    def load(cls, prefix) -> "TemplateRegistration":
        """Read a registration written by :meth:`save` under ``prefix``."""
        prefix = str(prefix)
        return cls.from_files(prefix + "_affine.txt", prefix + "_warp.nii.gz", prefix + "_invwarp.nii.gz")

    @classmethod
    def from_files(cls, affine_file, warp_file, inverse_warp_file) -> "TemplateRegistration":
        """Read a registration from the files :meth:`save` wrote (the warp's JSON sidecar,
        next to ``warp_file``, holds the rest of the map)."""
        from dipy.align.imwarp import DiffeomorphicMap

        meta = json.loads(Path(sidecar_path(warp_file)).read_text())

        def _arr(v):
            return None if v is None else np.asarray(v, dtype=float)

        mapping = DiffeomorphicMap(
            3, meta["disp_shape"], disp_grid2world=_arr(meta["disp_grid2world"]),
            domain_shape=meta["domain_shape"], domain_grid2world=_arr(meta["domain_grid2world"]),
            codomain_shape=meta["codomain_shape"],
            codomain_grid2world=_arr(meta["codomain_grid2world"]),
            prealign=_arr(meta["prealign"]),
        )
        mapping.is_inverse = meta["is_inverse"]
        for attr, path in (("backward", warp_file), ("forward", inverse_warp_file)):
            field_ = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)[:, :, :, 0, :]
            setattr(mapping, attr, np.ascontiguousarray(field_))
        return cls(
            affine=np.loadtxt(str(affine_file)),
            mapping=mapping,
            template_shape=tuple(meta["template_shape"]),
            template_affine=_arr(meta["template_affine"]),
            moving_shape=tuple(meta["moving_shape"]),
            moving_affine=_arr(meta["moving_affine"]),
        )


def _normalised(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked image scaled so that its 99th percentile inside the mask is 1."""
    inside = data[mask]
    scale = np.percentile(inside, 99) if inside.size else 0.0
    if scale <= 0:
        raise ValueError("image has no positive intensity inside its mask")
    return np.where(mask, data / scale, 0.0).astype(np.float64)


def _dipy_affine(static, static_affine, moving, moving_affine, start, static_mask, moving_mask):
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D

    reg = AffineRegistration(
        metric=MutualInformationMetric(nbins=32), level_iters=[200, 100, 20],
        sigmas=[3.0, 1.0, 0.0], factors=[4, 2, 1], verbosity=0,
    )
    current = start
    for transform in (RigidTransform3D(), AffineTransform3D()):
        current = reg.optimize(
            static, moving, transform, None, static_grid2world=static_affine,
            moving_grid2world=moving_affine, starting_affine=current,
            static_mask=static_mask.astype(np.int32), moving_mask=moving_mask.astype(np.int32),
        ).affine
    return current


def register_to_template(
    moving_img,
    moving_mask,
    template_img,
    template_mask,
    *,
    level_iters=(20, 10, 5),
    n_threads: int = 1,
    affine_metric: str = "ncc",
    cc_radius: int = 4,
) -> TemplateRegistration:
    """Register a subject image (e.g. the midpoint b=0) to a template, affine then SyN.

    Parameters
    ----------
    moving_img : nibabel image, 3-D
        Subject image (any resolution; 2-3 mm recommended).
    moving_mask : nibabel image or None
        Its brain mask (same grid); ``moving_img > 0`` when None.
    template_img : nibabel image, 3-D
        The fixed image on the working grid, e.g. :func:`template_b0_contrast`.
    template_mask : nibabel image or None
        Its brain mask; ``template_img > 0`` when None.
    level_iters : sequence of int
        SyN iterations per level, coarse to fine.
    n_threads : int
        Accepted for the interface; DIPY's SyN runs single-threaded here.
    affine_metric : {"ncc", "mi"}
        Affine stage: this package's Gauss-Newton with normalised correlation (fast), or
        DIPY's mutual information (slower; for contrasts that differ more).
    cc_radius : int
        Radius (voxels) of SyN's local cross-correlation window.

    Returns
    -------
    TemplateRegistration
    """
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    if affine_metric not in ("ncc", "mi"):
        raise ValueError(f"affine_metric must be 'ncc' or 'mi', got {affine_metric!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    moving_img = as_volume(moving_img, "moving_img")
    template_img = as_volume(template_img, "template_img")
    moving = float_data(moving_img)
    # C order, as template_b0_contrast returns it: the last bits of DIPY's SyN depend on the
    # memory order, and a template read from a file is in NIfTI's (Fortran) order
    static = np.ascontiguousarray(float_data(template_img))
    moving_mask = moving > 0 if moving_mask is None else np.asarray(
        as_volume(moving_mask, "moving_mask").dataobj) > 0
    static_mask = static > 0 if template_mask is None else np.asarray(
        as_volume(template_mask, "template_mask").dataobj) > 0
    if moving_mask.shape != moving.shape:
        raise ValueError("moving_mask is not on the grid of moving_img")
    if static_mask.shape != static.shape:
        raise ValueError("template_mask is not on the grid of template_img")
    moving = _normalised(moving, moving_mask)
    static = _normalised(static, static_mask)
    moving_affine = np.asarray(moving_img.affine, dtype=float)
    static_affine = np.asarray(template_img.affine, dtype=float)

    start = translation_matrix(
        centre_of_mass(moving, moving_affine) - centre_of_mass(static, static_affine)
    )
    if affine_metric == "ncc":
        # A brain-masked template as the fixed image: the mask is dilated a little so
        # that the brain's edge (the strongest feature) is inside it.
        fixed_mask = ndimage.binary_dilation(static_mask, iterations=2)
        rigid = register(static, static_affine, moving, moving_affine, fixed_mask=fixed_mask,
                         init=start, metric="ncc", factors=(4, 2, 1), max_iter=(40, 20, 10))
        affine = register(static, static_affine, moving, moving_affine, fixed_mask=fixed_mask,
                          init=rigid.matrix, dof=12, metric="ncc", factors=(4, 2, 1),
                          max_iter=(40, 20, 10)).matrix
    else:
        affine = _dipy_affine(static, static_affine, moving, moving_affine, start,
                              static_mask, moving_mask)

    syn = SymmetricDiffeomorphicRegistration(
        CCMetric(3, sigma_diff=2.0, radius=cc_radius), level_iters=list(level_iters)
    )
    mapping = syn.optimize(static, moving, static_grid2world=static_affine,
                           moving_grid2world=moving_affine, prealign=affine)
    return TemplateRegistration(
        affine=affine, mapping=mapping, template_shape=tuple(static.shape),
        template_affine=static_affine, moving_shape=tuple(moving.shape),
        moving_affine=moving_affine,
    )
