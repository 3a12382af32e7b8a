"""The command line of ``bids-ketamine`` (the public contract, docs/interfaces.md).

``build_parser()`` returns the :class:`argparse.ArgumentParser`; ``parse_args()`` turns a
command line into a frozen :class:`bids_ketamine.config.Config`, checking what can be
checked without opening the dataset.  Errors found here end the program through
``parser.error`` (one line, exit status 2), as every argparse program does.

Kept as one module (~640 lines): the whole command line in one place, in the order the public
contract lists it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

from bids_ketamine import __version__
from bids_ketamine.config import (
    DEFAULT_REMISSION,
    DENOISE_METHODS,
    FIT_METHODS,
    ROI_STATISTICS,
    Config,
)
from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.utils.labels import bare_label, strip_label  # noqa: F401 (strip_label: API)

#: nipype execution plugins accepted by ``--plugin`` (nipype.pipeline.plugins).
NIPYPE_PLUGINS = (
    "Linear",
    "MultiProc",
    "LegacyMultiProc",
    "SLURM",
    "SLURMGraph",
    "SGE",
    "SGEGraph",
    "PBS",
    "PBSGraph",
    "LSF",
    "Condor",
    "DAGMan",
    "OAR",
    "IPython",
)


def _config_default(name: str) -> Any:
    """The default of a :class:`Config` field (the one source of defaults)."""
    return Config.default(name)


def _label_type(prefix: str):
    def _parse(value: str) -> str:
        try:
            return strip_label(value, prefix)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    _parse.__name__ = f"{prefix} label"
    return _parse


def _session_name(value: str) -> str:
    """A session label as given, without its ``ses-`` prefix (checked against the dataset
    by the group level, which names the sessions found)."""
    return bare_label(value, "ses")


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file '{value}' does not exist")
    return path.absolute()


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"'{value}' must be 1 or more")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be greater than 0")
    return number


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"'{value}' must lie between 0 and 1")
    return number


def _threshold_or_none(value: str) -> float | None:
    if value.lower() in ("none", "off", "0"):
        return None
    return _positive_float(value)


def _fraction_or_none(value: str) -> float | None:
    if value.lower() in ("none", "off"):
        return None
    return _fraction(value)


def _json_or_file(value: str) -> dict[str, Any]:
    """Parse ``--plugin-args``: inline JSON, or a JSON/YAML file (fMRIPrep style)."""
    text = value
    source = "the command line"
    if os.path.isfile(value):
        text = Path(value).read_text()
        source = value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml

            parsed = yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - any YAML error is the same user error
            parsed = None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(
            f"plugin arguments from {source} are not a JSON or YAML mapping; "
            'give e.g. \'{"sbatch_args": "--time=2:00:00"}\' or a file holding one'
        )
    if "plugin_args" in parsed and isinstance(parsed["plugin_args"], dict):
        # fMRIPrep's file format: {"plugin": "...", "plugin_args": {...}}
        parsed = dict(parsed["plugin_args"], **{"_plugin": parsed.get("plugin")})
    return parsed


def _bids_filters(value: str) -> dict[str, Any]:
    """Read a ``--bids-filter-file`` (pybids/fMRIPrep format: {"dwi": {entity: value}})."""
    path = _existing_file(value)
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' is not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' must map query names to entity filters, "
            'e.g. {"dwi": {"acquisition": "ortho"}}'
        )
    unknown = set(filters) - {"dwi"}
    if unknown:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' names unknown queries {sorted(unknown)}; "
            "the only query is 'dwi'"
        )
    return filters


def _remission(value: str) -> tuple[str, float]:
    name, sep, number = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"'{value}' is not OUTCOME=THRESHOLD (for example madrs=12)"
        )
    try:
        return name.strip(), float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold in '{value}' is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    """Build the ``bids-ketamine`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="bids-ketamine",
        description=(
            "bids_ketamine: grey-matter mean diffusivity (MD) change between sessions in "
            "a two-arm trial, and its relation to clinical change. The participant level "
            "processes DWI into ROI tables; the group level fits treatment x change models."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root of the input BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=Path,
        help="where derivatives go (created if missing); must not be inside bids_dir "
        "unless under bids_dir/derivatives/",
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: process DWI into ROI tables; group: fit the models",
    )
    parser.add_argument("--version", action="version", version=f"bids-ketamine {__version__}")

    sel = parser.add_argument_group("Selecting the data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label_type("sub"),
        default=list(_config_default("participant_label")),
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label_type("ses"),
        default=list(_config_default("session_label")),
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    sel.add_argument(
        "--bids-filter-file",
        dest="bids_filters",
        type=_bids_filters,
        default=None,
        metavar="FILE",
        help='JSON file of pybids filters for the DWI query, e.g. {"dwi": {"acquisition": "ortho"}}',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not validate the input dataset against the BIDS specification",
    )
    sel.add_argument(
        "--bids-database-dir",
        type=Path,
        default=_config_default("bids_database_dir"),
        metavar="DIR",
        help="directory for a pybids database, reused by later runs (faster on large datasets)",
    )

    run = parser.add_argument_group("Execution and resources")
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        default=_config_default("work_dir"),
        metavar="DIR",
        help="nipype working directory; rerunning with the same one resumes "
        "(default: OUTPUT_DIR/../work or ./work)",
    )
    run.add_argument(
        "--nprocs",
        "--n-cpus",
        "--nthreads",
        dest="nprocs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="maximum number of processes run at once by the MultiProc plugin",
    )
    run.add_argument(
        "--omp-nthreads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="threads per process for numerical libraries (default: min(nprocs, 8))",
    )
    run.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=_positive_float,
        default=_config_default("mem_gb"),
        metavar="GB",
        help="upper bound on memory used by the MultiProc plugin (default: all available)",
    )
    run.add_argument(
        "--plugin",
        choices=NIPYPE_PLUGINS,
        default=_config_default("plugin"),
        help="nipype execution plugin; SLURM/SLURMGraph/SGE/PBS hand nodes to a scheduler",
    )
    run.add_argument(
        "--plugin-args",
        type=_json_or_file,
        default=None,
        metavar="JSON|FILE",
        help="arguments for the plugin, as inline JSON or a JSON/YAML file "
        '(e.g. \'{"sbatch_args": "--time=1:00:00"}\')',
    )
    run.add_argument(
        "--stop-on-first-crash",
        action="store_true",
        help="stop at the first failing participant or node instead of processing the others",
    )
    run.add_argument(
        "--resource-monitor",
        action="store_true",
        help="record each node's peak memory and CPU use with nipype's resource monitor "
        "(in the work directory's result files; needs psutil)",
    )
    run.add_argument(
        "--reports-only",
        action="store_true",
        help="only rebuild the HTML reports from outputs already in OUTPUT_DIR",
    )
    run.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        default=_config_default("verbosity"),
        help="more log messages (-vv for debugging) and a progress line per finished node group",
    )
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=_config_default("quiet"),
        help="no progress display and only warnings and errors in the log",
    )

    prep = parser.add_argument_group("Participant level: preprocessing and tensor fitting")
    prep.add_argument(
        "--denoise",
        choices=DENOISE_METHODS,
        default=_config_default("denoise"),
        help="denoising before any interpolation: MP-PCA (Veraart 2016), Patch2Self, or none",
    )
    prep.add_argument(
        "--denoise-full-fov",
        action="store_true",
        help="MP-PCA-denoise every voxel of the field of view (as dwidenoise without -mask); "
        "default: only the brain of the raw series plus a 10 mm margin, 3-4x faster and the "
        "same inside it",
    )
    prep.add_argument(
        "--degibbs",
        action="store_true",
        help="remove Gibbs ringing after denoising (Kellner 2016, DIPY)",
    )
    prep.add_argument(
        "--fit-method",
        choices=FIT_METHODS,
        default=_config_default("fit_method"),
        help="tensor fitting method",
    )
    prep.add_argument(
        "--b0-threshold",
        type=float,
        default=_config_default("b0_threshold"),
        metavar="B",
        help="b-values at or below this count as b=0 (s/mm^2)",
    )
    prep.add_argument(
        "--dti-max-bval",
        type=_positive_float,
        default=_config_default("dti_max_bval"),
        metavar="B",
        help="fit the tensor to b=0 and shells at or below this b-value (s/mm^2)",
    )
    prep.add_argument(
        "--combine-runs",
        choices=["separate", "average"],
        default=_config_default("combine_runs"),
        help="with several DWI runs (run-<n>, same acq-/dir-) in a session: 'separate' "
        "processes each run as its own series (one ROI table per run); 'average' denoises each "
        "run, joins them, motion-corrects every volume to one reference and fits one tensor to "
        "them all (one series and one ROI table without the run- entity)",
    )

    reg = parser.add_argument_group("Participant level: templates, atlases and ROIs")
    reg.add_argument(
        "--template",
        default=_config_default("template"),
        metavar="NAME",
        help="template space (TemplateFlow name). Without TemplateFlow files, the "
        "nilearn-shipped MNI152NLin2009aSym is used and recorded",
    )
    reg.add_argument(
        "--atlas",
        default=_config_default("atlas"),
        metavar="NAME|FILE",
        help="ROI set: 'ketamine7' (7 ROIs of the reference study) or a NIfTI label image "
        "in template space with a TSV of labels (see --atlas-labels)",
    )
    reg.add_argument(
        "--atlas-labels",
        type=_existing_file,
        default=_config_default("atlas_labels"),
        metavar="TSV",
        help="labels of a user atlas: columns 'index' and 'name' (default: the atlas "
        "path with .tsv)",
    )
    reg.add_argument(
        "--csf-md-threshold",
        type=_threshold_or_none,
        default=_config_default("csf_md_threshold"),
        metavar="MD|none",
        help="exclude ROI voxels whose MD exceeds this (um^2/ms) as CSF-contaminated "
        "(healthy grey matter is 0.7-0.9, CSF 3.0); 'none' keeps every voxel",
    )
    reg.add_argument(
        "--gm-threshold",
        type=_fraction_or_none,
        default=_config_default("gm_threshold"),
        metavar="P|none",
        help="keep ROI voxels whose grey-matter probability (the template's, warped into the "
        "session) is at least P; 'none' keeps white matter and CSF inside the atlas labels",
    )
    reg.add_argument(
        "--no-longitudinal",
        dest="longitudinal",
        action="store_false",
        help="register each session to the template on its own instead of through the "
        "within-subject midpoint space (not recommended: biased change)",
    )

    grp = parser.add_argument_group("Group level")
    grp.add_argument(
        "--roi-statistic",
        choices=list(ROI_STATISTICS),
        default=_config_default("roi_statistic"),
        help="ROI summary of each session entering the models: the median or mean of the ROI's "
        "voxels, their grey-matter-fraction-weighted mean (gm_weighted_mean), the grey-matter "
        "MD of the tissue-mixture fit (pv_gm), or the mean/median weighted by each voxel's "
        "grey-matter volume fraction of the ROI (roi_gm_weighted_mean, roi_gm_weighted_median); "
        "see docs/participant.md (default: %(default)s)",
    )
    grp.add_argument(
        "--baseline-session",
        type=_label_type("ses"),
        default=_config_default("baseline_session"),
        metavar="LABEL",
        help="baseline session label (default: earliest by acq_time in sessions.tsv, else by label)",
    )
    grp.add_argument(
        "--followup-session",
        type=_label_type("ses"),
        default=_config_default("followup_session"),
        metavar="LABEL",
        help="follow-up session label (default: the other/latest session)",
    )
    grp.add_argument(
        "--outcome-sessions",
        nargs="+",
        type=_session_name,
        default=_config_default("outcome_sessions"),
        metavar="LABEL",
        help="sessions at which outcome change, percent improvement, response and remission "
        "are computed, one set of models each (default: the follow-up session)",
    )
    grp.add_argument(
        "--outcome-baseline-session",
        type=_session_name,
        default=_config_default("outcome_baseline_session"),
        metavar="LABEL",
        help="session the outcomes are compared with (default: the baseline session)",
    )
    grp.add_argument(
        "--sessions",
        nargs="+",
        type=_session_name,
        default=_config_default("sessions"),
        metavar="LABEL",
        help="order of more than two sessions, earliest first (default: by acq_time in "
        "sessions.tsv); sessions not listed are ignored",
    )
    grp.add_argument(
        "--group-column",
        default=_config_default("group_column"),
        metavar="COLUMN",
        help="participants.tsv column holding the arm",
    )
    grp.add_argument(
        "--treatment-label",
        default=_config_default("treatment_label"),
        metavar="VALUE",
        help="value of the group column for the treatment arm (treatment = 1)",
    )
    grp.add_argument(
        "--control-label",
        default=_config_default("control_label"),
        metavar="VALUE",
        help="value of the group column for the control arm (default: the other value)",
    )
    grp.add_argument(
        "--outcomes",
        nargs="+",
        default=_config_default("outcomes"),
        metavar="COLUMN",
        help="per-session clinical scores (default: those of madrs, qids_sr present)",
    )
    grp.add_argument(
        "--covariates",
        nargs="*",
        default=_config_default("covariates"),
        metavar="COLUMN",
        help="model covariates (default: baseline outcome score, age, sex where present): "
        "participants.tsv columns, <outcome>_baseline or <outcome>_change of another "
        "per-session score; give the option with no value for none",
    )
    grp.add_argument(
        "--params",
        nargs="+",
        default=list(_config_default("params")),
        metavar="PARAM",
        help="predictors: tensor parameters (md, fa, ad, rd) or any numeric per-session "
        "column (e.g. a plasma metabolite)",
    )
    grp.add_argument(
        "--min-coverage",
        type=_fraction,
        default=_config_default("min_coverage"),
        metavar="FRACTION",
        help="drop a participant's ROI from the models when its coverage is below this",
    )
    grp.add_argument(
        "--response-threshold",
        type=_positive_float,
        default=_config_default("response_threshold"),
        metavar="PERCENT",
        help="response = at least this percent improvement from baseline",
    )
    grp.add_argument(
        "--remission-threshold",
        dest="remission_thresholds",
        nargs="+",
        type=_remission,
        default=None,
        metavar="OUTCOME=SCORE",
        help="remission = score at or below the threshold "
        f"(default: {' '.join(f'{k}={v:g}' for k, v in DEFAULT_REMISSION.items())})",
    )
    grp.add_argument(
        "--n-permutations",
        type=int,
        default=_config_default("n_permutations"),
        metavar="N",
        help="permutations for the p-value of the cross-validated prediction (0: skip)",
    )
    grp.add_argument(
        "--seed",
        type=int,
        default=_config_default("seed"),
        metavar="S",
        help="random seed for the cross-validation and permutations",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the frozen :class:`Config` from parsed arguments."""
    remission = dict(DEFAULT_REMISSION)
    remission.update(dict(args.remission_thresholds or []))
    nprocs = args.nprocs
    omp = args.omp_nthreads or min(nprocs, 8)
    plugin_args = dict(args.plugin_args or {})
    plugin_args.pop("_plugin", None)
    return Config(
        bids_dir=args.bids_dir.expanduser().absolute(),
        output_dir=args.output_dir.expanduser().absolute(),
        analysis_level=args.analysis_level,
        participant_label=tuple(dict.fromkeys(args.participant_label)),
        session_label=tuple(dict.fromkeys(args.session_label)),
        bids_filters=dict(args.bids_filters or {}),
        skip_bids_validation=args.skip_bids_validation,
        bids_database_dir=(
            args.bids_database_dir.expanduser().absolute() if args.bids_database_dir else None
        ),
        work_dir=args.work_dir.expanduser().absolute() if args.work_dir else None,
        nprocs=nprocs,
        omp_nthreads=omp,
        mem_gb=args.mem_gb,
        plugin=args.plugin,
        plugin_args=plugin_args,
        stop_on_first_crash=args.stop_on_first_crash,
        reports_only=args.reports_only,
        verbosity=args.verbosity,
        quiet=args.quiet,
        resource_monitor=args.resource_monitor,
        denoise=args.denoise,
        denoise_full_fov=args.denoise_full_fov,
        degibbs=args.degibbs,
        fit_method=args.fit_method,
        b0_threshold=args.b0_threshold,
        dti_max_bval=args.dti_max_bval,
        template=args.template,
        atlas=args.atlas,
        atlas_labels=args.atlas_labels,
        csf_md_threshold=args.csf_md_threshold,
        gm_threshold=args.gm_threshold,
        combine_runs=args.combine_runs,
        longitudinal=args.longitudinal,
        baseline_session=args.baseline_session,
        followup_session=args.followup_session,
        outcome_sessions=(tuple(dict.fromkeys(args.outcome_sessions))
                          if args.outcome_sessions else None),
        outcome_baseline_session=args.outcome_baseline_session,
        sessions=tuple(dict.fromkeys(args.sessions)) if args.sessions else None,
        group_column=args.group_column,
        treatment_label=args.treatment_label,
        control_label=args.control_label,
        outcomes=tuple(args.outcomes) if args.outcomes else None,
        covariates=tuple(args.covariates) if args.covariates is not None else None,
        params=tuple(dict.fromkeys(p.lower() if p.lower() in TENSOR_PARAMS else p
                                   for p in args.params)),
        min_coverage=args.min_coverage,
        roi_statistic=args.roi_statistic,
        response_threshold=args.response_threshold,
        remission_thresholds=remission,
        n_permutations=args.n_permutations,
        seed=args.seed,
    )


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse a command line into a :class:`Config`.

    Checks that need no dataset are done here; those that need the dataset are in
    :func:`bids_ketamine.bids.check_inputs`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.baseline_session and args.baseline_session == args.followup_session:
        parser.error(
            f"--baseline-session and --followup-session are both '{args.baseline_session}'; "
            "give two different sessions"
        )
    if args.quiet and args.verbosity:
        parser.error("--quiet and --verbose contradict each other; give one of them")
    if args.atlas != "ketamine7" and not Path(args.atlas).suffix and "/" not in args.atlas:
        parser.error(
            f"--atlas '{args.atlas}' is neither 'ketamine7' nor a NIfTI file; give the path "
            "of a label image in template space (.nii or .nii.gz)"
        )
    return config_from_args(args)
