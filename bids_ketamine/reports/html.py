"""Small HTML building blocks shared by the participant and group reports.

Every page is one self-contained file: inline CSS and script from
``bids_ketamine/data/report_template.html``, images referenced by *relative* paths, and
nothing fetched from the internet.  Text from the outputs is always escaped.
"""

from __future__ import annotations

import html
import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from bids_ketamine import __version__

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "data" / "report_template.html"


def escape(value: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(value), quote=True)


def relative_url(target: Path, start: Path) -> str:
    """A relative, URL-quoted link from the folder ``start`` to ``target``.

    Parameters
    ----------
    target : Path
        The linked file.
    start : Path
        The folder holding the HTML page.

    Returns
    -------
    str
        A POSIX relative path, percent-encoded where needed (never absolute).
    """
    rel = os.path.relpath(Path(target).resolve(), Path(start).resolve())
    return quote(Path(rel).as_posix())


def is_missing(value: Any) -> bool:
    """True for None, NaN, pandas' NA and empty strings."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value.strip()


def format_number(value: Any, digits: int = 3) -> str:
    """Format a table value: integers as such, floats with ``digits`` decimals, NaN as ``n/a``."""
    if is_missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def format_text(value: Any) -> str:
    """A text cell: the value's text, ``n/a`` when missing (pandas reads BIDS ``n/a`` as NaN)."""
    return "n/a" if is_missing(value) else str(value)


def format_p(value: Any) -> str:
    """Format a p-value: 3 decimals, or ``<0.001``-style scientific notation below 0.001."""
    if is_missing(value):
        return "n/a"
    number = float(value)
    if number < 0.001:
        return f"{number:.1e}"
    return f"{number:.3f}"


@dataclass
class Column:
    """How one column of a :func:`data_table` is shown.

    Attributes
    ----------
    key : str
        Column name in the rows.
    label : str
        Header text.
    fmt : callable
        Value -> text (default :func:`format_number`).
    numeric : bool
        Right-align and sort numerically.
    flag : callable or None
        Row -> CSS class for the cell (``"flag"``, ``"sig"``) or None.
    title : str
        Tooltip of the header.
    css : str
        Extra CSS class of the cells (e.g. ``"nowrap"``).
    """

    key: str
    label: str
    fmt: Callable[[Any], str] = format_number
    numeric: bool = True
    flag: Callable[[Mapping[str, Any]], str | None] | None = None
    title: str = ""
    css: str = ""


def data_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    table_id: str | None = None,
    sortable: bool = True,
    row_class: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> str:
    """An HTML table of ``rows`` (mappings) with the given columns.

    Numeric cells carry their full-precision value in ``data-sort`` (used for sorting
    and by tests); the text shown is the formatted value.
    """
    classes = ["data"] + (["sortable"] if sortable else [])
    head = "".join(
        f'<th{" class=num" if col.numeric else ""}'
        f'{f" title={_attr(col.title)}" if col.title else ""}>{escape(col.label)}</th>'
        for col in columns
    )
    body = []
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col.key)
            css = []
            if col.numeric:
                css.append("num")
            if col.css:
                css.append(col.css)
            if col.flag is not None:
                extra = col.flag(row)
                if extra:
                    css.append(extra)
            sort = ""
            if not is_missing(value):
                raw = value if not col.numeric else _float_text(value)
                sort = f" data-sort={_attr(raw)}"
            cls = f' class="{" ".join(css)}"' if css else ""
            cells.append(f"<td{cls}{sort} data-col={_attr(col.key)}>{escape(col.fmt(value))}</td>")
        rcls = row_class(row) if row_class else None
        body.append(f'<tr{f" class={_attr(rcls)}" if rcls else ""}>{"".join(cells)}</tr>')
    ident = f" id={_attr(table_id)}" if table_id else ""
    return (
        f'<div class="table-wrap"><table class="{" ".join(classes)}"{ident}>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _float_text(value: Any) -> str:
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def _attr(value: Any) -> str:
    return '"' + escape(value) + '"'


def key_value_table(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """A two-column table of labels and values (nested values shown as compact JSON)."""
    pairs = items.items() if isinstance(items, Mapping) else items
    rows = []
    for key, value in pairs:
        if isinstance(value, (dict, list, tuple)):
            text = f"<code>{escape(json.dumps(value, default=str))}</code>"
        else:
            text = escape(value if not is_missing(value) else "n/a")
        rows.append(f"<tr><th>{escape(key)}</th><td>{text}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def note(text: str, kind: str = "info") -> str:
    """A highlighted paragraph; ``kind`` is ``info``, ``missing``, ``warning`` or ``ok``."""
    return f'<div class="note {escape(kind)}">{text}</div>'


def not_available(what: str, expected: str | Sequence[str] | None = None) -> str:
    """The note a section shows when the outputs it needs are absent."""
    if expected is None:
        files = ""
    else:
        names = [expected] if isinstance(expected, str) else list(expected)
        files = " (expected " + ", ".join(f"<code>{escape(n)}</code>" for n in names) + ")"
    return note(f"{escape(what)}: not available{files}.", "missing")


def figure(src: str, caption: str, *, alt: str | None = None, light: bool = False) -> str:
    """An ``<img>`` with its caption; ``src`` must be a relative URL."""
    cls = ' class="light"' if light else ""
    return (
        f'<figure><img src={_attr(src)} alt={_attr(alt or caption)}{cls} loading="eager">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def details(summary: str, body: str) -> str:
    """A collapsed block."""
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


@dataclass
class Section:
    """One card of a report page."""

    ident: str
    title: str
    body: str
    flagged: bool = False
    badge: str = ""

    def render(self) -> str:
        badge = f" {self.badge}" if self.badge else ""
        return (
            f'<section class="card" id={_attr(self.ident)}><h2>{escape(self.title)}{badge}</h2>'
            f"{self.body}</section>"
        )


@dataclass
class Page:
    """A whole report page."""

    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

    def render(self) -> str:
        template = string.Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
        nav = "".join(
            f'<a href="#{escape(s.ident)}"{" class=flag" if s.flagged else ""}>{escape(s.title)}</a>'
            for s in self.sections
        )
        return template.substitute(
            title=escape(self.title),
            subtitle=self.subtitle,
            nav=nav,
            body="\n".join(s.render() for s in self.sections),
            footer=self.footer,
            version=escape(__version__),
        )

    def write(self, path: Path) -> Path:
        """Write the page (atomically: a half-written report never replaces a good one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, path)
        return path
