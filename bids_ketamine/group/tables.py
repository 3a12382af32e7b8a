"""Change tables: baseline and follow-up values side by side, and the model frames.

Change = follow-up - baseline, for ROI values (``md``, ``fa``, ...) and for any numeric
per-session column used as a predictor (a plasma metabolite such as ``bhb``: one value
per participant, ``roi`` = ``n/a``).  ``change.tsv`` has exactly the columns of the
contract (docs/interfaces.md).

Exclusions are never silent: :func:`exclusion_reasons` tells, for each participant left
out of one model, why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: ROI name used for predictors measured once per participant and session (no ROI).
NO_ROI = "n/a"


def values_from_scores(scores: pd.DataFrame, param: str) -> pd.DataFrame:
    """Per-session values of a non-imaging predictor in the ROI value layout.

    Parameters
    ----------
    scores : pandas.DataFrame
        Per-session clinical table (``participant_id``, ``session_id``, measures).
    param : str
        The measure column (e.g. ``bhb``).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session_id``, ``roi`` (= ``n/a``), ``param``, ``value``,
        ``n_voxels`` and ``coverage`` (NaN: not applicable).
    """
    if param not in scores.columns:
        raise ValueError(f"'{param}' is not a column of the per-session table")
    present = scores.loc[scores[param].notna()]
    return pd.DataFrame({
        "participant_id": present["participant_id"].to_numpy(),
        "session_id": present["session_id"].to_numpy(),
        "roi": NO_ROI,
        "param": param,
        "value": present[param].to_numpy(dtype=float),
        "n_voxels": np.nan,
        "coverage": np.nan,
    })


def pair_sessions(values: pd.DataFrame, sessions: pd.DataFrame) -> pd.DataFrame:
    """Put each participant's baseline and follow-up values side by side.

    Parameters
    ----------
    values : pandas.DataFrame
        Long table: ``participant_id``, ``session_id``, ``roi``, ``param``, ``value``,
        ``coverage``.
    sessions : pandas.DataFrame
        Indexed by participant: ``baseline`` and ``followup`` session labels.

    Returns
    -------
    pandas.DataFrame
        One row per participant, ROI and parameter present at either session:
        ``participant_id``, ``roi``, ``param``, ``baseline``, ``followup``, ``change``
        (follow-up - baseline), ``coverage_baseline``, ``coverage_followup``.
    """
    keys = ["participant_id", "roi", "param"]
    paired = None
    for when in ("baseline", "followup"):
        labels = sessions[when].dropna().rename("session_id").reset_index()
        picked = values.merge(labels, on=["participant_id", "session_id"], how="inner")
        picked = picked[keys + ["value", "coverage"]].rename(
            columns={"value": when, "coverage": f"coverage_{when}"}
        )
        paired = picked if paired is None else paired.merge(picked, on=keys, how="outer")
    paired["change"] = paired["followup"] - paired["baseline"]
    return paired[keys + ["baseline", "followup", "change", "coverage_baseline",
                          "coverage_followup"]]


def pair_outcomes(scores: pd.DataFrame, sessions: pd.DataFrame, outcomes: list[str],
                  participants: pd.Index) -> pd.DataFrame:
    """Baseline, follow-up and change of each outcome, one row per participant.

    Returns
    -------
    pandas.DataFrame
        Indexed by participant (all of ``participants``): ``<o>_baseline``,
        ``<o>_followup``, ``<o>_change`` for every outcome.
    """
    frame = pd.DataFrame(index=pd.Index(participants, name="participant_id"))
    indexed = scores.set_index(["participant_id", "session_id"])
    for when in ("baseline", "followup"):
        labels = sessions[when].reindex(frame.index)
        keys = pd.MultiIndex.from_arrays([frame.index, labels.to_numpy()])
        picked = indexed.reindex(keys)
        for outcome in outcomes:
            frame[f"{outcome}_{when}"] = picked[outcome].to_numpy(dtype=float)
    for outcome in outcomes:
        frame[f"{outcome}_change"] = frame[f"{outcome}_followup"] - frame[f"{outcome}_baseline"]
    return frame[[f"{o}_{w}" for o in outcomes for w in ("baseline", "followup", "change")]]


def change_table(paired: pd.DataFrame, outcomes_wide: pd.DataFrame, groups: pd.Series,
                 outcomes: list[str]) -> pd.DataFrame:
    """The ``change.tsv`` table of the contract.

    Parameters
    ----------
    paired : pandas.DataFrame
        From :func:`pair_sessions`.
    outcomes_wide : pandas.DataFrame
        From :func:`pair_outcomes` (indexed by participant).
    groups : pandas.Series
        Arm of each participant (indexed by bare label).
    outcomes : list of str
        Outcome names, in column order.

    Returns
    -------
    pandas.DataFrame
        ``participant_id`` (with ``sub-``), ``group``, ``roi``, ``param``, ``baseline``,
        ``followup``, ``change``, then ``<o>_baseline``, ``<o>_followup``, ``<o>_change``
        per outcome; only participants listed in ``groups``.
    """
    table = paired.loc[paired["participant_id"].isin(groups.index)].copy()
    table["group"] = table["participant_id"].map(groups)
    outcome_columns = [f"{o}_{w}" for o in outcomes for w in ("baseline", "followup", "change")]
    table = table.merge(outcomes_wide[outcome_columns], left_on="participant_id",
                        right_index=True, how="left")
    table["participant_id"] = "sub-" + table["participant_id"]
    table = table.sort_values(["param", "roi", "participant_id"], kind="stable")
    columns = ["participant_id", "group", "roi", "param", "baseline", "followup", "change"]
    return table[columns + outcome_columns].reset_index(drop=True)


def model_frame(paired: pd.DataFrame, participant_data: pd.DataFrame, param: str,
                roi: str) -> pd.DataFrame:
    """One row per participant for the models of one parameter and ROI.

    Parameters
    ----------
    paired : pandas.DataFrame
        From :func:`pair_sessions`.
    participant_data : pandas.DataFrame
        Indexed by participant: ``group``, ``treatment``, covariates and the clinical
        outcome columns.
    param, roi : str
        The predictor and its ROI (``n/a`` for a non-imaging predictor).

    Returns
    -------
    pandas.DataFrame
        ``participant_data`` plus ``<param>_baseline``, ``<param>_followup``,
        ``<param>_change`` and ``coverage`` (the smaller of the two sessions').
    """
    rows = paired.loc[(paired["param"] == param) & (paired["roi"] == roi)]
    rows = rows.set_index("participant_id").reindex(participant_data.index)
    frame = participant_data.copy()
    frame[f"{param}_baseline"] = rows["baseline"]
    frame[f"{param}_followup"] = rows["followup"]
    frame[f"{param}_change"] = rows["change"]
    frame["coverage"] = rows[["coverage_baseline", "coverage_followup"]].min(axis=1, skipna=False)
    return frame


def exclusion_reasons(frame: pd.DataFrame, sessions: pd.DataFrame, param: str, roi: str,
                      outcome_columns: list[tuple[str, str]], covariates: list[str],
                      min_coverage: float, session_problems: dict | None = None) -> pd.Series:
    """Why each participant of a model frame is left out (first failing check).

    Checks, in order: baseline and follow-up session, predictor value at each session,
    ROI coverage (``coverage < min_coverage``), each outcome column, each covariate.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`model_frame` (indexed by participant).
    sessions : pandas.DataFrame
        Indexed by participant: ``baseline``, ``followup`` labels.
    param, roi : str
        The predictor and its ROI.
    outcome_columns : list of (column, description)
        Columns the model needs, with the words used in the reason.
    covariates : list of str
        Covariate columns.
    min_coverage : float
        ``--min-coverage``.
    session_problems : dict, optional
        Participant -> why no session pair exists.

    Returns
    -------
    pandas.Series
        Indexed like ``frame``; the reason (str) or None for participants kept.
    """
    session_problems = session_problems or {}
    where = f"in ROI {roi}" if roi != NO_ROI else "(per-session column)"
    labels = sessions.reindex(frame.index)
    reasons = pd.Series(None, index=frame.index, dtype=object)

    def mark(mask, text):
        fill = mask & reasons.isna()
        if callable(text):
            reasons.loc[fill] = [text(i) for i in fill.index[fill]]
        else:
            reasons.loc[fill] = text

    for when, word in (("baseline", "baseline"), ("followup", "follow-up")):
        no_session = labels[when].isna()
        mark(no_session, lambda s, word=word: (
            f"no baseline/follow-up pair: {session_problems[s]}" if s in session_problems
            else f"no {word} session"
        ))
        mark(frame[f"{param}_{when}"].isna(),
             lambda s, when=when, word=word: f"no {param} value {where} at {word} "
                                              f"(ses-{labels.at[s, when]})")
    if roi != NO_ROI:
        low = frame["coverage"] < min_coverage
        mark(low, lambda s: f"ROI {roi} coverage {frame.at[s, 'coverage']:.2f} below "
                            f"--min-coverage {min_coverage:g}")
    for column, description in outcome_columns:
        mark(frame[column].isna(), f"no {description}")
    for covariate in covariates:
        mark(frame[covariate].isna(), f"missing covariate {covariate}")
    return reasons


def session_table(values: pd.DataFrame, scores: pd.DataFrame, order: list[str],
                  time_zero: str, groups: pd.Series, outcomes: list[str]) -> pd.DataFrame:
    """Every session side by side in long form: the ``sessions.tsv`` table.

    Parameters
    ----------
    values : pandas.DataFrame
        Long predictor values (``participant_id``, ``session_id``, ``roi``, ``param``,
        ``value``, ``coverage``).
    scores : pandas.DataFrame
        Per-session clinical table (``participant_id``, ``session_id``, outcomes).
    order : list of str
        Session labels, earliest first.
    time_zero : str
        The session at ``time`` 0 (the outcome baseline); ``time`` is the position in
        ``order`` relative to it.
    groups : pandas.Series
        Arm of each participant (indexed by bare label); only these participants.
    outcomes : list of str
        Outcome columns, each the score at the row's session.

    Returns
    -------
    pandas.DataFrame
        One row per participant x session x ROI x parameter where the predictor or an
        outcome is known: ``participant_id`` (with ``sub-``), ``group``, ``session_id``,
        ``time``, ``roi``, ``param``, ``value``, ``coverage`` and one column per outcome.
    """
    time_of = {label: index - order.index(time_zero) for index, label in enumerate(order)}
    participants = pd.Index(groups.index, name="participant_id")
    grid = pd.MultiIndex.from_product([participants, order], names=["participant_id", "session_id"])
    combos = values[["roi", "param"]].drop_duplicates()
    frame = grid.to_frame(index=False).merge(combos, how="cross")
    frame = frame.merge(values[["participant_id", "session_id", "roi", "param", "value",
                                "coverage"]], on=["participant_id", "session_id", "roi", "param"],
                        how="left")
    frame = frame.merge(scores[["participant_id", "session_id", *outcomes]],
                        on=["participant_id", "session_id"], how="left")
    known = frame[["value", *outcomes]].notna().any(axis=1)
    frame = frame.loc[known].copy()
    frame["time"] = frame["session_id"].map(time_of).astype(int)
    frame["group"] = frame["participant_id"].map(groups)
    frame["participant_id"] = "sub-" + frame["participant_id"]
    frame = frame.sort_values(["param", "roi", "participant_id", "time"], kind="stable")
    columns = ["participant_id", "group", "session_id", "time", "roi", "param", "value",
               "coverage", *outcomes]
    return frame[columns].reset_index(drop=True)
