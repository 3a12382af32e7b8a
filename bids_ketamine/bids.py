"""The input dataset: opening it with pybids and finding the DWI series to process.

Every check a user meets first lives here and raises :class:`~bids_ketamine.errors.DatasetError`
with one line that names the file or folder and what to do.

Kept as one module (~440 lines): every check of the input dataset a user meets first, with one
error style.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.derivatives import parse_entities, roistats_glob, series_prefix
from bids_ketamine.errors import DatasetError, InputError

LOGGER = logging.getLogger(__name__)

#: Entities kept in output names, in BIDS order.
SERIES_ENTITIES = ("acquisition", "direction", "run")


@dataclass(frozen=True)
class DwiSeries:
    """One DWI series (a NIfTI with its bval, bvec and sidecar) of one session.

    Attributes
    ----------
    subject, session : str
        Labels without prefixes; ``session`` is ``None`` for datasets without sessions.
    dwi, bval, bvec : Path
        The image and its gradient files.
    sidecar : dict
        The merged JSON metadata (BIDS inheritance principle).
    entities : dict
        Entities that distinguish series within a session (acquisition, direction, run).
    sidecar_files : tuple of Path
        The JSON files merged into ``sidecar``, farthest first.
    runs : tuple of DwiSeries
        With ``--combine-runs average``: the runs (``run-`` entity) of one session fitted
        together as this one series (whose ``dwi``/``bval``/``bvec`` are the first run's and
        whose entities have no ``run``); empty for a plain series.
    fit_bval : float, optional
        Highest b-value of the tensor fit, decided by the preflight (``--dti-max-bval``, or
        the lowest shell of single-shell data above it).
    fit_b_mean : float, optional
        Mean b-value of the fitted diffusion-weighted volumes (set by the preflight; the
        b-value of ``pv_gm``'s tissue mixture).
    notes : tuple of str
        Warnings of the preflight, recorded in the series' sidecar and report.
    mem_gb : float, optional
        Memory estimate (GB) of the series' heavy nodes, from its headers (set by the preflight).
    fieldmap : FieldmapPlan, optional
        How its susceptibility distortion is corrected (set by the preflight,
        :func:`bids_ketamine.cli.preflight.plan_fieldmaps`); None: not corrected.
    """

    subject: str
    session: str | None
    dwi: Path
    bval: Path | None
    bvec: Path | None
    sidecar: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    entities: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    sidecar_files: tuple[Path, ...] = field(default=(), hash=False, compare=False)
    runs: tuple["DwiSeries", ...] = field(default=(), hash=False, compare=False)
    fit_bval: float | None = field(default=None, hash=False, compare=False)
    fit_b_mean: float | None = field(default=None, hash=False, compare=False)
    notes: tuple[str, ...] = field(default=(), hash=False, compare=False)
    mem_gb: float | None = field(default=None, hash=False, compare=False)
    fieldmap: "FieldmapPlan | None" = field(default=None, hash=False, compare=False)

    @property
    def sources(self) -> list[Path]:
        """The raw images of this series (each run of a combined series)."""
        return [run.dwi for run in self.runs] or [self.dwi]

    @property
    def prefix(self) -> str:
        """The output file-name prefix, e.g. ``sub-01_ses-pre_acq-ortho``."""
        return series_prefix({"subject": self.subject, "session": self.session, **self.entities})

    @property
    def key(self) -> str:
        """A short identifier usable as a nipype node-name suffix."""
        return self.prefix.replace("-", "").replace("sub", "s", 1)

    @property
    def out_dir(self) -> Path:
        """The folder of this series' derivatives, relative to OUTPUT_DIR."""
        path = Path(f"sub-{self.subject}")
        if self.session:
            path = path / f"ses-{self.session}"
        return path / "dwi"


#: The field-map methods of :class:`FieldmapPlan`, as the report names them.
FIELDMAP_METHODS = {"pepolar": "PEPOLAR (reverse phase-encoded b=0)",
                    "phasediff": "a GRE field map (phase difference)",
                    "phases": "a GRE field map (two phase images)",
                    "fieldmap": "a GRE field map (field in Hz)",
                    "syn": "registration to the T1w, without field map (--use-syn-sdc)"}


@dataclass(frozen=True)
class FieldmapPlan:
    """The susceptibility-distortion correction of one DWI series (issue 19).

    Attributes
    ----------
    method : str
        ``"pepolar"``: the field from b=0 images of opposite phase-encoding polarity;
        ``"phasediff"``, ``"phases"``, ``"fieldmap"``: from a GRE field map (BIDS cases 1-3);
        ``"syn"``: fieldmap-less, from the participant's T1w (``--use-syn-sdc``).
    reference_files : tuple of str
        PEPOLAR: the reverse phase-encoded images (``fmap/*_epi`` images, or DWI runs of the
        session phase-encoded the other way); GRE: the phase-difference, two phase or field-map
        images; ``syn``: the participant's T1w images (provenance: the workflow uses the
        anatomical workflow's bias-corrected T1w).
    reference_bvals : tuple of str
        Per reference, its ``.bval`` file when only its b=0 volumes are to be used (a DWI run),
        or ``""`` to use every volume (an ``epi`` image).
    axis, sign : int
        Phase-encoding voxel axis and polarity of the DWI in RAS+ voxel order
        (:func:`bids_ketamine.dwi.sdc.ras_phase_encoding`).
    total_readout_time : float
        BIDS ``TotalReadoutTime`` (s) of the DWI.
    phase_encoding_direction : str
        BIDS ``PhaseEncodingDirection`` of the DWI as stored.
    magnitude_file : str
        GRE: the (first) magnitude image.
    echo_times : tuple of float
        GRE phase images: ``(TE1, TE2)`` (s).
    units : str
        GRE ``fieldmap``: its ``Units`` (``Hz`` or ``rad/s``).
    """

    method: str
    reference_files: tuple[str, ...]
    reference_bvals: tuple[str, ...]
    axis: int
    sign: int
    total_readout_time: float
    phase_encoding_direction: str
    magnitude_file: str = ""
    echo_times: tuple[float, ...] = ()
    units: str = "Hz"

    @property
    def is_pepolar(self) -> bool:
        return self.method == "pepolar"

    def metadata(self) -> dict[str, Any]:
        """The sidecar of the estimated field (BIDS field-map derivative)."""
        sources = list(self.reference_files) + ([self.magnitude_file] if self.magnitude_file else [])
        return {"Units": "Hz", "Method": self.method, "Sources": sources,
                "TotalReadoutTime": self.total_readout_time,
                "PhaseEncodingDirection": self.phase_encoding_direction}


def _names_the_series(value: Any, subject_dir: Path, root: Path, series: Path) -> bool:
    """``IntendedFor`` (a path relative to the subject folder, or a BIDS URI) names ``series``."""
    targets = value if isinstance(value, list) else [value]
    for target in targets:
        if not isinstance(target, str):
            continue
        path = root / target[len("bids::"):] if target.startswith("bids::") else subject_dir / target
        if os.path.normpath(path) == os.path.normpath(series):
            return True
    return False


def _intended_fmaps(root: Path, series: DwiSeries, suffix: str) -> list[tuple[Path, dict[str, Any]]]:
    """The ``fmap/*_<suffix>`` images meant for a DWI series, with their merged sidecars (see
    :func:`collect_pepolar`), sorted by file name."""
    root = Path(root)
    subject_dir = root / f"sub-{series.subject}"
    folder = (subject_dir / f"ses-{series.session}" if series.session else subject_dir) / "fmap"
    image = (series.runs[0] if series.runs else series).dwi
    wanted_source = series.sidecar.get("B0FieldSource")
    found = []
    for path in sorted(folder.glob(f"*_{suffix}.nii*")) if folder.is_dir() else []:
        entities = relative_entities(root, path)
        sidecar = merged_sidecar(inherited_files(root, path, entities, ".json"))
        identifier = sidecar.get("B0FieldIdentifier")
        identifiers = identifier if isinstance(identifier, list) else [identifier]
        sources = wanted_source if isinstance(wanted_source, list) else [wanted_source]
        if (_names_the_series(sidecar.get("IntendedFor"), subject_dir, root, image)
                or (wanted_source and any(i in sources for i in identifiers if i))):
            found.append((path, sidecar))
    return found


def collect_pepolar(root: Path, series: DwiSeries) -> list[tuple[Path, dict[str, Any]]]:
    """The ``fmap/*_epi`` images meant for a DWI series, with their merged sidecars.

    An ``epi`` image belongs to the series when its ``IntendedFor`` names the series' image
    (relative to the subject folder or as a ``bids::`` URI), or when its ``B0FieldIdentifier``
    is the series' ``B0FieldSource``.  Looked for in the series' session (or subject) folder.

    Returns
    -------
    list of (Path, dict)
        Sorted by file name.
    """
    return _intended_fmaps(root, series, "epi")


#: The GRE field-map cases of BIDS, in the order they are looked for: method, the images (by
#: suffix) and the magnitude image beside them.
GRE_CASES = (("phasediff", ("phasediff",), "magnitude1"), ("phases", ("phase1", "phase2"), "magnitude1"),
             ("fieldmap", ("fieldmap",), "magnitude"))


def collect_gre(root: Path, series: DwiSeries) -> dict[str, Any] | None:
    """The GRE field map meant for a DWI series (``IntendedFor`` / ``B0FieldIdentifier``, as
    :func:`collect_pepolar`), or None.

    Returns
    -------
    dict or None
        ``method`` (``phasediff``, ``phases`` or ``fieldmap``), ``files`` (the images, in order),
        ``sidecars`` (theirs), ``magnitude`` (the magnitude image beside the first, "" if
        missing); the first case found, and its first acquisition (by file name).
    """
    for method, suffixes, magnitude_suffix in GRE_CASES:
        candidates = [_intended_fmaps(root, series, suffix) for suffix in suffixes]
        if not all(candidates):
            continue
        chosen = [found[0] for found in candidates]
        first = chosen[0][0]
        magnitude = first.with_name(first.name.replace(f"_{suffixes[0]}.nii", f"_{magnitude_suffix}.nii"))
        return {"method": method, "files": [path for path, _ in chosen],
                "sidecars": [sidecar for _, sidecar in chosen],
                "magnitude": str(magnitude) if magnitude.exists() else ""}
    return None


def check_bids_dir(bids_dir: Path) -> None:
    """Raise DatasetError unless ``bids_dir`` looks like a BIDS dataset root."""
    if not bids_dir.exists():
        raise DatasetError(
            f"BIDS_DIR '{bids_dir}' does not exist: give the path of the dataset's root folder"
        )
    if not bids_dir.is_dir():
        raise DatasetError(f"BIDS_DIR '{bids_dir}' is a file, not a folder: give the dataset's root folder")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise DatasetError(
            f"'{description}' is missing: BIDS_DIR must be a BIDS dataset root "
            "(add a dataset_description.json with Name and BIDSVersion)"
        )
    try:
        content = json.loads(description.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"'{description}' is not valid JSON ({err}); fix the file") from None
    if not isinstance(content, dict) or "Name" not in content:
        raise DatasetError(f"'{description}' has no 'Name' field; add one (BIDS requires Name and BIDSVersion)")


def check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """Raise DatasetError if OUTPUT_DIR is inside BIDS_DIR (outside derivatives/) or unwritable."""
    bids_dir = bids_dir.resolve()
    out = output_dir.resolve() if output_dir.exists() else output_dir.absolute()
    if out == bids_dir:
        raise DatasetError(
            f"OUTPUT_DIR '{output_dir}' is BIDS_DIR itself: write derivatives elsewhere, "
            f"e.g. '{bids_dir / 'derivatives' / 'bids_ketamine'}'"
        )
    try:
        relative = out.relative_to(bids_dir)
    except ValueError:
        relative = None
    if relative is not None and relative.parts[0] != "derivatives":
        raise DatasetError(
            f"OUTPUT_DIR '{output_dir}' is inside BIDS_DIR but not under derivatives/: use "
            f"'{bids_dir / 'derivatives' / 'bids_ketamine'}' or a folder outside the dataset"
        )
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DatasetError(
            f"OUTPUT_DIR '{output_dir}' cannot be written ('{existing}' is not a writable folder): "
            "choose a folder you can write to or fix its permissions"
        )


def load_layout(bids_dir: Path, *, validate: bool = True, database_dir: Path | None = None):
    """Open the dataset with pybids.

    Parameters
    ----------
    bids_dir : Path
        Dataset root (checked with :func:`check_bids_dir` first).
    validate : bool
        Validate file names against the BIDS specification (pybids' validator):
        files that are not valid BIDS are left out of the index.
    database_dir : Path, optional
        Folder of a pybids SQLite database: created on first use, reused afterwards.

    Returns
    -------
    bids.layout.BIDSLayout
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError, PyBIDSError

    check_bids_dir(bids_dir)
    kwargs: dict[str, Any] = {"validate": validate, "derivatives": False}
    if database_dir is not None:
        database_dir.mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(database_dir)
    try:
        return BIDSLayout(str(bids_dir), **kwargs)
    except (BIDSValidationError, PyBIDSError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"pybids cannot open '{bids_dir}': {message}") from None


def relative_entities(root: Path, path: Path) -> dict[str, str]:
    """BIDS entities of ``path`` parsed from its path relative to the dataset root.

    pybids 0.22 parses entities from the absolute path (pybids issue #1270), so a dataset
    stored under a folder named like a datatype (``/data/perf/bids``) gets every file
    tagged with that datatype.  Parsing the root-relative path only looks inside the dataset.

    Returns
    -------
    dict
        Entity name -> value as text (``run`` keeps its zero padding), with ``datatype``,
        ``suffix`` and ``extension`` when present.
    """
    return parse_entities(root, path, raw=True)


def dataset_files(layout, **query: Any) -> list[tuple[Path, dict[str, str]]]:
    """Files of the dataset that pybids indexed, each with its root-relative entities.

    ``query`` is passed to ``layout.get`` and must only use entities parsed from the file
    name itself (``suffix``, ``extension``); select on the others with the returned entities.
    """
    root = Path(layout.root)
    return [(Path(path), relative_entities(root, Path(path)))
            for path in sorted(layout.get(return_type="filename", **query))]


def _same_value(wanted: Any, value: str | None) -> bool:
    if wanted is None:
        return value is None
    if value is None:
        return False
    if isinstance(wanted, (list, tuple)):
        return any(_same_value(item, value) for item in wanted)
    wanted = str(wanted)
    if wanted.isdigit() and value.isdigit():
        return int(wanted) == int(value)
    return wanted == value


def matches_filters(entities: dict[str, str], filters: dict[str, Any]) -> bool:
    """Whether ``entities`` satisfy pybids-style filters (``None``: entity absent; list: any of)."""
    return all(_same_value(wanted, entities.get(key)) for key, wanted in filters.items())


#: Entities that do not restrict which sidecar or gradient file applies to a file.
_NOT_INHERITANCE_KEYS = ("suffix", "extension", "datatype")


def inherited_files(root: Path, path: Path, entities: dict[str, str], extension: str) -> list[Path]:
    """The files that apply to ``path`` by the BIDS inheritance principle, farthest first.

    Candidates have the same suffix and the given extension, live in the dataset root or a
    folder above ``path`` (or beside it), and carry no entity that ``path`` lacks or has with
    another value (``dwi.bval`` at the root applies to every DWI image, ``sub-01_dwi.json`` in
    ``sub-01/`` to those of sub-01).  Within one folder the more specific file comes last.

    Parameters
    ----------
    root : Path
        Dataset root.
    path : Path
        The data file (e.g. the DWI image).
    entities : dict
        Its entities (:func:`relative_entities`).
    extension : str
        ``".bval"``, ``".bvec"`` or ``".json"``.

    Returns
    -------
    list of Path
        Farthest (root) first, nearest last: JSON sidecars are merged in this order, and the
        last ``.bval``/``.bvec`` is the one that applies.
    """
    root, path = Path(root), Path(path)
    suffix = entities.get("suffix", "")
    folders = [root] + [root / Path(*path.parent.relative_to(root).parts[:n])
                        for n in range(1, len(path.parent.relative_to(root).parts) + 1)]
    found: list[Path] = []
    for folder in folders:
        level = []
        for candidate in sorted(folder.glob(f"*{suffix}{extension}")):
            if candidate.name != f"{suffix}{extension}" and not candidate.name.endswith(f"_{suffix}{extension}"):
                continue
            own = relative_entities(root, candidate)
            keys = [k for k in own if k not in _NOT_INHERITANCE_KEYS]
            if all(entities.get(k) == own[k] for k in keys):
                level.append((len(keys), candidate))
        found.extend(candidate for _, candidate in sorted(level))
    return found


def merged_sidecar(files: list[Path]) -> dict[str, Any]:
    """Merge JSON sidecars given farthest first (nearer values override); unreadable ones raise."""
    merged: dict[str, Any] = {}
    for sidecar in files:
        try:
            content = json.loads(Path(sidecar).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"'{sidecar}' is not valid JSON ({err}); fix the file") from None
        if isinstance(content, dict):
            merged.update(content)
    return merged


def _matches(requested: tuple[str, ...], available: list[str], what: str, where: Path) -> list[str]:
    if not requested:
        return sorted(available)
    missing = [label for label in requested if label not in available]
    if missing:
        prefix = "sub" if what == "participant" else "ses"
        raise DatasetError(
            f"{what} label(s) {', '.join(missing)} not found in '{where}'; "
            f"available: {', '.join(f'{prefix}-{a}' for a in sorted(available)) or 'none'}"
        )
    return list(requested)


def collect_dwi(
    layout,
    participant_label: tuple[str, ...] = (),
    session_label: tuple[str, ...] = (),
    bids_filters: dict[str, Any] | None = None,
) -> dict[str, list[DwiSeries]]:
    """Find the DWI series to process, per participant.

    Entities come from paths relative to the dataset root (:func:`relative_entities`), and
    gradient files and sidecars are found by the BIDS inheritance principle
    (:func:`inherited_files`: ``dwi.bval`` at the dataset root applies to every image).

    Parameters
    ----------
    layout : BIDSLayout
    participant_label, session_label : tuple of str
        Labels without prefixes; empty means all.
    bids_filters : dict, optional
        The ``--bids-filter-file`` content; its ``"dwi"`` entry adds entity filters.

    Returns
    -------
    dict
        Participant label -> list of :class:`DwiSeries` (sorted by session, then entities).

    Raises
    ------
    DatasetError
        No DWI at all, or requested labels that do not exist (the message lists those that do).
    """
    root = Path(layout.root)
    images = dataset_files(layout, extension=[".nii", ".nii.gz"])
    all_dwi = [(path, entities) for path, entities in images
               if entities.get("datatype") == "dwi" and entities.get("suffix") == "dwi"
               and "subject" in entities]
    if not all_dwi:
        raise DatasetError(
            f"no DWI found in '{root}': expected sub-<label>/[ses-<label>/]dwi/*_dwi.nii.gz "
            "with .bval and .bvec files"
        )
    subjects_with_dwi = sorted({entities["subject"] for _, entities in all_dwi})
    all_subjects = sorted({e["subject"] for _, e in dataset_files(layout) if "subject" in e})
    subjects = _matches(participant_label, all_subjects, "participant", root)
    no_dwi = [s for s in subjects if s not in subjects_with_dwi]
    if participant_label and no_dwi:
        raise DatasetError(
            f"participant(s) {', '.join('sub-' + s for s in no_dwi)} in '{root}' have no DWI; "
            f"participants with DWI: {', '.join('sub-' + s for s in subjects_with_dwi)}"
        )
    if no_dwi:
        LOGGER.warning("Participants without DWI, not processed: %s", ", ".join("sub-" + s for s in no_dwi))
    subjects = [s for s in subjects if s in subjects_with_dwi]
    sessions_available = sorted({e["session"] for _, e in all_dwi if e["subject"] in subjects and "session" in e})
    if session_label:
        _matches(session_label, sessions_available, "session", root)

    filters = dict((bids_filters or {}).get("dwi", {}))
    for reserved in ("subject", "datatype", "suffix", "extension"):
        filters.pop(reserved, None)
    if session_label:
        filters["session"] = list(session_label)

    found: dict[str, list[DwiSeries]] = {}
    for subject in subjects:
        series = [_dwi_series(root, path, entities) for path, entities in all_dwi
                  if entities["subject"] == subject and matches_filters(entities, filters)]
        if series:
            found[subject] = sorted(series, key=lambda s: (s.session or "", s.prefix))
    if not found:
        raise DatasetError(
            f"no DWI in '{root}' matches the selection (participants {list(participant_label) or 'all'}, "
            f"sessions {list(session_label) or 'all'}, filters {filters or 'none'}): relax the selection"
        )
    return found


def _dwi_series(root: Path, path: Path, entities: dict[str, str]) -> DwiSeries:
    """One :class:`DwiSeries` with its inherited gradient files and merged sidecar."""
    nearest = {ext: (inherited_files(root, path, entities, ext) or [None])[-1] for ext in (".bval", ".bvec")}
    sidecars = tuple(inherited_files(root, path, entities, ".json"))
    return DwiSeries(
        subject=entities["subject"],
        session=entities.get("session"),
        dwi=path,
        bval=nearest[".bval"],
        bvec=nearest[".bvec"],
        sidecar=merged_sidecar(list(sidecars)),
        entities={k: entities[k] for k in SERIES_ENTITIES if k in entities},
        sidecar_files=sidecars,
    )


@dataclass(frozen=True)
class T1wImage:
    """The T1w image used for one session of a participant (issue 19).

    Attributes
    ----------
    subject, session : str
        Labels without prefixes (``session`` None in a dataset without sessions).
    path : Path
        The image chosen.
    candidates : tuple of Path
        Every T1w image of the session (the chosen one among them).
    """

    subject: str
    session: str | None
    path: Path
    candidates: tuple = ()


def _t1w_preference(entities: dict[str, str], path: Path) -> tuple:
    """Sort key: images without ``rec-``/``ce-`` (plain acquisitions) first, then the
    highest run number (a repeated run is usually the better one), then the file name."""
    run = entities.get("run", "")
    run_number = int(run) if run.isdigit() else -1
    special = sum(1 for key in ("reconstruction", "ceagent") if key in entities)
    return (special, -run_number, path.name)


def collect_t1w(layout, subject: str, session_label: tuple[str, ...] = (),
                bids_filters: dict[str, Any] | None = None) -> list[T1wImage]:
    """The T1w image of each session of a participant, one per session.

    Several T1w images in one session: one is picked deterministically (no
    reconstruction or contrast-agent entity first, then the highest ``run-``, then the file
    name) and the choice is logged with the alternatives.

    Parameters
    ----------
    layout : BIDSLayout
    subject : str
        Participant label without ``sub-``.
    session_label : tuple of str
        Sessions to keep (empty: all).
    bids_filters : dict, optional
        The ``--bids-filter-file`` content; its ``"t1w"`` entry adds entity filters
        (fMRIPrep's key).

    Returns
    -------
    list of T1wImage
        Sorted by session; empty when the participant has no T1w.
    """
    filters = {key: value for key, value in dict((bids_filters or {}).get("t1w", {})).items()
               if key not in ("subject", "datatype", "suffix", "extension")}
    by_session: dict[str | None, list[tuple[Path, dict[str, str]]]] = {}
    for path, entities in dataset_files(layout, extension=[".nii", ".nii.gz"]):
        if (entities.get("subject") != subject or entities.get("datatype") != "anat"
                or entities.get("suffix") != "T1w"):
            continue
        if session_label and entities.get("session") not in session_label:
            continue
        if not matches_filters(entities, filters):
            continue
        by_session.setdefault(entities.get("session"), []).append((path, entities))
    found = []
    for session in sorted(by_session, key=lambda s: s or ""):
        images = sorted(by_session[session], key=lambda item: _t1w_preference(item[1], item[0]))
        chosen = images[0][0]
        if len(images) > 1:
            LOGGER.info("sub-%s%s: %d T1w images, using %s (not used: %s)", subject,
                        f" ses-{session}" if session else "", len(images), chosen.name,
                        ", ".join(path.name for path, _ in images[1:]))
        found.append(T1wImage(subject=subject, session=session, path=chosen,
                              candidates=tuple(path for path, _ in images)))
    return found


def combine_runs(series: list[DwiSeries]) -> list[DwiSeries]:
    """Merge the runs of each session into one series (``--combine-runs average``).

    Series of one subject and session that differ only by their ``run-`` entity become one
    :class:`DwiSeries` without it (``runs`` holds them, in run order); other series are kept.
    """
    groups: dict[tuple, list[DwiSeries]] = {}
    for item in series:
        others = tuple(sorted((k, v) for k, v in item.entities.items() if k != "run"))
        groups.setdefault((item.subject, item.session, others), []).append(item)
    combined = []
    for members in groups.values():
        runs = [m for m in members if "run" in m.entities]
        if len(runs) < 2:
            combined.extend(members)
            continue
        runs.sort(key=lambda m: int(m.entities["run"]) if m.entities["run"].isdigit() else m.entities["run"])
        first = runs[0]
        combined.append(dataclasses.replace(
            first, entities={k: v for k, v in first.entities.items() if k != "run"}, runs=tuple(runs),
            notes=tuple(note for run in runs for note in run.notes)))
        combined.extend(m for m in members if "run" not in m.entities)
    return sorted(combined, key=lambda s: (s.session or "", s.prefix))


def participant_outputs(output_dir: Path, atlas: str) -> list[Path]:
    """ROI tables written by the participant level (used to check before the group level)."""
    if not output_dir.is_dir():
        return []
    return sorted(output_dir.glob(roistats_glob(atlas)))


def check_group_inputs(output_dir: Path, atlas: str) -> None:
    """Raise InputError if there are no participant-level outputs to analyse."""
    if not participant_outputs(output_dir, atlas):
        raise InputError(
            f"no participant-level outputs (*_atlas-{atlas}_model-tensor_roistats.tsv) in "
            f"'{output_dir}': run 'bids-ketamine BIDS_DIR {output_dir} participant' first"
        )
