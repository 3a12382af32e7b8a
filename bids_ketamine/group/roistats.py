"""Participant-level ROI tables (``*_roistats.tsv``), one value per participant, session, ROI.

A session can hold several DWI series (``acq-``/``run-`` entities), each with its own
table.  The rule (docs/group.md): the table without acq/run entities (written by
``--combine-runs average``) is used when present; otherwise the series are averaged,
weighted by ``n_voxels``.  Either way the choice is returned so that ``models.json``
records it: a series is never silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.config import DEFAULT_ROI_STATISTIC, ROI_STATISTIC_FALLBACK, ROI_STATISTICS
from bids_ketamine.derivatives import (
    ROISTATS_COLUMNS,
    SERIES_OUTPUTS,
    classify,
    parse_entities,
    series_suffix,
)
from bids_ketamine.errors import InputError
from bids_ketamine.utils.tsv import is_missing, read_tsv_rows


def find_series_tables(output_dir: Path, field: str, participant_label=(), **names: str) -> pd.DataFrame:
    """List one kind of per-series table of the participant level in a derivatives folder.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR of the participant level.
    field : str
        The table's key of :data:`bids_ketamine.derivatives.SERIES_OUTPUTS` (``roistats_file``,
        ``tissuestats_file``).
    participant_label : iterable of str
        Restrict to these participants (bare labels); empty = all.
    names : str
        Placeholders the name must have (``atlas="ketamine7"``).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session_id``, ``entities`` (e.g. ``"_acq-ortho_run-1"``,
        empty for the session table) and ``path``.
    """
    spec = SERIES_OUTPUTS[field]
    keep = {str(label) for label in participant_label}
    rows = []
    for path in sorted(Path(output_dir).glob(f"sub-*/ses-*/dwi/*_{spec['suffix']}{spec['extension']}")):
        found = parse_entities(output_dir, path)
        known = classify(found)
        if known is None or known[0] != field or any(known[1].get(k) != v for k, v in names.items()):
            continue
        if "session" not in found or (keep and found["subject"] not in keep):
            continue
        rows.append((found["subject"], found["session"], series_suffix(found), path))
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "entities", "path"])


def find_roistats(output_dir: Path, atlas: str,
                  participant_label: tuple[str, ...] = ()) -> pd.DataFrame:
    """List the ROI tables of one atlas in a derivatives folder (:func:`find_series_tables`)."""
    return find_series_tables(output_dir, "roistats_file", participant_label, atlas=atlas)


def _rerun_hint(path: Path) -> str:
    match = re.match(r"sub-([A-Za-z0-9]+)_", Path(path).name)
    who = f" --participant-label {match[1]}" if match else ""
    return f"rerun the participant level{who} to rewrite it"


def _read_table_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a ROI table (:func:`~bids_ketamine.utils.tsv.read_tsv_rows`).

    Raises
    ------
    InputError
        If the file is empty, not UTF-8 text, lacks a contract column, or has a row whose
        number of cells differs from the header's (a damaged file).
    """
    header, rows = read_tsv_rows(path, error=InputError, hint=_rerun_hint(path))
    missing = [c for c in ROISTATS_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}; {_rerun_hint(path)}")
    return header, [row for _, row in rows]


def _number(text: str) -> float:
    """A cell as a number; ``n/a`` and empty cells are NaN.

    Raises
    ------
    ValueError
        If the cell is neither a number nor a missing value.
    """
    return float("nan") if is_missing(text) else float(text.strip())


def _numbers(cells: list[str], path: Path, column: str) -> np.ndarray:
    """A column of cells as floats, with a clear error for a cell that is not a number."""
    values = np.empty(len(cells), dtype=float)
    for index, cell in enumerate(cells):
        try:
            values[index] = _number(cell)
        except ValueError:
            raise InputError(
                f"{path} data row {index + 1}: '{cell}' in column '{column}' is not a number; "
                f"{_rerun_hint(path)}"
            ) from None
    return values


def read_roistats(path: Path) -> pd.DataFrame:
    """Read one ROI table and check its columns.

    Raises
    ------
    InputError
        If the file is empty or damaged, lacks a contract column, or holds a value that
        is neither a number nor ``n/a``.
    """
    return _table_from_rows(path, *_read_table_rows(path))


