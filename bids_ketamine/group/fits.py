"""The models of the group level: change models, trajectories and prediction, one ROI and
outcome at a time (called by :func:`bids_ketamine.group.run.run_group_level`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bids_ketamine.group import models, prediction, tables
from bids_ketamine.group.sessions import OutcomeSession
from bids_ketamine.utils.progress import StageProgress, display_options

LOGGER = logging.getLogger("bids_ketamine.group")

#: Columns of ``prediction.tsv``.
PREDICTION_COLUMNS = ("param", "outcome", "roi", "term", "std_beta", "selection_frequency",
                      "r2_oos", "p_permutation", "n_obs", "n_permutations", "cv_outer",
                      "cv_inner_folds", "alpha", "l1_ratio", "outcome_session")
#: ``model`` of the outcome models of a single-arm study (no treatment terms).
SINGLE_ARM_MODEL = "single_arm"
#: ``outcome_session`` of the trajectory rows (every session).
ALL_SESSIONS = "all"


def model_rows(terms: pd.DataFrame, model, roi, param, outcome, measure,
               outcome_session) -> pd.DataFrame:
    rows = terms.copy()
    rows.insert(0, "model", model)
    rows.insert(1, "roi", roi)
    rows.insert(2, "param", param)
    rows.insert(3, "outcome", outcome)
    rows["measure"] = measure
    rows["outcome_session"] = outcome_session
    return rows


def outcome_needs(outcome: str, plan: OutcomeSession) -> list[tuple[str, str]]:
    """The outcome columns every model of ``outcome`` needs, with the words of the reason."""
    return [(f"{outcome}_baseline", f"{outcome} at {plan.baseline_words}"),
            (f"{outcome}_followup", f"{outcome} at {plan.followup_words}")]


def fit_change_models(frame, sessions, choice, config, param, roi, outcome, cov_terms,
                      arms, exclusions, plan):
    """Interaction (single-arm: no treatment terms), simple slopes (change and percent
    improvement) and remission logit, at one outcome session."""
    rows, samples = [], {}
    single_arm = len(arms) == 1
    main_model = SINGLE_ARM_MODEL if single_arm else "interaction"
    terms = models.interaction_terms(param, cov_terms, single_arm)
    for measure in ("change", "pctimprovement"):
        dependent = f"{outcome}_{measure}"
        needed = outcome_needs(outcome, plan)
        if measure == "pctimprovement":
            needed.append((dependent, f"{outcome} percent improvement (baseline score 0)"))
        reasons = tables.exclusion_reasons(frame, sessions, param, roi, needed, cov_terms,
                                           config.min_coverage, choice.problems)
        exclusions.add_reasons(reasons, f"models ({measure}{plan.tag})", param, roi, outcome)
        kept = frame.loc[reasons.isna()]
        samples[measure] = kept
        label = outcome if measure == "change" else dependent
        rows.append(model_rows(models.fit_ols(kept, dependent, terms), main_model,
                               roi, param, label, measure, plan.label))
        if single_arm:
            continue
        for arm, value in arms:
            arm_rows = kept.loc[kept["treatment"] == value]
            fitted = models.fit_ols(arm_rows, dependent, models.slope_terms(param, cov_terms))
            rows.append(model_rows(fitted, f"slope_{arm}", roi, param, label, measure,
                                   plan.label))
    remission = f"{outcome}_remission"
    if remission in frame.columns:
        kept = samples["change"]
        fitted = models.fit_logit(kept, remission, terms)
        rows.append(model_rows(fitted, "remission_logit", roi, param, outcome, "remission",
                               plan.label))
    return rows, samples


def fit_trajectories(long_values, frames_by_key, sessions, choice, config, outcomes, params,
                     rois_of, cov_terms_of, single_arm, exclusions):
    """The ``model = trajectory`` rows: MixedLM of each outcome over every session."""
    rows, fits = [], []
    for outcome in outcomes:
        covariates = cov_terms_of[outcome]
        terms = models.trajectory_terms("{param}", covariates, single_arm)
        for param in params:
            param_terms = [t.replace("{param}", param) for t in terms]
            for roi in rois_of[param]:
                frame = frames_by_key[(param, roi)]
                reasons = tables.exclusion_reasons(frame, sessions, param, roi, [], covariates,
                                                   config.min_coverage, choice.problems)
                exclusions.add_reasons(reasons, "trajectory", param, roi, outcome)
                kept = frame.loc[reasons.isna()]
                data = long_values.loc[(long_values["param"] == param)
                                       & (long_values["roi"] == roi)
                                       & long_values[outcome].notna()]
                data = data.loc[data["participant_id"].isin(kept.index),
                                ["participant_id", "time", outcome]]
                participant_columns = list(dict.fromkeys(
                    ["treatment", f"{param}_change", *covariates]))
                data = data.join(kept[participant_columns], on="participant_id")
                table, info = models.fit_trajectory(data.reset_index(drop=True), outcome,
                                                    param_terms)
                rows.append(model_rows(table, "trajectory", roi, param, outcome, "score",
                                       ALL_SESSIONS))
                fits.append({"outcome": outcome, "param": param, "roi": roi, **info})
    return rows, fits


def prediction_rows(result: prediction.PredictionResult, param, outcome, rois, n_obs,
                    single_arm=False):
    k = len(rois)
    roi_of = [*rois, tables.NO_ROI, *rois]
    term_of = [f"{param}_change"] * k + ["treatment"] + [f"treatment:{param}_change"] * k
    if single_arm:
        roi_of, term_of = roi_of[:k], term_of[:k]
    return pd.DataFrame({
        "param": param, "outcome": outcome, "roi": roi_of, "term": term_of,
        "std_beta": result.std_beta, "selection_frequency": result.selection_frequency,
        "r2_oos": result.r2, "p_permutation": result.p_value, "n_obs": n_obs,
        "n_permutations": result.scheme["n_permutations"], "cv_outer": result.scheme["outer"],
        "cv_inner_folds": result.scheme["inner_folds"], "alpha": result.alpha,
        "l1_ratio": result.l1_ratio,
    })


def run_prediction(frames_by_roi, sessions, choice, config, param, outcome, rois, exclusions,
                   n_jobs, plan, single_arm=False):
    dependent = f"{outcome}_change"
    needed = outcome_needs(outcome, plan)
    first = frames_by_roi[rois[0]]
    reasons = pd.Series(None, index=first.index, dtype=object)
    for roi in rois:
        roi_reasons = tables.exclusion_reasons(frames_by_roi[roi], sessions, param, roi, needed,
                                               [], config.min_coverage, choice.problems)
        exclusions.add_reasons(roi_reasons.where(reasons.isna()), f"prediction{plan.tag}",
                               param, roi, outcome)
        reasons = reasons.where(reasons.notna(), roi_reasons)
    kept = reasons.index[reasons.isna()]
    n_obs = len(kept)
    summary = {"param": param, "outcome": outcome, "outcome_session": plan.label, "n_obs": n_obs,
               "features": ("each ROI change (single arm)" if single_arm else
                            "each ROI change, treatment, treatment x each ROI change")}
    if n_obs < 10:
        summary["note"] = f"skipped: {n_obs} participants with complete data (at least 10 needed)"
        return None, summary
    changes = np.column_stack(
        [frames_by_roi[roi].loc[kept, f"{param}_change"].to_numpy(float) for roi in rois]
    )
    names = [f"{param}_change" if roi == tables.NO_ROI else f"{param}_change[{roi}]" for roi in rois]
    if single_arm:
        features, feature_names = changes, names
    else:
        features, feature_names = prediction.treatment_change_features(
            changes, first.loc[kept, "treatment"].to_numpy(float), names
        )
    progress = StageProgress(f"prediction of {dependent} from {param}", unit="fit",
                             **display_options(config))
    try:
        result = prediction.predict_outcome(
            features, first.loc[kept, dependent].to_numpy(float), feature_names,
            n_permutations=max(config.n_permutations, 0), seed=config.seed, n_jobs=n_jobs,
            progress=progress,
        )
    finally:
        progress.close()
    summary.update({
        "r2_oos": result.r2, "p_permutation": result.p_value, "alpha": result.alpha,
        "l1_ratio": result.l1_ratio, "scheme": result.scheme,
        "feature_names": result.feature_names,
    })
    LOGGER.info("prediction of %s from %s changes: out-of-sample R2 = %.3f (p = %s, n = %d)",
                dependent, param, result.r2, f"{result.p_value:.3g}", n_obs)
    rows = prediction_rows(result, param, outcome, rois, n_obs, single_arm)
    rows["outcome_session"] = plan.label
    return rows, summary
