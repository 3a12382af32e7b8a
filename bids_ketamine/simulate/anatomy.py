"""Anatomy: template tissue labels, ROIs, a white-matter orientation field, partial volume.

The template's population probability maps (GM, WM, CSF) become one crisp, single-subject-like
label image at 1 mm (the most probable tissue inside the brain mask).  The ROIs come from the
app's own atlas (``bids_ketamine.atlas.get_atlas("ketamine7", template)``).  Both are packed into
one ``uint8`` code per template voxel: ``tissue + 4 * roi`` (tissue 0 = outside the brain,
1 = CSF, 2 = GM, 3 = WM; roi 0 = none, 1..n in the atlas' order).

The white-matter fibre orientation is the direction of least variation of the WM probability
map: the eigenvector with the smallest eigenvalue of its structure tensor (the outer product of
the gradient, smoothed).  Along a tract the WM probability stays high; across it, it falls.

At acquisition resolution, tissue *fractions* come from supersampling: each output voxel is
split into ``n x n x n`` points (``n`` = voxel size / template voxel size), each point is
mapped into template space and takes the nearest template label; fractions are the counts
divided by ``n**3``, so partial volume arises as it does in a scanner.

Kept as one module (~460 lines): the simulated anatomy (labels, fibre orientation, partial
volume) is one packed template-space representation shared by all three steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.simulate.geometry import grid_centres

__all__ = [
    "TISSUES",
    "TemplateAnatomy",
    "SessionAnatomy",
    "load_template_anatomy",
    "crisp_tissue_labels",
    "structure_tensor_orientation",
    "sample_anatomy",
    "roi_grey_matter_mask",
]

#: Tissue codes of the crisp label image (0 is outside the brain).
TISSUES = {"csf": 1, "gm": 2, "wm": 3}
_N_TISSUE_CODES = 4

#: Definition of an ROI's "grey-matter voxels" in the simulation's own grid (truth.json).
ROI_GREY_MATTER_DEFINITION = {
    "min_gm_fraction": 0.9,
    "max_csf_fraction": 0.02,
    "min_roi_purity": 0.8,
    "text": (
        "voxels whose ROI label (the most frequent atlas label among the voxel's sub-samples) "
        "is the ROI, with grey-matter fraction >= 0.9, CSF fraction <= 0.02, and at least 80 % "
        "of the voxel's grey matter inside that ROI (ROI purity; the rest is grey matter with "
        "the subject's MD outside the ROIs)"
    ),
}


@dataclass(frozen=True)
class TemplateAnatomy:
    """The anatomy every simulated subject is derived from.

    Attributes
    ----------
    codes : ndarray of uint8, 3D
        ``tissue + 4 * roi`` per template voxel.
    affine : ndarray (4, 4)
        The template grid's affine.
    roi_names : tuple of str
        ROI names, ROI ``k`` (1-based) is ``roi_names[k - 1]``.
    orientation : ndarray of float32, 4D (X, Y, Z, 3)
        Unit WM fibre direction (template world axes) on a coarser grid.
    orientation_affine : ndarray (4, 4)
        Affine of the orientation grid.
    brain_centre : ndarray (3,)
        Centre of the brain mask's bounding box (template mm).
    brain_distance : ndarray of float32, 3D
        Distance (mm) from each template voxel to the brain mask (0 inside).
    provenance : dict
        Template and atlas files used (recorded in truth.json).
    """

    codes: np.ndarray
    affine: np.ndarray
    roi_names: tuple
    orientation: np.ndarray
    orientation_affine: np.ndarray
    brain_centre: np.ndarray
    provenance: dict
    brain_distance: np.ndarray

    @property
    def n_rois(self) -> int:
        return len(self.roi_names)


def crisp_tissue_labels(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Most probable tissue per voxel inside the mask.

    Parameters
    ----------
    gm, wm, csf : ndarray
        Tissue probability maps in [0, 1], same shape.
    mask : ndarray of bool
        Brain mask.

    Returns
    -------
    ndarray of uint8
        0 outside the mask, else 1 (CSF), 2 (GM) or 3 (WM), see :data:`TISSUES`.
    """
    if not (gm.shape == wm.shape == csf.shape == mask.shape):
        raise ValueError(
            f"tissue maps and mask must share one grid, got shapes {gm.shape}, {wm.shape}, "
            f"{csf.shape}, {mask.shape}"
        )
    stacked = np.stack([csf, gm, wm], axis=0)
    labels = (np.argmax(stacked, axis=0) + 1).astype(np.uint8)
    labels[~mask.astype(bool)] = 0
    return labels


