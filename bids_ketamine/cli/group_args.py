"""The group-level arguments of ``bids-ketamine`` (:func:`add_group_arguments`)."""

from __future__ import annotations

import argparse

from bids_ketamine.cli.arg_types import (
    config_default,
    fraction,
    label_type,
    positive_float,
    remission,
    session_name,
)
from bids_ketamine.config import (
    DEFAULT_REMISSION,
    DEFAULT_ROI_STATISTIC,
    ROI_STATISTIC_FALLBACK,
    ROI_STATISTICS,
)


def add_group_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the "Group level" argument group to the ``bids-ketamine`` parser."""
    grp = parser.add_argument_group("Group level")
    grp.add_argument(
        "--roi-statistic",
        choices=list(ROI_STATISTICS),
        default=config_default("roi_statistic"),
        help="ROI summary of each session entering the models: the median or mean of the ROI's "
        "voxels, their grey-matter-fraction-weighted mean (gm_weighted_mean), the grey-matter "
        "MD of the tissue-mixture fit (pv_gm), or the mean/median weighted by each voxel's "
        "grey-matter volume fraction of the ROI (roi_gm_weighted_mean, roi_gm_weighted_median); "
        f"see docs/participant.md (default: {DEFAULT_ROI_STATISTIC}, or {ROI_STATISTIC_FALLBACK} "
        "for every participant where some ROI table lacks it: --gm-threshold none, or tables of "
        "an older version; the choice is logged and recorded in models.json)",
    )
    grp.add_argument(
        "--baseline-session",
        type=label_type("ses"),
        default=config_default("baseline_session"),
        metavar="LABEL",
        help="baseline session label (default: earliest by acq_time in sessions.tsv, else by label)",
    )
    grp.add_argument(
        "--followup-session",
        type=label_type("ses"),
        default=config_default("followup_session"),
        metavar="LABEL",
        help="follow-up session label (default: the other/latest session)",
    )
    grp.add_argument(
        "--outcome-sessions",
        nargs="+",
        type=session_name,
        default=config_default("outcome_sessions"),
        metavar="LABEL",
        help="sessions at which outcome change, percent improvement, response and remission "
        "are computed, one set of models each (default: the follow-up session)",
    )
    grp.add_argument(
        "--outcome-baseline-session",
        type=session_name,
        default=config_default("outcome_baseline_session"),
        metavar="LABEL",
        help="session the outcomes are compared with (default: the baseline session)",
    )
    grp.add_argument(
        "--sessions",
        nargs="+",
        type=session_name,
        default=config_default("sessions"),
        metavar="LABEL",
        help="order of more than two sessions, earliest first (default: by acq_time in "
        "sessions.tsv); sessions not listed are ignored",
    )
    grp.add_argument(
        "--group-column",
        default=config_default("group_column"),
        metavar="COLUMN",
        help="participants.tsv column holding the arm",
    )
    grp.add_argument(
        "--treatment-label",
        default=config_default("treatment_label"),
        metavar="VALUE",
        help="value of the group column for the treatment arm (treatment = 1)",
    )
    grp.add_argument(
        "--control-label",
        default=config_default("control_label"),
        metavar="VALUE",
        help="value of the group column for the control arm (default: the other value)",
    )
    grp.add_argument(
        "--outcomes",
        nargs="+",
        default=config_default("outcomes"),
        metavar="COLUMN",
        help="per-session clinical scores (default: those of madrs, qids_sr present)",
    )
    grp.add_argument(
        "--covariates",
        nargs="*",
        default=config_default("covariates"),
        metavar="COLUMN",
        help="model covariates (default: baseline outcome score, age, sex where present): "
        "participants.tsv columns, <outcome>_baseline or <outcome>_change of another "
        "per-session score; give the option with no value for none",
    )
    grp.add_argument(
        "--params",
        nargs="+",
        default=list(config_default("params")),
        metavar="PARAM",
        help="predictors: tensor parameters (md, fa, ad, rd) or any numeric per-session "
        "column (e.g. a plasma metabolite)",
    )
    grp.add_argument(
        "--min-coverage",
        type=fraction,
        default=config_default("min_coverage"),
        metavar="FRACTION",
        help="drop a participant's ROI from the models when its coverage is below this",
    )
    grp.add_argument(
        "--response-threshold",
        type=positive_float,
        default=config_default("response_threshold"),
        metavar="PERCENT",
        help="response = at least this percent improvement from baseline",
    )
    grp.add_argument(
        "--remission-threshold",
        dest="remission_thresholds",
        nargs="+",
        type=remission,
        default=None,
        metavar="OUTCOME=SCORE",
        help="remission = score at or below the threshold "
        f"(default: {' '.join(f'{k}={v:g}' for k, v in DEFAULT_REMISSION.items())})",
    )
    grp.add_argument(
        "--n-permutations",
        type=int,
        default=config_default("n_permutations"),
        metavar="N",
        help="permutations for the p-value of the cross-validated prediction (0: skip)",
    )
    grp.add_argument(
        "--seed",
        type=int,
        default=config_default("seed"),
        metavar="S",
        help="random seed for the cross-validation and permutations",
    )
