"""Find a participant's derivative files on disk (docs/outputs.md), for the reports.

Reports are built only from what the participant level wrote, so that
``--reports-only`` can rebuild them.  Every file is optional here: a report section whose
files are absent says so instead of failing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Entities that end a series prefix (``sub-<s>_ses-<t>[_acq-..][_run-..]``) in output names.
_PREFIX_END = re.compile(r"_(?=(?:space|desc|atlas|from|model)-)")

#: Output name (after the prefix) -> key in :attr:`SeriesOutputs.files`.
_SERIES_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"space-dwi_desc-preproc_dwi\.nii(\.gz)?$", "preproc"),
        (r"space-dwi_desc-preproc_dwi\.json$", "preproc_json"),
        (r"space-dwi_desc-preproc_dwi\.bval$", "bval"),
        (r"space-dwi_desc-preproc_dwi\.bvec$", "bvec"),
        (r"space-dwi_desc-b0_dwiref\.nii(\.gz)?$", "b0"),
        (r"space-dwi_desc-brain_mask\.nii(\.gz)?$", "mask"),
        (r"space-dwi_model-(?P<denoise>[a-zA-Z0-9]+)_param-noise_dwimap\.nii(\.gz)?$", "noise"),
        (r"desc-motion_timeseries\.tsv$", "motion"),
        (r"space-dwi_model-tensor_param-(?P<param>fa|md|ad|rd)_dwimap\.nii(\.gz)?$", "dwi_map"),
        (r"space-dwi_model-tensor_dwimap\.json$", "tensor_json"),
        (r"space-(?P<space>(?!dwi_)(?!midpoint_)[a-zA-Z0-9]+)_model-tensor_param-(?P<param>fa|md)"
         r"_dwimap\.nii(\.gz)?$", "template_map"),
        (r"space-dwi_atlas-(?P<atlas>[a-zA-Z0-9]+)_dseg\.nii(\.gz)?$", "dseg"),
        (r"space-dwi_atlas-(?P<atlas>[a-zA-Z0-9]+)_dseg\.tsv$", "dseg_tsv"),
        (r"atlas-(?P<atlas>[a-zA-Z0-9]+)_model-tensor_roistats\.tsv$", "roistats"),
        (r"from-dwi_to-midpoint_mode-image_xfm\.\w+$", "xfm_midpoint"),
        (r"from-dwi_to-(?P<space>[a-zA-Z0-9]+)_mode-image_xfm\.\w+$", "xfm_template"),
    )
)


@dataclass
class AtlasOutputs:
    """The ROI files of one atlas in one series."""

    name: str
    dseg: Path | None = None
    dseg_tsv: Path | None = None
    roistats: Path | None = None


@dataclass
class SeriesOutputs:
    """The derivative files of one DWI series (one session, acquisition and run).

    Attributes
    ----------
    prefix : str
        ``sub-<s>_ses-<t>`` plus ``acq-``/``run-`` entities when present.
    label : str
        The prefix without ``sub-<s>_`` (``ses-pre``, ``ses-2020_acq-tilted``).
    session : str or None
        The session label, without ``ses-``.
    files : dict of str to Path
        Single files by role: ``preproc``, ``preproc_json``, ``bval``, ``bvec``, ``b0``,
        ``mask``, ``noise``, ``motion``, ``tensor_json``, ``xfm_midpoint``, ``xfm_template``.
    maps : dict of str to Path
        DWI-space tensor maps by parameter (``fa``, ``md``, ``ad``, ``rd``).
    template_maps : dict of str to dict of str to Path
        Template-space maps: ``{space: {param: path}}``.
    atlases : dict of str to AtlasOutputs
    denoise_model : str or None
        The ``model-`` entity of the noise map (``mppca``, ...).
    """

    prefix: str
    label: str
    session: str | None
    files: dict[str, Path] = field(default_factory=dict)
    maps: dict[str, Path] = field(default_factory=dict)
    template_maps: dict[str, dict[str, Path]] = field(default_factory=dict)
    atlases: dict[str, AtlasOutputs] = field(default_factory=dict)
    denoise_model: str | None = None

    def sidecar(self) -> dict[str, Any]:
        """The ``desc-preproc_dwi.json`` summary, or an empty dict."""
        return read_json(self.files.get("preproc_json")) or {}


@dataclass
class ParticipantOutputs:
    """Everything the participant level wrote for one subject."""

    subject: str
    output_dir: Path
    series: list[SeriesOutputs]
    midpoint_b0: Path | None
    config: dict[str, Any] | None
    config_path: Path

    @property
    def sessions(self) -> list[str]:
        """Session labels with at least one series, in order."""
        return sorted({s.session for s in self.series if s.session is not None})


def read_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON object from disk, or None when absent; a clear error when unreadable."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"'{path}' is not valid JSON ({err.msg} at line {err.lineno}); rerun the "
            "participant level for this subject to rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must hold a JSON object; rerun the participant level")
    return data


def _classify(series: SeriesOutputs, rest: str, path: Path) -> None:
    for pattern, key in _SERIES_PATTERNS:
        match = pattern.match(rest)
        if not match:
            continue
        groups = match.groupdict()
        if key == "dwi_map":
            series.maps[groups["param"]] = path
        elif key == "template_map":
            series.template_maps.setdefault(groups["space"], {})[groups["param"]] = path
        elif key in ("dseg", "dseg_tsv", "roistats"):
            atlas = series.atlases.setdefault(groups["atlas"], AtlasOutputs(groups["atlas"]))
            setattr(atlas, key, path)
        else:
            if key == "noise":
                series.denoise_model = groups["denoise"]
            if key == "xfm_template" and groups["space"] == "midpoint":
                continue
            series.files.setdefault(key, path)
        return


def collect_participant_outputs(output_dir: Path, subject: str) -> ParticipantOutputs:
    """Find the derivative files of one subject.

    Parameters
    ----------
    output_dir : Path
        The app's OUTPUT_DIR.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    ParticipantOutputs

    Raises
    ------
    FileNotFoundError
        If OUTPUT_DIR holds no folder for the subject.
    """
    output_dir = Path(output_dir)
    label = subject[4:] if subject.startswith("sub-") else subject
    if not label or not label.isalnum():
        raise ValueError(
            f"'{subject}' is not a participant label: give letters and digits, with or "
            "without 'sub-'"
        )
    sub_dir = output_dir / f"sub-{label}"
    if not sub_dir.is_dir():
        raise FileNotFoundError(
            f"'{sub_dir}' does not exist: run the participant level for sub-{label} "
            f"into '{output_dir}' before building its report"
        )
    folders = [sub_dir / "dwi"] + sorted(p / "dwi" for p in sub_dir.glob("ses-*") if p.is_dir())
    found: dict[str, SeriesOutputs] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            parts = _PREFIX_END.split(path.name, maxsplit=1)
            if len(parts) != 2 or not parts[0].startswith(f"sub-{label}"):
                continue
            prefix, rest = parts
            if rest.startswith(("space-midpoint", "from-midpoint")):
                continue  # subject-level midpoint files, not a series
            session = re.search(r"(?:^|_)ses-([a-zA-Z0-9]+)", prefix)
            series = found.setdefault(
                prefix,
                SeriesOutputs(
                    prefix=prefix,
                    label=prefix[len(f"sub-{label}_") :] or prefix,
                    session=session.group(1) if session else None,
                ),
            )
            _classify(series, rest, path)
    midpoint = sorted((sub_dir / "dwi").glob(f"sub-{label}_space-midpoint_desc-b0_dwiref.nii*"))
    config_path = sub_dir / "log" / "config.json"
    return ParticipantOutputs(
        subject=label,
        output_dir=output_dir,
        series=[found[key] for key in sorted(found)],
        midpoint_b0=midpoint[0] if midpoint else None,
        config=read_json(config_path),
        config_path=config_path,
    )
