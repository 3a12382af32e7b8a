"""Find a participant's derivative files on disk (:mod:`bids_ketamine.derivatives`), for the reports.

Reports are built only from what the participant level wrote, so that
``--reports-only`` can rebuild them.  Every file is optional here: a report section whose
files are absent says so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.utils.labels import bare_label
from bids_ketamine.derivatives import (
    SUBJECT_OUTPUTS,
    TENSOR_PARAMS,
    classify,
    config_path,
    parse_entities,
    series_prefix,
)

#: Field of :mod:`bids_ketamine.derivatives` -> key in :attr:`SeriesOutputs.files`.
_FILE_KEYS = {
    "dwi_file": "preproc", "preproc_metadata": "preproc_json", "bval_file": "bval",
    "bvec_file": "bvec", "b0_file": "b0", "mask_file": "mask", "noise_file": "noise",
    "motion_file": "motion", "model_metadata": "tensor_json", "midpoint_xfm": "xfm_midpoint",
    "field_file": "field", "field_metadata": "field_json", "uncorrected_b0_file": "uncorrected_b0",
    "tissuestats_file": "tissuestats",
}
#: Field -> attribute of :class:`AtlasOutputs`.
_ATLAS_KEYS = {"dseg_file": "dseg", "dseg_tsv": "dseg_tsv", "roistats_file": "roistats"}
#: The short names of series entities in a prefix.
TENSOR_FIELDS = {f"{param}_file": param for param in TENSOR_PARAMS}
_SHORT = {"session": "ses", "acquisition": "acq", "direction": "dir", "run": "run"}


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
        ``mask``, ``noise``, ``motion``, ``tensor_json``, ``xfm_midpoint``, ``tissuestats``; with a
        distortion correction ``field``, ``field_json`` (in ``fmap/``) and ``uncorrected_b0``.
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
    #: The anatomical outputs (keys of :data:`~bids_ketamine.derivatives.SUBJECT_OUTPUTS`:
    #: ``t1w_preproc``, ``t1w_dseg``, ``t1w_to_midpoint_xfm``...), empty without a T1w.
    anat: dict[str, Path] = field(default_factory=dict)

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


def _classify(series: SeriesOutputs, field_name: str, values: dict[str, str], path: Path) -> None:
    if field_name in TENSOR_FIELDS:
        series.maps[TENSOR_FIELDS[field_name]] = path
    elif field_name in ("tpl_fa_file", "tpl_md_file"):
        series.template_maps.setdefault(values["tpl"], {})[field_name[4:6]] = path
    elif field_name in _ATLAS_KEYS:
        atlas = series.atlases.setdefault(values["atlas"], AtlasOutputs(values["atlas"]))
        setattr(atlas, _ATLAS_KEYS[field_name], path)
    elif field_name in _FILE_KEYS:
        if field_name == "noise_file":
            series.denoise_model = values["denoise"]
        series.files.setdefault(_FILE_KEYS[field_name], path)


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
    label = bare_label(subject, "sub")
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
    folders = [sub_dir / kind for kind in ("dwi", "fmap")] + sorted(
        p / kind for p in sub_dir.glob("ses-*") if p.is_dir() for kind in ("dwi", "fmap"))
    found: dict[str, SeriesOutputs] = {}
    midpoint = None
    anat: dict[str, Path] = {}
    anat_dir = sub_dir / "anat"
    for path in sorted(anat_dir.iterdir()) if anat_dir.is_dir() else []:
        known = classify(parse_entities(output_dir, path))
        if known is not None and known[0] in SUBJECT_OUTPUTS:
            anat[known[0]] = path
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            entities = parse_entities(output_dir, path)
            known = classify(entities) if entities.get("subject") == label else None
            if known is None:
                continue
            field_name, values = known
            if field_name in SUBJECT_OUTPUTS:
                if field_name == "midpoint_b0":
                    midpoint = path
                else:
                    anat[field_name] = path
                continue
            prefix = series_prefix(entities)
            series = found.setdefault(prefix, SeriesOutputs(
                prefix=prefix, label=prefix[len(f"sub-{label}_"):] or prefix,
                session=entities.get("session")))
            _classify(series, field_name, values, path)
    config_file = config_path(output_dir, label)
    return ParticipantOutputs(
        subject=label,
        output_dir=output_dir,
        series=[found[key] for key in sorted(found)],
        midpoint_b0=midpoint,
        config=read_json(config_file),
        config_path=config_file,
        anat=anat,
    )
