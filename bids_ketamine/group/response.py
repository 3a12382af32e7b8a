"""Clinical response: percent improvement, response, remission, and their rates per arm.

Definitions (docs/science.md):

- percent improvement = 100 x (baseline - follow-up) / baseline (undefined when the
  baseline score is 0);
- response = percent improvement >= ``--response-threshold`` (default 50 %);
- remission = follow-up score <= the scale's threshold (MADRS <= 10, QIDS-SR16 <= 5 by
  default, ``--remission-threshold``).

The logistic model of remission on treatment x change is fitted by
:func:`bids_ketamine.group.models.fit_logit` (``model`` = ``remission_logit``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def percent_improvement(baseline, followup) -> np.ndarray:
    """Percent improvement from baseline, ``100 * (baseline - followup) / baseline``.

    Parameters
    ----------
    baseline, followup : array-like
        Scores (higher = worse, as MADRS and QIDS-SR).

    Returns
    -------
    numpy.ndarray
        Float array; NaN where a score is missing or the baseline is 0.
    """
    baseline = np.asarray(baseline, dtype=float)
    followup = np.asarray(followup, dtype=float)
    if baseline.shape != followup.shape:
        raise ValueError(
            f"baseline and followup must have the same shape, not {baseline.shape} and "
            f"{followup.shape}"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        improvement = 100.0 * (baseline - followup) / baseline
    improvement[~np.isfinite(improvement)] = np.nan
    return improvement


def _threshold_flag(values: np.ndarray, hit: np.ndarray) -> np.ndarray:
    flag = hit.astype(float)
    flag[np.isnan(values)] = np.nan
    return flag


def is_response(improvement, threshold: float = 50.0) -> np.ndarray:
    """Response: percent improvement at or above ``threshold``.

    Returns
    -------
    numpy.ndarray
        1.0 (response), 0.0, or NaN where the improvement is undefined.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"the response threshold must be a finite percentage, not {threshold}")
    improvement = np.asarray(improvement, dtype=float)
    with np.errstate(invalid="ignore"):
        return _threshold_flag(improvement, improvement >= threshold)


def is_remission(followup, threshold: float) -> np.ndarray:
    """Remission: follow-up score at or below ``threshold``.

    Returns
    -------
    numpy.ndarray
        1.0 (remission), 0.0, or NaN where the follow-up score is missing.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"the remission threshold must be a finite score, not {threshold}")
    followup = np.asarray(followup, dtype=float)
    with np.errstate(invalid="ignore"):
        return _threshold_flag(followup, followup <= threshold)


def clinical_outcomes(outcomes_wide: pd.DataFrame, outcomes: list[str], response_threshold: float,
                      remission_thresholds: dict[str, float]) -> pd.DataFrame:
    """Add ``<o>_pctimprovement``, ``<o>_response`` and ``<o>_remission`` columns.

    Parameters
    ----------
    outcomes_wide : pandas.DataFrame
        One row per participant with ``<o>_baseline`` and ``<o>_followup``.
    outcomes : list of str
        Outcome names.
    response_threshold : float
        Percent improvement defining response.
    remission_thresholds : dict
        Outcome -> score at or below which a participant remits; an outcome without a
        threshold gets no remission column.

    Returns
    -------
    pandas.DataFrame
        A copy with the new columns.
    """
    frame = outcomes_wide.copy()
    for outcome in outcomes:
        baseline = frame[f"{outcome}_baseline"].to_numpy(dtype=float)
        followup = frame[f"{outcome}_followup"].to_numpy(dtype=float)
        improvement = percent_improvement(baseline, followup)
        frame[f"{outcome}_pctimprovement"] = improvement
        frame[f"{outcome}_response"] = is_response(improvement, response_threshold)
        if outcome in remission_thresholds:
            frame[f"{outcome}_remission"] = is_remission(followup, remission_thresholds[outcome])
    return frame


def response_rates(frame: pd.DataFrame, outcomes: list[str], group_column: str = "group",
                   ) -> pd.DataFrame:
    """Response and remission rates per arm (the content of ``response.tsv``).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per participant, from :func:`clinical_outcomes`, with the arm in
        ``group_column``.
    outcomes : list of str
        Outcome names.

    Returns
    -------
    pandas.DataFrame
        One row per outcome and arm: ``outcome``, ``group``, ``n`` (participants with a
        percent improvement), ``pctimprovement_mean``, ``pctimprovement_sd``,
        ``n_response``, ``response_rate``, ``n_remission_evaluable``, ``n_remission``,
        ``remission_rate`` (NaN without a threshold).
    """
    rows = []
    for outcome in outcomes:
        for group, arm in frame.groupby(group_column, sort=True):
            improvement = arm[f"{outcome}_pctimprovement"].dropna()
            response = arm[f"{outcome}_response"].dropna()
            remission_column = f"{outcome}_remission"
            remission = (arm[remission_column].dropna() if remission_column in arm
                         else pd.Series(dtype=float))
            rows.append({
                "outcome": outcome,
                "group": group,
                "n": int(len(improvement)),
                "pctimprovement_mean": improvement.mean() if len(improvement) else np.nan,
                "pctimprovement_sd": improvement.std(ddof=1) if len(improvement) > 1 else np.nan,
                "n_response": int(response.sum()),
                "response_rate": response.mean() if len(response) else np.nan,
                "n_remission_evaluable": int(len(remission)),
                "n_remission": int(remission.sum()),
                "remission_rate": remission.mean() if len(remission) else np.nan,
            })
    return pd.DataFrame(rows)