def _table_from_rows(path: Path, header: list[str], rows: list[list[str]]) -> pd.DataFrame:
    """:func:`read_roistats` of a table already read by :func:`_read_table_rows`."""
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    table = pd.DataFrame({
        "roi": columns["roi"],
        "param": [p.strip().lower() for p in columns["param"]],
        **{name: _numbers(columns[name], path, name) for name in ROISTATS_COLUMNS[2:]},
        # issue 20: the optional value columns, when the table has them
        **{name: _numbers(columns[name], path, name) for name in ROI_STATISTICS if name in columns
           and name not in ROISTATS_COLUMNS},
    })
    return table


def combine_series(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Average the ROI tables of several series of one session.

    ``mean`` and ``median`` are averaged with weights ``n_voxels`` (a series whose ROI
    is empty has no weight), ``n_voxels`` is summed and ``coverage`` is the smallest of
    the series (the conservative value for the ``--min-coverage`` rule).

    Parameters
    ----------
    tables : list of pandas.DataFrame
        ROI tables (:func:`read_roistats`).

    Returns
    -------
    pandas.DataFrame
        One row per ROI and parameter: ``roi``, ``param``, ``mean``, ``median``,
        ``n_voxels``, ``coverage``.
    """
    if not tables:
        raise ValueError("combine_series needs at least one ROI table")
    stacked = pd.concat(tables, ignore_index=True)
    weights = stacked["n_voxels"].fillna(0).clip(lower=0).astype(float)
    valid = stacked["mean"].notna() & (weights > 0)
    weights = weights.where(valid, 0.0)
    extra = [name for name in ROI_STATISTICS if name in stacked and name not in ("mean", "median")]
    stacked = stacked.assign(
        _w=weights,
        _wmean=stacked["mean"].fillna(0) * weights,
        _wmedian=stacked["median"].fillna(0) * weights,
        **{f"_w{name}": stacked[name].fillna(0) * weights for name in extra},
    )
    grouped = stacked.groupby(["roi", "param"], sort=False)
    total = grouped["_w"].sum()
    combined = pd.DataFrame({
        "mean": grouped["_wmean"].sum() / total.replace(0, np.nan),
        "median": grouped["_wmedian"].sum() / total.replace(0, np.nan),
        **{name: grouped[f"_w{name}"].sum() / total.replace(0, np.nan) for name in extra},
        "n_voxels": grouped["n_voxels"].sum(min_count=1),
        "coverage": grouped["coverage"].min(),
    })
    return combined.reset_index()


def choose_roi_statistic(tables: dict, statistic: str | None = None) -> tuple[str, str]:
    """The ROI table column the group level takes as each session's value, and why.

    Parameters
    ----------
    tables : dict
        The study's ROI tables: path -> (header, rows) of :func:`_read_table_rows`.
    statistic : str or None
        The user's ``--roi-statistic`` (returned as it is: a table without it is an error when
        read), or None for the default.

    Returns
    -------
    statistic : str
        :data:`~bids_ketamine.config.DEFAULT_ROI_STATISTIC` when every table holds a value of it;
        otherwise :data:`~bids_ketamine.config.ROI_STATISTIC_FALLBACK`, for every participant
        alike, so that no change mixes two statistics.
    reason : str
        One sentence for the log and ``models.json``; it names the first table without the default.
    """
    if statistic is not None:
        return statistic, "chosen with --roi-statistic"
    for path, (header, rows) in tables.items():
        why = _default_missing(path, header, rows)
        if why:
            return ROI_STATISTIC_FALLBACK, (
                f"default {DEFAULT_ROI_STATISTIC} not available: {path} {why}; "
                f"{ROI_STATISTIC_FALLBACK} used for every participant")
    return DEFAULT_ROI_STATISTIC, "the default"


def _default_missing(path: Path, header: list[str], rows: list[list[str]]) -> str | None:
    """Why one ROI table cannot give :data:`DEFAULT_ROI_STATISTIC` (None: it can)."""
    if DEFAULT_ROI_STATISTIC not in header:
        return "has no such column (written by an older participant level)"
    column = header.index(DEFAULT_ROI_STATISTIC)
    if np.isnan(_numbers([row[column] for row in rows], path, DEFAULT_ROI_STATISTIC)).all():
        return "holds no value of it (participant level run without grey-matter weights, --gm-threshold none)"
    return None


def load_roi_values(output_dir: Path, atlas: str, participant_label: tuple[str, ...] = (),
                    statistic: str | None = None) -> tuple[pd.DataFrame, list[dict], dict]:
    """One ROI value table for the whole study, with the rule for multi-series sessions.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR of the participant level.
    atlas : str
        Atlas name.
    participant_label : tuple of str
        Restrict to these participants; empty = all.
    statistic : str or None
        The ROI table column taken as each session's value (one of :data:`ROI_STATISTICS`);
        None: the default, or its fallback (:func:`choose_roi_statistic`).

    Returns
    -------
    values : pandas.DataFrame
        ``participant_id``, ``session_id``, ``roi``, ``param``, ``value`` (the ROI statistic),
        ``n_voxels``, ``coverage``.
    series_notes : list of dict
        One entry per session with several series tables: which table(s) gave the
        values and how.
    roi_value : dict
        ``statistic`` (the column used) and ``reason`` (why that one).

    Raises
    ------
    InputError
        If there is no ROI table at all ("run the participant level first").
    """
    if statistic is not None and statistic not in ROI_STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(ROI_STATISTICS)}, got {statistic!r}")
    found = find_roistats(output_dir, atlas, participant_label)
    if found.empty:
        raise InputError(
            f"no participant-level outputs in {output_dir} (no *_atlas-{atlas}_model-tensor_"
            "roistats.tsv): run the participant level first"
        )
    read = {path: _read_table_rows(path) for path in found["path"]}
    statistic, reason = choose_roi_statistic(read, statistic)
    pieces, notes = [], []
    simple = found.groupby(["participant_id", "session_id"])["path"].transform("size") == 1
    if simple.any():
        pieces.append(_read_single_tables(found.loc[simple], statistic, read))
    for (subject, session), files in found.loc[~simple].groupby(
            ["participant_id", "session_id"], sort=True):
        session_table = files.loc[files["entities"] == ""]
        series = files.loc[files["entities"] != ""]
        if not session_table.empty:
            path = session_table["path"].iloc[0]
            table = _table_from_rows(path, *read[path])
            _require_column(table.columns, statistic, path)
            if len(series):
                notes.append({
                    "participant_id": f"sub-{subject}", "session_id": f"ses-{session}",
                    "rule": "session table (--combine-runs average) used",
                    "used": [path.name],
                    "not_used": [p.name for p in series["path"]],
                })
        else:
            tables = [_table_from_rows(p, *read[p]) for p in series["path"]]
            for path, item in zip(series["path"], tables):
                _require_column(item.columns, statistic, path)
            table = combine_series(tables)
            notes.append({
                "participant_id": f"sub-{subject}", "session_id": f"ses-{session}",
                "rule": "series averaged (weights n_voxels; coverage = minimum)",
                "used": [p.name for p in series["path"]],
                "not_used": [],
            })
        pieces.append(pd.DataFrame({
            "participant_id": subject,
            "session_id": session,
            "roi": table["roi"].to_numpy(),
            "param": table["param"].to_numpy(),
            "value": table[statistic].to_numpy(dtype=float),
            "n_voxels": table["n_voxels"].to_numpy(dtype=float),
            "coverage": table["coverage"].to_numpy(dtype=float),
        }))
    values = pd.concat(pieces, ignore_index=True)
    return (values.sort_values(["participant_id", "session_id"], kind="stable", ignore_index=True),
            notes, {"statistic": statistic, "reason": reason})


def _require_column(columns, statistic: str, path: Path) -> None:
    """A clear error for a table written before its ``--roi-statistic`` column existed."""
    if statistic not in columns:
        raise InputError(
            f"{path} has no '{statistic}' column (written by an older participant level); "
            f"{_rerun_hint(path)} or use --roi-statistic median"
        )


def _read_single_tables(found: pd.DataFrame, statistic: str, read: dict) -> pd.DataFrame:
    """Sessions with one ROI table each, into one value table (``read``: path -> header, rows)."""
    subjects, sessions, rois, params, value, n_voxels, coverage = ([] for _ in range(7))
    for subject, session, path in found[["participant_id", "session_id", "path"]].itertuples(
            index=False):
        header, rows = read[path]
        _require_column(header, statistic, path)
        at = {name: header.index(name) for name in (*ROISTATS_COLUMNS, statistic)}
        subjects.extend([subject] * len(rows))
        sessions.extend([session] * len(rows))
        rois.extend(row[at["roi"]] for row in rows)
        params.extend(row[at["param"]].strip().lower() for row in rows)
        value.append(_numbers([row[at[statistic]] for row in rows], path, statistic))
        n_voxels.append(_numbers([row[at["n_voxels"]] for row in rows], path, "n_voxels"))
        coverage.append(_numbers([row[at["coverage"]] for row in rows], path, "coverage"))
    return pd.DataFrame({
        "participant_id": subjects, "session_id": sessions, "roi": rois, "param": params,
        "value": np.concatenate(value), "n_voxels": np.concatenate(n_voxels),
        "coverage": np.concatenate(coverage),
    })
