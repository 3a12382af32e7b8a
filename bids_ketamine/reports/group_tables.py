"""Cells and columns of the group report's tables: model estimates, rates, mean and SD."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.reports.html import Column, format_number, format_p, format_text, is_missing

#: Significance level used to highlight p-values (raw and FDR-corrected).
ALPHA = 0.05


def mean_sd(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} &plusmn; {values.std(ddof=1):.2f}"


def count_rate(count: Any, total: Any, rate: Any) -> str:
    if count is None or (isinstance(count, float) and np.isnan(count)):
        return "n/a"
    text = f"{int(count)}"
    if total is not None and not (isinstance(total, float) and np.isnan(total)):
        text += f"/{int(total)}"
    if rate is not None and not (isinstance(rate, float) and np.isnan(rate)):
        text += f" ({100 * float(rate):.0f} %)"
    return text


def model_columns(table: pd.DataFrame) -> list[Column]:
    """Columns of the model tables, those present in models.tsv."""

    def _p_flag(key: str):
        def flag(row: dict[str, Any]) -> str | None:
            value = row.get(key)
            if value is None or pd.isna(value) or value >= ALPHA:
                return None
            return "sig" if key == "p_fdr" else "flag"

        return flag

    def _ci(row: dict[str, Any]) -> str:
        return (f"[{format_number(row.get('conf_low'))}, {format_number(row.get('conf_high'))}]")

    candidates = [
        Column("model", "Model", format_text, numeric=False),
        Column("measure", "Measure", format_text, numeric=False),
        Column("outcome", "Outcome", format_text, numeric=False),
        Column("param", "Param", format_text, numeric=False),
        Column("roi", "ROI", format_text, numeric=False),
        Column("term", "Term", format_text, numeric=False),
        Column("estimate", "Estimate"),
        Column("std_error", "SE"),
        Column("ci", "95 % CI", lambda v: v, numeric=False, css="nowrap"),
        Column("statistic", "t / z", lambda v: format_number(v, 2)),
        Column("p_value", "p", format_p, flag=_p_flag("p_value")),
        Column("p_fdr", "p (FDR)", format_p, flag=_p_flag("p_fdr")),
        Column("std_estimate", "Std. estimate"),
        Column("n_obs", "N"),
        Column("note", "Note", format_text, numeric=False),
    ]
    if {"conf_low", "conf_high"} <= set(table.columns):
        table["ci"] = [_ci(r) for r in table.to_dict("records")]
    present = [c for c in candidates if c.key in table.columns]
    if "note" in table.columns and table["note"].isna().all():
        present = [c for c in present if c.key != "note"]
    if "measure" in table.columns and table["measure"].nunique() <= 1:
        present = [c for c in present if c.key != "measure"]
    if "param" in table.columns and table["param"].nunique() <= 1:
        present = [c for c in present if c.key != "param"]
    for column in present:  # an empty note reads better than "n/a"
        if column.key == "note":
            column.fmt = lambda v: "" if is_missing(v) else str(v)
    return present
