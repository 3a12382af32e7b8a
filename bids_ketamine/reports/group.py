"""The group results report, ``OUTPUT_DIR/group/report.html``, built from the group outputs.

It reads only what the group level wrote (docs/interfaces.md, docs/group.md):
``change.tsv``, ``models.tsv``, ``models.json``, ``response.tsv``, ``prediction.tsv`` and
``figures/*.png`` (with the ``.tsv`` behind each).  Any of them may be absent: the
section then says "not available".

Kept as one module (~500 lines): one page whose sections share the loaded group tables and
citations; the table cells are in :mod:`.group_tables`, the Methods section in :mod:`.methods`.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine import __version__
from bids_ketamine.config import KETAMINE7_ROIS
from bids_ketamine.reports import figures
from bids_ketamine.reports.collect import read_json
from bids_ketamine.reports.html import (
    Column,
    Page,
    Section,
    data_table,
    details,
    escape,
    figure,
    format_number,
    format_p,
    format_text,
    key_value_table,
    not_available,
    note,
    relative_url,
)
from bids_ketamine.reports.group_tables import ALPHA, count_rate, mean_sd, model_columns
from bids_ketamine.reports.methods import group_methods
from bids_ketamine.reports.references import Citations
from bids_ketamine.utils.tsv import read_tsv

#: The report's own figure (outcome change by arm), next to the group level's figures.
OUTCOME_FIGURE = "report_outcome-change.png"


def build_group_report(output_dir: Path) -> Path:
    """Build ``OUTPUT_DIR/group/report.html`` from the group-level outputs.

    Parameters
    ----------
    output_dir : Path
        The app's OUTPUT_DIR, holding ``group/``.

    Returns
    -------
    Path
        The written HTML file.

    Raises
    ------
    FileNotFoundError
        If ``OUTPUT_DIR/group`` does not exist (run the group level first).
    """
    group_dir = Path(output_dir) / "group"
    if not group_dir.is_dir():
        raise FileNotFoundError(
            f"'{group_dir}' does not exist: run 'bids-ketamine BIDS_DIR {output_dir} group' "
            "before building the group report"
        )
    return _GroupReport(group_dir).build()


def _read_tsv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return read_tsv(path)
    except ValueError:  # empty or damaged: the section says the table is missing
        return pd.DataFrame()


def _roi_rank(roi: Any) -> int:
    return KETAMINE7_ROIS.index(roi) if roi in KETAMINE7_ROIS else len(KETAMINE7_ROIS)


class _GroupReport:
    def __init__(self, group_dir: Path) -> None:
        self.dir = group_dir
        self.change = _read_tsv(group_dir / "change.tsv")
        self.models = _read_tsv(group_dir / "models.tsv")
        self.response = _read_tsv(group_dir / "response.tsv")
        self.prediction = _read_tsv(group_dir / "prediction.tsv")
        self.info = read_json(group_dir / "models.json") or {}
        self.has_info = (group_dir / "models.json").is_file()
        self.cite = Citations(version=__version__)

    def _link(self, path: Path) -> str:
        return relative_url(path, self.dir)

    # ------------------------------------------------------------------ build
    def build(self) -> Path:
        sections = [
            self._cohort_section(),
            self._outcome_section(),
            self._response_section(),
            self._models_section(),
            self._figures_section(),
            self._prediction_section(),
            self._methods_section(),
        ]
        n = self._participants()
        subtitle = (
            (f"{sum(n.values())} participants ("
             + ", ".join(f"{escape(arm)}: {count}" for arm, count in n.items()) + ")"
             if n else "participants: not available")
            + f" &middot; generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
        )
        page = Page(
            title="bids_ketamine: group results",
            subtitle=subtitle,
            sections=sections,
            footer=(f"Built by bids_ketamine {escape(__version__)} from the files in "
                    "<code>group/</code> only."),
        )
        return page.write(self.dir / "report.html")

    # ------------------------------------------------------------------ cohort
    def _participants(self) -> dict[str, int]:
        """Participants per arm: from change.tsv, else from models.json."""
        if self.change is not None and {"participant_id", "group"} <= set(self.change.columns):
            per = self.change.drop_duplicates("participant_id").groupby("group", sort=True).size()
            return {str(arm): int(count) for arm, count in per.items()}
        counts = (self.info.get("arms") or {}).get("n") or {}
        return {str(arm): int(count) for arm, count in counts.items() if count is not None}

    def _cohort_section(self) -> Section:
        parts = []
        n = self._participants()
        arms = self.info.get("arms") or {}
        if n:
            rows = [{"arm": arm, "n": count,
                     "role": ("treatment" if arm == arms.get("treatment") else
                              "control" if arm == arms.get("control") else "")}
                    for arm, count in n.items()]
            columns = [Column("arm", "Arm", format_text, numeric=False),
                       Column("role", "Role", format_text, numeric=False),
                       Column("n", "Participants analysed")]
            if not any(row["role"] for row in rows):
                columns.pop(1)
            parts.append(data_table(rows, columns, table_id="cohort-table", sortable=False))
        else:
            parts.append(not_available("Participants per arm", ["change.tsv", "models.json"]))
        sessions = self.info.get("sessions")
        if isinstance(sessions, dict) and sessions:
            shown = {k: v for k, v in sessions.items() if not isinstance(v, (list, dict))}
            pairs = sessions.get("pairs")
            if pairs:
                shown["session pairs (baseline, follow-up)"] = pairs
            if sessions.get("order"):
                shown["session order (trajectories)"] = ", ".join(map(str, sessions["order"]))
            plans = [p for p in (self.info.get("outcome_sessions") or []) if isinstance(p, dict)]
            if plans:
                shown["outcome sessions"] = "; ".join(str(p.get("change", "")) for p in plans)
            parts.append("<h3>Sessions compared</h3>" + key_value_table(shown))
        parts.append("<h3>Exclusions</h3>")
        if not self.has_info:
            parts.append(not_available("Exclusions", "models.json"))
        else:
            excluded = self.info.get("excluded") or []
            if not excluded:
                parts.append(note("No participant was excluded.", "ok"))
            else:
                rows = []
                for entry in excluded:
                    if not isinstance(entry, dict):
                        continue
                    rows.append({
                        "participant_id": entry.get("participant_id", "n/a"),
                        "reason": entry.get("reason", "n/a"),
                        "analyses": ", ".join(map(str, entry.get("analyses", []))) or "all",
                        "outcomes": ", ".join(map(str, entry.get("outcomes", []))) or "all",
                        "rois": ", ".join(map(str, entry.get("rois", []))) or "all",
                    })
                people = len({r["participant_id"] for r in rows})
                parts.append(f"<p>{people} participant(s) excluded from at least one analysis "
                             "(one row per participant and reason).</p>")
                parts.append(data_table(rows, [
                    Column(k, label, format_text, numeric=False) for k, label in (
                        ("participant_id", "Participant"), ("reason", "Reason"),
                        ("analyses", "Analyses"), ("outcomes", "Outcomes"), ("rois", "ROIs"))
                ], table_id="exclusions-table"))
        return Section("cohort", "Cohort", "".join(parts))

    # ------------------------------------------------------------------ outcomes
    def _outcomes(self) -> list[str]:
        listed = self.info.get("outcomes")
        if isinstance(listed, list) and listed:
            return [str(o) for o in listed]
        if self.change is None:
            return []
        return [c[: -len("_change")] for c in self.change.columns
                if c.endswith("_change") and c != "change"
                and f"{c[: -len('_change')]}_baseline" in self.change.columns]

    def _outcome_section(self) -> Section:
        outcomes = [o for o in self._outcomes()
                    if self.change is not None and f"{o}_change" in self.change.columns]
        if self.change is None or "group" not in self.change or not outcomes:
            return Section("outcomes", "Outcome change by arm",
                           not_available("Clinical outcomes per participant", "change.tsv"))
        by_session = (self.change.groupby("outcome_session", sort=False)
                      if "outcome_session" in self.change else [(None, self.change)])
        rows = []
        for session, rows_of_session in by_session:
            people = rows_of_session.drop_duplicates("participant_id")
            for outcome in outcomes:
                for arm, data in people.groupby("group", sort=True):
                    rows.append({
                        "outcome": outcome if session is None else f"{outcome} (ses-{session})",
                        "arm": arm,
                        "n": int(pd.to_numeric(data[f"{outcome}_change"],
                                               errors="coerce").notna().sum()),
                        "baseline": mean_sd(data.get(f"{outcome}_baseline",
                                                     pd.Series(dtype=float))),
                        "followup": mean_sd(data.get(f"{outcome}_followup",
                                                     pd.Series(dtype=float))),
                        "change": mean_sd(data[f"{outcome}_change"]),
                    })
        people = self.change.drop_duplicates("participant_id")
        table = data_table(rows, [
            Column("outcome", "Outcome", format_text, numeric=False),
            Column("arm", "Arm", format_text, numeric=False),
            Column("n", "N"),
            Column("baseline", "Baseline", lambda v: v, numeric=False),
            Column("followup", "Follow-up", lambda v: v, numeric=False),
            Column("change", "Change (follow-up - baseline)", lambda v: v, numeric=False),
        ], table_id="outcome-table", sortable=False)
        # Cells hold pre-escaped "mean &plusmn; SD" text: unescape the entity once.
        table = table.replace("&amp;plusmn;", "&plusmn;")
        out_file = self.dir / "figures" / OUTCOME_FIGURE
        try:
            figures.plot_change_by_group(people, out_file, outcomes=outcomes)
            fig = figure(self._link(out_file),
                         "Change of each outcome by arm (negative = improvement for MADRS and "
                         "QIDS-SR); boxes: quartiles, dots: participants.", light=True)
        except (ValueError, OSError) as err:
            fig = note(f"The figure could not be drawn ({escape(err)}).", "warning")
        body = ("<p>Mean &plusmn; SD per arm, one value per participant (change.tsv).</p>"
                + table + fig)
        return Section("outcomes", "Outcome change by arm", body)

    # ------------------------------------------------------------------ response
    def _response_section(self) -> Section:
        if self.response is None or self.response.empty:
            return Section("response", "Response and remission",
                           not_available("Response and remission rates", "response.tsv"))
        table = self.response
        rows = []
        for record in table.to_dict("records"):
            row = dict(record)
            row["arm"] = record.get("group", "n/a")
            row["improvement"] = (
                f"{record['pctimprovement_mean']:.1f} &plusmn; {record['pctimprovement_sd']:.1f}"
                if pd.notna(record.get("pctimprovement_mean"))
                and pd.notna(record.get("pctimprovement_sd")) else
                format_number(record.get("pctimprovement_mean"), 1))
            row["responders"] = count_rate(record.get("n_response"), record.get("n"),
                                           record.get("response_rate"))
            row["remitters"] = count_rate(record.get("n_remission"),
                                          record.get("n_remission_evaluable"),
                                          record.get("remission_rate"))
            rows.append(row)
        known = {"outcome", "group", "n", "pctimprovement_mean", "pctimprovement_sd",
                 "n_response", "response_rate", "n_remission_evaluable", "n_remission",
                 "remission_rate"}
        if not {"outcome", "group"} <= set(table.columns):
            body = data_table(table.to_dict("records"),
                              [Column(c, c) for c in table.columns], table_id="response-table")
        else:
            columns = [
                Column("outcome", "Outcome", format_text, numeric=False),
                Column("arm", "Arm", format_text, numeric=False),
                Column("n", "N"),
                Column("improvement", "Improvement (%), mean &plusmn; SD", lambda v: v),
                Column("responders", "Responders", lambda v: v),
                Column("remitters", "Remitters", lambda v: v),
            ]
            columns += [Column(c, c) for c in table.columns if c not in known]
            body = data_table(rows, columns, table_id="response-table", sortable=False)
            body = body.replace("&amp;plusmn;", "&plusmn;")
        definitions = self.info.get("response") or {}
        text = ("Response: improvement of at least "
                f"{format_number(definitions.get('response_threshold_percent', 50.0), 0)} % from "
                "baseline. Remission: follow-up score at or below the scale's threshold"
                + (" (" + ", ".join(f"{escape(k)} &le; {format_number(v, 0)}"
                                    for k, v in (definitions.get("remission_thresholds") or {}).items())
                   + ")" if definitions.get("remission_thresholds") else "")
                + ". Percent improvement = 100 &times; (baseline - follow-up) / baseline.")
        return Section("response", "Response and remission", f"<p>{text}</p>" + body)

    # ------------------------------------------------------------------ models
    def _models_section(self) -> Section:
        if self.models is None or self.models.empty:
            return Section("models", "Models",
                           not_available("Model estimates", "models.tsv"))
        table = self.models.copy()
        if "term" not in table:
            return Section("models", "Models", note("models.tsv has no 'term' column; "
                                                    "rerun the group level.", "warning"))
        model_name = table.get("model", pd.Series("", index=table.index)).astype(str)
        single_arm = (model_name == "single_arm").any() and not (model_name == "interaction").any()
        if single_arm:  # no treatment terms: the predictor-change term is the main result
            main_term = table.get("param", pd.Series("", index=table.index)).astype(str) + "_change"
            table["_interaction"] = table["term"].astype(str) == main_term
            model_name = model_name.replace("single_arm", "interaction")
        else:
            table["_interaction"] = table["term"].astype(str).str.startswith("treatment:")
        table["_model_rank"] = np.select(
            [model_name == "interaction", model_name.str.startswith("slope"),
             model_name == "remission_logit"], [0, 1, 2], 3)
        table["_roi_rank"] = table.get("roi", pd.Series("", index=table.index)).map(_roi_rank)
        order = [c for c in ("_model_rank", "model", "measure", "param", "outcome", "_roi_rank",
                             "roi") if c in table]
        table = table.sort_values(["_interaction"] + order, ascending=[False] + [True] * len(order),
                                  kind="stable")
        columns = model_columns(table)
        main = table[table["_interaction"] & (model_name.loc[table.index] == "interaction")]
        n_fdr = int((pd.to_numeric(main.get("p_fdr"), errors="coerce") < ALPHA).sum()) \
            if "p_fdr" in main else 0
        n_raw = int((pd.to_numeric(main.get("p_value"), errors="coerce") < ALPHA).sum()) \
            if "p_value" in main else 0
        what = ("<p>Single-arm design: change terms of the models <code>outcome change ~ "
                "change + covariates</code> (no treatment terms)." if single_arm else
                "<p>Treatment &times; change terms of the interaction models "
                "<code>outcome change ~ treatment + change + treatment:change + covariates</code> "
                "(treatment = 1 for the treatment arm).")
        parts = [
            f"{what} Trajectory models (<code>model = trajectory</code>, mixed models over "
            f"every session) are among the other terms. Highlighted: p &lt; {ALPHA:g} (raw, "
            f"yellow) and FDR-corrected p &lt; {ALPHA:g} (Benjamini-Hochberg "
            f"{self.cite('fdr')}, green). Click a column header to sort.</p>",
            f'<div class="stats"><div class="stat"><b>{len(main)}</b><span>interaction terms'
            f'</span></div><div class="stat"><b>{n_raw}</b><span>raw p &lt; {ALPHA:g}</span>'
            f'</div><div class="stat"><b>{n_fdr}</b><span>FDR p &lt; {ALPHA:g}</span></div></div>',
        ]
        if main.empty:
            parts.append(note("No interaction term in models.tsv.", "missing"))
        else:
            constant = [c for c in columns if not c.numeric and c.key in main
                        and main[c.key].nunique(dropna=False) == 1]
            said = [c for c in constant if pd.notna(main[c.key].iloc[0])]
            if said:
                parts.append("<p>" + " &middot; ".join(
                    f"{escape(c.label)}: <code>{escape(main[c.key].iloc[0])}</code>"
                    for c in said) + "</p>")
            shown = [c for c in columns if c not in constant]
            parts.append(data_table(main.to_dict("records"), shown, table_id="interaction-table"))
        rest = table.drop(index=main.index)
        if not rest.empty:
            parts.append(details(
                f"All other terms and models ({len(rest)} rows; interaction terms first)",
                data_table(rest.to_dict("records"), columns, table_id="all-terms-table")))
        parts.append(f'<p>Data: <a href="{self._link(self.dir / "models.tsv")}">models.tsv</a>'
                     + (f', <a href="{self._link(self.dir / "models.json")}">models.json</a>'
                        if self.has_info else "") + ".</p>")
        formulas = self.info.get("formulas")
        if isinstance(formulas, dict) and formulas:
            parts.append(details("Model formulas", key_value_table(formulas)))
        return Section("models", "Models", "".join(parts))

    # ------------------------------------------------------------------ figures
    def _figures_section(self) -> Section:
        fig_dir = self.dir / "figures"
        pngs = sorted(p for p in fig_dir.glob("*.png") if p.name != OUTCOME_FIGURE) \
            if fig_dir.is_dir() else []
        forests = [p for p in pngs if p.name.startswith("forest")]
        scatters = sorted((p for p in pngs if p.name.startswith("scatter")), key=_scatter_key)
        trajectories = [p for p in pngs if p.name.startswith("trajectory")]
        others = [p for p in pngs if p not in forests + scatters + trajectories]
        if not pngs:
            return Section("figures", "Figures",
                           not_available("Group figures", "group/figures/*.png"))
        parts = []
        for title, paths, grid in (("Forest plots", forests, False),
                                   ("Outcome trajectories by arm (mean and 95 % CI per "
                                    "session; thin lines: participants)", trajectories, True),
                                   ("Scatter plots", scatters, True),
                                   ("Other figures", others, True)):
            if not paths:
                continue
            items = [self._group_figure(path) for path in paths]
            parts.append(f"<h3>{title}</h3>")
            parts.append(f'<div class="grid3">{"".join(items)}</div>' if grid else "".join(items))
        return Section("figures", "Figures", "".join(parts))

    def _group_figure(self, path: Path) -> str:
        data = path.with_suffix(".tsv")
        caption = escape(_caption(path.stem))
        if data.is_file():
            caption += f' &middot; <a href="{self._link(data)}">data</a>'
        return figure(self._link(path), caption, alt=_caption(path.stem), light=True)

    # ------------------------------------------------------------------ prediction
    def _prediction_section(self) -> Section:
        summaries = [s for s in (self.info.get("prediction") or []) if isinstance(s, dict)]
        table = self.prediction
        if (table is None or table.empty) and not summaries:
            return Section("prediction", "Cross-validated prediction",
                           not_available("Prediction results", "prediction.tsv"))
        parts = [
            f"<p>Elastic-net regression {self.cite('elasticnet', 'sklearn')} of the outcome "
            "change on every ROI change, treatment and treatment &times; each ROI change, "
            "with nested cross-validation; out-of-sample R&sup2; and its permutation "
            "p-value.</p>"
        ]
        rows = []
        keys = ["param", "outcome"]
        sessions = (table is not None and "outcome_session" in table
                    and table["outcome_session"].nunique() > 1)
        if table is not None and not table.empty and set(keys) <= set(table.columns):
            for key, data in table.groupby(keys + (["outcome_session"] if sessions else []),
                                           sort=False):
                param, outcome = key[0], key[1]
                if sessions:
                    outcome = f"{outcome} (ses-{key[2]})"
                first = data.iloc[0]
                rows.append({"param": param, "outcome": outcome,
                             **{c: first.get(c) for c in ("r2_oos", "p_permutation", "n_obs",
                                                          "n_permutations", "cv_outer",
                                                          "cv_inner_folds", "alpha", "l1_ratio")},
                             "note": ""})
        done = {(r["param"], r["outcome"]) for r in rows}
        for summary in summaries:
            key = (summary.get("param"), summary.get("outcome"))
            if key not in done and summary.get("note"):
                rows.append({"param": key[0], "outcome": key[1], "n_obs": summary.get("n_obs"),
                             "note": summary["note"]})
        if rows:
            parts.append(data_table(rows, [
                Column("param", "Parameter", format_text, numeric=False),
                Column("outcome", "Outcome", format_text, numeric=False),
                Column("n_obs", "N"),
                Column("r2_oos", "Out-of-sample R²"),
                Column("p_permutation", "Permutation p", format_p),
                Column("n_permutations", "Permutations"),
                Column("cv_outer", "Outer CV", lambda v: "n/a" if v is None or
                       (isinstance(v, float) and np.isnan(v)) else str(v), numeric=False),
                Column("cv_inner_folds", "Inner folds"),
                Column("alpha", "alpha", lambda v: format_number(v, 4)),
                Column("l1_ratio", "L1 ratio", lambda v: format_number(v, 2)),
                Column("note", "Note", format_text, numeric=False),
            ], table_id="prediction-summary", sortable=False))
        if table is not None and not table.empty and "std_beta" in table:
            features = table.copy()
            features["_roi_rank"] = features.get("roi", pd.Series("", index=features.index)).map(_roi_rank)
            features = features.sort_values([c for c in ("param", "outcome", "term", "_roi_rank")
                                             if c in features], kind="stable")
            columns = [Column(c, label, format_text, numeric=False) for c, label in (
                ("param", "Parameter"), ("outcome", "Outcome"), ("roi", "ROI"), ("term", "Term"))
                if c in features]
            columns += [Column("std_beta", "Standardised beta",
                               flag=lambda r: "sig" if pd.notna(r.get("std_beta"))
                               and r.get("std_beta") != 0 else None)]
            if "selection_frequency" in features:
                columns.append(Column("selection_frequency", "Selected in folds",
                                      lambda v: format_number(v, 2)))
            parts.append(details(
                f"Features ({len(features)} rows; non-zero betas highlighted)",
                data_table(features.to_dict("records"), columns, table_id="prediction-features")))
        if (self.dir / "prediction.tsv").is_file():
            parts.append(f'<p>Data: <a href="{self._link(self.dir / "prediction.tsv")}">'
                         "prediction.tsv</a>.</p>")
        return Section("prediction", "Cross-validated prediction", "".join(parts))

    # ------------------------------------------------------------------ methods
    def _methods_section(self) -> Section:
        return group_methods(self.info, self.has_info, self.cite)


# ---------------------------------------------------------------------- module helpers
def _scatter_key(path: Path) -> tuple:
    match = re.search(r"outcome-([^_]+).*roi-([^_.]+)", path.stem)
    if not match:
        return (path.stem, 0)
    return (match.group(1), _roi_rank(match.group(2)), match.group(2))


def _caption(stem: str) -> str:
    """``scatter_param-md_outcome-madrs_roi-BA10_L`` -> ``scatter: param md, outcome madrs, roi BA10_L``."""
    kind, _, rest = stem.partition("_")
    entities = re.findall(r"([a-zA-Z0-9]+)-(.+?)(?=_[a-zA-Z0-9]+-|$)", rest)
    if not entities:
        return stem.replace("_", " ")
    return f"{kind}: " + ", ".join(f"{k} {v}" for k, v in entities)
