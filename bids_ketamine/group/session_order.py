"""The order of a participant's sessions: baseline and follow-up, from ``acq_time`` or labels.

The sessions come from ``sub-<s>/sub-<s>_sessions.tsv`` (read by
:mod:`bids_ketamine.group.clinical`); a problem the user must fix raises
:class:`bids_ketamine.errors.ClinicalDataError` with a one-line message naming the fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bids_ketamine.errors import ClinicalDataError

LOGGER = logging.getLogger("bids_ketamine.group")

#: Session labels whose order is known without acq_time (lower rank = earlier).
_SESSION_ORDER_WORDS = {
    "screening": 0, "screen": 0,
    "baseline": 1, "base": 1, "bl": 1, "pre": 1, "preinfusion": 1, "before": 1,
    "post": 2, "postinfusion": 2, "after": 2, "followup": 2, "fu": 2, "follow": 2,
}


@dataclass
class SessionChoice:
    """Which session is baseline and which is follow-up, per participant.

    Attributes
    ----------
    table : pandas.DataFrame
        Indexed by participant: ``baseline``, ``followup`` (bare labels, NaN when
        missing) and ``rule`` (how they were chosen).
    summary : dict
        What ``models.json`` records (labels, rule, participants ordered differently).
    problems : dict
        Participant -> reason why no pair of sessions could be formed.
    """

    table: pd.DataFrame
    summary: dict
    problems: dict = field(default_factory=dict)


def _label_sort_key(label: str):
    word = re.sub(r"[^a-z]", "", label.lower())
    rank = _SESSION_ORDER_WORDS.get(word)
    parts = re.split(r"(\d+)", label)
    natural = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p)
    return (0 if rank is not None else 1, rank if rank is not None else 0, natural)


def order_two_sessions(labels: list[str], acq_times: dict[str, pd.Timestamp]) -> tuple[str, str, str]:
    """Order two sessions: by ``acq_time`` when both are known, else by label.

    Labels with a known meaning (``pre``/``post``, ``baseline``/``followup``) are
    ordered by it; others in natural order (``2`` before ``10``, dates in ISO order).

    Returns
    -------
    baseline, followup, rule : str
    """
    first, second = labels
    t1, t2 = acq_times.get(first), acq_times.get(second)
    if t1 is not None and t2 is not None and not pd.isna(t1) and not pd.isna(t2) and t1 != t2:
        return (first, second, "acq_time") if t1 < t2 else (second, first, "acq_time")
    ordered = sorted(labels, key=_label_sort_key)
    return ordered[0], ordered[1], "label"


def choose_sessions(sessions: dict[str, set[str]], acq_times: pd.DataFrame,
                    baseline: str | None, followup: str | None) -> SessionChoice:
    """Pick baseline and follow-up sessions for every participant.

    Parameters
    ----------
    sessions : dict
        Participant -> the session labels found for them (clinical tables and
        participant-level outputs together).
    acq_times : pandas.DataFrame
        ``participant_id``, ``session_id``, ``acq_time`` (from sessions.tsv).
    baseline, followup : str or None
        ``--baseline-session`` / ``--followup-session``.

    Returns
    -------
    SessionChoice

    Raises
    ------
    ClinicalDataError
        If the sessions are not given and a participant has more than two sessions, or
        only one of the two is given and a participant's other session is ambiguous.
    """
    times = {
        (row.participant_id, row.session_id): row.acq_time
        for row in acq_times[["participant_id", "session_id", "acq_time"]].itertuples()
    }
    rows, problems = {}, {}
    for subject in sorted(sessions):
        labels = sorted(sessions[subject])
        if baseline is not None and followup is not None:
            rows[subject] = (
                baseline if baseline in labels else np.nan,
                followup if followup in labels else np.nan,
                "given",
            )
            continue
        if baseline is not None or followup is not None:
            given = baseline if baseline is not None else followup
            others = [label for label in labels if label != given]
            if len(others) > 1:
                option = "--followup-session" if baseline is not None else "--baseline-session"
                raise ClinicalDataError(
                    f"sub-{subject} has sessions {', '.join(labels)}: the other session is "
                    f"ambiguous; give {option} too"
                )
            other = others[0] if others else None
            pair = (given, other) if baseline is not None else (other, given)
            rows[subject] = tuple(v if v in labels else np.nan for v in pair) + ("given",)
            continue
        if len(labels) > 2:
            raise ClinicalDataError(
                f"sub-{subject} has {len(labels)} sessions ({', '.join(labels)}) and their "
                "order is unknown (no acq_time in sessions.tsv); give it with --sessions "
                "LABEL ... (earliest first), or give --baseline-session and --followup-session"
            )
        if len(labels) < 2:
            problems[subject] = (
                f"only one session ({labels[0]})" if labels else "no session found"
            )
            rows[subject] = (np.nan, np.nan, "none")
            continue
        first, second, rule = order_two_sessions(
            labels, {label: times.get((subject, label)) for label in labels}
        )
        rows[subject] = (first, second, rule)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["baseline", "followup", "rule"])
    table.index.name = "participant_id"
    _place_single_sessions(table, sessions, problems)
    summary = _summarise_choice(table, baseline, followup)
    if summary["rule"] != "given":
        LOGGER.info(
            "baseline/follow-up sessions not given: chose %s by %s (recorded in models.json)",
            summary["pairs"], summary["rule"],
        )
        if len(summary["pairs"]) > 1 and summary.get("label_pairs_shared"):
            LOGGER.warning("participants sharing session labels were ordered differently by "
                           "acq_time: %s", summary["pairs"])
    return SessionChoice(table=table, summary=summary, problems=problems)


def _place_single_sessions(table: pd.DataFrame, sessions: dict, problems: dict) -> None:
    """A lone session takes its slot when every complete pair has the same labels."""
    complete = table.dropna(subset=["baseline", "followup"])
    pairs = set(zip(complete["baseline"], complete["followup"]))
    if len(pairs) != 1:
        return
    baseline, followup = next(iter(pairs))
    for subject in list(problems):
        labels = sessions[subject]
        if len(labels) == 1 and next(iter(labels)) in (baseline, followup):
            label = next(iter(labels))
            slot = "baseline" if label == baseline else "followup"
            table.loc[subject, slot] = label
            table.loc[subject, "rule"] = "single session, labels of the other participants"
            del problems[subject]


def _summarise_choice(table: pd.DataFrame, baseline: str | None, followup: str | None) -> dict:
    complete = table.dropna(subset=["baseline", "followup"])
    pairs = complete.groupby(["baseline", "followup"]).size()
    rules = sorted(set(complete["rule"])) or ["none"]
    summary = {
        "rule": "given" if baseline is not None or followup is not None else "+".join(rules),
        "given": {"baseline": baseline, "followup": followup},
        "pairs": [
            {"baseline": b, "followup": f, "n_participants": int(n)} for (b, f), n in pairs.items()
        ],
        "description": (
            "given on the command line" if baseline is not None or followup is not None else
            "not given: each participant with exactly two sessions has them ordered by "
            "acq_time in sessions.tsv when both are known, else by label (pre/baseline before "
            "post/followup, otherwise natural order)"
        ),
    }
    label_sets = {frozenset((b, f)) for b, f in pairs.index}
    summary["label_pairs_shared"] = len(label_sets) < len(pairs)
    if len(pairs) == 1:
        summary["baseline"], summary["followup"] = pairs.index[0]
    if len(pairs) > 1:
        summary["per_participant"] = {
            f"sub-{s}": {"baseline": r.baseline, "followup": r.followup, "rule": r.rule}
            for s, r in complete.iterrows()
        }
    return summary


def order_sessions(sessions: dict[str, set[str]], acq_times: pd.DataFrame,
                   given: tuple[str, ...] | None) -> tuple[list[str] | None, str]:
    """The order of every session label of a study (for more than two sessions).

    Parameters
    ----------
    sessions : dict
        Participant -> session labels found.
    acq_times : pandas.DataFrame
        ``participant_id``, ``session_id``, ``acq_time``.
    given : tuple of str or None
        ``--sessions`` (earliest first); sessions not listed are left out.

    Returns
    -------
    order : list of str or None
        Labels, earliest first; None when ``given`` is None and some label has no
        ``acq_time``.
    rule : str
        How the order was found.

    Raises
    ------
    ClinicalDataError
        If a label of ``--sessions`` is no participant's session.
    """
    labels = set().union(*sessions.values()) if sessions else set()
    known = acq_times.dropna(subset=["acq_time"])
    medians = known.groupby("session_id")["acq_time"].median()
    if given:
        unknown = [label for label in given if label not in labels]
        if unknown:
            raise ClinicalDataError(
                f"--sessions {' '.join(unknown)}: no participant has "
                f"{', '.join('ses-' + u for u in unknown)} (sessions found: "
                f"{', '.join(sorted(labels, key=_label_sort_key))}); fix --sessions"
            )
        timed = [label for label in given if label in medians.index]
        if len(timed) == len(given) and sorted(timed, key=medians.get) != list(given):
            LOGGER.warning("--sessions %s differs from the acq_time order %s of sessions.tsv; "
                           "using --sessions", " ".join(given),
                           " ".join(sorted(timed, key=medians.get)))
        left_out = sorted(labels - set(given))
        if left_out:
            LOGGER.info("sessions not listed in --sessions are left out: %s", ", ".join(left_out))
        return list(given), "given (--sessions)"
    if labels and all(label in medians.index for label in labels):
        return sorted(labels, key=lambda label: (medians[label], _label_sort_key(label))), \
            "acq_time (median per session label)"
    return None, "unknown (acq_time missing; give --sessions)"
