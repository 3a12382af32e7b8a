"""The derivatives contract: what the participant level writes, under which names (docs/outputs.md).

One place builds and parses every output name, with pybids
(:func:`bids.layout.writing.build_path`, :func:`bids.layout.parse_file_entities`): the sinks
(:mod:`bids_ketamine.workflows.outputs`), the report collector
(:mod:`bids_ketamine.reports.collect`) and the group reader (:mod:`bids_ketamine.group.roistats`,
:mod:`bids_ketamine.bids`) all use it, so a name cannot drift between writer and readers.

Names are parsed from their path relative to OUTPUT_DIR: pybids 0.22 parses the absolute path
(pybids issue #1270), which tags every file with a datatype-like folder above the dataset.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Tensor parameters, in output order (maps, ROI tables, ``--params``).
TENSOR_PARAMS = ("fa", "md", "ad", "rd")

#: Columns of every ROI table (``*_roistats.tsv``), in order (the public contract).
ROISTATS_COLUMNS = ("roi", "param", "mean", "median", "std", "n_voxels", "coverage")

#: Entities that distinguish the series of one session (output-name order).
SERIES_ENTITIES = ("subject", "session", "acquisition", "direction", "run")

#: Short names of the series entities in output names.
_SHORT = {"session": "ses", "acquisition": "acq", "direction": "dir", "run": "run"}

#: The one pattern of every participant-level output name (entity order of docs/outputs.md).
PATH_PATTERN = (
    "sub-{subject}[/ses-{session}]/{datatype<dwi|anat|fmap>|dwi}/sub-{subject}[_ses-{session}]"
    "[_acq-{acquisition}][_dir-{direction}][_run-{run}][_space-{space}][_atlas-{atlas}][_from-{from}]"
    "[_to-{to}][_mode-{mode}][_model-{model}][_param-{param}][_label-{label}][_desc-{desc}]"
    "_{suffix}{extension}"
)

_TENSOR_MAP = {"space": "dwi", "model": "tensor", "suffix": "dwimap", "extension": ".nii.gz"}
_TEMPLATE_MAP = {"space": "{tpl}", "model": "tensor", "suffix": "dwimap", "extension": ".nii.gz"}

#: Outputs of one series: field (the sink's inputnode field) -> entities after the series
#: entities.  ``{tpl}``, ``{atlas}`` and ``{denoise}`` are filled in per run.
SERIES_OUTPUTS: dict[str, dict[str, str]] = {
    "dwi_file": {"space": "dwi", "desc": "preproc", "suffix": "dwi", "extension": ".nii.gz"},
    "bval_file": {"space": "dwi", "desc": "preproc", "suffix": "dwi", "extension": ".bval"},
    "bvec_file": {"space": "dwi", "desc": "preproc", "suffix": "dwi", "extension": ".bvec"},
    "b0_file": {"space": "dwi", "desc": "b0", "suffix": "dwiref", "extension": ".nii.gz"},
    "mask_file": {"space": "dwi", "desc": "brain", "suffix": "mask", "extension": ".nii.gz"},
    "noise_file": {"space": "dwi", "model": "{denoise}", "param": "noise", "suffix": "dwimap",
                   "extension": ".nii.gz"},
    "motion_file": {"desc": "motion", "suffix": "timeseries", "extension": ".tsv"},
    **{f"{param}_file": dict(_TENSOR_MAP, param=param) for param in TENSOR_PARAMS},
    "tpl_fa_file": dict(_TEMPLATE_MAP, param="fa"),
    "tpl_md_file": dict(_TEMPLATE_MAP, param="md"),
    "midpoint_xfm": {"from": "dwi", "to": "midpoint", "mode": "image", "suffix": "xfm",
                     "extension": ".txt"},
    "dseg_file": {"space": "dwi", "atlas": "{atlas}", "suffix": "dseg", "extension": ".nii.gz"},
    "dseg_tsv": {"space": "dwi", "atlas": "{atlas}", "suffix": "dseg", "extension": ".tsv"},
    "roistats_file": {"atlas": "{atlas}", "model": "tensor", "suffix": "roistats",
                      "extension": ".tsv"},
    "tissuestats_file": {"model": "tensor", "suffix": "tissuestats", "extension": ".tsv"},
    # with a susceptibility-distortion correction only (:data:`FIELDMAP_OUTPUTS`)
    "field_file": {"datatype": "fmap", "desc": "preproc", "suffix": "fieldmap", "extension": ".nii.gz"},
    "uncorrected_b0_file": {"space": "dwi", "desc": "uncorrected", "suffix": "dwiref", "extension": ".nii.gz"},
}

#: JSON sidecars of one series: field -> entities.
SERIES_SIDECARS: dict[str, dict[str, str]] = {
    "preproc_metadata": dict(SERIES_OUTPUTS["dwi_file"], extension=".json"),
    "model_metadata": {"space": "dwi", "model": "tensor", "suffix": "dwimap", "extension": ".json"},
    "dseg_metadata": dict(SERIES_OUTPUTS["dseg_file"], extension=".json"),
    "field_metadata": dict(SERIES_OUTPUTS["field_file"], extension=".json"),
}

#: Outputs of a series whose susceptibility distortion was corrected (issue 19): the field in Hz
#: (SDCflows' ``desc-preproc_fieldmap``) with its sidecar (``Units``, ``Method``, ``Sources``),
#: and the mean b=0 before the correction (the report's "before").
FIELDMAP_OUTPUTS = ("field_file", "field_metadata", "uncorrected_b0_file")

_ANAT = {"datatype": "anat"}
_T1W_XFM = dict(_ANAT, **{"from": "T1w", "to": "{tpl}", "mode": "image", "suffix": "xfm"})

#: Outputs of one participant (not of a series): field -> entities after ``subject``.  The
#: anatomical ones (``anat/``, sMRIPrep's names) exist when a T1w was used.
SUBJECT_OUTPUTS: dict[str, dict[str, str]] = {
    "midpoint_b0": {"space": "midpoint", "desc": "b0", "suffix": "dwiref", "extension": ".nii.gz"},
    "t1w_preproc": dict(_ANAT, desc="preproc", suffix="T1w", extension=".nii.gz"),
    "t1w_mask": dict(_ANAT, desc="brain", suffix="mask", extension=".nii.gz"),
    "t1w_dseg": dict(_ANAT, suffix="dseg", extension=".nii.gz"),
    **{f"t1w_{tissue.lower()}_probseg": dict(_ANAT, label=tissue, suffix="probseg", extension=".nii.gz")
       for tissue in ("GM", "WM", "CSF")},
    "t1w_to_template_affine": dict(_T1W_XFM, desc="affine", extension=".mat"),
    "t1w_to_template_warp": dict(_T1W_XFM, desc="warp", extension=".nii.gz"),
    "t1w_to_template_inverse_warp": dict(_T1W_XFM, desc="inversewarp", extension=".nii.gz"),
    "t1w_to_template_sidecar": dict(_T1W_XFM, extension=".json"),
    "t1w_to_midpoint_xfm": {"from": "T1w", "to": "midpoint", "mode": "image", "suffix": "xfm",
                            "extension": ".txt"},
}

#: Spaces that are not a template.
_NATIVE_SPACES = ("dwi", "midpoint")


@functools.lru_cache(maxsize=2)
def entities(raw: bool = False) -> list:
    """pybids entities: of raw BIDS names, or (``raw=False``) of output names (BIDS,
    BIDS-derivatives and BEP016's ``param``).  Loaded once: loading is slow."""
    from bids.layout.models import Config as BidsConfig
    from bids.layout.models import Entity

    found = list(BidsConfig.load("bids").entities.values())
    if raw:
        return found
    found += list(BidsConfig.load("derivatives").entities.values())
    return found + [Entity("param", r"[_/\\]+param-([a-zA-Z0-9]+)")]


def parse_entities(root: Path, path: Path, *, raw: bool = False) -> dict[str, str]:
    """BIDS entities of ``path``, parsed from its path relative to ``root``.

    ``raw=True`` parses with the entities of raw datasets only (the input dataset).

    Returns
    -------
    dict
        Entity name -> value as text (``run`` keeps its zero padding), with ``datatype``,
        ``suffix`` and ``extension`` when present.
    """
    from bids.layout import parse_file_entities

    relative = Path(path).relative_to(root).as_posix()
    return {key: str(value) for key, value in
            parse_file_entities("/" + relative, entities=entities(raw)).items()}


def build_name(**values: str) -> Path:
    """The path (relative to OUTPUT_DIR) of an output with these entities.

    Raises
    ------
    ValueError
        If the entities do not make a name of :data:`PATH_PATTERN`.
    """
    from bids.layout.writing import build_path

    built = build_path({k: v for k, v in values.items() if v is not None}, [PATH_PATTERN])
    if built is None:
        raise ValueError(f"no derivative name for the entities {values}")
    return Path(built)


def series_prefix(found: dict[str, str]) -> str:
    """``sub-<s>[_ses-<t>][_acq-..][_dir-..][_run-..]``: the name prefix of a series' outputs."""
    return f"sub-{found['subject']}" + series_suffix(found, ("session",) + SERIES_ENTITIES[2:])


def series_suffix(found: dict[str, str], names: tuple[str, ...] = SERIES_ENTITIES[2:]) -> str:
    """``_acq-.._dir-.._run-..``: the series entities of ``found`` among ``names``, in name order."""
    return "".join(f"_{_SHORT[name]}-{found[name]}" for name in names
                   if found.get(name) is not None)


def _fill(spec: dict[str, str], names: dict[str, str]) -> dict[str, str]:
    return {key: value.format(**names) for key, value in spec.items()}


def series_path(output_dir: Path, series_entities: dict[str, str], field_name: str,
                **names: str) -> Path:
    """The path of one output (or sidecar) of a series.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR.
    series_entities : dict
        ``subject``, ``session`` (or None) and the series' ``acquisition``/``direction``/``run``.
    field_name : str
        A key of :data:`SERIES_OUTPUTS` or :data:`SERIES_SIDECARS`.
    names : str
        ``tpl``, ``atlas``, ``denoise``: the per-run values of the name.
    """
    spec = SERIES_OUTPUTS.get(field_name) or SERIES_SIDECARS[field_name]
    return Path(output_dir) / build_name(**series_entities, **_fill(spec, names))


def subject_path(output_dir: Path, subject: str, field_name: str, **names: str) -> Path:
    """The path of one participant-level output (a key of :data:`SUBJECT_OUTPUTS`);
    ``names`` fill its placeholders (``tpl``)."""
    return Path(output_dir) / build_name(subject=subject, **_fill(SUBJECT_OUTPUTS[field_name], names))


def config_path(output_dir: Path, subject: str) -> Path:
    """``sub-<s>/log/config.json``: the options of the run (:meth:`Config.to_dict`)."""
    return Path(output_dir) / f"sub-{subject}" / "log" / "config.json"


def methods_path(output_dir: Path, subject: str) -> Path:
    """``sub-<s>/log/methods.md``: the methods text of the workflow that ran (``[@key]`` citations)."""
    return Path(output_dir) / f"sub-{subject}" / "log" / "methods.md"


def roistats_glob(atlas: str) -> str:
    """Glob (relative to OUTPUT_DIR) of the ROI tables of one atlas, every session."""
    return f"sub-*/**/dwi/*_atlas-{atlas}_model-tensor_roistats.tsv"


def classify(found: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """Which output a file is, from its parsed entities.

    Returns
    -------
    (field, values) or None
        ``field`` is a key of :data:`SERIES_OUTPUTS`, :data:`SERIES_SIDECARS` or
        :data:`SUBJECT_OUTPUTS`; ``values`` the placeholders of its name (``tpl``, ``atlas``,
        ``denoise``).  None for a file that is not an output of this package.
    """
    # pybids' "fmap" entity repeats the suffix of field maps
    rest = {k: v for k, v in found.items() if k not in SERIES_ENTITIES and k not in ("datatype", "fmap")}
    if "session" not in found:
        tables = (SUBJECT_OUTPUTS, SERIES_OUTPUTS, SERIES_SIDECARS)
    else:
        tables = (SERIES_OUTPUTS, SERIES_SIDECARS)
    for table in tables:
        for field_name, spec in table.items():
            values = _match({k: v for k, v in spec.items() if k != "datatype"}, rest)
            if values is not None:
                return field_name, values
    return None


def _match(spec: dict[str, str], rest: dict[str, str]) -> dict[str, str] | None:
    if set(spec) != set(rest):
        return None
    values = {}
    for key, wanted in spec.items():
        if wanted.startswith("{"):
            if key == "space" and rest[key] in _NATIVE_SPACES:
                return None
            values[wanted[1:-1]] = rest[key]
        elif rest[key] != wanted:
            return None
    return values


# --------------------------------------------------------------------------- sidecar records
@dataclass
class SeriesSummary:
    """The summary in ``<pfx>_space-dwi_desc-preproc_dwi.json`` (keys as written)."""

    Sources: list[str]
    NumberOfVolumes: int
    Shells: dict[str, int]
    Options: dict[str, Any]
    Warnings: list[str] = field(default_factory=list)
    SkullStripped: bool = False
    Description: str = "Denoised, motion-corrected DWI in RAS+ orientation with rotated b-vectors"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SeriesSummary":
        """The record of a sidecar read back (absent keys get empty values)."""
        data = data or {}
        return cls(Sources=list(data.get("Sources") or []),
                   NumberOfVolumes=int(data.get("NumberOfVolumes") or 0),
                   Shells=dict(data.get("Shells") or {}), Options=dict(data.get("Options") or {}),
                   Warnings=list(data.get("Warnings") or []),
                   SkullStripped=bool(data.get("SkullStripped", False)),
                   Description=str(data.get("Description") or ""))
