"""The one TSV reader of the package: BIDS tables (``n/a`` = missing), by pandas or by rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import pandas as pd

#: Cells that mean "no value" in every table the package reads (BIDS writes ``n/a``).
MISSING_VALUES = ("n/a", "N/A", "NA", "", "nan", "NaN", "NAN")


def read_tsv(path: Path, *, error: Callable[[str], Exception] = ValueError,
             hint: str = "fix or remove it", **kwargs) -> pd.DataFrame:
    """A tab-separated table, with :data:`MISSING_VALUES` as NaN and stripped column names.

    Parameters
    ----------
    path : Path
    error : exception class
        Raised (with one line naming the file and ``hint``) when the file cannot be parsed.
    hint : str
        What the user should do about an unreadable file.
    kwargs
        Passed to :func:`pandas.read_csv` (e.g. ``dtype``).
    """
    try:
        table = pd.read_csv(path, sep="\t", na_values=list(MISSING_VALUES), keep_default_na=False,
                            **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise error(f"{path} is not a readable tab-separated table ({err}); {hint}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def read_tsv_rows(path: Path, *, error: Callable[[str], Exception] = ValueError,
                  hint: str = "fix or remove it") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, cells)`` rows of a small TSV (the csv module: far cheaper
    than pandas per file).  Blank lines are skipped; cells are kept as written.

    Raises
    ------
    error
        If the file is not UTF-8 text, is empty, or has a row whose number of cells differs
        from the header's (a damaged file); the message names the file and ends with ``hint``.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t")
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; {hint}") from None
    if not rows:
        raise error(f"{path} is empty; {hint}")
    header = [name.strip() for name in rows[0][1]]
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise error(f"{path} line {line} has {len(row)} cells, the header {len(header)} "
                        f"(a damaged file); {hint}")
    return header, rows[1:]


def is_missing(text: str) -> bool:
    """Whether a cell means "no value"."""
    return text.strip() in MISSING_VALUES
