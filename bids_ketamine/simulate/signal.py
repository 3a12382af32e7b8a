"""The diffusion signal: gradient scheme, multi-compartment tensor signal, Rician noise, bvecs.

Signal of a voxel for b-value ``b`` and unit gradient ``g`` (scanner axes, as the head
sits during that volume)::

    S = sum_tissue fraction_tissue * S0_tissue * exp(-b g^T D_tissue g)

with grey matter and CSF isotropic (``D = MD * I``) and white matter a cylindrically
symmetric tensor along the voxel's fibre direction.  Grey matter in a voxel may hold several
MDs (outside every ROI, or inside ROI k); each part contributes its own exponential.

b-values are in s/mm^2 and diffusivities in um^2/ms, so the exponent is ``b / 1000 * D``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bids_ketamine.simulate.anatomy import SessionAnatomy

__all__ = [
    "TissueParameters",
    "gradient_directions",
    "acquisition_scheme",
    "SignalModel",
    "grey_matter_md_map",
    "add_rician_noise",
    "world_to_bvecs",
    "bvecs_to_world",
]


@dataclass(frozen=True)
class TissueParameters:
    """Per-tissue signal parameters of one subject.

    Attributes
    ----------
    s0_gm, s0_wm, s0_csf : float
        b=0 signal of pure tissue (T2-weighted: CSF brightest, then GM, then WM).
    md_csf : float
        CSF diffusivity (um^2/ms).
    wm_eigenvalues : tuple of 3 float
        White-matter tensor eigenvalues (um^2/ms), axial first; the two radial ones equal.
    """

    s0_gm: float = 2000.0
    s0_wm: float = 1600.0
    s0_csf: float = 3600.0
    md_csf: float = 3.0
    wm_eigenvalues: tuple = (1.4, 0.35, 0.35)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["wm_eigenvalues"] = [round(float(v), 6) for v in self.wm_eigenvalues]
        return out


def gradient_directions(n_directions: int, seed: int = 0, iterations: int = 5000) -> np.ndarray:
    """Unit gradient directions spread over the sphere by electrostatic repulsion.

    Antipodally symmetric repulsion (DIPY's :func:`dipy.core.sphere.disperse_charges` on a
    :class:`~dipy.core.sphere.HemiSphere`) from random starting points.

    Parameters
    ----------
    n_directions : int
        Number of directions (at least 6 for a tensor).
    seed : int
        Seed of the random starting points (the protocol, not the subject).
    iterations : int
        Repulsion steps.

    Returns
    -------
    ndarray of shape (n_directions, 3)
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    if int(n_directions) < 6:
        raise ValueError(f"a tensor needs at least 6 gradient directions, got {n_directions}")
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(int(n_directions), 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    hemisphere, _ = disperse_charges(HemiSphere(xyz=start), iterations)
    directions = np.asarray(hemisphere.vertices, dtype=float)
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def acquisition_scheme(n_b0: int, n_directions: int, bvalue: float = 1000.0, seed: int = 0):
    """b-values and unit gradients (scanner axes), with the b=0 volumes interleaved.

    The b=0 volumes sit at evenly spaced positions starting with the first volume (for
    6 + 30 volumes: every 6th volume).

    Parameters
    ----------
    n_b0, n_directions : int
    bvalue : float
        The diffusion-weighted shell (s/mm^2).
    seed : int
        Seed of :func:`gradient_directions`.

    Returns
    -------
    bvals : ndarray of shape (n,)
    gradients : ndarray of shape (n, 3)
        Unit vectors; zero vectors for b=0.
    """
    if int(n_b0) < 1:
        raise ValueError(f"at least one b=0 volume is needed, got {n_b0}")
    if bvalue <= 0:
        raise ValueError(f"bvalue must be positive, got {bvalue}")
    n_volumes = int(n_b0) + int(n_directions)
    b0_positions = np.unique(np.rint(np.linspace(0, n_volumes, int(n_b0), endpoint=False)).astype(int))
    is_b0 = np.zeros(n_volumes, dtype=bool)
    is_b0[b0_positions] = True
    bvals = np.where(is_b0, 0.0, float(bvalue))
    gradients = np.zeros((n_volumes, 3))
    gradients[~is_b0] = gradient_directions(n_directions, seed)
    return bvals, gradients


def grey_matter_md_map(anatomy: SessionAnatomy, md_groups: np.ndarray) -> np.ndarray:
    """Mean grey-matter MD of each voxel (volume-weighted over its GM parts), 0 without GM.

    Parameters
    ----------
    anatomy : SessionAnatomy
    md_groups : ndarray of shape (n_rois + 1,)
        MD (um^2/ms) of GM outside every ROI (index 0) and in ROI k (index k).

    Returns
    -------
    ndarray of float32, 3D
    """
    md_groups = np.asarray(md_groups, dtype=float)
    if md_groups.shape != anatomy.gm_groups.shape[-1:]:
        raise ValueError(
            f"md_groups must have {anatomy.gm_groups.shape[-1]} values (outside ROIs, then one "
            f"per ROI), got {md_groups.shape}"
        )
    gm = anatomy.fractions["gm"]
    weighted = anatomy.gm_groups @ md_groups
    return np.where(gm > 0, weighted / np.maximum(gm, 1e-12), 0.0).astype(np.float32)


class SignalModel:
    """Noise-free signal of one session's voxels for any b-value and gradient.

    Parameters
    ----------
    anatomy : SessionAnatomy
    md_groups : ndarray of shape (n_rois + 1,)
        GM MD outside every ROI and per ROI (um^2/ms).
    tissue : TissueParameters
    """

    def __init__(self, anatomy: SessionAnatomy, md_groups, tissue: TissueParameters):
        self.shape = anatomy.fractions["gm"].shape
        fractions = anatomy.fractions
        brain = (fractions["gm"] + fractions["wm"] + fractions["csf"]) > 0
        self.brain = brain
        self._gm_groups = anatomy.gm_groups[brain].astype(float)
        self._csf = fractions["csf"][brain].astype(float)
        self._wm = fractions["wm"][brain].astype(float)
        self._direction = anatomy.wm_direction[brain].astype(float)
        self._md_groups = np.asarray(md_groups, dtype=float)
        # a GM MD field (--effect-model blobs): one MD per voxel instead of one per group
        self._gm_md = None if anatomy.gm_md is None else anatomy.gm_md[brain].astype(float)
        self._gm = fractions["gm"][brain].astype(float)
        self.tissue = tissue
        self._isotropic_cache: dict = {}

    def _isotropic(self, bvalue: float) -> np.ndarray:
        key = float(bvalue)
        if key not in self._isotropic_cache:
            b = key / 1000.0
            t = self.tissue
            if self._gm_md is None:
                gm = self._gm_groups @ np.exp(-b * self._md_groups)
            else:
                gm = self._gm * np.exp(-b * self._gm_md)
            self._isotropic_cache[key] = t.s0_gm * gm + t.s0_csf * self._csf * np.exp(-b * t.md_csf)
        return self._isotropic_cache[key]

    def volume(self, bvalue: float, gradient) -> np.ndarray:
        """The noise-free image (float64, the session grid) for one b-value and gradient.

        Parameters
        ----------
        bvalue : float
            s/mm^2.
        gradient : array-like of shape (3,)
            Unit gradient in the scanner axes of the (static) session frame.
        """
        b = float(bvalue) / 1000.0
        axial, radial = float(self.tissue.wm_eigenvalues[0]), float(self.tissue.wm_eigenvalues[1])
        gradient = np.asarray(gradient, dtype=float)
        cos2 = (self._direction @ gradient) ** 2 if b > 0 else 0.0
        wm = self.tissue.s0_wm * self._wm * np.exp(-b * (radial + (axial - radial) * cos2))
        out = np.zeros(self.shape)
        out[self.brain] = self._isotropic(bvalue) + wm
        return out


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rician distribution).

    Parameters
    ----------
    signal : ndarray
        Noise-free magnitude.
    sigma : float
        Standard deviation of each of the real and imaginary noise components.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray (float32 when noise is added)
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.asarray(signal, dtype=float).copy()
    real = rng.standard_normal(size=signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal
    imaginary = rng.standard_normal(size=signal.shape, dtype=np.float32)
    imaginary *= np.float32(sigma)
    return np.hypot(real, imaginary)


def world_to_bvecs(gradients: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Express scanner-axis gradients in the BIDS/FSL bvec convention of an image.

    bvecs are in the image's voxel axes; for a positive-determinant affine (e.g. RAS
    storage) FSL's convention also flips the sign of the first axis.

    Parameters
    ----------
    gradients : ndarray of shape (n, 3)
        Unit gradients in scanner (world) axes; zeros for b=0.
    affine : ndarray (4, 4)
        The image affine.

    Returns
    -------
    ndarray of shape (n, 3)
    """
    axes = _voxel_axes(affine)
    bvecs = np.asarray(gradients, dtype=float) @ np.linalg.inv(axes).T
    norms = np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs = np.where(norms > 0, bvecs / np.maximum(norms, 1e-12), 0.0)
    if np.linalg.det(affine[:3, :3]) > 0:
        bvecs[:, 0] = -bvecs[:, 0]
    return bvecs


def bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_to_bvecs`: BIDS/FSL bvecs to unit scanner-axis vectors."""
    vectors = np.array(bvecs, dtype=float)
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        vectors = vectors.T
    if np.linalg.det(affine[:3, :3]) > 0:
        vectors[:, 0] = -vectors[:, 0]
    world = vectors @ _voxel_axes(affine).T
    norms = np.linalg.norm(world, axis=1, keepdims=True)
    return np.where(norms > 0, world / np.maximum(norms, 1e-12), 0.0)


def _voxel_axes(affine: np.ndarray) -> np.ndarray:
    """Unit vectors of the voxel axes in world space (the affine's columns, normalised)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)
