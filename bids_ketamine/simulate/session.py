"""One simulated DWI series: anatomy on the session's grid, signal, motion, noise.

:func:`simulate_session` is the imaging core of the simulator and the entry point for tests
that need one series without writing a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bids_ketamine.simulate.anatomy import (
    SessionAnatomy,
    TemplateAnatomy,
    roi_grey_matter_mask,
    sample_anatomy,
)
from bids_ketamine.simulate.geometry import SmoothDisplacement, SubjectTransform, acquisition_affine, grid_centres
from bids_ketamine.simulate.motion import apply_motion, motion_matrices
from bids_ketamine.simulate.signal import (
    SignalModel,
    TissueParameters,
    acquisition_scheme,
    add_rician_noise,
    grey_matter_md_map,
    world_to_bvecs,
)

__all__ = ["MOTION_SAMPLING", "DEFAULT_MOTION_SAMPLING", "Preset", "PRESETS", "Acquisition", "make_acquisition", "SimulatedSession",
           "identity_subject_transform", "simulate_session"]

#: Largest value an int16 image can hold.
_INT16_MAX = 32767
#: b-values at or below this are b=0 volumes (the reverse phase-encoded reference repeats them).
_B0_MAX = 50.0


@dataclass(frozen=True)
class Preset:
    """An acquisition protocol and its default image quality.

    Attributes
    ----------
    name : str
    voxel_size : float
        Isotropic voxel size (mm).
    n_b0, n_directions : int
        Number of b=0 volumes and of diffusion directions.
    bvalue : float
        s/mm^2.
    fov_mm : tuple of 3 float
        Field of view (left-right, anterior-posterior, inferior-superior).
    snr : float
        Default b=0 signal-to-noise ratio in grey matter.
    motion : float
        Default per-volume motion scale (mm, degrees).
    """

    name: str
    voxel_size: float
    n_b0: int
    n_directions: int
    bvalue: float
    fov_mm: tuple
    snr: float
    motion: float

    @property
    def shape(self) -> tuple:
        return tuple(int(round(f / self.voxel_size)) for f in self.fov_mm)


#: How a simulated volume shows the moved head (:func:`simulate_session`, ``motion_sampling``):
#: the static head's image resampled (the default, first: faster, and what the benchmarks so far
#: used), or the anatomy sampled where the moved head is, as a scanner does (docs/simulation.md).
MOTION_SAMPLING = ("resample", "exact")
DEFAULT_MOTION_SAMPLING = MOTION_SAMPLING[0]

PRESETS = {
    "demo": Preset("demo", 4.0, 3, 12, 1000.0, (216.0, 252.0, 186.0), 50.0, 0.3),
    "small": Preset("small", 3.0, 6, 30, 1000.0, (216.0, 252.0, 186.0), 50.0, 0.3),
    "realistic": Preset("realistic", 2.0, 6, 64, 1000.0, (216.0, 252.0, 186.0), 30.0, 0.3),
}


@dataclass(frozen=True)
class Acquisition:
    """The image grid and gradient table of one protocol.

    Attributes
    ----------
    shape : tuple of 3 int
    affine : ndarray (4, 4)
    bvals : ndarray (n,)
    gradients : ndarray (n, 3)
        Unit gradients in scanner axes (zeros for b=0).
    preset : Preset
    orientation : str
    oblique_deg : float
    """

    shape: tuple
    affine: np.ndarray
    bvals: np.ndarray
    gradients: np.ndarray
    preset: Preset
    orientation: str = "LAS"
    oblique_deg: float = 0.0

    @property
    def bvecs(self) -> np.ndarray:
        """Gradients in the BIDS/FSL bvec convention of this grid, shape (n, 3)."""
        return world_to_bvecs(self.gradients, self.affine)


@lru_cache(maxsize=8)
def _scheme(n_b0: int, n_directions: int, bvalue: float):
    bvals, gradients = acquisition_scheme(n_b0, n_directions, bvalue, seed=0)
    bvals.setflags(write=False)
    gradients.setflags(write=False)
    return bvals, gradients


def make_acquisition(preset: str | Preset = "small", orientation: str = "LAS",
                     oblique_deg: float = 0.0) -> Acquisition:
    """Build the :class:`Acquisition` of a preset.

    Parameters
    ----------
    preset : {"demo", "small", "realistic"} or Preset
    orientation : {"LAS", "RAS"}
        Voxel axis order of the written images (see
        :func:`bids_ketamine.simulate.geometry.acquisition_affine`).
    oblique_deg : float
        Slab tilt about left-right (degrees).

    Returns
    -------
    Acquisition
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    affine = acquisition_affine(preset.shape, preset.voxel_size, orientation, oblique_deg)
    bvals, gradients = _scheme(preset.n_b0, preset.n_directions, preset.bvalue)
    return Acquisition(preset.shape, affine, bvals, gradients, preset, orientation, float(oblique_deg))


