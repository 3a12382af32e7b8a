"""Clinical data of a BIDS dataset: arms, participant covariates and per-session scores.

Where the app reads them (docs/interfaces.md):

- ``participants.tsv``: ``participant_id``, the group column, age, sex, ...
- ``sub-<s>/sub-<s>_sessions.tsv``: ``session_id``, ``acq_time`` and one column per measure.
- ``phenotype/<name>.tsv``: with ``participant_id`` and ``session_id``, per-session measures;
  without ``session_id``, per-participant columns (joined to ``participants.tsv``).

Labels are stored without their ``sub-``/``ses-`` prefixes.  Every problem a user must fix
raises :class:`bids_ketamine.errors.ClinicalDataError` with a one-line message naming the
file and the fix.

Kept as one module (~400 lines): every clinical table the app reads, with the checks they share
and one error style.  The order of the sessions (baseline, follow-up, acq_time) is chosen in
:mod:`bids_ketamine.group.session_order` (its names are re-exported here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import ClinicalDataError
from bids_ketamine.group.session_order import (  # noqa: F401 (re-exported for the callers)
    SessionChoice,
    choose_sessions,
    order_sessions,
    order_two_sessions,
)
from bids_ketamine.utils.labels import bare_label
from bids_ketamine.utils.tsv import MISSING_VALUES, read_tsv, read_tsv_rows

LOGGER = logging.getLogger("bids_ketamine.group")

def read_bids_tsv(path: Path) -> pd.DataFrame:
    """Read a BIDS TSV file (``n/a`` = missing; identifiers kept as text).

    Raises
    ------
    ClinicalDataError
        If the file cannot be parsed as a tab-separated table.
    """
    return read_tsv(path, error=ClinicalDataError,
                    dtype={"participant_id": str, "session_id": str})


def _convert_numeric_columns(table: pd.DataFrame, columns, locate) -> None:
    """Make numeric every column whose non-missing values are mostly numbers (in place).

    A column whose values are numbers except for a few cells (``twelve`` among MADRS
    scores, ``thirty`` among ages) is a typing error, not a text column: converting it
    silently would drop the column from the outcomes, or turn age into a categorical
    covariate, so the first such cell raises.  Columns mostly of text stay text.

    Parameters
    ----------
    table : pandas.DataFrame
        The table, modified in place.
    columns : iterable of str
        Columns to examine.
    locate : callable
        Row index -> words naming the file and the row, for messages.

    Raises
    ------
    ClinicalDataError
        If a mostly numeric column holds a cell that is not a number.
    """
    for name in columns:
        column = table[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue
        text = column.map(lambda v: v.strip() if isinstance(v, str) else v)
        missing = text.isna() | text.isin(MISSING_VALUES)
        converted = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = ~missing & converted.isna()
        n_numbers = int((~missing & converted.notna()).sum())
        if not bad.any():
            table[name] = converted.astype(float)
        elif n_numbers > int(bad.sum()):
            row = bad.idxmax()
            raise ClinicalDataError(
                f"{locate(row)}: '{column.at[row]}' in column '{name}' is not a number, while "
                f"the column's other values are; write the number, or n/a if the value is missing"
            )


def read_participants(bids_dir: Path, group_column: str = "group",
                      participant_label: tuple[str, ...] = (),
                      treatment_label: str | None = None) -> pd.DataFrame:
    """Read ``participants.tsv`` and the per-participant phenotype tables.

    Parameters
    ----------
    bids_dir : Path
        Root of the BIDS dataset.
    group_column : str
        Column holding the arm (``--group-column``).
    participant_label : tuple of str
        Restrict to these participants (bare labels); empty = all.
    treatment_label : str, optional
        ``--treatment-label``.  When given, a file without the group column is a
        single-arm (open-label) study, ``group`` all missing, unless another column
        holds this label (then the arm column was misnamed: error).  When None, a
        missing group column is an error.

    Returns
    -------
    pandas.DataFrame
        Indexed by bare participant label; the group column is renamed ``group``
        (text, missing = NaN); other columns kept.

    Raises
    ------
    ClinicalDataError
        If the file is missing, has no ``participant_id``, lacks the group column (see
        ``treatment_label``), or lists a participant twice.
    """
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise ClinicalDataError(
            f"{path} not found: the group level needs participants.tsv with participant_id "
            f"and the arm column '{group_column}'"
        )
    table = read_bids_tsv(path)
    if "participant_id" not in table.columns:
        raise ClinicalDataError(f"{path} has no 'participant_id' column; add it (BIDS requires it)")
    if group_column not in table.columns:
        holding = [c for c in table.columns if treatment_label is not None
                   and table[c].astype(str).str.strip().eq(treatment_label).any()]
        if treatment_label is None or holding:
            where = (f"; column '{holding[0]}' holds '{treatment_label}'" if holding else "")
            raise ClinicalDataError(
                f"{path} has no column '{group_column}' (columns: {', '.join(table.columns)})"
                f"{where}; name the arm column with --group-column"
            )
        LOGGER.warning("%s has no column '%s': single-arm (open-label) design, the models "
                       "have no treatment terms", path, group_column)
        table[group_column] = np.nan
    table["participant_id"] = table["participant_id"].map(lambda v: bare_label(v, "sub"))
    duplicated = table["participant_id"][table["participant_id"].duplicated()].unique()
    if len(duplicated):
        raise ClinicalDataError(
            f"{path} lists participant(s) {', '.join('sub-' + d for d in duplicated)} more "
            "than once; keep one row per participant"
        )
    if group_column != "group":
        table = table.drop(columns=["group"], errors="ignore")
    _convert_numeric_columns(
        table, [c for c in table.columns if c not in ("participant_id", group_column)],
        lambda row: f"{path} line {row + 2} (sub-{table.at[row, 'participant_id']})",
    )
    table = table.rename(columns={group_column: "group"}).set_index("participant_id")
    table["group"] = table["group"].map(lambda v: np.nan if pd.isna(v) else str(v).strip())
    for extra in _participant_phenotypes(Path(bids_dir)):
        new = [c for c in extra.columns if c not in table.columns]
        table = table.join(extra[new], how="left")
    if participant_label:
        table = table.loc[table.index.isin(participant_label)]
    return table


def _phenotype_tables(bids_dir: Path):
    folder = bids_dir / "phenotype"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.tsv")):
        table = read_bids_tsv(path)
        if "participant_id" not in table.columns:
            raise ClinicalDataError(
                f"{path} has no 'participant_id' column; BIDS phenotype tables need one"
            )
        table["participant_id"] = table["participant_id"].map(lambda v: bare_label(v, "sub"))
        yield path, table


def _participant_phenotypes(bids_dir: Path):
    for path, table in _phenotype_tables(bids_dir):
        if "session_id" in table.columns:
            continue
        if table["participant_id"].duplicated().any():
            raise ClinicalDataError(
                f"{path} lists a participant twice but has no session_id column; add "
                "session_id for per-session measures"
            )
        _convert_numeric_columns(
            table, [c for c in table.columns if c != "participant_id"],
            lambda row, path=path, table=table: (
                f"{path} line {row + 2} (sub-{table.at[row, 'participant_id']})"),
        )
        yield table.set_index("participant_id")


def read_session_scores(bids_dir: Path, participants: pd.Index | None = None) -> pd.DataFrame:
    """Read every per-session measure: sessions.tsv files and phenotype tables.

    Parameters
    ----------
    bids_dir : Path
        Root of the BIDS dataset.
    participants : pandas.Index, optional
        Keep only these participants (bare labels).

    Returns
    -------
    pandas.DataFrame
        One row per participant and session: ``participant_id``, ``session_id`` (bare
        labels), ``acq_time`` (datetime, NaT when unknown) and one column per measure
        (numeric columns converted to float).

    Raises
    ------
    ClinicalDataError
        If a table lacks ``session_id``, repeats a session, or two tables disagree on a
        value.
    """
    bids_dir = Path(bids_dir)
    records = []
    for path in sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        subject = bare_label(path.parent.name, "sub")
        if participants is not None and subject not in participants:
            continue
        header, rows = read_tsv_rows(path, error=ClinicalDataError)
        rows = [(line, [cell.strip() for cell in row]) for line, row in rows]
        if "session_id" not in header:
            raise ClinicalDataError(f"{path} has no 'session_id' column; add it (BIDS requires it)")
        for line, row in rows:
            record = dict(zip(header, row))
            record["participant_id"] = subject
            record["_source"] = str(path)
            record["_line"] = line
            records.append(record)
    frames = [pd.DataFrame.from_records(records)] if records else []
    for path, table in _phenotype_tables(bids_dir):
        if "session_id" in table.columns:
            frames.append(table.assign(_source=str(path), _line=table.index + 2))
    columns = ["participant_id", "session_id", "acq_time"]
    if not frames:
        return pd.DataFrame(columns=columns)
    scores = pd.concat(frames, ignore_index=True)
    scores = scores.replace({text: np.nan for text in MISSING_VALUES})
    scores["session_id"] = scores["session_id"].map(lambda v: bare_label(v, "ses"))
    repeated = scores.duplicated(["_source", "participant_id", "session_id"])
    if repeated.any():
        first = scores.loc[repeated].iloc[0]
        raise ClinicalDataError(
            f"{first['_source']} lists ses-{first['session_id']} of sub-{first['participant_id']} "
            "twice (labels are compared without their 'ses-' prefix); keep one row per session"
        )
    if participants is not None:
        scores = scores.loc[scores["participant_id"].isin(participants)]
    measures = [c for c in scores.columns
                if c not in ("participant_id", "session_id", "_source", "_line")]
    _convert_numeric_columns(
        scores, [m for m in measures if m != "acq_time"],
        lambda row: (f"{scores.at[row, '_source']} line {scores.at[row, '_line']} "
                     f"(sub-{scores.at[row, 'participant_id']}, ses-{scores.at[row, 'session_id']})"),
    )
    merged = _merge_sources(scores, measures)
    if "acq_time" in merged.columns:
        merged["acq_time"] = pd.to_datetime(merged["acq_time"], errors="coerce", format="mixed")
    else:
        merged["acq_time"] = pd.NaT
    return merged[columns + [m for m in measures if m != "acq_time"]]


def _merge_sources(scores: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """One row per (participant, session); values from several files must agree."""
    keys = ["participant_id", "session_id"]
    grouped = scores.groupby(keys, sort=True)
    counts = grouped[measures].nunique(dropna=True)
    conflicts = counts.gt(1)
    if conflicts.to_numpy().any():
        (subject, session), measure = next(
            (idx, col) for idx, row in conflicts.iterrows() for col in conflicts.columns if row[col]
        )
        rows = scores.set_index(keys).loc[(subject, session)]
        sources = sorted(set(rows["_source"]))
        raise ClinicalDataError(
            f"'{measure}' of sub-{subject} ses-{session} differs between {' and '.join(sources)}; "
            "keep one value"
        )
    return grouped[measures].first().reset_index()


def numeric_measures(scores: pd.DataFrame) -> list[str]:
    """Names of the numeric per-session measure columns."""
    return [
        c for c in scores.columns
        if c not in ("participant_id", "session_id", "acq_time")
        and pd.api.types.is_numeric_dtype(scores[c]) and scores[c].notna().any()
    ]


def resolve_outcomes(requested: tuple[str, ...] | None, scores: pd.DataFrame,
                     defaults: tuple[str, ...], bids_dir: Path) -> list[str]:
    """The outcome columns to model.

    Parameters
    ----------
    requested : tuple of str or None
        ``--outcomes``; None = every numeric per-session column among ``defaults``.
    scores : pandas.DataFrame
        From :func:`read_session_scores`.
    defaults : tuple of str
        Default outcome names (``madrs``, ``qids_sr``).
    bids_dir : Path
        For messages.

    Raises
    ------
    ClinicalDataError
        If a requested outcome is missing or not numeric, a default outcome column holds
        text, or none is found.
    """
    available = numeric_measures(scores)
    where = f"{bids_dir}/sub-*/sub-*_sessions.tsv or {bids_dir}/phenotype/*.tsv"
    text = [name for name in (requested or defaults)
            if name in scores.columns and name not in available and scores[name].notna().any()]
    if text:
        examples = ", ".join(repr(str(v)) for v in scores[text[0]].dropna().unique()[:3])
        raise ClinicalDataError(
            f"outcome column(s) {', '.join(text)} of {where} hold text, not numbers "
            f"({text[0]}: {examples}); write numbers (n/a when missing), or choose the "
            "outcomes with --outcomes"
        )
    if requested is None:
        outcomes = [name for name in defaults if name in available]
        if not outcomes:
            raise ClinicalDataError(
                f"none of the default outcomes ({', '.join(defaults)}) is a numeric column of "
                f"{where} (numeric columns: {', '.join(available) or 'none'}); name them with --outcomes"
            )
        return outcomes
    missing = [name for name in requested if name not in available]
    if missing:
        raise ClinicalDataError(
            f"outcome(s) {', '.join(missing)} not found as numeric per-session columns in {where} "
            f"(numeric columns: {', '.join(available) or 'none'}); fix --outcomes"
        )
    return list(dict.fromkeys(requested))


def assign_arms(participants: pd.DataFrame, treatment_label: str,
                control_label: str | None, path: Path) -> tuple[pd.Series, str]:
    """Code each participant's arm as treatment = 1 / control = 0.

    Parameters
    ----------
    participants : pandas.DataFrame
        From :func:`read_participants` (column ``group``).
    treatment_label, control_label : str
        ``--treatment-label`` and ``--control-label`` (None = the other value).
    path : Path
        participants.tsv, for messages.

    Returns
    -------
    treatment : pandas.Series
        1.0, 0.0, or NaN for a participant without a group value.
    control_label : str or None
        The control label used; None for a single-arm study (one value in the group
        column, or none at all): then treatment is 1 for every participant with the value
        (for everyone when the column is empty) and the models drop the treatment terms.

    Raises
    ------
    ClinicalDataError
        If values other than the two labels are present, or an arm is missing.
    """
    values = sorted(participants["group"].dropna().unique())
    found = ", ".join(repr(v) for v in values) or "none"
    if len(values) <= 1 and control_label is None:
        treatment = participants["group"].map(lambda v: np.nan if pd.isna(v) else 1.0)
        if not values:
            treatment = pd.Series(1.0, index=participants.index)
        return treatment.astype(float), None
    if treatment_label not in values:
        raise ClinicalDataError(
            f"no participant of {path} has group '{treatment_label}' (values found: {found}); "
            "name the arms with --treatment-label/--control-label"
        )
    others = [v for v in values if v != treatment_label]
    if control_label is None:
        if len(others) != 1:
            raise ClinicalDataError(
                f"{path} must hold exactly two arms but the group column has values {found}; "
                "fix the values (n/a leaves a participant out of the models, listed in "
                "models.json) or name the arms with --treatment-label/--control-label"
            )
        control_label = others[0]
    unknown = [v for v in others if v != control_label]
    if unknown or control_label not in values:
        raise ClinicalDataError(
            f"group values in {path} must be '{treatment_label}' or '{control_label}' "
            f"(values found: {found}); fix the values (n/a leaves a participant out, listed in "
            "models.json) or --treatment-label/--control-label"
        )
    treatment = participants["group"].map({treatment_label: 1.0, control_label: 0.0})
    return treatment.astype(float), control_label
