"""The participant's visual report, ``OUTPUT_DIR/sub-<label>.html``, built from outputs on disk.

Figures go to ``OUTPUT_DIR/sub-<label>/figures/`` and are linked by relative paths, so
the output folder can be moved or archived as a whole.  Every section whose files are
absent says so; a figure that cannot be drawn shows the error instead of stopping the
report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from bids_ketamine import __version__
from bids_ketamine.config import Config
from bids_ketamine.derivatives import SeriesSummary
from bids_ketamine.dwi.tissue_stats import TISSUE_MIN_FRACTION
from bids_ketamine.reports import figures, qc
from bids_ketamine.reports.collect import (
    ParticipantOutputs,
    SeriesOutputs,
    collect_participant_outputs,
    read_json,
)
from bids_ketamine.reports.html import (
    Column,
    Page,
    Section,
    data_table,
    details,
    escape,
    figure,
    format_number,
    format_text,
    key_value_table,
    not_available,
    note,
    relative_url,
)
from bids_ketamine.reports.methods import participant_methods
from bids_ketamine.reports.series import FA_CONTOUR, FA_WINDOW, SeriesParts
from bids_ketamine.utils.tsv import read_tsv

LOGGER = logging.getLogger(__name__)

#: Options of config.json shown in the summary (the rest is in a collapsed block).
SHOWN_OPTIONS = (
    "denoise", "degibbs", "fit_method", "b0_threshold", "dti_max_bval", "template", "atlas",
    "csf_md_threshold", "gm_threshold", "combine_runs", "longitudinal", "min_coverage",
)


def build_participant_report(output_dir: Path, subject: str) -> Path:
    """Build ``OUTPUT_DIR/sub-<label>.html`` from the participant's derivatives.

    Parameters
    ----------
    output_dir : Path
        The app's OUTPUT_DIR, holding ``sub-<label>/``.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    Path
        The written HTML file.

    Raises
    ------
    FileNotFoundError
        If OUTPUT_DIR has no folder for the subject.
    """
    outputs = collect_participant_outputs(Path(output_dir), subject)
    report = _ParticipantReport(outputs)
    return report.build()


class _ParticipantReport(SeriesParts):
    """Builds the sections of one participant's page."""

    def __init__(self, outputs: ParticipantOutputs) -> None:
        self.out = outputs
        self.page_dir = outputs.output_dir
        self.fig_dir = outputs.output_dir / f"sub-{outputs.subject}" / "figures"
        # the recorded options read through Config: an option the record lacks takes the
        # run's default, never a default of the report's own
        self.config = Config.from_dict(outputs.config).to_dict() if outputs.config else {}
        self.min_coverage = float(self.config.get("min_coverage") or qc.MIN_COVERAGE)
        self.warnings: dict[str, list[str]] = {}
        self._templates: dict[str, dict[str, nib.Nifti1Image] | None] = {}

    # ------------------------------------------------------------------ helpers
    def _link(self, path: Path) -> str:
        return relative_url(path, self.page_dir)

    def _figure(self, name: str, draw: Callable[[Path], Path], caption: str, **kwargs: Any) -> str:
        """Draw one PNG (or explain why it could not be drawn) and return its HTML."""
        out_file = self.fig_dir / name
        try:
            draw(out_file)
        except Exception as err:  # noqa: BLE001 - one bad file must not cost the whole report
            LOGGER.warning("report figure %s failed: %s", name, err)
            return note(f"{escape(caption)}: the figure could not be drawn "
                        f"({escape(type(err).__name__)}: {escape(err)}).", "warning")
        return figure(self._link(out_file), caption, **kwargs)

    # ------------------------------------------------------------------ build
    def build(self) -> Path:
        series_sections = [self._series_section(series) for series in self.out.series]
        sections = [self._summary_section(), self._warnings_section()]
        sections += series_sections
        sections += [self._anatomy_section(), self._longitudinal_section(), self._methods_section(),
                     self._about_section()]
        n_warn = sum(len(v) for v in self.warnings.values())
        sessions = self.out.sessions
        subtitle = (
            f"{len(self.out.series)} DWI series"
            + (f" in {len(sessions)} session(s): {', '.join(escape(s) for s in sessions)}"
               if sessions else "")
            + f" &middot; {n_warn} warning(s)"
            + f" &middot; generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
        )
        page = Page(
            title=f"bids_ketamine: sub-{self.out.subject}",
            subtitle=subtitle,
            sections=sections,
            footer=(f"Built by bids_ketamine {escape(__version__)} from the files in this output "
                    "folder only; rebuild with <code>--reports-only</code>."),
        )
        return page.write(self.page_dir / f"sub-{self.out.subject}.html")

    # ------------------------------------------------------------------ summary
    def _summary_section(self) -> Section:
        parts = []
        if not self.out.series:
            parts.append(not_available(
                "Processed DWI series", f"sub-{self.out.subject}/ses-*/dwi/*_space-dwi_*"))
        else:
            rows = [self._series_summary(series) for series in self.out.series]
            parts.append("<h3>Data</h3>")
            parts.append(data_table(rows, [
                Column("series", "Series", format_text, numeric=False),
                Column("source", "Source file", format_text, numeric=False),
                Column("matrix", "Matrix", format_text, numeric=False),
                Column("voxel", "Voxel size (mm)", format_text, numeric=False),
                Column("volumes", "Volumes"),
                Column("shells", "Gradient scheme (b: volumes)", format_text, numeric=False,
                       title="b-values rounded to the nearest 50 s/mm^2; b=0 includes b <= the b=0 threshold"),
                Column("dti", "Volumes used for DTI", format_text, numeric=False),
            ], table_id="series-table", sortable=False))
        parts.append("<h3>Options used</h3>")
        if self.out.config is None:
            parts.append(not_available("Options of the run",
                                       f"sub-{self.out.subject}/log/config.json"))
        else:
            shown = {key: self.config[key] for key in SHOWN_OPTIONS if key in self.config}
            parts.append(key_value_table(shown))
            parts.append(details("All options (config.json)",
                                 f"<pre>{escape(json.dumps(self.config, indent=2, sort_keys=True))}</pre>"))
        for series in self.out.series:
            sidecars = []
            for key, title in (("preproc_json", "preprocessing summary"),
                               ("tensor_json", "tensor fit")):
                data = read_json(series.files.get(key))
                if data is not None:
                    sidecars.append(f"<h3>{escape(title)}</h3><pre>"
                                    f"{escape(json.dumps(data, indent=2, default=str))}</pre>")
            if sidecars:
                parts.append(details(f"Sidecars of {series.label}", "".join(sidecars)))
        return Section("summary", "Summary", "".join(parts))

    def _series_summary(self, series: SeriesOutputs) -> dict[str, Any]:
        sidecar = series.sidecar()
        tensor = read_json(series.files.get("tensor_json")) or {}
        row: dict[str, Any] = {"series": series.label, "source": "n/a", "matrix": "n/a",
                               "voxel": "n/a", "volumes": None, "shells": "n/a", "dti": "n/a"}
        summary = SeriesSummary.from_dict(sidecar)
        if summary.Sources:  # file names only: the full paths are in the sidecar
            row["source"] = ", ".join(Path(str(s)).name for s in summary.Sources)
        image_path = series.files.get("preproc") or series.maps.get("md")
        if image_path is not None:
            header = nib.load(str(image_path)).header
            shape = header.get_data_shape()
            row["matrix"] = " x ".join(str(n) for n in shape[:3])
            row["voxel"] = " x ".join(f"{z:.2f}" for z in header.get_zooms()[:3])
            if len(shape) == 4:
                row["volumes"] = int(shape[3])
        bval = series.files.get("bval")
        if bval is not None:
            row["shells"] = _shell_text(np.loadtxt(bval, ndmin=1),
                                        float(self.config.get("b0_threshold") or Config.default("b0_threshold")))
            row["volumes"] = row["volumes"] or int(np.loadtxt(bval, ndmin=1).size)
        used = tensor.get("VolumesUsed")
        if isinstance(used, list):
            row["dti"] = f"{len(used)} volumes"
        return row

    # ------------------------------------------------------------------ warnings
    def _warnings_section(self) -> Section:
        # Warnings are gathered while the series sections are built (which happens first).
        items = []
        for label, texts in self.warnings.items():
            for text in texts:
                items.append(f"<li><b>{escape(label)}</b>: {escape(text)}</li>")
        if items:
            body = (f'<p class="lead">Thresholds: maximum FD {qc.MAX_FD_MM:g} mm, mean FD '
                    f"{qc.MEAN_FD_MM:g} mm, ROI coverage {self.min_coverage:g}, ROI mean MD "
                    f"{qc.MD_PLAUSIBLE[0]:g}-{qc.MD_PLAUSIBLE[1]:g} um&sup2;/ms.</p>"
                    f'<ul class="warnings" id="warning-list">{"".join(items)}</ul>')
            badge = f'<span class="badge warn">{len(items)}</span>'
        else:
            unchecked = [s.label for s in self.out.series if "motion" not in s.files]
            body = note("No warnings: motion, ROI coverage and ROI MD are within their limits"
                        + (f" (motion not checked for {escape(', '.join(unchecked))}: no motion "
                           "table)" if unchecked else "") + ".", "ok")
            badge = '<span class="badge ok">0</span>'
        return Section("warnings", "Warnings", body, flagged=bool(items), badge=badge)

    def _warn(self, series: SeriesOutputs, texts: list[str]) -> None:
        if texts:
            self.warnings.setdefault(series.label, []).extend(texts)

    # ------------------------------------------------------------------ anatomy
    def _anatomy_section(self) -> Section:
        """The T1w path (issue 19): the segmentation, and the DWI over the T1w's edges."""
        anat, subject = self.out.anat, self.out.subject
        if "t1w_preproc" not in anat:
            return Section("anatomy", "Anatomy", note(
                "No T1w was used: the DWI-only path ran (the midpoint b=0 registered to the "
                "template, the template's tissue maps).", "missing"))
        parts = []
        if "t1w_dseg" in anat:
            parts.append(self._figure(
                f"sub-{subject}_desc-dseg_T1w.png",
                lambda out: figures.plot_label_outlines(anat["t1w_preproc"], anat["t1w_dseg"],
                                                        {1: "CSF", 2: "GM", 3: "WM"}, out),
                "Bias-corrected T1w with the outlines of its CSF, grey-matter and white-matter "
                "segmentation. The outlines should follow the tissue boundaries."))
        b0 = self.out.midpoint_b0 or next((series.files["b0"] for series in self.out.series
                                           if "b0" in series.files), None)
        if b0 is not None and "t1w_wm_probseg" in anat and "t1w_to_midpoint_xfm" in anat:
            matrix = np.loadtxt(anat["t1w_to_midpoint_xfm"])
            wm = nib.load(str(anat["t1w_wm_probseg"]))
            wm_in_dwi = nib.Nifti1Image(np.asanyarray(wm.dataobj), matrix @ wm.affine)
            parts.append(self._figure(
                f"sub-{subject}_desc-t1wedges_dwiref.png",
                lambda out: figures.plot_outline(b0, wm_in_dwi, out, level=0.5, display_modes=("z", "y")),
                "Mean b=0 of the DWI with the white-matter boundary of the T1w carried through the "
                "b=0-to-T1w registration. The contour should follow the b=0's white-matter edges; "
                "a consistent offset means a failed registration, local mismatch near the sinuses "
                "and temporal bone is uncorrected susceptibility distortion."))
        files = "".join(f"<li>{escape(path.relative_to(self.out.output_dir))}</li>" for path in sorted(anat.values()))
        parts.append(details(f"Anatomical outputs ({len(anat)})", f"<ul>{files}</ul>"))
        return Section("anatomy", "Anatomy", "".join(parts))

    # ------------------------------------------------------------------ one series
    def _longitudinal_section(self) -> Section:
        parts = []
        if len(self.out.sessions) < 2:
            parts.append(note("Single session: no within-subject midpoint space.", "missing"))
        elif self.out.midpoint_b0 is None:
            parts.append(not_available("Midpoint mean b=0",
                                       f"sub-{self.out.subject}/dwi/sub-{self.out.subject}_space-midpoint_desc-b0_dwiref.nii.gz"))
        else:
            midpoint = self.out.midpoint_b0
            parts.append("<h3>Within-subject midpoint</h3>")
            parts.append(self._figure(
                f"sub-{self.out.subject}_space-midpoint_desc-b0_dwi.png",
                lambda out: figures.plot_map(midpoint, out),
                "Mean b=0 of all sessions in the within-subject midpoint space. A sharp image "
                "means the sessions were aligned; blur or double edges mean they were not.",
            ))
        parts.append(self._sessions_in_template())
        parts.append(self._tissue_md())
        return Section("longitudinal", "Longitudinal registration", "".join(parts))

    def _tissue_md(self) -> str:
        """Each series' MD median over the brain, white and grey matter (its tissue table), and,
        with several series, each relative to the participant's mean: a change of the whole brain."""
        rows = []
        for series in self.out.series:
            path = series.files.get("tissuestats")
            if path is None:
                continue
            table = read_tsv(path)
            md = table[table["param"].astype(str) == "md"].set_index("tissue")["median"]
            rows.append({"series": series.label,
                         **{tissue: float(md.get(tissue, np.nan)) for tissue in TISSUE_MIN_FRACTION}})
        if not rows:
            return not_available("Whole-brain MD", f"sub-{self.out.subject}/ses-*/dwi/*_model-tensor_tissuestats.tsv")
        names = {"brain": "brain", "wm": "white matter", "gm": "grey matter"}
        columns = [Column("series", "Series", format_text, numeric=False)]
        columns += [Column(tissue, f"MD, {names[tissue]} (µm²/ms)") for tissue in TISSUE_MIN_FRACTION]
        if len(rows) > 1:
            for tissue in TISSUE_MIN_FRACTION:
                values = np.array([row[tissue] for row in rows])
                mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
                for row, value in zip(rows, values):
                    row[f"{tissue}_relative"] = 100.0 * (value / mean - 1.0)
            columns += [Column(f"{tissue}_relative", f"{names[tissue].capitalize()}: % from the mean",
                               lambda value: format_number(value, 2)) for tissue in TISSUE_MIN_FRACTION]
        caption = ("Median MD over the brain mask, the white matter and the grey matter of each series "
                   "(docs/outputs.md). A difference that every tissue shares between sessions is a change "
                   "of the whole brain (scanner software, calibration, or the intervention itself), not of "
                   "an ROI; the group level can adjust for it (<code>--covariates md_wm_change</code>).")
        return ("<h3>Whole-brain MD</h3>" + data_table(rows, columns, table_id="tissue-table", sortable=False)
                + f"<p>{caption}</p>")

    def _sessions_in_template(self) -> str:
        by_space: dict[str, list[tuple[str, Path]]] = {}
        for series in self.out.series:
            for space, maps in series.template_maps.items():
                if "fa" in maps:
                    by_space.setdefault(space, []).append((series.label, maps["fa"]))
        parts = []
        for space, entries in sorted(by_space.items()):
            if len(entries) < 2:
                continue
            (ref_label, ref_fa), others = entries[0], entries[1:]
            palette = figures.LABEL_PALETTE
            outlines = [(fa, FA_CONTOUR, palette[i % len(palette)]) for i, (_, fa) in enumerate(others)]
            legend = "".join(
                f'<span><span class="swatch" style="background:{palette[i % len(palette)]}">'
                f"</span>{escape(label)}</span>" for i, (label, _) in enumerate(others)
            )
            first, rest = outlines[0], outlines[1:]
            parts.append(f"<h3>Series compared in {escape(space)} space</h3>")
            parts.append(self._figure(
                f"sub-{self.out.subject}_space-{space}_desc-sessions_dwi.png",
                lambda out, s=first, r=rest, f=ref_fa: figures.plot_outline(
                    f, s[0], out, level=s[1], color=s[2], extra_outlines=r,
                    vmin=FA_WINDOW[0], vmax=FA_WINDOW[1], display_modes=("z", "y")),
                f"FA of {escape(ref_label)} in {escape(space)} with the FA = {FA_CONTOUR:g} "
                "contour of the other series. Matching contours mean the series agree in "
                "template space.",
            ))
            parts.append(f'<div class="legend">{legend}</div>')
        return "".join(parts)

    # ------------------------------------------------------------------ methods
    def _methods_section(self) -> Section:
        return participant_methods(self.out)

    def _about_section(self) -> Section:
        rows = []
        for series in self.out.series:
            files = list(series.files.values()) + list(series.maps.values())
            files += [p for maps in series.template_maps.values() for p in maps.values()]
            files += [p for a in series.atlases.values() for p in (a.dseg, a.dseg_tsv, a.roistats) if p]
            for path in sorted(files):
                rows.append(f'<li><a href="{self._link(path)}">{escape(path.relative_to(self.out.output_dir))}</a></li>')
        body = (
            f"<p>Generated by bids_ketamine {escape(__version__)} on "
            f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from the outputs in this folder.</p>"
            + details(f"Files read ({len(rows)})", f"<ul>{''.join(rows)}</ul>")
        )
        return Section("about", "About", body)


# ---------------------------------------------------------------------- module helpers
def _shell_text(bvals: np.ndarray, b0_threshold: float) -> str:
    """``b=0: 2, b=1000: 30`` from a list of b-values."""
    from bids_ketamine.dwi.gradients import shells

    bvals = np.where(np.asarray(bvals, dtype=float) <= b0_threshold, 0.0, bvals)
    return ", ".join(f"b={b:g}: {n}" for b, n in shells(bvals).items())