def identity_subject_transform(anatomy: TemplateAnatomy) -> SubjectTransform:
    """A head identical to the template, centred on the head frame's origin."""
    none = np.zeros((0, 3))
    return SubjectTransform(np.eye(3), np.asarray(anatomy.brain_centre, float),
                            SmoothDisplacement(none, none, none))


@dataclass
class SimulatedSession:
    """One simulated series and its ground truth (on the session's grid).

    Attributes
    ----------
    data : ndarray int16 4D
        The DWI series as written (signal units, no scaling).
    affine : ndarray (4, 4)
    bvals : ndarray (n,)
    bvecs : ndarray (n, 3)
        BIDS/FSL convention, not rotated for motion.
    anatomy : SessionAnatomy
        Tissue fractions, ROI labels, WM directions (scanner axes) before per-volume motion.
    gm_md : ndarray float32 3D
        True grey-matter MD per voxel (um^2/ms).
    roi_grey_matter : ndarray uint8 3D
        Each ROI's grey-matter voxels (the definition in truth.json).
    md_groups : ndarray (n_rois + 1,)
        GM MD outside every ROI, then per ROI.
    motion : ndarray (n, 6)
        Per-volume motion parameters (mm, degrees).
    noise_sigma : float
        Standard deviation of the Gaussian components of the Rician noise (0: none).
    field_hz : ndarray float 3D or None
        With ``distortion``: the susceptibility field on the session's grid (Hz).
    reverse_b0 : ndarray int16 4D or None
        With ``distortion`` and ``reverse_rng``: every b=0 volume again, distorted with the
        opposite phase-encoding polarity (a reverse phase-encoded reference, PEPOLAR).
    gre_fieldmap : bids_ketamine.simulate.distortion.GreFieldmap or None
        With ``distortion`` and ``gre_rng``: a GRE field map (phase difference) of the static
        head on its own grid (:func:`~bids_ketamine.simulate.distortion.gre_grid`).
    """

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    anatomy: SessionAnatomy
    gm_md: np.ndarray
    roi_grey_matter: np.ndarray
    md_groups: np.ndarray
    motion: np.ndarray
    noise_sigma: float
    #: The B0 field on the session's grid (Hz) when the series was distorted, else None.
    field_hz: np.ndarray | None = None
    #: With ``reverse_rng``: the b=0 volumes read out with the opposite polarity (int16 4D).
    reverse_b0: np.ndarray | None = None
    #: With ``gre_rng``: a GRE field map of the session on its own grid.
    gre_fieldmap: object | None = None


def _support_box(brain: np.ndarray, affine: np.ndarray, matrices: np.ndarray):
    """Slices of the grid block that holds the brain under every volume's motion, and its affine."""
    shape = np.asarray(brain.shape)
    if not np.any(brain):
        return tuple(slice(0, n) for n in shape), affine
    index = np.argwhere(brain)
    low, high = index.min(0), index.max(0)
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1])
                        for c in (low[2], high[2])], dtype=float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    shift = 0.0
    for matrix in matrices:
        moved = world @ matrix[:3, :3].T + matrix[:3, 3]
        shift = max(shift, float(np.max(np.linalg.norm(moved - world, axis=1))))
    voxel = float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    margin = int(np.ceil(shift / voxel)) + 2
    start = np.maximum(low - margin, 0)
    stop = np.minimum(high + margin + 1, shape)
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop)), box_affine


