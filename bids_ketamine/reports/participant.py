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
import pandas as pd

from bids_ketamine import __version__
from bids_ketamine.config import Config
from bids_ketamine.derivatives import SeriesSummary
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
from bids_ketamine.reports.references import (
    Citations,
    atlas_citations,
    atlas_provenance,
    atlas_reference_keys,
    template_reference_keys,
)
from bids_ketamine.utils.tsv import read_tsv

LOGGER = logging.getLogger(__name__)

#: Options of config.json shown in the summary (the rest is in a collapsed block).
SHOWN_OPTIONS = (
    "denoise", "degibbs", "fit_method", "b0_threshold", "dti_max_bval", "template", "atlas",
    "csf_md_threshold", "combine_runs", "longitudinal", "min_coverage",
)
#: Display windows of the tensor maps (um^2/ms for diffusivities).
FA_WINDOW = (0.0, 1.0)
MD_WINDOW = (0.0, 2.0)
#: Contour level of FA used to compare sessions in template space.
FA_CONTOUR = 0.3
PARAM_ORDER = ("md", "fa", "ad", "rd")


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


class _ParticipantReport:
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
        sections += [self._longitudinal_section(), self._methods_section(), self._about_section()]
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

    # ------------------------------------------------------------------ one series
    def _series_section(self, series: SeriesOutputs) -> Section:
        self._warn(series, [str(w) for w in SeriesSummary.from_dict(series.sidecar()).Warnings if str(w).strip()])
        parts = [
            self._noise_part(series),
            self._motion_part(series),
            self._mask_part(series),
            self._tensor_part(series),
            self._template_part(series),
            self._roi_part(series),
        ]
        flagged = series.label in self.warnings
        return Section(f"series-{series.label}", f"Series {series.label}", "".join(parts),
                       flagged=flagged)

    def _name(self, series: SeriesOutputs, what: str) -> str:
        return f"{series.prefix}_desc-{what}_dwi.png"

    def _noise_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Denoising: noise map</h3>"
        noise = series.files.get("noise")
        if noise is None:
            denoise = self.config.get("denoise")
            reason = " (denoising was off)" if denoise == "none" else ""
            return head + not_available(f"Noise map{reason}",
                                        f"{series.prefix}_space-dwi_model-<denoise>_param-noise_dwimap.nii.gz")
        caption = (f"Noise level estimated by {escape(series.denoise_model or 'the denoiser')} "
                   "(signal units). It should be smooth and free of anatomy; structure here "
                   "means signal was removed as noise.")
        return head + self._figure(
            self._name(series, "noise"),
            lambda out: figures.plot_map(noise, out, cmap="inferno", vmin=0.0,
                                         extent=series.files.get("mask")),
            caption,
        )

    def _motion_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Head motion</h3>"
        path = series.files.get("motion")
        if path is None:
            return head + not_available("Motion table", f"{series.prefix}_desc-motion_timeseries.tsv")
        motion = read_tsv(path)
        summary = qc.motion_summary(motion)
        warnings = qc.motion_warnings(motion)
        self._warn(series, warnings)
        stats = [
            ("mean FD (mm)", summary["mean_fd"], summary["mean_fd"] > qc.MEAN_FD_MM),
            ("max FD (mm)", summary["max_fd"], summary["max_fd"] > qc.MAX_FD_MM),
            ("max translation (mm)", summary["max_translation"], False),
            ("max rotation (deg)", summary["max_rotation"], False),
            ("volumes", int(summary["n_volumes"]), False),
        ]
        boxes = "".join(
            f'<div class="stat{" flag" if flag else ""}" data-stat="{escape(label)}">'
            f"<b>{escape(format_number(value, 2))}</b><span>{escape(label)}</span></div>"
            for label, value, flag in stats
        )
        fig = self._figure(
            self._name(series, "motion"),
            lambda out: figures.plot_motion(motion, out, max_fd_limit=qc.MAX_FD_MM,
                                            mean_fd_limit=qc.MEAN_FD_MM),
            "Rigid motion parameters per volume (rotations in degrees) and framewise "
            "displacement (FD) as recorded in the motion table. Dashed lines: warning limits.",
            light=True,
        )
        return head + f'<div class="stats">{boxes}</div>' + fig

    def _mask_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Brain mask</h3>"
        b0, mask = series.files.get("b0"), series.files.get("mask")
        if b0 is None or mask is None:
            return head + not_available(
                "Brain mask outline on the mean b=0",
                [f"{series.prefix}_space-dwi_desc-b0_dwiref.nii.gz",
                 f"{series.prefix}_space-dwi_desc-brain_mask.nii.gz"])
        return head + self._figure(
            self._name(series, "brainmask"),
            lambda out: figures.plot_outline(b0, mask, out, display_modes=("z", "x")),
            "Brain mask (red outline) on the mean b=0 after motion correction. The outline "
            "should follow the edge of the brain, without cutting cortex or including scalp.",
        )

    def _tensor_part(self, series: SeriesOutputs) -> str:
        parts = ["<h3>Tensor maps</h3>"]
        for param, window, text in (
            ("fa", FA_WINDOW, "Fractional anisotropy (FA), window 0-1: white-matter tracts bright."),
            ("md", MD_WINDOW, "Mean diffusivity (MD, um&sup2;/ms), window 0-2: grey matter "
                              "about 0.7-0.9, CSF above 2 (saturated)."),
        ):
            path = series.maps.get(param)
            if path is None:
                parts.append(not_available(f"{param.upper()} map",
                                           f"{series.prefix}_space-dwi_model-tensor_param-{param}_dwimap.nii.gz"))
                continue
            parts.append(self._figure(
                self._name(series, param),
                lambda out, p=path, w=window: figures.plot_map(
                    p, out, vmin=w[0], vmax=w[1], extent=series.files.get("mask")),
                text,
            ))
        return "".join(parts)

    def _template_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Registration to the template</h3>"
        if not series.template_maps:
            return head + not_available("FA in template space",
                                        f"{series.prefix}_space-<template>_model-tensor_param-fa_dwimap.nii.gz")
        parts = [head]
        for space, maps in sorted(series.template_maps.items()):
            fa = maps.get("fa")
            if fa is None:
                parts.append(not_available(f"FA in {space} space"))
                continue
            template = self._template_images(space)
            if template is None:
                parts.append(note(f"The files of template {escape(space)} are not available "
                                  "offline, so its outline cannot be drawn; FA in template space "
                                  "is shown alone.", "warning"))
                parts.append(self._figure(
                    f"{series.prefix}_space-{space}_desc-fa_dwi.png",
                    lambda out, p=fa: figures.plot_map(p, out, vmin=FA_WINDOW[0], vmax=FA_WINDOW[1]),
                    f"FA in {escape(space)} space."))
                continue
            parts.append(self._figure(
                f"{series.prefix}_space-{space}_desc-registration_dwi.png",
                lambda out, p=fa, t=template: figures.plot_outline(
                    p, t["wm"], out, level=0.5, vmin=FA_WINDOW[0], vmax=FA_WINDOW[1],
                    extra_outlines=[(t["mask"], 0.5, "#ffd166")], display_modes=("z", "y")),
                f"Subject's FA resampled to {escape(space)}, with the template's white-matter "
                "boundary (red, WM probability 0.5) and brain edge (yellow). Bright FA tracts "
                "should sit inside the red outline everywhere.",
            ))
        return "".join(parts)

    def _template_images(self, space: str) -> dict[str, nib.Nifti1Image] | None:
        """The template's WM map and brain mask, read once per report (None if unavailable)."""
        if space not in self._templates:
            files = _template_files(space)
            self._templates[space] = None if files is None else {
                key: _in_memory(getattr(files, key)) for key in ("wm", "mask")
            }
        return self._templates[space]

    def _roi_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Regions of interest</h3>"
        if not series.atlases:
            return head + not_available("ROI outputs",
                                        f"{series.prefix}_atlas-<atlas>_model-tensor_roistats.tsv")
        parts = [head]
        for name, atlas in sorted(series.atlases.items()):
            labels = _read_labels(atlas.dseg_tsv, atlas.dseg)
            md = series.maps.get("md")
            if atlas.dseg is None or md is None:
                parts.append(not_available(f"ROI outlines of atlas {name}",
                                           [f"{series.prefix}_space-dwi_atlas-{name}_dseg.nii.gz",
                                            f"{series.prefix}_space-dwi_model-tensor_param-md_dwimap.nii.gz"]))
            else:
                colors = figures.label_colors(labels)
                legend = "".join(
                    f'<span><span class="swatch" style="background:{color}"></span>'
                    f"{escape(labels[index])}</span>" for index, color in colors.items()
                )
                parts.append(self._figure(
                    f"{series.prefix}_atlas-{name}_desc-rois_dwi.png",
                    lambda out, d=atlas.dseg: figures.plot_label_outlines(
                        md, d, labels, out, vmin=MD_WINDOW[0], vmax=MD_WINDOW[1]),
                    f"ROIs of atlas {escape(name)} in this session's DWI space, outlined on its "
                    "MD map (window 0-2 um&sup2;/ms). Each ROI should cover grey matter, not "
                    "ventricles or white matter.",
                ))
                parts.append(f'<div class="legend">{legend}</div>')
            parts.append(self._roi_table(series, name, atlas.roistats))
        return "".join(parts)

    def _roi_table(self, series: SeriesOutputs, atlas: str, path: Path | None) -> str:
        if path is None:
            return not_available(f"ROI table of atlas {atlas}",
                                 f"{series.prefix}_atlas-{atlas}_model-tensor_roistats.tsv")
        table = qc.check_roistats(read_tsv(path), str(path))
        self._warn(series, qc.roi_warnings(table, min_coverage=self.min_coverage))
        rows = _wide_roi_rows(table)

        def _cov_flag(row: dict[str, Any]) -> str | None:
            return "flag" if qc.roi_flags(row, min_coverage=self.min_coverage)["low_coverage"] else None

        def _md_flag(row: dict[str, Any]) -> str | None:
            return "flag" if qc.roi_flags(row)["implausible_md"] else None

        columns = [
            Column("roi", "ROI", format_text, numeric=False),
            Column("n_voxels", "Voxels", title="voxels kept after CSF exclusion"),
            Column("coverage", "Coverage", flag=_cov_flag,
                   title="fraction of the ROI's template voxels inside the brain mask"),
        ]
        params = [p for p in PARAM_ORDER if f"{p}_mean" in rows[0]] if rows else []
        params += sorted({k[:-5] for r in rows for k in r if k.endswith("_mean")} - set(params))
        for param in params:
            unit = "" if param == "fa" else " (um&sup2;/ms)"
            flag = _md_flag if param == "md" else None
            columns.append(Column(f"{param}_mean", f"{param.upper()} mean", flag=flag,
                                  title=f"{param.upper()} mean{unit}".replace("&sup2;", "^2")))
            if param == "md":
                columns += [Column("md_median", "MD median"), Column("md_std", "MD SD")]
        table_html = data_table(rows, columns, table_id=f"roi-table-{series.label}-{atlas}")
        full_columns = [Column("roi", "roi", format_text, numeric=False), Column("param", "param", format_text, numeric=False)]
        full_columns += [Column(c, c) for c in ("mean", "median", "std", "n_voxels", "coverage")]
        full = data_table(table.to_dict("records"), full_columns, sortable=True)
        return (
            f"<p>ROI statistics (atlas {escape(atlas)}; MD, AD, RD in um&sup2;/ms). Highlighted "
            f"cells: coverage below {self.min_coverage:g} or mean MD outside "
            f"{qc.MD_PLAUSIBLE[0]:g}-{qc.MD_PLAUSIBLE[1]:g} um&sup2;/ms. "
            f'Data: <a href="{self._link(path)}">{escape(path.name)}</a>.</p>'
            + table_html
            + details("All rows of the table", full)
        )

    # ------------------------------------------------------------------ longitudinal
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
        return Section("longitudinal", "Longitudinal registration", "".join(parts))

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
        version = _generated_version(self.out.output_dir) or __version__
        cite = Citations(version=version)
        cfg = self.config
        n_series, sessions = len(self.out.series), self.out.sessions
        text = [
            f"Diffusion MRI of sub-{escape(self.out.subject)} ({n_series} series"
            + (f" in {len(sessions)} sessions" if sessions else "")
            + f") was processed with bids_ketamine {escape(version)} {cite('bids_ketamine')}, "
            f"a BIDS App built on nipype {cite('nipype')}, DIPY {cite('dipy')}, nibabel "
            f"{cite('nibabel')}, nilearn {cite('nilearn')} and pybids {cite('pybids')}."
        ]
        denoise = cfg.get("denoise") or next((s.denoise_model for s in self.out.series
                                              if s.denoise_model), None)
        if denoise == "mppca":
            where = ("in every voxel" if cfg.get("denoise_full_fov") else
                     "in the brain of the raw series plus a 10 mm margin")
            text.append(f"Noise was removed by Marchenko-Pastur PCA (MP-PCA) {cite('mppca')} "
                        f"{where}, before any interpolation.")
        elif denoise == "patch2self":
            text.append(f"Noise was removed with Patch2Self {cite('patch2self')} before any "
                        "interpolation.")
        elif denoise == "none":
            text.append("No denoising was applied.")
        if cfg.get("degibbs"):
            text.append(f"Gibbs ringing was removed after denoising with the local sub-voxel "
                        f"shift method {cite('gibbs')}.")
        if any("motion" in s.files for s in self.out.series):
            text.append("Head motion was corrected by rigid registration of every volume "
                        "(b=0 volumes to their mean, diffusion-weighted volumes to a tensor "
                        "prediction of themselves) and the gradient directions were rotated "
                        f"with each volume; all volumes were resampled once. Framewise "
                        f"displacement {cite('power2012')} summarises the motion per volume.")
        fit = cfg.get("fit_method")
        text.append(
            f"The diffusion tensor {cite('dti')} was fitted"
            + (f" by {escape(str(fit).upper())}" if fit else "")
            + (f" to b=0 and the shells at or below b = {float(cfg['dti_max_bval']):g} s/mm&sup2;"
               if cfg.get("dti_max_bval") else "")
            + _high_shell_clause(self.out.series, cfg.get("dti_max_bval"))
            + "; diffusivities are reported in um&sup2;/ms."
        )
        if len(sessions) >= 2 and cfg.get("longitudinal", True):
            text.append("Each session was rigidly aligned to a within-subject midpoint space, "
                        "so that no session is privileged.")
        spaces = sorted({space for s in self.out.series for space in s.template_maps})
        space = spaces[0] if spaces else cfg.get("template")
        if space:
            refs = template_reference_keys(space)
            text.append(
                f"Images were registered to the {escape(space)} template "
                f"{cite(*refs) if refs else ''} with symmetric diffeomorphic normalisation "
                f"(SyN) {cite('syn')}."
            )
        atlases = sorted({name for s in self.out.series for name in s.atlases}) or (
            [cfg["atlas"]] if cfg.get("atlas") else [])
        for atlas in atlases:
            provenance = atlas_provenance(atlas)
            keys = atlas_reference_keys(provenance)
            for number, citation in enumerate(atlas_citations(provenance)):
                cite.register(f"atlas:{atlas}:{number}", citation)
                keys.append(f"atlas:{atlas}:{number}")
            marks = [cite(*keys)] if keys else []
            source = (" (built from "
                      + ", ".join(sorted({str(r["source_atlas"]).split(" (")[0]
                                          for r in provenance.get("ROIs", [])
                                          if isinstance(r, dict) and r.get("source_atlas")}))
                      + ")") if provenance and provenance.get("ROIs") else ""
            text.append(f"Regions of interest of the {escape(atlas)} atlas{escape(source)} "
                        f"{' '.join(marks)} were mapped into each session's DWI space.")
        threshold, gm_threshold = cfg.get("csf_md_threshold"), cfg.get("gm_threshold")
        text.append(
            (f"Voxels with MD above {float(threshold):g} um&sup2;/ms were excluded as "
             "CSF-contaminated; " if threshold else "")
            + (f"voxels whose grey-matter probability (the template's, warped into the session) "
               f"was below {float(gm_threshold):g} were excluded as not grey matter; "
               if gm_threshold is not None and cfg else "")
            + "the mean, median and standard deviation of each tensor parameter were computed "
            f"per ROI. Group-level models use statsmodels {cite('statsmodels')}."
        )
        body = (f'<p class="methods" id="methods-text">{" ".join(text)}</p>'
                "<p class=\"lead\">This paragraph is generated from the recorded options and may "
                "be copied into a manuscript.</p><h3>References</h3>" + cite.html())
        return Section("methods", "Methods", body)

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


