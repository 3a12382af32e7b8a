"""Fabricated group-level inputs for tests and benchmarks (no imaging involved).

:func:`write_study` writes given tables as the files the group level reads
(``participants.tsv``, ``sub-<s>/sub-<s>_sessions.tsv`` and participant-level
``*_roistats.tsv``); :func:`random_study` makes such tables with a known treatment x MD
change effect.  The full simulator of the app (DWI and all) is
:mod:`bids_ketamine.simulate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.config import DEFAULT_ROI_STATISTIC, KETAMINE7_ROIS, ROI_STATISTICS
from bids_ketamine.derivatives import ROISTATS_COLUMNS
from bids_ketamine.dwi.tissue_stats import TISSUESTATS_COLUMNS


def write_study(bids_dir: Path, output_dir: Path, participants: pd.DataFrame,
                session_scores: pd.DataFrame, roi_values: pd.DataFrame,
                atlas: str = "ketamine7") -> None:
    """Write participants.tsv, sessions.tsv files and ROI tables.

    Parameters
    ----------
    bids_dir, output_dir : Path
        Created if missing.
    participants : pandas.DataFrame
        Written as is to participants.tsv (``participant_id`` with ``sub-``).
    session_scores : pandas.DataFrame
        ``participant_id`` (bare label), ``session_id`` (bare), then measure columns
        (``acq_time`` optional); one sessions.tsv per participant.
    roi_values : pandas.DataFrame
        ``participant_id``, ``session_id`` (bare), ``roi``, ``param``, ``mean``,
        ``n_voxels``, ``coverage`` and optionally ``entities`` (e.g. ``"_run-1"``; one
        table per distinct value) and the other ROI statistics' columns (``median``: the mean
        when absent; the default statistic's: the median when absent; the others are written
        when present).
    atlas : str
        Atlas name in the file names.
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    participants.to_csv(bids_dir / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    for subject, rows in session_scores.groupby("participant_id", sort=False):
        folder = bids_dir / f"sub-{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        table = rows.drop(columns="participant_id").copy()
        table["session_id"] = "ses-" + table["session_id"].astype(str)
        table.to_csv(folder / f"sub-{subject}_sessions.tsv", sep="\t", index=False, na_rep="n/a")
    values = roi_values.copy()
    if "entities" not in values:
        values["entities"] = ""
    values["median"] = values.get("median", values["mean"])
    values[DEFAULT_ROI_STATISTIC] = values.get(DEFAULT_ROI_STATISTIC, values["median"])
    values["std"] = values.get("std", 0.1)
    columns = [*ROISTATS_COLUMNS, *(c for c in ROI_STATISTICS if c in values and c not in ROISTATS_COLUMNS)]
    for (subject, session, entities), rows in values.groupby(
            ["participant_id", "session_id", "entities"], sort=False):
        folder = output_dir / f"sub-{subject}" / f"ses-{session}" / "dwi"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"sub-{subject}_ses-{session}{entities}_atlas-{atlas}_model-tensor_roistats.tsv"
        rows[columns].to_csv(folder / name, sep="\t", index=False, na_rep="n/a")


def write_tissue_tables(output_dir: Path, tissue_values: pd.DataFrame) -> None:
    """Write the participant level's tissue tables (``*_tissuestats.tsv``).

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR; session folders are created if missing.
    tissue_values : pandas.DataFrame
        ``participant_id``, ``session_id`` (bare), ``tissue``, ``param``, ``median``, and
        optionally ``entities`` (one table per distinct value, as :func:`write_study`) and
        ``n_voxels`` (1000 when absent).
    """
    values = tissue_values.copy()
    values["entities"] = values.get("entities", "")
    values["n_voxels"] = values.get("n_voxels", 1000)
    for (subject, session, entities), rows in values.groupby(
            ["participant_id", "session_id", "entities"], sort=False):
        folder = Path(output_dir) / f"sub-{subject}" / f"ses-{session}" / "dwi"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"sub-{subject}_ses-{session}{entities}_model-tensor_tissuestats.tsv"
        rows[TISSUESTATS_COLUMNS].to_csv(folder / name, sep="\t", index=False, na_rep="n/a")


def _participants_and_md(rng, labels, treatment, n_rois):
    """participants.tsv (arms, age, sex) and baseline MD of each ROI, drawn in this order."""
    n_subjects = len(labels)
    participants = pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in labels],
        "group": np.where(treatment == 1, "ketamine", "placebo"),
        "age": rng.integers(20, 65, n_subjects),
        "sex": rng.choice(["F", "M"], n_subjects),
    })
    return participants, 0.8 + 0.05 * rng.standard_normal((n_subjects, n_rois))


