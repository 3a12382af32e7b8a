"""A repeated-infusion study with an early blood biomarker (no imaging), with known truth.

The design of the repeated-infusion study of docs/science.md (Psychiatry Clin Neurosci
2025): four ketamine infusions over two weeks, a plasma metabolite measured before and
1.5-2 h after the first infusion, MADRS at baseline, after the fourth infusion and at
12 months.  Open label (one arm) by default; ``arm_ratio`` adds a saline arm.

Generative model (recorded in ``truth.json``), for participant ``s`` and outcome session
``k`` (``outcome_sessions``)::

    biomarker_baseline_s ~ N(biomarker_mean, biomarker_sd)
    biomarker_change_s   ~ N(change_mean_arm, change_sd)        (baseline -> early session)
    pctimprovement_sk    = intercept_k + treatment_effect_k * T_s
                           + biomarker_effect_k * biomarker_change_s + N(0, improvement_sd_k)
    madrs_sk             = clip(round(madrs_s0 * (1 - pctimprovement_sk / 100)), 0, 60)

``T`` = 1 for ketamine, 0 for saline; ``madrs_s0 ~ round(N(30.6, 6.1))`` clipped to
[20, 50].  ``null`` sets every ``biomarker_effect_k`` to 0.  The coefficient of
``<biomarker>_change`` in the group level's percent-improvement model at session ``k``
is ``biomarker_effect_k`` (up to the rounding of the scores).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine import __version__
from bids_ketamine.simulate.writer import write_json, write_tsv

__all__ = ["InfusionDesign", "repeated_infusion_tables", "write_repeated_infusion"]

#: Where the truth is written, as for the imaging simulator.
TRUTH_DIR = Path("sourcedata") / "simulation"
MADRS_MAX = 60
#: The generative model, as written in truth.json.
GENERATIVE_MODEL = (
    "biomarker_change ~ N(change_mean (saline: change_mean_control), change_sd) from baseline "
    "to biomarker_session; at outcome session k: pctimprovement = intercept[k] + "
    "treatment_effect[k] * T + biomarker_effect[k] * biomarker_change + N(0, improvement_sd[k]); "
    "madrs = clip(round(madrs_baseline * (1 - pctimprovement / 100)), 0, 60); madrs_baseline = "
    "clip(round(N(30.6, 6.1)), 20, 50); T = 1 ketamine, 0 saline; null: biomarker_effect = 0"
)


@dataclass(frozen=True)
class InfusionDesign:
    """Options of a simulated repeated-infusion study.

    Attributes
    ----------
    n_subjects, seed : int
    sessions : tuple of str
        Session labels in time order: baseline, the early biomarker session, the
        outcome sessions.
    session_hours : tuple of float
        Time of each session after the baseline, hours (acq_time of sessions.tsv).
    biomarker : str
        Name of the per-session biomarker column.
    biomarker_session : str
        The early session (biomarker change = value there - value at baseline).
    outcome_sessions : tuple of str
        Sessions with a MADRS score besides the baseline.
    biomarker_mean, biomarker_sd : float
        Baseline biomarker distribution.
    change_mean, change_sd : float
        Early biomarker change under ketamine (``change_mean_control`` under saline).
    intercept, biomarker_effect, treatment_effect, improvement_sd : tuple of float
        Percent-improvement model, one value per outcome session.
    arm_ratio : tuple (ketamine, saline) or None
        None: open label, every participant gets ketamine (one arm).
    null : bool
        No biomarker effect at any outcome session.
    """

    n_subjects: int = 30
    seed: int = 0
    sessions: tuple = ("baseline", "inf1", "inf4", "m12")
    session_hours: tuple = (0.0, 1.75, 12 * 24.0, 365 * 24.0)
    biomarker: str = "metabolite"
    biomarker_session: str = "inf1"
    outcome_sessions: tuple = ("inf4", "m12")
    biomarker_mean: float = 1.0
    biomarker_sd: float = 0.2
    change_mean: float = 0.5
    change_mean_control: float = 0.0
    change_sd: float = 0.3
    intercept: tuple = (40.0, 25.0)
    biomarker_effect: tuple = (20.0, 12.0)
    treatment_effect: tuple = (15.0, 5.0)
    improvement_sd: tuple = (12.0, 12.0)
    arm_ratio: tuple | None = None
    null: bool = False

    def __post_init__(self):
        k = len(self.outcome_sessions)
        for name in ("intercept", "biomarker_effect", "treatment_effect", "improvement_sd"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"{name} needs one value per outcome session ({k})")
        if len(self.session_hours) != len(self.sessions):
            raise ValueError("session_hours needs one value per session")
        needed = [self.biomarker_session, *self.outcome_sessions]
        if self.sessions[0] in needed or not set(needed) <= set(self.sessions):
            raise ValueError("the biomarker and outcome sessions must be sessions after the first")
        if self.n_subjects < 1:
            raise ValueError("n_subjects must be at least 1")

    @property
    def effects(self) -> tuple:
        """The biomarker effect per outcome session (0 under ``null``)."""
        return tuple(0.0 for _ in self.biomarker_effect) if self.null else self.biomarker_effect


def repeated_infusion_tables(design: InfusionDesign):
    """Draw one study as tables (no files).

    Returns
    -------
    participants : pandas.DataFrame
        ``participant_id`` (``sub-``), ``group``, ``age``, ``sex``.
    scores : pandas.DataFrame
        ``participant_id`` (bare), ``session_id`` (bare), ``acq_time``, ``madrs``, the
        biomarker column (n/a where not measured).
    truth : pandas.DataFrame
        One row per participant and outcome session: ``treatment``,
        ``<biomarker>_change``, ``expected_pctimprovement`` (noise-free) and
        ``pctimprovement`` (before rounding of the score).
    """
    rng = np.random.default_rng(design.seed)
    n = design.n_subjects
    labels = [f"{i:02d}" for i in range(1, n + 1)]
    if design.arm_ratio is None:
        treatment = np.ones(n)
    else:
        k, c = design.arm_ratio
        n_treated = int(round(n * k / (k + c)))
        treatment = rng.permutation(np.r_[np.ones(n_treated), np.zeros(n - n_treated)])
    age = rng.integers(20, 66, n)
    sex = rng.choice(["F", "M"], n)
    madrs0 = np.clip(np.round(rng.normal(30.6, 6.1, n)), 20, 50)
    marker0 = rng.normal(design.biomarker_mean, design.biomarker_sd, n)
    change_mean = np.where(treatment == 1, design.change_mean, design.change_mean_control)
    marker_change = change_mean + design.change_sd * rng.standard_normal(n)
    start = _dt.datetime(2024, 1, 8, 9, 0)
    records, truth = [], []
    outcome_scores = {}
    for index, session in enumerate(design.outcome_sessions):
        expected = (design.intercept[index] + design.treatment_effect[index] * treatment
                    + design.effects[index] * marker_change)
        improvement = expected + design.improvement_sd[index] * rng.standard_normal(n)
        outcome_scores[session] = np.clip(np.round(madrs0 * (1 - improvement / 100)), 0, MADRS_MAX)
        for i, label in enumerate(labels):
            truth.append({"participant_id": f"sub-{label}", "outcome_session": session,
                          "treatment": treatment[i],
                          f"{design.biomarker}_change": marker_change[i],
                          "expected_pctimprovement": expected[i],
                          "pctimprovement": improvement[i]})
    for i, label in enumerate(labels):
        for session, hours in zip(design.sessions, design.session_hours):
            marker = {design.sessions[0]: marker0[i],
                      design.biomarker_session: marker0[i] + marker_change[i]}.get(session, np.nan)
            madrs = madrs0[i] if session == design.sessions[0] else \
                outcome_scores.get(session, np.full(n, np.nan))[i]
            records.append({"participant_id": label, "session_id": session,
                            "acq_time": (start + _dt.timedelta(hours=hours)).isoformat(),
                            "madrs": madrs, design.biomarker: marker})
    participants = pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in labels],
        "group": np.where(treatment == 1, "ketamine", "saline"), "age": age, "sex": sex})
    return participants, pd.DataFrame(records), pd.DataFrame(truth)


def write_repeated_infusion(output_dir, design: InfusionDesign, overwrite: bool = False) -> Path:
    """Write a simulated repeated-infusion study as a BIDS dataset (clinical tables only).

    Files: ``dataset_description.json``, ``participants.tsv``,
    ``sub-<s>/sub-<s>_sessions.tsv`` (``acq_time``, ``madrs``, the biomarker) and the truth
    in ``sourcedata/simulation/`` (``truth.json``: design and coefficients in the group
    level's term names; ``truth.tsv``: per participant and outcome session).

    Returns
    -------
    Path
        The dataset root.
    """
    from bids_ketamine.simulate.study import _prepare_output

    root = _prepare_output(Path(output_dir), overwrite)
    participants, scores, truth = repeated_infusion_tables(design)
    write_json(root / "dataset_description.json", {
        "Name": f"bids_ketamine simulated repeated-infusion study (seed {design.seed})",
        "BIDSVersion": "1.9.0", "DatasetType": "raw", "License": "CC0",
        "GeneratedBy": [{"Name": "bids-ketamine-simulate", "Version": __version__,
                         "Description": "Simulated clinical scores and plasma biomarker with "
                                        "known ground truth (sourcedata/simulation/truth.json)"}],
    })
    write_tsv(root / "participants.tsv", list(participants.columns),
              participants.to_dict("records"))
    for subject, rows in scores.groupby("participant_id", sort=True):
        table = rows.drop(columns="participant_id").assign(
            session_id="ses-" + rows["session_id"])
        write_tsv(root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", list(table.columns),
                  table.to_dict("records"))
    marker = design.biomarker
    coefficients = {}
    for index, session in enumerate(design.outcome_sessions):
        terms = {f"{marker}_change": design.effects[index]}
        if design.arm_ratio is not None:
            terms.update({"treatment": design.treatment_effect[index],
                          f"treatment:{marker}_change": 0.0})
        coefficients[session] = terms
    write_json(root / TRUTH_DIR / "truth.json", {
        "design": "repeated infusions with an early biomarker (no imaging)",
        "options": asdict(design),
        "model": GENERATIVE_MODEL,
        "group_level": {
            "options": (f"--params {marker} --outcome-sessions "
                        f"{' '.join(design.outcome_sessions)} --outcomes madrs"),
            "model": ("single_arm" if design.arm_ratio is None else "interaction")
                     + ", measure pctimprovement",
            "coefficients_by_outcome_session": coefficients,
        },
    })
    write_tsv(root / TRUTH_DIR / "truth.tsv", list(truth.columns), truth.to_dict("records"))
    return root
