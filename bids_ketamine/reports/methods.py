"""The methods paragraphs of the reports.

The participant report's Methods section (:func:`participant_methods`) is the methods text of
the workflow that ran: each factory of :mod:`bids_ketamine.workflows` states what it does in
its ``__desc__``, :mod:`bids_ketamine.cli.workflow` records the text of the graph it built, and
this module numbers its citations (:mod:`.references`).  The group report's Methods section
(:func:`group_methods`) is built from ``models.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bids_ketamine import __version__
from bids_ketamine.derivatives import methods_path
from bids_ketamine.reports.collect import ParticipantOutputs, read_json
from bids_ketamine.reports.html import Section, details, escape, key_value_table, not_available
from bids_ketamine.reports.references import (
    Citations,
    atlas_citations,
    atlas_provenance,
    atlas_reference_keys,
    template_reference_keys,
)


def participant_methods(outputs: ParticipantOutputs) -> Section:
    """The Methods section of one participant's report: the methods text of the workflow that
    ran (``sub-<s>/log/methods.md``, written from the graph by :mod:`bids_ketamine.cli.workflow`),
    its ``[@key]`` citations numbered.

    Parameters
    ----------
    outputs : ParticipantOutputs
        What the participant level wrote.
    """
    cite = Citations(version=_generated_version(outputs.output_dir) or __version__)
    record = methods_path(outputs.output_dir, outputs.subject)
    if not record.is_file():
        return Section("methods", "Methods", not_available(
            "Methods text", str(record.relative_to(outputs.output_dir))))
    text = _CITATION.sub(lambda match: _citation_marks(match.group(1), cite), escape(record.read_text().strip()))
    body = (f'<p class="methods" id="methods-text">{text}</p>'
            "<p class=\"lead\">This paragraph is assembled from the workflow that ran (each step's "
            "description, with the options it was built with) and may be copied into a manuscript."
            "</p><h3>References</h3>" + cite.html())
    return Section("methods", "Methods", body)


#: A citation of a methods text: ``[@key]``, ``[@template:<space>]`` or ``[@atlas:<name>]``.
_CITATION = re.compile(r" ?\[@([^\]]+)\]")


def _citation_marks(key: str, cite: Citations) -> str:
    """The numbered marks of one ``[@...]`` citation (with its leading space), or nothing."""
    kind, _, name = key.partition(":")
    if kind == "template":
        keys = list(template_reference_keys(name))
    elif kind == "atlas":
        provenance = atlas_provenance(name)
        keys = list(atlas_reference_keys(provenance))
        for number, citation in enumerate(atlas_citations(provenance)):
            cite.register(f"atlas:{name}:{number}", citation)
            keys.append(f"atlas:{name}:{number}")
    else:
        keys = [key]
    return f" {cite(*keys)}" if keys else ""


def _generated_version(output_dir: Path) -> str | None:
    """The bids_ketamine version recorded in dataset_description.json (GeneratedBy)."""
    data = read_json(output_dir / "dataset_description.json") or {}
    for entry in data.get("GeneratedBy", []) or []:
        if isinstance(entry, dict) and entry.get("Version"):
            return str(entry["Version"])
    return None


def group_methods(info: dict[str, Any], has_info: bool, cite: Citations) -> Section:
    """The Methods section of the group report, from ``models.json`` (``info``).

    Parameters
    ----------
    info : dict
        ``models.json`` of the group level (empty when absent).
    has_info : bool
        Whether ``models.json`` exists.
    cite : Citations
        The report's citations (the references list closes the section).
    """
    parts = [
        "<p class=\"methods\">Group statistics were computed by bids_ketamine "
        f"{escape(__version__)} {cite('bids_ketamine')} with statsmodels "
        f"{cite('statsmodels')}: for every ROI, parameter and outcome, an ordinary "
        "least-squares model of the outcome change on treatment, the change of the "
        "imaging parameter and their interaction (and covariates), following the design "
        f"of Kopelman et al. {cite('kopelman2023')}; p-values are reported raw and "
        f"Benjamini-Hochberg corrected {cite('fdr')} across ROIs and outcomes for each "
        "term.</p>"
    ]
    if not has_info:
        parts.append(not_available("Options and software versions", "models.json"))
    else:
        for key, title in (("roi_value", "ROI value of each session"), ("estimation", "Estimation"),
                           ("fdr", "Multiple comparisons"), ("covariates", "Covariates"),
                           ("software", "Software versions")):
            value = info.get(key)
            if isinstance(value, dict) and value:
                parts.append(f"<h3>{title}</h3>" + key_value_table(value))
        options = info.get("options")
        if isinstance(options, dict):
            parts.append(details("All options of the run",
                                 f"<pre>{escape(json.dumps(options, indent=2, sort_keys=True))}</pre>"))
    parts.append("<h3>References</h3>" + cite.html())
    return Section("methods", "Methods", "".join(parts))
