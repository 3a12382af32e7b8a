"""One frozen record of a run's options.

The command-line parser (:mod:`bids_ketamine.cli.parser`) builds a :class:`Config`;
every other part of the app reads it and never changes it.  ``Config.to_dict`` is what
is recorded in the outputs (``models.json``, the reports) so that a run can be
reproduced from its own outputs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ROI names of the default atlas, in the order of the contract.
KETAMINE7_ROIS = (
    "BA10_L",
    "BA10_R",
    "amygdala_L",
    "amygdala_R",
    "hippocampus_L",
    "hippocampus_R",
    "vACC",
)

#: Default template (TemplateFlow), and the offline fallback shipped by nilearn.
DEFAULT_TEMPLATE = "MNI152NLin2009cAsym"
OFFLINE_TEMPLATE = "MNI152NLin2009aSym"

DENOISE_METHODS = ("mppca", "patch2self", "none")
FIT_METHODS = ("wls", "ols", "nlls", "restore")
#: ROI table columns accepted by ``--roi-statistic`` (after median and mean: issue 20's
#: partial-volume-aware values, bids_ketamine.dwi.roi.ROISTATS_PV_COLUMNS).
ROI_STATISTICS = ("median", "mean", "gm_weighted_mean", "pv_gm", "roi_gm_weighted_mean",
                  "roi_gm_weighted_median")
#: The ROI value the group level uses unless ``--roi-statistic`` names one (chosen on the evidence
#: of docs/participant.md, "Default"), and the one it uses instead, for
#: every participant, when some ROI table lacks it: tables of a participant level run with
#: ``--gm-threshold none`` (no grey-matter weights) or written before the column existed.
DEFAULT_ROI_STATISTIC = "roi_gm_weighted_median"
ROI_STATISTIC_FALLBACK = "median"
DEFAULT_OUTCOMES = ("madrs", "qids_sr")
#: Inputs ``--ignore`` can leave unused (fMRIPrep's flag): the T1w (DWI-only path) and the
#: field maps (no susceptibility-distortion correction).
IGNORABLE_INPUTS = ("t1w", "fieldmaps")
#: Remission thresholds per scale (score <= threshold), see docs/science.
DEFAULT_REMISSION = {"madrs": 10.0, "qids_sr": 5.0}


#: Options that are paths.
_PATH_FIELDS = ("bids_dir", "output_dir", "bids_database_dir", "work_dir", "atlas_labels")


@dataclass(frozen=True)
class Config:
    """All options of one run of ``bids-ketamine``.

    Attributes mirror the command-line options one to one (``--fit-method`` is
    ``fit_method``).  Paths are absolute.  Labels are stored without their
    ``sub-``/``ses-`` prefixes.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    # --- selection -------------------------------------------------------------
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict[str, Any] = field(default_factory=dict)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    ignore: tuple[str, ...] = ()
    use_syn_sdc: bool = False
    # --- execution -------------------------------------------------------------
    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    stop_on_first_crash: bool = False
    reports_only: bool = False
    verbosity: int = 0
    quiet: bool = False
    resource_monitor: bool = False
    # --- participant level -----------------------------------------------------
    denoise: str = "mppca"
    denoise_full_fov: bool = False
    degibbs: bool = False
    fit_method: str = "wls"
    b0_threshold: float = 50.0
    dti_max_bval: float = 1500.0
    template: str = DEFAULT_TEMPLATE
    atlas: str = "ketamine7"
    atlas_labels: Path | None = None
    csf_md_threshold: float | None = 1.1
    gm_threshold: float | None = 0.5
    combine_runs: str = "separate"
    longitudinal: bool = True
    # --- group level -----------------------------------------------------------
    baseline_session: str | None = None
    followup_session: str | None = None
    outcome_sessions: tuple[str, ...] | None = None
    outcome_baseline_session: str | None = None
    sessions: tuple[str, ...] | None = None
    group_column: str = "group"
    treatment_label: str = "ketamine"
    control_label: str | None = None
    outcomes: tuple[str, ...] | None = None
    covariates: tuple[str, ...] | None = None
    params: tuple[str, ...] = ("md",)
    min_coverage: float = 0.8
    #: None: :data:`DEFAULT_ROI_STATISTIC`, or :data:`ROI_STATISTIC_FALLBACK` where it is missing.
    roi_statistic: str | None = None
    response_threshold: float = 50.0
    remission_thresholds: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_REMISSION)
    )
    n_permutations: int = 200
    seed: int = 0

    @property
    def atlas_name(self) -> str:
        """The atlas label used in output file names (``atlas-<name>``)."""
        from bids_ketamine.atlas import atlas_name_from_path

        return atlas_name_from_path(self.atlas) if Path(self.atlas).suffix in (".gz", ".nii") else self.atlas

    def to_dict(self) -> dict[str, Any]:
        """Options as JSON-serialisable values (paths become strings)."""

        def _plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [_plain(v) for v in value]
            if isinstance(value, dict):
                return {k: _plain(v) for k, v in value.items()}
            return value

        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """The Config of a recorded run (``config.json``, :meth:`to_dict`).

        Options missing from ``data`` take their defaults here (the one source of defaults);
        keys that are not options (from another version) are ignored.
        """
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in data:
                continue
            value = data[item.name]
            if isinstance(value, list):
                value = tuple(value)
            if value is not None and item.name in _PATH_FIELDS:
                value = Path(value)
            values[item.name] = value
        values.setdefault("bids_dir", Path("."))
        values.setdefault("output_dir", Path("."))
        values.setdefault("analysis_level", "participant")
        return cls(**values)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one option."""
        item = cls.__dataclass_fields__[name]
        return item.default if item.default is not dataclasses.MISSING else item.default_factory()

    def to_json(self) -> str:
        """Options as a JSON document."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some options changed (the record itself stays frozen)."""
        return dataclasses.replace(self, **changes)