def simulate_session(
    anatomy: TemplateAnatomy,
    acquisition: Acquisition | str = "small",
    *,
    md_groups=None,
    tissue: TissueParameters | None = None,
    subject_transform: SubjectTransform | None = None,
    session_pose: np.ndarray | None = None,
    motion: np.ndarray | None = None,
    snr: float | None = None,
    rng: np.random.Generator | int | None = None,
    gain: float = 1.0,
    interpolation_order: int = 3,
    motion_sampling: str = DEFAULT_MOTION_SAMPLING,
    gm_md_field: np.ndarray | None = None,
    distortion=None,
    reverse_rng: np.random.Generator | None = None,
    gre_rng: np.random.Generator | None = None,
) -> SimulatedSession:
    """Simulate one DWI series.

    Parameters
    ----------
    anatomy : TemplateAnatomy
        From :func:`bids_ketamine.simulate.anatomy.load_template_anatomy`.
    acquisition : Acquisition or preset name
    md_groups : array-like of shape (n_rois + 1,), optional
        GM MD (um^2/ms) outside every ROI, then per ROI (default 0.8 everywhere).
    tissue : TissueParameters, optional
    subject_transform : SubjectTransform, optional
        Head -> template (default: the template itself).
    session_pose : ndarray (4, 4), optional
        Head -> scanner rigid transform (default: identity).
    motion : ndarray (n_volumes, 6), optional
        Per-volume motion parameters (default: none).
    snr : float, optional
        b=0 grey-matter SNR; ``None`` writes noise-free data.
    rng : numpy.random.Generator or int, optional
        Noise generator (or its seed).
    gain : float
        Receiver gain of the session (scales every S0 and the noise alike).
    interpolation_order : int
        Spline order used to move the head for per-volume motion with ``"resample"`` (3: cubic
        B-spline; 1: trilinear, faster but blurs CSF into grey matter by a few percent of MD).
    motion_sampling : {"resample", "exact"}
        How a volume shows the moved head.  ``"resample"``: the static head's image, resampled
        (``interpolation_order``), which blurs each volume by a different amount, as no scanner
        does.  ``"exact"``: the anatomy supersampled where the moved head puts it, as a scanner
        samples the object (:func:`~bids_ketamine.simulate.anatomy.sample_anatomy` once per
        moving volume; slower).
    gm_md_field : ndarray, optional
        GM MD on the template grid (``--effect-model blobs``); replaces ``md_groups`` for the
        grey-matter signal (``md_groups`` still names the truth's per-group values).
    distortion : bids_ketamine.simulate.distortion.Distortion, optional
        Susceptibility distortion along the phase-encoding axis (the field follows the head's
        session pose; :mod:`bids_ketamine.simulate.distortion`).  None: undistorted.
    reverse_rng : numpy.random.Generator, optional
        With ``distortion``: also simulate the b=0 volumes with the opposite polarity, their
        noise drawn from this generator (so the series itself is the same with or without).
    gre_rng : numpy.random.Generator, optional
        With ``distortion``: also simulate a GRE field map, its noise drawn from this generator.

    Returns
    -------
    SimulatedSession
    """
    if isinstance(acquisition, str):
        acquisition = make_acquisition(acquisition)
    tissue = tissue or TissueParameters()
    n_groups = anatomy.n_rois + 1
    md_groups = np.full(n_groups, 0.8) if md_groups is None else np.asarray(md_groups, dtype=float)
    if md_groups.shape != (n_groups,) or np.any(md_groups <= 0):
        raise ValueError(
            f"md_groups must hold {n_groups} positive diffusivities (outside ROIs, then one per "
            f"ROI), got {md_groups}"
        )
    if snr is not None and snr <= 0:
        raise ValueError(f"snr must be positive (or None for noise-free data), got {snr}")
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    if motion_sampling not in MOTION_SAMPLING:
        raise ValueError(f"motion_sampling must be one of {MOTION_SAMPLING}, got {motion_sampling!r}")
    n_volumes = len(acquisition.bvals)
    motion = np.zeros((n_volumes, 6)) if motion is None else np.asarray(motion, dtype=float)
    if motion.shape != (n_volumes, 6):
        raise ValueError(f"motion must have shape ({n_volumes}, 6), got {motion.shape}")
    subject_transform = subject_transform or identity_subject_transform(anatomy)
    pose = np.eye(4) if session_pose is None else np.asarray(session_pose, dtype=float)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    pose_inverse = np.linalg.inv(pose)

    def scanner_to_template(points):
        return subject_transform(points @ pose_inverse[:3, :3].T + pose_inverse[:3, 3])

    session_anatomy = sample_anatomy(anatomy, acquisition.shape, acquisition.affine,
                                     scanner_to_template, gm_md_field)
    scaled = TissueParameters(tissue.s0_gm * gain, tissue.s0_wm * gain, tissue.s0_csf * gain,
                              tissue.md_csf, tuple(tissue.wm_eigenvalues))
    model = SignalModel(session_anatomy, md_groups, scaled)
    sigma = 0.0 if snr is None else scaled.s0_gm / float(snr)
    matrices = motion_matrices(motion)
    # Only the block that can hold the (moving) head is resampled; the rest stays zero.
    box, box_affine = _support_box(model.brain, acquisition.affine, matrices)
    data = np.empty(acquisition.shape + (n_volumes,), dtype=np.int16)
    field_hz, epi, reverse, gre = None, None, None, None
    if distortion is not None:
        from bids_ketamine.simulate.distortion import distortion_map, susceptibility_field

        field_hz = susceptibility_field(scanner_to_template(grid_centres(acquisition.shape, acquisition.affine)),
                                        distortion.peak_hz)
        epi = distortion_map(field_hz, distortion)
        reverse = distortion_map(field_hz, distortion.reversed()) if reverse_rng is not None else None
        if gre_rng is not None:
            gre = _gre_fieldmap(anatomy, acquisition, scanner_to_template, distortion.peak_hz, gre_rng, snr)
    reverse_b0 = []
    for volume, (bvalue, gradient, matrix) in enumerate(zip(acquisition.bvals, acquisition.gradients,
                                                            matrices)):
        if motion_sampling == "exact" and not np.allclose(matrix, np.eye(4)):
            # The scanner samples the moved head: scanner point x holds the static head's M^-1 x.
            inverse = np.linalg.inv(matrix)

            def moved_to_template(points, inverse=inverse):
                return scanner_to_template(points @ inverse[:3, :3].T + inverse[:3, 3])

            volume_model = SignalModel(sample_anatomy(anatomy, acquisition.shape, acquisition.affine,
                                                      moved_to_template, gm_md_field), md_groups, scaled)
            moved = volume_model.volume(bvalue, gradient)  # fibre directions already turned
        else:
            # The tissue turned with the head: the gradient in the static head's frame.
            static = model.volume(bvalue, matrix[:3, :3].T @ gradient)
            moved = np.zeros(acquisition.shape)
            moved[box] = apply_motion(static[box], box_affine, matrix, order=interpolation_order)
        noisy = add_rician_noise(moved if epi is None else epi.apply(moved), sigma, rng)
        data[..., volume] = np.clip(np.rint(noisy), 0, _INT16_MAX).astype(np.int16)
        if epi is not None and reverse is not None and bvalue <= _B0_MAX:
            opposite = add_rician_noise(reverse.apply(moved), sigma, reverse_rng)
            reverse_b0.append(np.clip(np.rint(opposite), 0, _INT16_MAX).astype(np.int16))
    return SimulatedSession(
        data=data,
        affine=acquisition.affine,
        bvals=np.asarray(acquisition.bvals),
        bvecs=acquisition.bvecs,
        anatomy=session_anatomy,
        gm_md=(grey_matter_md_map(session_anatomy, md_groups) if session_anatomy.gm_md is None
               else session_anatomy.gm_md),
        roi_grey_matter=roi_grey_matter_mask(session_anatomy),
        md_groups=md_groups,
        motion=motion,
        noise_sigma=sigma,
        field_hz=field_hz,
        reverse_b0=np.stack(reverse_b0, axis=-1) if reverse_b0 else None,
        gre_fieldmap=gre,
    )


def _gre_fieldmap(anatomy, acquisition, scanner_to_template, peak_hz, rng, snr):
    """The session's GRE field map: the field and the tissue sampled on its own grid."""
    from bids_ketamine.simulate.distortion import gre_grid, simulate_gre_fieldmap, susceptibility_field

    shape, affine = gre_grid(acquisition.shape, acquisition.affine)
    field = susceptibility_field(scanner_to_template(grid_centres(shape, affine)), peak_hz)
    tissue = sample_anatomy(anatomy, shape, affine, scanner_to_template)
    return simulate_gre_fieldmap(tissue.fractions, field, affine, rng, snr=None if snr is None else 2 * snr)
