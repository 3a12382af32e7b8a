"""The participant level's tissue tables as per-session measures (``md_wm``, ``md_gm``, ...).

Each series has a table of its tensor maps' medians over the brain, white and grey matter
(:mod:`bids_ketamine.dwi.tissue_stats`).  The group level joins them to the clinical scores of
each session under the names ``<param>_<tissue>`` (``md_brain``, ``md_wm``, ``md_gm``, ``fa_wm``,
...), so that they are used like any per-session measure: ``--covariates md_wm_change`` adjusts
the models for a change of the whole white matter's MD between the sessions (a scanner upgrade
between them, say), and ``--params md_gm`` relates the grey matter's global change to the
outcomes.  A session's value is its table without acq/run entities (``--combine-runs
average``) when present, else the mean of its series' values, as for the ROI tables
(:mod:`bids_ketamine.group.roistats`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.dwi.tissue_stats import TISSUE_MIN_FRACTION, TISSUESTATS_COLUMNS
from bids_ketamine.errors import InputError
from bids_ketamine.group.roistats import find_series_tables
from bids_ketamine.utils.tsv import read_tsv

LOGGER = logging.getLogger(__name__)


def measure_name(param: str, tissue: str) -> str:
    """The per-session measure of one parameter's median over one tissue (``md_wm``)."""
    return f"{param}_{tissue}"


def missing_hint(names) -> str:
    """Advice for covariates or params named like a tissue measure that the outputs lack."""
    pattern = re.compile(rf"^({'|'.join(TENSOR_PARAMS)})_({'|'.join(TISSUE_MIN_FRACTION)})(_baseline|_change)?$")
    if not any(pattern.match(str(name)) for name in names):
        return ""
    return ("; the tissue measures (<param>_<tissue>: md_wm, md_gm, ...) come from the participant "
            "level's *_model-tensor_tissuestats.tsv tables, which outputs of a version before "
            "them lack: rerun the participant level (finished steps are reused)")


def tissue_measures(output_dir: Path, participants=None) -> pd.DataFrame:
    """Every session's tissue medians, one column per parameter and tissue.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR of the participant level.
    participants : iterable of str, optional
        Participant labels (without ``sub-``) to keep; default all.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session_id``, then :func:`measure_name` columns; no rows when the
        participant level wrote no tissue table (outputs of a version before them).

    Raises
    ------
    InputError
        If a table is not a readable TSV or lacks a column of
        :data:`~bids_ketamine.dwi.tissue_stats.TISSUESTATS_COLUMNS`.
    """
    keys = ["participant_id", "session_id"]
    participants = None if participants is None else list(participants)
    if participants == []:
        return pd.DataFrame(columns=keys)
    found = find_series_tables(output_dir, "tissuestats_file", participants or ())
    if found.empty:
        return pd.DataFrame(columns=keys)
    # a session's table without acq/run entities when present, else all its series
    combined = found["entities"] == ""
    found = found.loc[combined | ~combined.groupby([found[k] for k in keys]).transform("any")]
    rows = []
    for subject, session, path in found[[*keys, "path"]].itertuples(index=False):
        table = _read(path)
        rows.append({"participant_id": subject, "session_id": session,
                     **{measure_name(param, tissue): median for tissue, param, median
                        in table[["tissue", "param", "median"]].itertuples(index=False)}})
    return pd.DataFrame(rows).groupby(keys, sort=True).mean(numeric_only=True).reset_index()


def _read(path: Path) -> pd.DataFrame:
    """One tissue table, its columns checked."""
    hint = "rerun the participant level to rewrite it"
    table = read_tsv(path, error=InputError, hint=hint)
    missing = [column for column in TISSUESTATS_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}; {hint}")
    if not pd.api.types.is_numeric_dtype(table["median"]):
        raise InputError(f"{path}: column 'median' holds text that is not a number; {hint}")
    return table


def join_session_measures(scores: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """The clinical per-session scores with the tissue measures beside them.

    A measure whose name is already a column of the clinical data is left out, with a warning:
    the dataset's own column wins.  Sessions with imaging but no clinical row get a row of their
    own (their scores missing).
    """
    added = [c for c in measures.columns if c not in ("participant_id", "session_id")]
    clash = [c for c in added if c in scores.columns]
    if clash:
        LOGGER.warning("per-session column(s) %s of the dataset hide the participant level's tissue "
                       "measures of the same name(s)", ", ".join(clash))
    added = [c for c in added if c not in clash]
    if not added:
        return scores
    return scores.merge(measures[["participant_id", "session_id", *added]], on=["participant_id", "session_id"],
                        how="outer", sort=True)
