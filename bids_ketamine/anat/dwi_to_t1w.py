"""The DWI in the subject's anatomy: rigid b=0 -> T1w registration, and the template
registration of the DWI composed through the T1w.

With a T1w, the template reaches the DWI in two steps instead of one b=0-to-template warp:
template -> T1w (ANTs SyN on the T1w, :mod:`bids_ketamine.anat.registration`) and T1w -> DWI
midpoint (rigid, mutual information: :func:`register_b0_to_t1w`).  :func:`compose_through_t1w`
writes their composition in the format of the DWI-only path
(:class:`bids_ketamine.dwi.registration.TemplateRegistration`: affine + DIPY displacement
fields), so that every consumer of a template registration (ROI placement in each session's
native grid, template-space maps) is the same with and without a T1w, and the DWI data are
still never interpolated for the ROI statistics.

Why no coordinate resampling is needed: ANTs maps a template point ``x`` to the T1w point
``A(x + u(x))`` (``A`` the SyN's affine, ``u`` its warp on the template grid) and a T1w
point ``y`` to the template point ``z + u'(z)``, ``z = A^-1(y)`` (``u'`` the inverse warp).
Prepending the rigid T1w -> midpoint map ``R`` gives exactly the DIPY convention of
:data:`bids_ketamine.dwi.registration.CONVENTIONS` with the affine ``R @ A`` and the fields
``u`` and ``u'`` themselves (turned from ANTs' LPS components into RAS): the composition
is exact, nothing is resampled.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np

from bids_ketamine.anat.antsimage import checked_volume, require_ants, seeded, to_ants
from bids_ketamine.utils.images import as_image

__all__ = ["register_rigid_mi", "register_b0_to_t1w", "itk_affine_ras", "compose_through_t1w", "T1W_CONVENTION"]

#: The convention of the rigid ``from-T1w_to-midpoint`` file (written into its sidecar).
T1W_CONVENTION = ("4x4 matrix (text): a point's world coordinates (mm, RAS) in the T1w -> its world "
                  "coordinates in the participant's DWI midpoint space (a DWI image resampled into "
                  "the T1w is dwi(matrix @ x))")

#: LPS <-> RAS (ITK's physical space vs NIfTI's world).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_affine_ras(path) -> np.ndarray:
    """An ITK/ANTs affine transform file as a 4x4 matrix on RAS world coordinates.

    The matrix maps the same points the file maps (ITK's point direction: fixed -> moving
    for a registration's forward transform); it is read by transforming four points with
    ANTs itself, so ITK's centre and parameter layout need not be interpreted here.
    """
    ants = require_ants()
    transform = ants.read_transform(str(path))
    basis = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    mapped = np.array([transform.apply_to_point(tuple(point)) for point in basis])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    return _LPS @ lps @ _LPS


def register_rigid_mi(moving, moving_mask, fixed, fixed_mask, *, names=("moving", "fixed"),
                      initial: str = "mass", seed: int = 1) -> np.ndarray:
    """Rigid registration of two brain images of different contrast (ANTs, Mattes mutual
    information), each zeroed outside its brain mask.

    Parameters
    ----------
    moving, fixed : path or nibabel image
    moving_mask, fixed_mask : path or nibabel image
        Their brain masks (each on its image's grid).
    names : (str, str)
        How the moving and the fixed image are named in error messages.
    initial : {"mass", "identity"}
        Start from the images' centres of mass aligned (ANTs' default) or from their scanner
        coordinates (two series of one session).
    seed : int
        ANTs' random seed (metric sampling, :func:`~bids_ketamine.anat.antsimage.seeded`): with one
        ITK thread the same inputs give the same transform.

    Returns
    -------
    ndarray (4, 4)
        Fixed world (RAS mm) -> moving world: a point of the fixed image and the point of the
        moving image it corresponds to (the moving image on the fixed grid is ``moving(matrix @ x)``).

    Raises
    ------
    ValueError
        A mask that is not on its image's grid, or an empty mask.

    Notes
    -----
    The finer image is resampled (nearest) to the coarser one's voxel size first: a rigid fit
    needs no more detail than the coarser image has (a 1 mm T1w against a 2 mm b=0: 32 s -> a
    few seconds).  Masking both images, rather than restricting the metric to the fixed mask,
    keeps a moving image with scalp (a GRE magnitude) from pulling the brain onto it (on real
    philips-elition the metric mask alone moved the field map 32 mm off).
    """
    if initial not in ("mass", "identity"):
        raise ValueError(f"initial must be 'mass' or 'identity', got {initial!r}")
    ants = require_ants()
    images = {}
    for name, image, mask in ((names[0], moving, moving_mask), (names[1], fixed, fixed_mask)):
        img = checked_volume(image, f"{name} image")
        mask_img = as_image(mask, f"{name} brain mask", require_data=True)
        inside = np.asanyarray(mask_img.dataobj) > 0
        if inside.shape[:3] != img.shape[:3]:
            raise ValueError(f"the {name} brain mask (shape {inside.shape}) is not on the {name} image's "
                             f"grid (shape {img.shape})")
        if not inside.any():
            raise ValueError(f"the {name} brain mask is empty")
        data = np.where(inside.reshape(img.shape), np.asanyarray(img.dataobj), 0.0).astype(np.float32)
        images[name] = to_ants(nib.Nifti1Image(data, img.affine))
    coarse = max(min(images[name].spacing) for name in names)
    for name in names:
        if min(images[name].spacing) < coarse:
            images[name] = ants.resample_image(images[name], (coarse,) * 3, use_voxels=False, interp_type=0)
    start = {"initial_transform": ["Identity"]} if initial == "identity" else {}
    with tempfile.TemporaryDirectory() as scratch, seeded(seed):
        result = ants.registration(fixed=images[names[1]], moving=images[names[0]], type_of_transform="Rigid",
                                   aff_metric="mattes", outprefix=f"{scratch}/rigid_", **start)
        return itk_affine_ras(result["fwdtransforms"][0])


def register_b0_to_t1w(b0, b0_mask, t1w, t1w_mask, *, seed: int = 1) -> np.ndarray:
    """Rigid registration of a DWI b=0 image to the subject's T1w (:func:`register_rigid_mi`).

    Parameters
    ----------
    b0 : path or nibabel image
        Mean b=0 of the DWI (the participant's midpoint b=0).
    b0_mask : path or nibabel image
        Its brain mask (same grid).
    t1w : path or nibabel image
        Bias-corrected T1w.
    t1w_mask : path or nibabel image
        T1w brain mask (same grid).
    seed : int
        ANTs' random seed.

    Returns
    -------
    ndarray (4, 4)
        T1w world (RAS mm) -> DWI world: a point of the T1w and the point of the b=0 it
        corresponds to (:data:`T1W_CONVENTION`).
    """
    return register_rigid_mi(b0, b0_mask, t1w, t1w_mask, names=("b=0", "T1w"), seed=seed)


def _ras_field(path) -> nib.Nifti1Image:
    """An ANTs displacement field (LPS components) as a (X, Y, Z, 3) RAS field image."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3] + (3,))
    data = data * np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    return nib.Nifti1Image(np.ascontiguousarray(data), img.affine)


def compose_through_t1w(template_transforms, t1w_to_dwi: np.ndarray, dwi_reference):
    """The template registration of the DWI, composed through the T1w (exact, see the module
    docstring).

    Parameters
    ----------
    template_transforms : bids_ketamine.anat.registration.TemplateTransforms
        The T1w's ANTs registration to the template (affine, warp and inverse warp).
    t1w_to_dwi : ndarray (4, 4)
        T1w world -> DWI midpoint world (:func:`register_b0_to_t1w`).
    dwi_reference : path or nibabel image
        The DWI midpoint image (its grid is the registration's subject grid).

    Returns
    -------
    bids_ketamine.dwi.registration.TemplateRegistration
        Saved with :meth:`~bids_ketamine.dwi.registration.TemplateRegistration.save`, it is
        read like the b=0-to-template registration of the DWI-only path.
    """
    from dipy.align.imwarp import DiffeomorphicMap

    from bids_ketamine.dwi.registration import TemplateRegistration

    t1w_to_dwi = np.asarray(t1w_to_dwi, dtype=float)
    if t1w_to_dwi.shape != (4, 4) or not np.allclose(t1w_to_dwi[3], [0, 0, 0, 1]):
        raise ValueError(f"t1w_to_dwi must be a 4x4 affine matrix, got {t1w_to_dwi.tolist()}")
    reference = as_image(dwi_reference, "DWI reference", require_data=False)
    affine = t1w_to_dwi @ itk_affine_ras(template_transforms.affine)
    warp = _ras_field(template_transforms.warp)
    inverse_warp = _ras_field(template_transforms.inverse_warp)
    if warp.shape != inverse_warp.shape or not np.allclose(warp.affine, inverse_warp.affine, atol=1e-4):
        raise ValueError(f"the warp {template_transforms.warp} and inverse warp "
                         f"{template_transforms.inverse_warp} are not on the same grid")
    grid_shape, grid_affine = warp.shape[:3], warp.affine
    mapping = DiffeomorphicMap(3, grid_shape, disp_grid2world=grid_affine, domain_shape=grid_shape,
                               domain_grid2world=grid_affine, codomain_shape=reference.shape[:3],
                               codomain_grid2world=reference.affine, prealign=np.linalg.inv(affine))
    mapping.is_inverse = True  # as DIPY's SyN returns its map: ``backward`` pulls subject images
    mapping.backward = np.asarray(warp.dataobj, dtype=np.float32)
    mapping.forward = np.asarray(inverse_warp.dataobj, dtype=np.float32)
    return TemplateRegistration(affine=affine, mapping=mapping, template_shape=tuple(grid_shape),
                                template_affine=np.asarray(grid_affine, dtype=float),
                                moving_shape=tuple(reference.shape[:3]),
                                moving_affine=np.asarray(reference.affine, dtype=float))