def structure_tensor_orientation(
    wm_probability: np.ndarray, gradient_sigma: float = 1.0, tensor_sigma: float = 2.0,
    min_probability: float = 0.02,
) -> np.ndarray:
    """Direction of least variation of a WM probability map (its fibre orientation proxy).

    Parameters
    ----------
    wm_probability : ndarray, 3D
        White-matter probability, isotropic voxels.
    gradient_sigma : float
        Gaussian smoothing (voxels) before the gradient.
    tensor_sigma : float
        Gaussian smoothing (voxels) of the structure tensor's components.
    min_probability : float
        Voxels whose smoothed WM probability is at or below this get the x axis (unused).

    Returns
    -------
    ndarray of float32, shape ``wm_probability.shape + (3,)``
        Unit vectors in voxel axes (the eigenvector of the smallest eigenvalue; its sign is
        arbitrary, which a diffusion tensor does not see).
    """
    smoothed = ndimage.gaussian_filter(np.asarray(wm_probability, dtype=np.float32), gradient_sigma)
    gradients = np.gradient(smoothed)
    tensor = np.empty(smoothed.shape + (3, 3), dtype=np.float32)
    for a in range(3):
        for b in range(a, 3):
            component = ndimage.gaussian_filter(gradients[a] * gradients[b], tensor_sigma)
            tensor[..., a, b] = component
            tensor[..., b, a] = component
    # Only where there is some white matter (elsewhere the direction is never used).
    where = smoothed > min_probability
    vectors = np.zeros(smoothed.shape + (3,), dtype=np.float32)
    vectors[..., 0] = 1.0
    if np.any(where):
        _, eigenvectors = np.linalg.eigh(tensor[where])
        vectors[where] = eigenvectors[:, :, 0]
    return vectors


def _load_atlas(template, atlas_image, roi_names):
    """Atlas labels on the template grid, and the ROI names."""
    if atlas_image is None:
        try:
            from bids_ketamine.atlas import get_atlas
        except ImportError as err:  # the atlas module is written elsewhere
            raise ValueError(
                "no atlas given and bids_ketamine.atlas.get_atlas is not available; pass "
                "atlas_image= and roi_names= explicitly"
            ) from err
        atlas = get_atlas("ketamine7", template)
        atlas_image = atlas.image
        labels = atlas.labels.sort_values("index")
        names = tuple(str(n) for n in labels["name"])
        indices = [int(i) for i in labels["index"]]
        if indices != list(range(1, len(names) + 1)):
            raise ValueError(f"atlas labels must be 1..n in order, got {indices}")
        roi_names = names if roi_names is None else roi_names
        source = str(atlas_image)
    else:
        source = str(atlas_image) if isinstance(atlas_image, (str, Path)) else "in-memory image"
    img = nib.load(str(atlas_image)) if isinstance(atlas_image, (str, Path)) else atlas_image
    if roi_names is None:
        from bids_ketamine.config import KETAMINE7_ROIS

        roi_names = KETAMINE7_ROIS
    return img, tuple(roi_names), source


def load_template_anatomy(template=None, atlas_image=None, roi_names: Sequence[str] | None = None,
                          orientation_resolution_mm: float = 2.0) -> TemplateAnatomy:
    """Build the :class:`TemplateAnatomy` from a template and an atlas.

    Parameters
    ----------
    template : bids_ketamine.resources.Template, optional
        Default: ``get_template("MNI152NLin2009aSym")`` (the files nilearn ships).
    atlas_image : path or nibabel image, optional
        Integer ROI labels 1..n on (or resampled nearest-neighbour to) the template grid.
        Default: ``bids_ketamine.atlas.get_atlas("ketamine7", template).image``.
    roi_names : sequence of str, optional
        Names of labels 1..n (default: the atlas' names, or ``KETAMINE7_ROIS``).
    orientation_resolution_mm : float
        Grid spacing of the WM orientation field.

    Returns
    -------
    TemplateAnatomy
    """
    from bids_ketamine.resources import get_template
    from bids_ketamine.config import OFFLINE_TEMPLATE

    if template is None:
        template = get_template(OFFLINE_TEMPLATE)
    atlas_img, roi_names, atlas_source = _load_atlas(template, atlas_image, roi_names)
    return _template_anatomy_cached(template, atlas_img, roi_names, atlas_source,
                                    float(orientation_resolution_mm))


