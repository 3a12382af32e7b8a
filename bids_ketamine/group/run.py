"""The group level: from participant-level ROI tables and clinical data to the group outputs.

:func:`run_group_level` is the entry point called by the command line.  Outputs, in
``OUTPUT_DIR/group/`` (docs/group.md): ``change.tsv``, ``models.tsv``, ``models.json``,
``response.tsv``, ``outcomes.tsv``, ``prediction.tsv``, ``sessions.tsv`` and ``figures/``.
Every file is written atomically.

Designs: the predictor change runs from the baseline to the follow-up session; the outcomes
are compared at each outcome session (``--outcome-sessions``) with the outcome baseline, one
set of models per outcome session; with more than two sessions a mixed model of each outcome
over every session (``model = trajectory``); with one arm, models without treatment terms
(``model = single_arm``).

Kept as one module (~480 lines): :func:`run_group_level` is one pipeline whose steps share the
exclusions and the session plans (chosen in :mod:`bids_ketamine.group.sessions`); the models
fitted per ROI and outcome are in :mod:`bids_ketamine.group.fits`, the JSON record helpers in
:mod:`bids_ketamine.group.record`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pandas as pd

from bids_ketamine.config import DEFAULT_OUTCOMES, KETAMINE7_ROIS, ROI_STATISTIC_FALLBACK, Config
from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.errors import ClinicalDataError, InputError
from bids_ketamine.group import clinical, figures, models, response, roistats, tables, tissue
from bids_ketamine.group.fits import (
    PREDICTION_COLUMNS,
    SINGLE_ARM_MODEL,
    fit_change_models,
    fit_trajectories,
    run_prediction,
)
from bids_ketamine.group.record import clean_json, json_default, software_versions
from bids_ketamine.group.sessions import choose_predictor_sessions, outcome_sessions_of
from bids_ketamine.utils.atomic import atomic_write_text, atomic_write_tsv

LOGGER = logging.getLogger("bids_ketamine.group")

#: Participant-level columns used as default covariates when present.
DEFAULT_PARTICIPANT_COVARIATES = ("age", "sex")
#: ``group`` of every participant when participants.tsv holds no arm at all.
SINGLE_ARM_LABEL = "all"


class _Exclusions:
    """Collects (participant, reason, analysis, param, roi, outcome) and summarises them."""

    def __init__(self):
        self.records = []

    def add(self, participant, reason, analysis, param="all", roi="all", outcome="all"):
        self.records.append((participant, reason, analysis, param, roi, outcome))

    def add_reasons(self, reasons: pd.Series, analysis, param, roi, outcome):
        for participant, reason in reasons.dropna().items():
            self.add(participant, reason, analysis, param, roi, outcome)

    def summary(self) -> list[dict]:
        grouped = defaultdict(lambda: defaultdict(set))
        for participant, reason, analysis, param, roi, outcome in self.records:
            entry = grouped[(participant, reason)]
            entry["analyses"].add(analysis)
            entry["params"].add(param)
            entry["rois"].add(roi)
            entry["outcomes"].add(outcome)
        return [
            {"participant_id": f"sub-{participant}", "reason": reason,
             **{key: sorted(values) for key, values in entry.items()}}
            for (participant, reason), entry in sorted(grouped.items())
        ]


def _classify_params(params, scores: pd.DataFrame, bids_dir: Path) -> tuple[list, list]:
    measures = clinical.numeric_measures(scores)
    imaging, per_session = [], []
    for param in params:
        if param.lower() in TENSOR_PARAMS:
            imaging.append(param.lower())
        elif param in measures:
            per_session.append(param)
        else:
            raise ClinicalDataError(
                f"--params {param}: neither a tensor parameter ({', '.join(TENSOR_PARAMS)}) "
                f"nor a numeric per-session column of {bids_dir}/sub-*/sub-*_sessions.tsv, "
                f"phenotype/*.tsv or the tissue tables (numeric columns: {', '.join(measures) or 'none'}); "
                f"fix --params{tissue.missing_hint([param])}"
            )
    return imaging, per_session


def _roi_order(values: pd.DataFrame, param: str) -> list[str]:
    found = list(dict.fromkeys(values.loc[values["param"] == param, "roi"]))
    known = [roi for roi in KETAMINE7_ROIS if roi in found]
    return known + [roi for roi in found if roi not in known]


def _covariate_names(config: Config, outcome: str, data: pd.DataFrame, bids_dir: Path) -> list[str]:
    if config.covariates is None:
        names = [f"{outcome}_baseline"]
        names += [c for c in DEFAULT_PARTICIPANT_COVARIATES
                  if c in data.columns and data[c].notna().any()]
        return names
    names = [name.replace("{outcome}", outcome) for name in config.covariates]
    own_change = f"{outcome}_change"
    if own_change in names:
        LOGGER.info("covariate %s left out of the models of %s (it is their dependent)",
                    own_change, outcome)
        names = [name for name in names if name != own_change]
    missing = [name for name in names if name not in data.columns]
    if missing:
        available = [c for c in data.columns if c not in ("group", "treatment")]
        raise ClinicalDataError(
            f"covariate(s) {', '.join(missing)} not found in {bids_dir}/participants.tsv nor as "
            f"<outcome>_baseline or <outcome>_change of a per-session score (available: "
            f"{', '.join(available)}); fix --covariates{tissue.missing_hint(missing)}"
        )
    return list(dict.fromkeys(names))


def _covariate_measures(config: Config, measures: list[str]) -> list[str]:
    """Per-session scores named by ``--covariates`` as ``<score>_baseline``/``<score>_change``."""
    found = []
    for name in config.covariates or ():
        for suffix in ("_baseline", "_change"):
            if name.endswith(suffix) and name[: -len(suffix)] in measures:
                found.append(name[: -len(suffix)])
    return list(dict.fromkeys(found))


def _scatter_figure(samples, param, outcome, roi, arms, plan, extended, figures_dir,
                    predictor_sessions="follow-up - baseline"):
    """Predictor change against outcome change (today's design) or percent improvement at
    an outcome session (``--outcome-sessions``)."""
    measure = "pctimprovement" if extended else "change"
    sample = samples[measure]
    y_column = f"{outcome}_{measure}"
    data = figures.scatter_data(sample, f"{param}_change", y_column, [a for a, _ in arms])
    session = f"_session-{figures.safe_name(plan.label)}" if extended else ""
    name = (f"scatter_param-{figures.safe_name(param)}_outcome-{figures.safe_name(outcome)}"
            f"{session}_roi-{figures.safe_name(roi)}.png")
    where = f"{roi}: " if roi != tables.NO_ROI else ""
    if extended:
        y_label = f"{outcome} improvement at ses-{plan.label} (%)"
        title = f"{where}{outcome} improvement at ses-{plan.label} vs early {param} change"
    else:
        y_label = f"{outcome} change (follow-up - baseline)"
        title = f"{where}{outcome} change vs {param} change"
    return figures.plot_scatter(data, f"{param} change ({predictor_sessions})", y_label, title,
                                figures_dir / name)


def _trajectory_figure(long_values, outcome, arms, figures_dir):
    """Outcome over sessions by arm: mean and 95 % CI, one thin line per participant."""
    scores = long_values.drop_duplicates(["participant_id", "session_id"])
    data = figures.trajectory_data(scores, outcome, [a for a, _ in arms])
    name = f"trajectory_outcome-{figures.safe_name(outcome)}.png"
    return figures.plot_trajectory(data, f"{outcome} by session", outcome,
                                   figures_dir / name)


def _design_arms(config: Config, participants: pd.DataFrame, treatment: pd.Series,
                 control_label) -> tuple[pd.DataFrame, list]:
    """The arms as (label, treatment value); a single-arm study labels every participant."""
    single_arm = control_label is None
    if single_arm:
        present = participants["group"].dropna()
        arm_label = present.iloc[0] if len(present) else SINGLE_ARM_LABEL
        participants = participants.assign(group=participants["group"].where(
            treatment.isna() | participants["group"].notna(), arm_label))
        arms = [(arm_label, 1.0)]
        LOGGER.info("single-arm design (%s): the models have no treatment terms", arm_label)
    else:
        arms = [(config.treatment_label, 1.0), (control_label, 0.0)]
    return participants, arms


def _predictor_values(config: Config, imaging: list, per_session: list, scores: pd.DataFrame,
                      participants: pd.DataFrame,
                      exclusions: _Exclusions) -> tuple[pd.DataFrame, list, dict | None]:
    """Long table of the predictor values: ROI values of the imaging parameters and the
    per-session scores; participants with outputs but no row in participants.tsv excluded.
    Also the notes on multi-series sessions and the ROI statistic used (None without imaging)."""
    bids_dir = Path(config.bids_dir)
    output_dir = Path(config.output_dir)
    pieces, series_notes, roi_value = [], [], None
    if imaging:
        roi_values, series_notes, roi_value = roistats.load_roi_values(
            output_dir, config.atlas_name, tuple(config.participant_label), config.roi_statistic)
        log = LOGGER.warning if roi_value["statistic"] == ROI_STATISTIC_FALLBACK \
            and config.roi_statistic is None else LOGGER.info
        log("ROI value: %s (%s)", roi_value["statistic"], roi_value["reason"])
        unknown = sorted(set(roi_values["participant_id"]) - set(participants.index))
        for participant in unknown:
            exclusions.add(participant, f"has participant-level outputs but is not listed in "
                                        f"{bids_dir / 'participants.tsv'}", "all")
        missing_params = [p for p in imaging if p not in set(roi_values["param"])]
        if missing_params:
            raise InputError(
                f"parameter(s) {', '.join(missing_params)} not found in the ROI tables of "
                f"{output_dir}; choose --params among {', '.join(sorted(set(roi_values['param'])))}"
            )
        pieces.append(roi_values.loc[roi_values["param"].isin(imaging)])
    for param in per_session:
        pieces.append(tables.values_from_scores(scores, param))
    values = pd.concat(pieces, ignore_index=True)
    return values, series_notes, roi_value


def run_group_level(config: Config) -> dict:
    """Run the group level and write its outputs to ``OUTPUT_DIR/group/``.

    Parameters
    ----------
    config : bids_ketamine.config.Config
        The run's options (group fields, ``bids_dir``, ``output_dir``,
        ``participant_label``, ``atlas_name``, ``nprocs``).

    Returns
    -------
    dict
        Paths of the files written (``change``, ``models``, ``models_json``,
        ``response``, ``outcomes``, ``prediction``, ``sessions`` when the session order is
        known, ``figures``) and counts
        (``n_participants``, ``n_excluded``).

    Raises
    ------
    bids_ketamine.errors.InputError
        No participant-level outputs, unusable clinical tables (``ClinicalDataError``),
        unknown options.
    """
    bids_dir = Path(config.bids_dir)
    output_dir = Path(config.output_dir)
    group_dir = output_dir / "group"
    exclusions = _Exclusions()

    participants = clinical.read_participants(bids_dir, config.group_column,
                                              tuple(config.participant_label),
                                              config.treatment_label)
    scores = clinical.read_session_scores(bids_dir, participants.index)
    scores = tissue.join_session_measures(scores, tissue.tissue_measures(output_dir, participants.index))
    outcomes = clinical.resolve_outcomes(config.outcomes, scores, DEFAULT_OUTCOMES, bids_dir)
    imaging, per_session = _classify_params(config.params, scores, bids_dir)
    params = imaging + per_session
    treatment, control_label = clinical.assign_arms(
        participants, config.treatment_label, config.control_label, bids_dir / "participants.tsv"
    )
    single_arm = control_label is None
    participants, arms = _design_arms(config, participants, treatment, control_label)
    values, series_notes, roi_value = _predictor_values(config, imaging, per_session, scores,
                                                        participants, exclusions)

    in_arm = treatment.notna()
    for participant in participants.index[~in_arm]:
        exclusions.add(participant, f"no value in column '{config.group_column}' of participants.tsv",
                       "all")
    universe = participants.index[in_arm]
    values = values.loc[values["participant_id"].isin(universe)]
    scores_in = scores.loc[scores["participant_id"].isin(universe)]

    found_sessions = {participant: set() for participant in universe}
    for frame in (values, scores_in):
        for participant, session in frame[["participant_id", "session_id"]].drop_duplicates().itertuples(index=False):
            found_sessions[participant].add(session)
    choice, order = choose_predictor_sessions(config, found_sessions, scores_in)
    if config.sessions:
        values = values.loc[values["session_id"].isin(order)]
        scores_in = scores_in.loc[scores_in["session_id"].isin(order)]
    sessions = choice.table
    plans = outcome_sessions_of(config, choice, found_sessions)
    extended = config.outcome_sessions is not None or config.outcome_baseline_session is not None

    paired = tables.pair_sessions(values, sessions)
    base_data = participants.loc[universe].copy()
    base_data["treatment"] = treatment.loc[universe]
    extra_measures = [m for m in _covariate_measures(config, clinical.numeric_measures(scores))
                      if m not in outcomes]

    group_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    change_pieces, outcome_pieces, rate_pieces = [], [], []
    model_rows, prediction_rows, prediction_summaries = [], [], []
    formulas, covariates_used, coding_all = {}, {}, {}
    figure_paths = []
    figures_dir = group_dir / "figures"
    main_model = SINGLE_ARM_MODEL if single_arm else "interaction"
    rois_of = {param: _roi_order(values, param) for param in params}
    predictor_sessions = (f"ses-{choice.summary['followup']} - ses-{choice.summary['baseline']}"
                          if extended and "baseline" in choice.summary
                          else "follow-up - baseline")
    trajectory_inputs = None
    for plan in plans:
        outcome_pairs = tables.pair_outcomes(scores_in, plan.table, outcomes + extra_measures,
                                             universe)
        clinical_wide = response.clinical_outcomes(outcome_pairs, outcomes,
                                                   config.response_threshold,
                                                   config.remission_thresholds)
        participant_data = base_data.join(clinical_wide)
        change = tables.change_table(paired, outcome_pairs, participant_data["group"], outcomes)
        if extended:
            change["outcome_session"] = plan.label
        change_pieces.append(change)
        outcome_table = clinical_wide.copy()
        outcome_table.insert(0, "group", participant_data["group"])
        outcome_table.index = "sub-" + outcome_table.index
        outcome_table["outcome_session"] = plan.label
        outcome_pieces.append(outcome_table.reset_index())
        rates = response.response_rates(participant_data, outcomes)
        rates["outcome_session"] = plan.label
        rate_pieces.append(rates)

        frames_by_key = {}
        for outcome in outcomes:
            names = _covariate_names(config, outcome, participant_data, bids_dir)
            encoded, cov_terms, coding = models.encode_covariates(participant_data, names)
            coding_all.update(coding)
            covariates_used[outcome] = cov_terms
            for param in params:
                rois = rois_of[param]
                frames_by_roi = {}
                for roi in rois:
                    frame = tables.model_frame(paired, encoded, param, roi)
                    frames_by_roi[roi] = frame
                    frames_by_key[(param, roi)] = frame
                    rows, samples = fit_change_models(frame, sessions, choice, config, param,
                                                      roi, outcome, cov_terms, arms, exclusions,
                                                      plan)
                    model_rows.extend(rows)
                    if param == params[0]:
                        figure_paths.append(_scatter_figure(
                            samples, param, outcome, roi, arms, plan, extended, figures_dir,
                            predictor_sessions))
                for measure, dependent in (("change", f"{outcome}_change"),
                                           ("pctimprovement", f"{outcome}_pctimprovement")):
                    formulas[f"{main_model}/{param}/{dependent}"] = models.formula(
                        dependent, models.interaction_terms(param, cov_terms, single_arm))
                    if not single_arm:
                        formulas[f"slope/{param}/{dependent}"] = models.formula(
                            dependent, models.slope_terms(param, cov_terms)) + " (within each arm)"
                formulas[f"remission_logit/{param}/{outcome}_remission"] = models.formula(
                    f"{outcome}_remission",
                    models.interaction_terms(param, cov_terms, single_arm)) + " (logistic)"
                table, summary = run_prediction(frames_by_roi, sessions, choice, config, param,
                                                outcome, rois, exclusions,
                                                max(config.nprocs, 1), plan, single_arm)
                prediction_summaries.append(summary)
                if table is not None:
                    prediction_rows.append(table)
        if trajectory_inputs is None:
            trajectory_inputs = frames_by_key

    change = pd.concat(change_pieces, ignore_index=True)
    written["change"] = atomic_write_tsv(change, group_dir / "change.tsv")
    written["outcomes"] = atomic_write_tsv(pd.concat(outcome_pieces, ignore_index=True),
                                           group_dir / "outcomes.tsv")
    written["response"] = atomic_write_tsv(pd.concat(rate_pieces, ignore_index=True),
                                           group_dir / "response.tsv")

    time_zero = plans[0].baseline_label
    long_order = order or ([choice.summary["baseline"], choice.summary["followup"]]
                           if "baseline" in choice.summary else None)
    trajectory = {"fits": [], "note": "fitted with more than two sessions only"}
    if long_order:
        time_zero = time_zero if time_zero in long_order else long_order[0]
        long_values = tables.session_table(values, scores_in, long_order, time_zero,
                                           base_data["group"], outcomes)
        written["sessions"] = atomic_write_tsv(long_values, group_dir / "sessions.tsv")
        if extended or len(long_order) > 2:
            for outcome in outcomes:
                figure_paths.append(_trajectory_figure(long_values, outcome, arms, figures_dir))
        if len(long_order) > 2:
            frames_by_key = trajectory_inputs
            long_values = long_values.assign(
                participant_id=long_values["participant_id"].str[len("sub-"):])
            trajectory_covariates = {
                outcome: [c for c in covariates_used[outcome]
                          if c.split("[")[0] in participants.columns]
                for outcome in outcomes}
            rows, fits = fit_trajectories(long_values, frames_by_key, sessions, choice, config,
                                          outcomes, params, rois_of, trajectory_covariates,
                                          single_arm, exclusions)
            model_rows.extend(rows)
            for outcome in outcomes:
                formulas[f"trajectory/{{param}}/{outcome}"] = models.formula(
                    outcome, models.trajectory_terms("{param}", trajectory_covariates[outcome],
                                                     single_arm)) + " (MixedLM, REML)"
            trajectory = {
                "model": "statsmodels MixedLM (REML), one per outcome x ROI x param, on every "
                         "session with the outcome score",
                "time": f"position of the session in the order, 0 = ses-{time_zero}",
                "sessions": {label: index - long_order.index(time_zero)
                             for index, label in enumerate(long_order)},
                "random_effects": "intercept and time slope per participant; random intercept "
                                  "alone where that does not converge (fallbacks listed)",
                "covariates": trajectory_covariates,
                "fits": fits,
            }

    model_table = models.add_fdr(pd.concat(model_rows, ignore_index=True),
                                 (*models.FDR_FAMILY, "outcome_session"))
    model_table = model_table[list(models.MODEL_COLUMNS)]
    written["models"] = atomic_write_tsv(model_table, group_dir / "models.tsv")
    prediction_table = (pd.concat(prediction_rows, ignore_index=True) if prediction_rows
                        else pd.DataFrame(columns=PREDICTION_COLUMNS))
    written["prediction"] = atomic_write_tsv(prediction_table[list(PREDICTION_COLUMNS)],
                                             group_dir / "prediction.tsv")
    for param in params:
        term = f"{param}_change" if single_arm else f"treatment:{param}_change"
        data = figures.forest_data(model_table, param, main_model, term)
        name = f"forest_param-{figures.safe_name(param)}_term-{main_model}.png"
        label = (f"{param} change (single-arm models)" if single_arm else
                 f"treatment x {param} change (interaction models)")
        figure_paths.append(figures.plot_forest(data, label, figures_dir / name))

    excluded = exclusions.summary()
    for entry in excluded:
        LOGGER.info("excluded %s from %s: %s", entry["participant_id"],
                    ", ".join(entry["analyses"]), entry["reason"])
    document = {
        "description": "bids_ketamine group level: treatment x change models (docs/group.md)",
        "software": software_versions(),
        "options": config.to_dict(),
        "arms": {"column": config.group_column, "treatment": arms[0][0],
                 "control": control_label,
                 "coding": ("single arm: no treatment terms (model = single_arm)" if single_arm
                            else "treatment = 1, control = 0"),
                 "design": "single-arm" if single_arm else "two-arm",
                 "n": {arm: int((base_data["treatment"] == v).sum()) for arm, v in arms}},
        "sessions": choice.summary,
        "outcome_sessions": [plan.summary() for plan in plans],
        "trajectory": trajectory,
        "outcomes": outcomes,
        "params": {"imaging": imaging, "per_session": per_session,
                   "per_session_roi": tables.NO_ROI},
        "roi_value": roi_value,
        "roi_tables": {"rule": "session table without acq/run entities when present, else "
                               "series averaged weighted by n_voxels",
                       "multi_series_sessions": series_notes},
        "covariates": covariates_used,
        "covariate_coding": coding_all,
        "formulas": formulas,
        "estimation": {
            "ols": "statsmodels formula API, OLS", "cov_type": "HC3 (robust)",
            "reference_distribution": "t with residual degrees of freedom",
            "confidence_level": 0.95,
            "std_estimate": "estimate x SD(design column) / SD(dependent)",
            "logistic": "statsmodels Logit (maximum likelihood, Wald z); separation reported "
                        "in the note column, estimates left missing",
        },
        "fdr": {"method": "Benjamini-Hochberg (statsmodels.stats.multitest, fdr_bh)",
                "family": "all ROIs x outcomes of one model, param, measure and term"},
        "response": {"pct_improvement": "100 x (baseline - followup) / baseline",
                     "response_threshold_percent": config.response_threshold,
                     "remission_thresholds": dict(config.remission_thresholds)},
        "min_coverage": config.min_coverage,
        "prediction": prediction_summaries,
        "excluded": excluded,
        "outputs": {key: Path(path).name for key, path in written.items()},
    }
    text = json.dumps(clean_json(json.loads(json.dumps(document, default=json_default))),
                      indent=2)
    written["models_json"] = atomic_write_text(group_dir / "models.json", text + "\n")
    written["figures"] = [Path(p) for p in figure_paths]
    _remove_stale_figures(figures_dir, written["figures"])
    written["n_participants"] = int(len(universe))
    written["n_excluded"] = len({entry["participant_id"] for entry in excluded})
    return written


def _remove_stale_figures(figures_dir: Path, current: list[Path]) -> None:
    """Delete figures (and their data tables) left by an earlier run that this run did not make,
    so that a rerun never shows old results beside new ones."""
    keep = {Path(p).with_suffix("").name for p in current}
    if not figures_dir.is_dir():
        return
    for path in figures_dir.iterdir():
        if path.suffix in (".png", ".tsv") and path.with_suffix("").name not in keep:
            path.unlink()