def random_study(n_subjects: int, rois=KETAMINE7_ROIS, seed: int = 0,
                 interaction: float = -40.0, sessions=("pre", "post")):
    """Random tables with a treatment x MD change effect on MADRS and QIDS-SR change.

    MADRS change = -8 x treatment + ``interaction`` x treatment x MD change(first ROI)
    + noise (SD 5); QIDS-SR change is half of it plus noise.  Arms 2:1
    ketamine:placebo.

    Returns
    -------
    participants, session_scores, roi_values : pandas.DataFrame
        Inputs of :func:`write_study`.
    """
    rng = np.random.default_rng(seed)
    labels = [f"{i:04d}" for i in range(1, n_subjects + 1)]
    treatment = (rng.random(n_subjects) < 2 / 3).astype(float)
    participants, md_base = _participants_and_md(rng, labels, treatment, len(rois))
    md_change = 0.02 * rng.standard_normal((n_subjects, len(rois)))
    madrs_base = rng.normal(32, 5, n_subjects).round()
    madrs_change = (-8 * treatment + interaction * treatment * md_change[:, 0] * 10
                    + rng.normal(0, 5, n_subjects))
    qids_base = rng.normal(17, 3, n_subjects).round()
    qids_change = 0.5 * madrs_change + rng.normal(0, 2, n_subjects)
    scores = pd.DataFrame({
        "participant_id": np.repeat(labels, 2),
        "session_id": np.tile(sessions, n_subjects),
        "acq_time": np.tile(["2020-01-01T09:00:00", "2020-01-02T09:00:00"], n_subjects),
        "madrs": np.column_stack([madrs_base, (madrs_base + madrs_change).clip(0, 60)]).ravel(),
        "qids_sr": np.column_stack([qids_base, (qids_base + qids_change).clip(0, 27)]).ravel(),
    })
    pieces = []
    for index, session in enumerate(sessions):
        values = md_base + index * md_change
        pieces.append(pd.DataFrame({
            "participant_id": np.repeat(labels, len(rois)),
            "session_id": session,
            "roi": np.tile(rois, n_subjects),
            "param": "md",
            "mean": values.ravel(),
            "n_voxels": 500,
            "coverage": 0.95,
        }))
    return participants, scores, pd.concat(pieces, ignore_index=True)


def multisession_study(n_subjects: int, sessions=("pre", "d1", "w1", "m1"), rois=("vACC",),
                       seed: int = 0, time_treatment: float = -3.0, time_change: float = 0.0):
    """Random tables of a two-arm trial with more than two sessions and a known trajectory.

    MADRS of participant ``s`` at session ``k`` (``time`` = k = 0, 1, ...)::

        madrs = 30 + u_s + (-1 + time_treatment * T + time_change * z_s + v_s) * k + e
        u ~ N(0, 4), v ~ N(0, 1), e ~ N(0, 2)

    with ``z_s`` the MD change of the first ROI from the first to the second session in
    units of 0.01 um^2/ms (MD change = 0.01 z).  MD of every ROI: ``0.8 + N(0, 0.05)`` at
    the first session, plus the participant's change from the second session on.  Arms
    1:1, ``acq_time`` days apart.  QIDS-SR is not simulated.

    Returns
    -------
    participants, session_scores, roi_values : pandas.DataFrame
        Inputs of :func:`write_study`.
    truth : dict
        The fixed effects of the trajectory model in the group level's term names
        (``time:treatment``, ``time:md_change`` per um^2/ms).
    """
    rng = np.random.default_rng(seed)
    labels = [f"{i:03d}" for i in range(1, n_subjects + 1)]
    treatment = rng.permutation(np.arange(n_subjects) % 2).astype(float)
    participants, md_base = _participants_and_md(rng, labels, treatment, len(rois))
    md_change = 0.01 * rng.standard_normal((n_subjects, len(rois)))
    intercept = 30 + 4 * rng.standard_normal(n_subjects)
    slope = (-1 + time_treatment * treatment + time_change * md_change[:, 0] / 0.01
             + rng.standard_normal(n_subjects))
    scores, pieces = [], []
    for k, session in enumerate(sessions):
        madrs = intercept + slope * k + 2 * rng.standard_normal(n_subjects)
        scores.append(pd.DataFrame({
            "participant_id": labels, "session_id": session,
            "acq_time": f"2020-01-{1 + 7 * k:02d}T09:00:00", "madrs": madrs}))
        values = md_base + (k >= 1) * md_change
        pieces.append(pd.DataFrame({
            "participant_id": np.repeat(labels, len(rois)), "session_id": session,
            "roi": np.tile(rois, n_subjects), "param": "md", "mean": values.ravel(),
            "n_voxels": 500, "coverage": 0.95}))
    truth = {"time": -1.0, "time:treatment": time_treatment,
             "time:md_change": time_change / 0.01, "treatment": 0.0, "md_change": 0.0}
    return (participants, pd.concat(scores, ignore_index=True),
            pd.concat(pieces, ignore_index=True), truth)