def _template_anatomy_cached(template, atlas_img, roi_names, atlas_source, orientation_resolution_mm):
    key = (str(template.gm), str(template.wm), str(template.csf), str(template.mask), atlas_source,
           roi_names, orientation_resolution_mm)
    if atlas_source != "in-memory image" and key in _CACHE:
        return _CACHE[key]
    gm_img = nib.load(str(template.gm))
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(str(template.wm)).dataobj, dtype=np.float32)
    csf = np.asarray(nib.load(str(template.csf)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(template.mask)).dataobj) > 0
    tissue = crisp_tissue_labels(gm, wm, csf, mask)

    if atlas_img.shape[:3] != gm.shape or not np.allclose(atlas_img.affine, gm_img.affine, atol=1e-3):
        from nilearn.image import resample_to_img

        atlas_img = resample_to_img(atlas_img, gm_img, interpolation="nearest",
                                    force_resample=True, copy_header=True)
    rois = np.rint(np.asarray(atlas_img.dataobj)).astype(np.int64)
    if rois.ndim != 3:
        raise ValueError(f"atlas image must be 3D, got shape {rois.shape}")
    if rois.min() < 0 or rois.max() > len(roi_names):
        raise ValueError(
            f"atlas labels must lie in 0..{len(roi_names)} (one name per label), found "
            f"{rois.min()}..{rois.max()}"
        )
    if len(roi_names) > 63 - 1:
        raise ValueError("at most 62 ROIs are supported")
    codes = (tissue + _N_TISSUE_CODES * rois).astype(np.uint8)

    # WM orientation on a coarser grid (block means of the WM map), template world axes.
    step = max(1, int(round(orientation_resolution_mm / abs(gm_img.affine[0, 0]))))
    crop = tuple((n // step) * step for n in wm.shape)
    coarse = wm[: crop[0], : crop[1], : crop[2]].reshape(
        crop[0] // step, step, crop[1] // step, step, crop[2] // step, step).mean(axis=(1, 3, 5))
    voxel_vectors = structure_tensor_orientation(coarse)
    coarse_affine = gm_img.affine @ np.diag([step, step, step, 1.0])
    coarse_affine[:3, 3] = gm_img.affine[:3, :3] @ np.full(3, (step - 1) / 2.0) + gm_img.affine[:3, 3]
    world_vectors = voxel_vectors @ (gm_img.affine[:3, :3] / np.linalg.norm(gm_img.affine[:3, :3], axis=0)).T
    world_vectors /= np.maximum(np.linalg.norm(world_vectors, axis=-1, keepdims=True), 1e-12)

    ijk = np.argwhere(mask)
    centre_index = (ijk.min(0) + ijk.max(0)) / 2.0
    brain_centre = gm_img.affine[:3, :3] @ centre_index + gm_img.affine[:3, 3]
    provenance = dict(template.provenance())
    provenance["Atlas"] = atlas_source
    anatomy = TemplateAnatomy(
        codes=codes,
        affine=np.asarray(gm_img.affine, dtype=float),
        roi_names=tuple(roi_names),
        orientation=world_vectors.astype(np.float32),
        orientation_affine=coarse_affine,
        brain_centre=brain_centre,
        provenance=provenance,
        brain_distance=_distance_to_mask(mask, np.linalg.norm(gm_img.affine[:3, :3], axis=0)),
    )
    if atlas_source != "in-memory image":
        _CACHE[key] = anatomy
    return anatomy


_CACHE: dict = {}


def _distance_to_mask(mask: np.ndarray, voxel_sizes: np.ndarray, block: int = 2) -> np.ndarray:
    """Distance (mm) to the mask, a lower bound computed on ``block``-sized blocks (fast)."""
    padded = tuple(-(-n // block) * block for n in mask.shape)
    full = np.zeros(padded, dtype=bool)
    full[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    coarse = full.reshape(padded[0] // block, block, padded[1] // block, block,
                          padded[2] // block, block).any(axis=(1, 3, 5))
    distance = ndimage.distance_transform_edt(~coarse, sampling=voxel_sizes * block)
    # A block's distance minus one block diagonal never exceeds the true distance.
    distance = np.maximum(distance - block * np.linalg.norm(voxel_sizes), 0.0).astype(np.float32)
    expanded = distance.repeat(block, 0).repeat(block, 1).repeat(block, 2)
    return np.ascontiguousarray(expanded[: mask.shape[0], : mask.shape[1], : mask.shape[2]])


@dataclass(frozen=True)
class SessionAnatomy:
    """Anatomy sampled on one session's image grid (before per-volume motion).

    Attributes
    ----------
    fractions : dict of str -> ndarray float32 3D
        ``"gm"``, ``"wm"``, ``"csf"`` volume fractions in [0, 1].
    gm_groups : ndarray float32 4D (X, Y, Z, n_rois + 1)
        Volume fraction of grey matter outside every ROI (index 0) and inside ROI k (index k).
    roi_labels : ndarray uint8 3D
        Most frequent atlas label among each voxel's sub-samples.
    wm_direction : ndarray float32 4D (X, Y, Z, 3)
        Unit WM fibre direction in scanner world axes (zero where there is no WM).
    n_subsamples : int
        Sub-samples per voxel.
    gm_md : ndarray float32 3D or None
        Mean GM MD over each voxel's GM sub-samples, when sampled from a template-space field
        (``--effect-model blobs``); None otherwise.
    """

    fractions: dict
    gm_groups: np.ndarray
    roi_labels: np.ndarray
    wm_direction: np.ndarray
    n_subsamples: int
    gm_md: np.ndarray | None = None


def sample_anatomy(anatomy: TemplateAnatomy, shape, affine: np.ndarray,
                   to_template: Callable[[np.ndarray], np.ndarray],
                   gm_md_field: np.ndarray | None = None) -> SessionAnatomy:
    """Tissue fractions, ROI labels and WM directions on an image grid, by supersampling.

    Parameters
    ----------
    anatomy : TemplateAnatomy
    shape : tuple of 3 int
        The image grid's shape.
    affine : ndarray (4, 4)
        The image grid's affine (voxel -> scanner mm).
    to_template : callable
        Maps scanner points (array (..., 3)) to template points.
    gm_md_field : ndarray, optional
        GM MD on the template grid (:func:`bids_ketamine.simulate.effects.gm_md_field`): each
        voxel's ``gm_md`` is its mean over the voxel's GM sub-samples.

    Returns
    -------
    SessionAnatomy
    """
    shape = tuple(int(n) for n in shape)
    template_points = to_template(grid_centres(shape, affine))  # (X, Y, Z, 3)
    # Local linearisation of voxel index -> template mm (central differences; the map is
    # smooth at the scale of a voxel).
    jacobian = np.stack(np.gradient(template_points, axis=(0, 1, 2)), axis=-1)  # (..., 3, 3)

    voxel_size = float(np.mean(np.linalg.norm(affine[:3, :3], axis=0)))
    template_voxel = float(np.mean(np.linalg.norm(anatomy.affine[:3, :3], axis=0)))
    n_sub = max(1, int(round(voxel_size / template_voxel)))
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5

    n_rois = anatomy.n_rois
    n_codes = _N_TISSUE_CODES * (n_rois + 1)
    n_voxels = int(np.prod(shape))
    inverse = np.linalg.inv(anatomy.affine)
    dims = np.asarray(anatomy.codes.shape)
    # Everything in template voxel indices: centres and the Jacobian columns.
    centre_index = template_points.reshape(-1, 3) @ inverse[:3, :3].T + inverse[:3, 3]
    index_jacobian = inverse[:3, :3] @ jacobian.reshape(-1, 3, 3)
    # Only voxels whose centre lies near the brain can hold any tissue.
    reach = 0.5 * np.sqrt(3.0) * np.max(np.linalg.norm(index_jacobian, axis=1)) + 1.0
    nearest = np.clip(np.rint(centre_index).astype(np.int64), 0, dims - 1)
    inside_grid = np.all((centre_index > -reach) & (centre_index < dims - 1 + reach), axis=1)
    near = inside_grid & (anatomy.brain_distance[tuple(nearest.T)] <= reach * template_voxel)
    rows = np.flatnonzero(near)
    centre_index, index_jacobian = centre_index[rows], index_jacobian[rows]
    counts_near = np.zeros((rows.size, n_codes), dtype=np.uint16)
    codes_flat = anatomy.codes.ravel()
    field_flat = None if gm_md_field is None else np.asarray(gm_md_field, np.float32).ravel()
    md_sum = np.zeros(rows.size) if field_flat is not None else None
    local = np.arange(rows.size)
    for di in offsets:
        for dj in offsets:
            for dk in offsets:
                points = (centre_index + di * index_jacobian[:, :, 0] + dj * index_jacobian[:, :, 1]
                          + dk * index_jacobian[:, :, 2])
                index = np.rint(points).astype(np.int64)
                inside = np.all((index >= 0) & (index < dims), axis=1)
                flat = np.ravel_multi_index(tuple(np.where(inside[:, None], index, 0).T), dims)
                code = np.where(inside, codes_flat[flat], 0)
                counts_near[local, code] += 1
                if field_flat is not None:
                    md_sum += np.where(inside & (code % _N_TISSUE_CODES == TISSUES["gm"]),
                                       field_flat[flat], 0.0)
    counts = np.zeros((n_voxels, n_codes), dtype=np.uint16)
    counts[:, 0] = n_sub**3
    counts[rows] = counts_near
    total = float(n_sub**3)
    by_roi_tissue = counts.reshape(n_voxels, n_rois + 1, _N_TISSUE_CODES)
    tissue_counts = by_roi_tissue.sum(axis=1)
    fractions = {
        name: (tissue_counts[:, code] / total).astype(np.float32).reshape(shape)
        for name, code in TISSUES.items()
    }
    gm_groups = (by_roi_tissue[:, :, TISSUES["gm"]] / total).astype(np.float32).reshape(shape + (n_rois + 1,))
    roi_labels = np.argmax(by_roi_tissue.sum(axis=2), axis=1).astype(np.uint8).reshape(shape)

    # WM direction at each voxel with WM: template direction pulled back to scanner axes
    # through the local Jacobian (tangent vectors map with the inverse Jacobian).
    wm_direction = np.zeros(shape + (3,), dtype=np.float32)
    has_wm = fractions["wm"] > 0
    if np.any(has_wm):
        o_inverse = np.linalg.inv(anatomy.orientation_affine)
        o_index = np.rint(template_points[has_wm] @ o_inverse[:3, :3].T + o_inverse[:3, 3]).astype(np.int64)
        o_index = np.clip(o_index, 0, np.asarray(anatomy.orientation.shape[:3]) - 1)
        template_vectors = anatomy.orientation[tuple(o_index.T)].astype(float)
        # d(template)/d(world) = J_ijk @ inv(A) where A = affine[:3, :3].
        world_jacobian = jacobian[has_wm] @ np.linalg.inv(affine[:3, :3])
        world_vectors = np.linalg.solve(world_jacobian, template_vectors[..., None])[..., 0]
        world_vectors /= np.maximum(np.linalg.norm(world_vectors, axis=1, keepdims=True), 1e-12)
        wm_direction[has_wm] = world_vectors
    gm_md = None
    if md_sum is not None:
        gm_md = np.zeros(n_voxels, dtype=np.float32)
        gm_count = counts_near.reshape(rows.size, n_rois + 1, _N_TISSUE_CODES)[:, :, TISSUES["gm"]].sum(axis=1)
        gm_md[rows] = np.where(gm_count > 0, md_sum / np.maximum(gm_count, 1), 0.0)
        gm_md = gm_md.reshape(shape)
    return SessionAnatomy(fractions=fractions, gm_groups=gm_groups, roi_labels=roi_labels,
                          wm_direction=wm_direction, n_subsamples=n_sub**3, gm_md=gm_md)


def roi_grey_matter_mask(session: SessionAnatomy, definition: dict | None = None) -> np.ndarray:
    """Label image of each ROI's grey-matter voxels (see :data:`ROI_GREY_MATTER_DEFINITION`).

    Parameters
    ----------
    session : SessionAnatomy
    definition : dict, optional
        ``min_gm_fraction``, ``max_csf_fraction``, ``min_roi_purity`` (default: the
        module's definition, recorded in truth.json).

    Returns
    -------
    ndarray of uint8
        ROI index where the voxel counts as the ROI's grey matter, 0 elsewhere.
    """
    definition = definition or ROI_GREY_MATTER_DEFINITION
    gm = session.fractions["gm"]
    labels = session.roi_labels.astype(np.int64)
    roi_gm = np.take_along_axis(session.gm_groups, labels[..., None], axis=-1)[..., 0]
    purity = np.where(gm > 0, roi_gm / np.maximum(gm, 1e-12), 0.0)
    keep = (
        (labels > 0)
        & (gm >= definition["min_gm_fraction"] - 1e-6)
        & (session.fractions["csf"] <= definition["max_csf_fraction"] + 1e-6)
        & (purity >= definition["min_roi_purity"] - 1e-6)
    )
    return np.where(keep, labels, 0).astype(np.uint8)
