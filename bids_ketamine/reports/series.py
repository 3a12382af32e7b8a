"""The per-series sections of the participant report: noise, motion, mask, tensor maps,
template registration and ROI statistics (figures drawn by :mod:`.figures`, flags by :mod:`.qc`).

:class:`SeriesParts` is a mixin of the participant report
(:class:`bids_ketamine.reports.participant._ParticipantReport`), which gives it ``out``,
``config``, ``min_coverage``, ``warnings``, ``_figure``, ``_link`` and ``_warn``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_ketamine.bids import FIELDMAP_METHODS
from bids_ketamine.derivatives import SeriesSummary
from bids_ketamine.reports import figures, qc
from bids_ketamine.reports.collect import SeriesOutputs, read_json
from bids_ketamine.reports.html import (
    Column,
    Section,
    data_table,
    details,
    escape,
    format_number,
    format_text,
    not_available,
    note,
)
from bids_ketamine.utils.images import open_image
from bids_ketamine.utils.tsv import read_tsv

LOGGER = logging.getLogger(__name__)

#: Display windows of the tensor maps (um^2/ms for diffusivities).
FA_WINDOW = (0.0, 1.0)
MD_WINDOW = (0.0, 2.0)
#: Contour level of FA used to compare sessions in template space.
FA_CONTOUR = 0.3
PARAM_ORDER = ("md", "fa", "ad", "rd")


class SeriesParts:
    """The sections of one DWI series (a mixin of the participant report)."""

    def _series_section(self, series: SeriesOutputs) -> Section:
        self._warn(series, [str(w) for w in SeriesSummary.from_dict(series.sidecar()).Warnings if str(w).strip()])
        parts = [
            self._noise_part(series),
            self._motion_part(series),
            self._distortion_part(series),
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

    def _distortion_part(self, series: SeriesOutputs) -> str:
        head = "<h3>Susceptibility distortion</h3>"
        field_map, before, after, mask = (series.files.get(key) for key in ("field", "uncorrected_b0", "b0", "mask"))
        if field_map is None:
            return head + note("Not corrected: the dataset has no field-map data for this series "
                               "(or <code>--ignore fieldmaps</code> was given; <code>--use-syn-sdc</code> "
                               "estimates the field from the T1w). Regions next to the "
                               "sinuses and the temporal bone may be displaced along the "
                               "phase-encoding axis.", "info")
        metadata = read_json(series.files.get("field_json")) or {}
        sources = ", ".join(Path(str(path)).name for path in metadata.get("Sources", []))
        method = str(metadata.get("Method", "an unknown method"))
        text = (f"Corrected by {escape(FIELDMAP_METHODS.get(method, method))} "
                f"from {escape(sources or 'unrecorded files')}; phase encoding "
                f"{escape(str(metadata.get('PhaseEncodingDirection', '?')))}, total readout time "
                f"{escape(format_number(metadata.get('TotalReadoutTime'), 4))} s.")
        parts = [head, f"<p>{text}</p>", self._figure(
            f"{series.prefix}_desc-fieldmap_dwi.png",
            lambda out: figures.plot_field(field_map, out, extent=mask),
            "Estimated B0 field (Hz) on the corrected grid: largest next to the frontal sinus and "
            "the temporal bones, near zero elsewhere. Displacement (voxels) = field x total "
            "readout time, along the phase-encoding axis.")]
        if before is not None and after is not None and mask is not None:
            for what, image, caption in (
                ("sdcbefore", before, "Mean b=0 before the correction (and before motion correction)"),
                ("sdcafter", after, "Mean b=0 after the correction and motion correction"),
            ):
                parts.append(self._figure(
                    self._name(series, what),
                    lambda out, p=image: figures.plot_outline(p, mask, out, display_modes=("x", "z")),
                    f"{caption}, with the brain mask of the corrected series (red). Before, the frontal "
                    "pole and the temporal lobes stretch or pile up along the phase-encoding axis; "
                    "after, they should fill the outline."))
        return "".join(parts)

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
            template = self._template_images(space, fa)
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

    def _template_images(self, space: str, grid) -> dict[str, nib.Nifti1Image] | None:
        """The template's WM map and brain mask on ``grid`` (the subject's maps in template
        space), read and resampled once per report (None if unavailable).

        Their contours are drawn over maps of that resolution: on the template's own 1 mm grid
        they cost four times as long to draw and show no more.
        """
        if space not in self._templates:
            files = _template_files(space)
            self._templates[space] = None if files is None else {
                key: _on_grid(getattr(files, key), open_image(grid)) for key in ("wm", "mask")
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


def _read_labels(tsv: Path | None, dseg: Path | None) -> dict[int, str]:
    """Label index -> name from a ``dseg.tsv`` (columns index and name), else from the image."""
    if tsv is not None and Path(tsv).is_file():
        table = read_tsv(tsv)
        if {"index", "name"} <= set(table.columns):  # as the participant level writes it
            return {int(i): str(n) for i, n in zip(table["index"], table["name"])}
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


def _on_grid(path: Path, grid: nib.Nifti1Image) -> nib.Nifti1Image:
    """A template map in memory (so that several figures read it once), resampled linearly onto
    ``grid`` where that grid is coarser."""
    img = open_image(path)
    if np.prod(img.header.get_zooms()[:3]) < np.prod(grid.header.get_zooms()[:3]):
        import warnings

        from nilearn.image import resample_to_img

        with warnings.catch_warnings():  # a binary mask, linearly: a smooth edge is what we draw
            warnings.filterwarnings("ignore", message="Resampling binary images")
            img = resample_to_img(img, grid, interpolation="linear", force_resample=True,
                                  copy_header=True)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
