"""The input dataset: opening it with pybids and finding the DWI series to process.

Every check a user meets first lives here and raises :class:`~bids_ketamine.errors.DatasetError`
with one line that names the file or folder and what to do.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.errors import DatasetError, InputError

LOGGER = logging.getLogger(__name__)

#: Entities kept in output names, in BIDS order.
SERIES_ENTITIES = ("acquisition", "direction", "run")
_SHORT = {"acquisition": "acq", "direction": "dir", "run": "run"}


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
        The merged JSON metadata (BIDS inheritance applied by pybids).
    entities : dict
        Entities that distinguish series within a session (acquisition, direction, run).
    """

    subject: str
    session: str | None
    dwi: Path
    bval: Path | None
    bvec: Path | None
    sidecar: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    entities: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def prefix(self) -> str:
        """The output file-name prefix, e.g. ``sub-01_ses-pre_acq-ortho``."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        for entity in SERIES_ENTITIES:
            if entity in self.entities:
                parts.append(f"{_SHORT[entity]}-{self.entities[entity]}")
        return "_".join(parts)

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

    Parameters
    ----------
    layout : BIDSLayout
    participant_label, session_label : tuple of str
        Labels without prefixes; empty means all.
    bids_filters : dict, optional
        The ``--bids-filter-file`` content; its ``"dwi"`` entry adds pybids entity filters.

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
    all_dwi = layout.get(datatype="dwi", suffix="dwi", extension=[".nii", ".nii.gz"])
    if not all_dwi:
        raise DatasetError(
            f"no DWI found in '{root}': expected sub-<label>/[ses-<label>/]dwi/*_dwi.nii.gz "
            "with .bval and .bvec files"
        )
    subjects_with_dwi = sorted({f.entities["subject"] for f in all_dwi})
    subjects = _matches(participant_label, layout.get_subjects(), "participant", root)
    no_dwi = [s for s in subjects if s not in subjects_with_dwi]
    if participant_label and no_dwi:
        raise DatasetError(
            f"participant(s) {', '.join('sub-' + s for s in no_dwi)} in '{root}' have no DWI; "
            f"participants with DWI: {', '.join('sub-' + s for s in subjects_with_dwi)}"
        )
    if no_dwi:
        LOGGER.warning("Participants without DWI, not processed: %s", ", ".join("sub-" + s for s in no_dwi))
    subjects = [s for s in subjects if s in subjects_with_dwi]
    sessions_available = sorted(
        {f.entities["session"] for f in all_dwi if f.entities["subject"] in subjects and "session" in f.entities}
    )
    if session_label:
        _matches(session_label, sessions_available, "session", root)

    filters = dict((bids_filters or {}).get("dwi", {}))
    for reserved in ("subject", "datatype", "suffix", "extension"):
        filters.pop(reserved, None)

    found: dict[str, list[DwiSeries]] = {}
    for subject in subjects:
        query: dict[str, Any] = dict(filters, subject=subject, datatype="dwi", suffix="dwi",
                                     extension=[".nii", ".nii.gz"])
        if session_label:
            query["session"] = list(session_label)
        series = []
        for bids_file in layout.get(**query):
            path = Path(bids_file.path)
            entities = bids_file.entities
            series.append(
                DwiSeries(
                    subject=subject,
                    session=entities.get("session"),
                    dwi=path,
                    bval=_sibling(layout, path, ".bval"),
                    bvec=_sibling(layout, path, ".bvec"),
                    sidecar=dict(bids_file.get_metadata()),
                    entities={
                        k: str(entities[k]) for k in SERIES_ENTITIES if entities.get(k) is not None
                    },
                )
            )
        if series:
            found[subject] = sorted(series, key=lambda s: (s.session or "", s.prefix))
    if not found:
        raise DatasetError(
            f"no DWI in '{root}' matches the selection (participants {list(participant_label) or 'all'}, "
            f"sessions {list(session_label) or 'all'}, filters {filters or 'none'}): relax the selection"
        )
    return found


def _sibling(layout, dwi_path: Path, extension: str) -> Path | None:
    """The bval/bvec of a DWI image (same name, or inherited higher in the tree)."""
    same = dwi_path.with_name(dwi_path.name.replace(".nii.gz", "").replace(".nii", "") + extension)
    if same.exists():
        return same
    try:
        found = layout.get_nearest(str(dwi_path), extension=extension, suffix="dwi", all_=False,
                                   strict=False)
    except Exception:  # noqa: BLE001 - pybids raises several types here
        found = None
    return Path(found) if found else None


def participant_outputs(output_dir: Path, atlas: str) -> list[Path]:
    """ROI tables written by the participant level (used to check before the group level)."""
    if not output_dir.is_dir():
        return []
    return sorted(output_dir.glob(f"sub-*/**/dwi/*_atlas-{atlas}_model-tensor_roistats.tsv"))


def check_group_inputs(output_dir: Path, atlas: str) -> None:
    """Raise InputError if there are no participant-level outputs to analyse."""
    if not participant_outputs(output_dir, atlas):
        raise InputError(
            f"no participant-level outputs (*_atlas-{atlas}_model-tensor_roistats.tsv) in "
            f"'{output_dir}': run 'bids-ketamine BIDS_DIR {output_dir} participant' first"
        )
