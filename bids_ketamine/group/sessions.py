"""Which sessions the group level compares: the predictor change and the outcome sessions.

The predictor change runs from the baseline to the follow-up session (``--baseline-session``,
``--followup-session``, or the first two of ``--sessions``/``acq_time``); the outcomes are
compared at each outcome session (``--outcome-sessions``) with the outcome baseline (docs/group.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from bids_ketamine.config import Config
from bids_ketamine.errors import ClinicalDataError
from bids_ketamine.group import clinical

LOGGER = logging.getLogger("bids_ketamine.group")


@dataclass
class OutcomeSession:
    """One outcome session: where outcome change, improvement, response are computed."""

    label: str
    table: pd.DataFrame  # indexed by participant: baseline, followup (outcome sessions)
    baseline_label: str
    baseline_words: str = "baseline"
    followup_words: str = "follow-up"
    tag: str = ""  # added to the analysis names of exclusions

    def summary(self) -> dict:
        return {"outcome_session": self.label, "outcome_baseline_session": self.baseline_label,
                "change": f"score at ses-{self.label} - score at ses-{self.baseline_label}"}


def choose_predictor_sessions(config: Config, found_sessions: dict, scores: pd.DataFrame):
    """Predictor sessions (baseline, follow-up) and, with more than two sessions, their order."""
    order = None
    most = max((len(labels) for labels in found_sessions.values()), default=0)
    if config.sessions or most > 2:
        order, rule = clinical.order_sessions(found_sessions, scores, config.sessions)
        if config.sessions:
            found_sessions = {p: labels & set(order) for p, labels in found_sessions.items()}
    baseline, followup = config.baseline_session, config.followup_session
    first_two = order is not None and baseline is None and followup is None
    if first_two:
        if len(order) < 2:
            raise ClinicalDataError(
                f"--sessions {' '.join(order)}: give at least two sessions, earliest first")
        baseline, followup = order[0], order[1]
        LOGGER.info("more than two sessions (%s, ordered by %s): predictor change from ses-%s "
                    "to ses-%s (set --baseline-session/--followup-session to change)",
                    ", ".join(order), rule, baseline, followup)
    choice = clinical.choose_sessions(found_sessions, scores, baseline, followup)
    if order is not None:
        choice.summary["order"] = order
        choice.summary["order_rule"] = rule
        if first_two:
            choice.summary["rule"] = "first two sessions of the order"
            choice.summary["description"] = (
                "not given: predictor change from the first to the second session of the order "
                "(acq_time of sessions.tsv, or --sessions)")
    return choice, order


def outcome_sessions_of(config: Config, choice, found_sessions: dict) -> list[OutcomeSession]:
    """The outcome sessions (``--outcome-sessions``, ``--outcome-baseline-session``)."""
    table = choice.table
    default_followup = choice.summary.get("followup", "followup")
    default_baseline = choice.summary.get("baseline", "baseline")
    if config.outcome_sessions is None and config.outcome_baseline_session is None:
        return [OutcomeSession(default_followup, table[["baseline", "followup"]],
                                default_baseline)]
    every = set().union(*found_sessions.values()) if found_sessions else set()
    given = [*(config.outcome_sessions or ()), *([config.outcome_baseline_session]
                                                  if config.outcome_baseline_session else [])]
    unknown = [label for label in given if label not in every]
    if unknown:
        raise ClinicalDataError(
            f"outcome session(s) {', '.join('ses-' + u for u in unknown)} of "
            f"--outcome-sessions/--outcome-baseline-session belong to no participant (sessions "
            f"found: {', '.join(sorted(every))}); fix the option")
    baseline = config.outcome_baseline_session
    baseline_column = (pd.Series(baseline, index=table.index) if baseline
                       else table["baseline"])
    baseline_label = baseline or default_baseline
    plans = []
    for label in config.outcome_sessions or (None,):
        if label is not None and label == baseline:
            raise ClinicalDataError(
                f"--outcome-sessions {label} is also the outcome baseline session; give "
                "sessions after it")
        followup = pd.Series(label, index=table.index) if label else table["followup"]
        shown = label or default_followup
        plans.append(OutcomeSession(
            shown, pd.DataFrame({"baseline": baseline_column, "followup": followup}),
            baseline_label, f"outcome baseline (ses-{baseline_label})", f"ses-{shown}",
            f", ses-{shown}"))
    return plans