def _read_labels(tsv: Path | None, dseg: Path | None) -> dict[int, str]:
    """Label index -> name from a ``dseg.tsv`` (columns index and name), else from the image."""
    if tsv is not None and Path(tsv).is_file():
        table = read_tsv(tsv)
        index_col = next((c for c in ("index", "label", "value") if c in table), None)
        name_col = next((c for c in ("name", "roi", "label_name") if c in table), None)
        if index_col is not None and name_col is not None:
            return {int(i): str(n) for i, n in zip(table[index_col], table[name_col])}
    if dseg is not None:
        values = np.unique(np.asarray(nib.load(str(dseg)).dataobj).astype(int))
        return {int(v): f"label {int(v)}" for v in values if v > 0}
    return {}


def _wide_roi_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per ROI: voxels and coverage (of the MD rows when present) and per-parameter stats."""
    rows: dict[str, dict[str, Any]] = {}
    for record in table.to_dict("records"):
        roi, param = str(record["roi"]), str(record["param"]).lower()
        row = rows.setdefault(roi, {"roi": roi})
        for stat in ("mean", "median", "std"):
            row[f"{param}_{stat}"] = record[stat]
        if param == "md" or "n_voxels" not in row:
            row["n_voxels"] = record["n_voxels"]
            row["coverage"] = record["coverage"]
    return list(rows.values())


def _template_files(space: str):
    """The template's files, or None when they are not available offline."""
    from bids_ketamine.resources import get_template

    try:
        return get_template(space, allow_fallback=False)
    except (FileNotFoundError, OSError) as err:
        LOGGER.warning("template %s not available for the report: %s", space, err)
        return None


def _in_memory(path: Path) -> nib.Nifti1Image:
    """An image with its data read into memory (so that several figures read it once)."""
    img = nib.load(str(path))
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)


def _generated_version(output_dir: Path) -> str | None:
    """The bids_ketamine version recorded in dataset_description.json (GeneratedBy)."""
    data = read_json(output_dir / "dataset_description.json") or {}
    for entry in data.get("GeneratedBy", []) or []:
        if isinstance(entry, dict) and entry.get("Version"):
            return str(entry["Version"])
    return None


def _high_shell_clause(series, dti_max_bval) -> str:
    """Methods text for series without a shell at or below ``--dti-max-bval`` (fitted on their
    lowest shell, as their model sidecar's ``BValuesUsed`` records)."""
    if not dti_max_bval:
        return ""
    above = []
    for item in series:
        used = (read_json(item.files.get("tensor_json")) or {}).get("BValuesUsed") or []
        if used and max(used) > float(dti_max_bval):
            above.append(f"{escape(item.label)} (b = {max(used):g})")
    if not above:
        return ""
    return (" (series without such a shell were fitted to b=0 and their lowest shell: "
            + ", ".join(above) + "; their MD is not comparable with lower-b data)")
