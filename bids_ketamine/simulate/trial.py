"""The trial: design options, participants, their MD changes and the clinical model.

Generative model (documented in docs/simulation.md and recorded in truth.json):

- Arms: ``round(n * k / (k + s))`` participants get ketamine for an arm ratio ``k:s``, the
  rest saline; who gets which is a seeded permutation.
- Grey-matter MD at baseline: a subject-level global GM MD ``0.80 * (1 + N(0, 0.03))``, and
  for each ROI ``global * (1 + N(0, 0.03))``.
- MD change per follow-up visit, in percent, for subject ``s`` and ROI ``r``::

      change_s  = mean_arm + sd_arm * sqrt(rho) * z_s                 (grey matter outside ROIs)
      change_sr = change_s + sd_arm * sqrt(1 - rho) * e_sr             (ROI r)
      z, e ~ N(0, 1)

  a subject-level latent change of all grey matter plus ROI-level variation (correlation
  ``rho`` between ROIs, marginal SD ``sd_arm`` per ROI).  With more than one follow-up visit
  every visit draws a new increment and the changes accumulate:
  ``MD_k = MD_(k-1) * (1 + change_k / 100)``.  ``--null``: every change is exactly 0.
- Clinical outcome change from baseline at visit ``k`` (points)::

      change = intercept + treatment_effect * T
               + sum_r (md_coef_r + interaction_coef_r * T) * (MD_rk - MD_r0)
               + age_coef * (age - 45) / 10 + baseline_coef * (baseline - baseline_mean)
               + N(0, noise_sd)

  with ``T`` = 1 for ketamine, 0 for saline and MD in um^2/ms (``MD_rk - MD_r0`` is exactly
  the ``change`` of the group level's change.tsv).  The follow-up score is
  ``clip(round(baseline + change), 0, scale_max)``.  ``--null`` sets every md and interaction
  coefficient to 0.

Kept as one module (~440 lines): the generative model of the trial in one place, as
docs/simulation.md and truth.json describe it (design, MD changes, clinical model).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from bids_ketamine.simulate.session import DEFAULT_MOTION_SAMPLING, MOTION_SAMPLING, PRESETS
from bids_ketamine.simulate.signal import TissueParameters

__all__ = [
    "TrialDesign",
    "OutcomeModel",
    "default_outcome_models",
    "Participant",
    "assign_arms",
    "draw_participants",
    "subject_rng",
]

#: Stream identifiers of the per-subject random generators (never reorder).
STREAMS = {"arms": 0, "biology": 1, "clinical": 2, "geometry": 3, "session": 4, "effects": 5,
           "t1w": 6, "reverse_pe": 7, "gre_fieldmap": 8}

#: MD effect models (``--effect-model``; :mod:`bids_ketamine.simulate.effects`).
EFFECT_MODELS = ("roi", "blobs")


def subject_rng(seed: int, subject_index: int, stream: str, *extra: int) -> np.random.Generator:
    """The random generator of one subject and purpose.

    Each subject's draws depend only on the seed and the subject's index, not on how many
    subjects are simulated, so adding subjects leaves the first ones unchanged.
    """
    return np.random.default_rng([int(seed), int(subject_index), STREAMS[stream], *map(int, extra)])


@dataclass(frozen=True)
class TrialDesign:
    """Options of one simulated trial (the command line's options).

    Attributes
    ----------
    n_subjects : int
    seed : int
    preset : str
        ``"demo"``, ``"small"`` or ``"realistic"``.
    snr : float or None
        b=0 grey-matter SNR (None: the preset's).
    motion : float or None
        Per-volume motion scale in mm and degrees (None: the preset's; 0: none).
    md_change_ketamine, md_change_saline : tuple (mean, sd)
        Percent MD change per follow-up visit.
    arm_ratio : tuple (ketamine, saline)
    sessions : tuple of str
        Session labels, baseline first.
    null : bool
        No imaging change and no imaging-outcome relation.
    noise, motion_enabled : bool
        ``False`` writes noise-free or motion-free data.
    roi_correlation : float
        Correlation of MD changes between the ROIs of a subject.
    visit_interval_hours : float
        Time between consecutive sessions (24: follow-up the next day).
    session_translation_mm, session_rotation_deg : float
        Standard deviation of the head repositioning between sessions.
    orientation : str
        ``"LAS"`` or ``"RAS"`` image axes.
    oblique_deg : float
        Slab tilt about left-right.
    effect_model : str
        ``"roi"``: the change fills the atlas ROIs' grey matter; ``"blobs"``: smooth blobs off
        the ROI centres plus a gradient (:mod:`bids_ketamine.simulate.effects`).
    blob_amplitude : float
        ``blobs``: a blob's peak change is this times the ROI-level part of the drawn change.
    scanner_drift_pct : float
        SD (percent) of a global multiplicative drift of every diffusivity at each follow-up
        session (0: none).
    motion_sampling : str
        ``"resample"`` (the static head's image resampled for each volume's motion) or
        ``"exact"`` (the anatomy sampled where the moved head is, as a scanner does; slower);
        :func:`bids_ketamine.simulate.session.simulate_session`.
    """

    n_subjects: int = 6
    seed: int = 0
    preset: str = "small"
    snr: float | None = None
    motion: float | None = None
    md_change_ketamine: tuple = (-3.0, 2.0)
    md_change_saline: tuple = (0.0, 1.0)
    arm_ratio: tuple = (2, 1)
    sessions: tuple = ("pre", "post")
    null: bool = False
    noise: bool = True
    motion_enabled: bool = True
    roi_correlation: float = 0.7
    visit_interval_hours: float = 24.0
    session_translation_mm: float = 3.0
    session_rotation_deg: float = 3.0
    orientation: str = "LAS"
    oblique_deg: float = 0.0
    effect_model: str = "roi"
    blob_amplitude: float = 2.0
    scanner_drift_pct: float = 0.0
    motion_sampling: str = DEFAULT_MOTION_SAMPLING

    def __post_init__(self):
        if int(self.n_subjects) < 1:
            raise ValueError(f"--n-subjects must be at least 1, got {self.n_subjects}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.snr is not None and not (np.isfinite(self.snr) and self.snr > 0):
            raise ValueError(f"--snr must be a positive number, got {self.snr}")
        if self.motion is not None and not (np.isfinite(self.motion) and self.motion >= 0):
            raise ValueError(f"--motion must be >= 0 (mm and degrees), got {self.motion}")
        for name in ("md_change_ketamine", "md_change_saline"):
            value = getattr(self, name)
            if len(value) != 2 or not all(np.isfinite(value)):
                raise ValueError(f"--{name.replace('_', '-')} takes MEAN SD in percent, got {value}")
            if value[1] < 0:
                raise ValueError(f"--{name.replace('_', '-')}: SD must be >= 0, got {value[1]}")
            if value[0] <= -50 or value[0] >= 50:
                raise ValueError(f"--{name.replace('_', '-')}: MEAN must lie within +-50 %, got {value[0]}")
        if len(self.arm_ratio) != 2 or min(self.arm_ratio) < 0 or sum(self.arm_ratio) <= 0:
            raise ValueError(f"--arm-ratio must be two non-negative numbers K:S, got {self.arm_ratio}")
        labels = tuple(self.sessions)
        if len(labels) < 2:
            raise ValueError(f"--sessions needs at least two labels (baseline, follow-up), got {labels}")
        if len(set(labels)) != len(labels) or not all(str(s).isalnum() for s in labels):
            raise ValueError(
                f"--sessions labels must be distinct letters and digits (BIDS labels), got {labels}"
            )
        if not 0 <= self.roi_correlation <= 1:
            raise ValueError(f"roi_correlation must lie in [0, 1], got {self.roi_correlation}")
        if self.effect_model not in EFFECT_MODELS:
            raise ValueError(f"--effect-model must be one of {', '.join(EFFECT_MODELS)}, got {self.effect_model!r}")
        if not (np.isfinite(self.scanner_drift_pct) and self.scanner_drift_pct >= 0):
            raise ValueError(f"--scanner-drift must be >= 0 (percent SD), got {self.scanner_drift_pct}")
        if not (np.isfinite(self.blob_amplitude) and self.blob_amplitude >= 0):
            raise ValueError(f"blob_amplitude must be >= 0, got {self.blob_amplitude}")
        if self.motion_sampling not in MOTION_SAMPLING:
            raise ValueError(f"--motion-sampling must be one of {', '.join(MOTION_SAMPLING)}, "
                             f"got {self.motion_sampling!r}")
        if self.visit_interval_hours <= 0:
            raise ValueError(f"visit_interval_hours must be positive, got {self.visit_interval_hours}")

    @property
    def effective_snr(self) -> float | None:
        """SNR actually used (None when noise is off)."""
        if not self.noise:
            return None
        return float(self.snr if self.snr is not None else PRESETS[self.preset].snr)

    @property
    def effective_motion(self) -> float:
        """Motion scale actually used (0 when motion is off)."""
        if not self.motion_enabled:
            return 0.0
        return float(self.motion if self.motion is not None else PRESETS[self.preset].motion)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["effective_snr"] = self.effective_snr
        out["effective_motion"] = self.effective_motion
        return out


@dataclass(frozen=True)
class OutcomeModel:
    """The generative model of one clinical outcome (see the module docstring).

    Attributes
    ----------
    name : str
        Column name in sessions.tsv.
    scale_max : int
        The scale's range is 0..scale_max.
    baseline_mean, baseline_sd : float
        Baseline score distribution (normal, rounded, clipped to the range).
    intercept, treatment : float
        Change in the saline arm at zero MD change; added change in the ketamine arm.
    md : dict of str -> float
        Coefficient of each ROI's MD change (um^2/ms) in both arms.
    interaction : dict of str -> float
        Extra coefficient of each ROI's MD change in the ketamine arm.
    age_per_decade : float
        Coefficient of (age - 45) / 10.
    baseline_slope : float
        Coefficient of (baseline - baseline_mean) (regression to the mean when negative).
    noise_sd : float
        Residual standard deviation.
    """

    name: str
    scale_max: int
    baseline_mean: float
    baseline_sd: float
    intercept: float
    treatment: float
    md: dict = field(default_factory=dict)
    interaction: dict = field(default_factory=dict)
    age_per_decade: float = 0.0
    baseline_slope: float = 0.0
    noise_sd: float = 1.0

    def change(self, treated: bool, md_change: dict, age: float, baseline: float, noise: float) -> float:
        """Latent (unclipped) change from baseline.

        Parameters
        ----------
        treated : bool
        md_change : dict of str -> float
            MD change from baseline per ROI (um^2/ms).
        age, baseline : float
        noise : float
            A standard normal draw (scaled by ``noise_sd`` here).
        """
        t = 1.0 if treated else 0.0
        value = self.intercept + self.treatment * t
        for roi, coef in self.md.items():
            value += coef * md_change[roi]
        for roi, coef in self.interaction.items():
            value += coef * t * md_change[roi]
        value += self.age_per_decade * (age - 45.0) / 10.0
        value += self.baseline_slope * (baseline - self.baseline_mean)
        return value + self.noise_sd * noise

    def to_dict(self) -> dict:
        out = asdict(self)
        out["range"] = [0, self.scale_max]
        out["md_units"] = "points per um^2/ms of MD change (followup - baseline)"
        return out


def default_outcome_models(null: bool = False) -> tuple:
    """The outcome models of the simulator (MADRS and QIDS-SR16).

    Inspired by the reference study (docs/science.md): left BA10 and left amygdala drive an
    interaction with treatment, right BA10 an association in both arms, both hippocampi an
    interaction of the opposite sign for MADRS only.  A larger MD decrease goes with a larger
    symptom decrease, so the coefficients are positive (points per um^2/ms): 250 points per
    um^2/ms is about 2 MADRS points per 1 % MD change at MD 0.8.

    Parameters
    ----------
    null : bool
        Set every imaging coefficient to 0.
    """
    madrs = OutcomeModel(
        name="madrs", scale_max=60, baseline_mean=31.0, baseline_sd=6.0,
        intercept=-5.0, treatment=-3.0,
        md={"BA10_R": 150.0},
        interaction={"BA10_L": 250.0, "amygdala_L": 250.0, "hippocampus_L": -150.0,
                     "hippocampus_R": -150.0},
        age_per_decade=0.5, baseline_slope=-0.3, noise_sd=5.0,
    )
    qids = OutcomeModel(
        name="qids_sr", scale_max=27, baseline_mean=17.0, baseline_sd=4.0,
        intercept=-2.0, treatment=-1.5,
        md={"BA10_R": 50.0},
        interaction={"BA10_L": 80.0, "amygdala_L": 80.0},
        age_per_decade=0.3, baseline_slope=-0.3, noise_sd=3.0,
    )
    models = (madrs, qids)
    if null:
        models = tuple(replace(m, md={r: 0.0 for r in m.md}, interaction={r: 0.0 for r in m.interaction})
                       for m in models)
    return models


@dataclass
class Participant:
    """Everything drawn for one participant (clinical and imaging truth).

    Attributes
    ----------
    index : int
        0-based position (the seed stream of the subject).
    label : str
        Participant label without ``sub-``.
    group : str
        ``"ketamine"`` or ``"saline"``.
    age : int
    sex : str
    gm_md : ndarray (n_sessions,)
        GM MD (um^2/ms) outside the ROIs, per session.
    roi_md : ndarray (n_sessions, n_rois)
        ROI GM MD per session (um^2/ms).
    md_change_pct : ndarray (n_sessions - 1, n_rois)
        Drawn percent increment of each follow-up visit (relative to the previous visit).
    tissue : TissueParameters
    scores : dict of str -> list of int
        Per outcome, one score per session.
    latent_changes : dict of str -> list of float
        Per outcome, the unclipped change of each follow-up visit.
    acq_times : list of datetime
    """

    index: int
    label: str
    group: str
    age: int
    sex: str
    gm_md: np.ndarray
    roi_md: np.ndarray
    md_change_pct: np.ndarray
    tissue: TissueParameters
    scores: dict
    latent_changes: dict
    acq_times: list

    def md_groups(self, session_index: int) -> np.ndarray:
        """GM MD outside the ROIs then per ROI at one session (the simulator's input)."""
        return np.concatenate([[self.gm_md[session_index]], self.roi_md[session_index]])


def assign_arms(n_subjects: int, arm_ratio, seed: int) -> list:
    """Arm of each participant: exact allocation by ratio, seeded order.

    Returns
    -------
    list of str
        ``"ketamine"`` or ``"saline"`` per participant.
    """
    ketamine, saline = (float(v) for v in arm_ratio)
    n_ketamine = int(np.floor(n_subjects * ketamine / (ketamine + saline) + 0.5))
    arms = np.array(["ketamine"] * n_ketamine + ["saline"] * (n_subjects - n_ketamine))
    order = np.random.default_rng([int(seed), STREAMS["arms"]]).permutation(n_subjects)
    return [str(a) for a in arms[order]]


def participant_labels(n_subjects: int) -> list:
    """Zero-padded labels ``01``, ``02``, ... (width at least 2)."""
    width = max(2, len(str(n_subjects)))
    return [f"{i + 1:0{width}d}" for i in range(n_subjects)]


def draw_participants(design: TrialDesign, roi_names, outcomes=None) -> list:
    """Draw every participant's clinical and imaging truth.

    Parameters
    ----------
    design : TrialDesign
    roi_names : sequence of str
    outcomes : sequence of OutcomeModel, optional
        Default: :func:`default_outcome_models` (``design.null`` applied).

    Returns
    -------
    list of Participant
    """
    outcomes = outcomes if outcomes is not None else default_outcome_models(design.null)
    roi_names = tuple(roi_names)
    for model in outcomes:
        missing = sorted((set(model.md) | set(model.interaction)) - set(roi_names))
        if missing:
            raise ValueError(f"outcome {model.name} refers to unknown ROIs {missing}; ROIs: {roi_names}")
    arms = assign_arms(design.n_subjects, design.arm_ratio, design.seed)
    labels = participant_labels(design.n_subjects)
    n_sessions, n_rois = len(design.sessions), len(roi_names)
    rho = design.roi_correlation
    participants = []
    for index, (label, group) in enumerate(zip(labels, arms)):
        bio = subject_rng(design.seed, index, "biology")
        gm_md = 0.80 * (1.0 + 0.03 * bio.normal())
        baseline = gm_md * (1.0 + 0.03 * bio.normal(size=n_rois))
        eigen_scale = 1.0 + 0.03 * bio.normal()
        tissue = TissueParameters(wm_eigenvalues=tuple(np.array([1.4, 0.35, 0.35]) * eigen_scale))
        mean, sd = design.md_change_ketamine if group == "ketamine" else design.md_change_saline
        roi_md = np.empty((n_sessions, n_rois))
        roi_md[0] = baseline
        gm_md_sessions = np.full(n_sessions, gm_md)
        increments = np.zeros((n_sessions - 1, n_rois))
        for visit in range(1, n_sessions):
            latent = bio.normal()
            local = bio.normal(size=n_rois)
            global_increment = 0.0
            if not design.null:
                global_increment = mean + sd * np.sqrt(rho) * latent
                increments[visit - 1] = global_increment + sd * np.sqrt(1 - rho) * local
            roi_md[visit] = roi_md[visit - 1] * (1.0 + increments[visit - 1] / 100.0)
            gm_md_sessions[visit] = gm_md_sessions[visit - 1] * (1.0 + global_increment / 100.0)

        clinical = subject_rng(design.seed, index, "clinical")
        age = int(np.clip(np.rint(clinical.normal(42.0, 12.0)), 18, 70))
        sex = "F" if clinical.uniform() < 0.6 else "M"
        start = _dt.datetime(2023, 1, 2, 8, 0) + _dt.timedelta(
            days=int(clinical.integers(0, 365)), minutes=int(clinical.integers(0, 4 * 60)))
        acq_times = [start + _dt.timedelta(hours=design.visit_interval_hours * k)
                     for k in range(n_sessions)]
        scores, latent_changes = {}, {}
        for model in outcomes:
            base = int(np.clip(np.rint(clinical.normal(model.baseline_mean, model.baseline_sd)),
                               0, model.scale_max))
            session_scores, session_changes = [base], []
            for visit in range(1, n_sessions):
                md_change = {r: roi_md[visit, i] - roi_md[0, i] for i, r in enumerate(roi_names)}
                latent_change = model.change(group == "ketamine", md_change, age, base, clinical.normal())
                session_changes.append(float(latent_change))
                session_scores.append(int(np.clip(np.rint(base + latent_change), 0, model.scale_max)))
            scores[model.name] = session_scores
            latent_changes[model.name] = session_changes
        participants.append(Participant(
            index=index, label=label, group=group, age=age, sex=sex, gm_md=gm_md_sessions,
            roi_md=roi_md, md_change_pct=increments, tissue=tissue, scores=scores,
            latent_changes=latent_changes, acq_times=acq_times,
        ))
    return participants
