"""The command line of ``bids-ketamine`` (the public contract, docs/interfaces.md).

``build_parser()`` returns the :class:`argparse.ArgumentParser`; ``parse_args()`` turns a
command line into a frozen :class:`bids_ketamine.config.Config`, checking what can be
checked without opening the dataset.  Errors found here end the program through
``parser.error`` (one line, exit status 2), as every argparse program does.

The argument value types are in :mod:`.arg_types`, the group-level arguments in
:mod:`.group_args`; the participant-level and execution arguments are here, in the order the
public contract lists them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from bids_ketamine import __version__
from bids_ketamine.cli.arg_types import (
    bids_filters,
    config_default,
    existing_file,
    fraction_or_none,
    json_or_file,
    label_type,
    positive_float,
    positive_int,
    threshold_or_none,
)
from bids_ketamine.cli.group_args import add_group_arguments
from bids_ketamine.config import (
    DEFAULT_REMISSION,
    DENOISE_METHODS,
    FIT_METHODS,
    IGNORABLE_INPUTS,
    Config,
)
from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.utils.labels import strip_label  # noqa: F401 (strip_label: API)

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
        type=label_type("sub"),
        default=list(config_default("participant_label")),
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=label_type("ses"),
        default=list(config_default("session_label")),
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    sel.add_argument(
        "--bids-filter-file",
        dest="bids_filters",
        type=bids_filters,
        default=None,
        metavar="FILE",
        help='JSON file of pybids filters for the DWI query, e.g. {"dwi": {"acquisition": "ortho"}}',
    )
    sel.add_argument(
        "--ignore", nargs="+", action="extend", choices=IGNORABLE_INPUTS, default=None,
        help="inputs to leave unused: 't1w' processes the DWI alone (b=0-to-template "
        "registration; default: a participant's T1w is used when present); 'fieldmaps' leaves "
        "susceptibility distortion uncorrected (default: corrected by PEPOLAR when reverse "
        "phase-encoded b=0 images are present, else by a GRE field map; with --use-syn-sdc every "
        "series is then corrected from the T1w). Repeatable: --ignore t1w --ignore fieldmaps "
        "is --ignore t1w fieldmaps",
    )
    sel.add_argument(
        "--use-syn-sdc", action="store_true", default=config_default("use_syn_sdc"),
        help="EXPERIMENTAL: estimate susceptibility distortion from the participant's T1w (nonlinear registration "
        "restricted to the phase-encoding axis, as fMRIPrep's option) for DWI series without "
        "reverse phase-encoded images or a GRE field map; needs a T1w and the series' "
        "PhaseEncodingDirection and TotalReadoutTime (default: such series stay uncorrected; "
        "on real test data it did not agree with a reverse phase-encoding estimate: docs/anatomy.md)",
    )
    sel.add_argument(
        "--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation", action="store_true",
        help="do not validate the input dataset against the BIDS specification")
    sel.add_argument(
        "--bids-database-dir",
        type=Path,
        default=config_default("bids_database_dir"),
        metavar="DIR",
        help="directory for a pybids database, reused by later runs (faster on large datasets)",
    )

    run = parser.add_argument_group("Execution and resources")
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        default=config_default("work_dir"),
        metavar="DIR",
        help="nipype working directory; rerunning with the same one resumes "
        "(default: OUTPUT_DIR/../work or ./work)",
    )
    run.add_argument(
        "--nprocs",
        "--n-cpus",
        "--nthreads",
        dest="nprocs",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="maximum number of processes run at once by the MultiProc plugin",
    )
    run.add_argument(
        "--omp-nthreads",
        type=positive_int,
        default=None,
        metavar="N",
        help="threads per process for numerical libraries (default: min(nprocs, 8))",
    )
    run.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=positive_float,
        default=config_default("mem_gb"),
        metavar="GB",
        help="upper bound on memory used by the MultiProc plugin (default: all available)",
    )
    run.add_argument(
        "--plugin",
        choices=NIPYPE_PLUGINS,
        default=config_default("plugin"),
        help="nipype execution plugin; SLURM/SLURMGraph/SGE/PBS hand nodes to a scheduler",
    )
    run.add_argument(
        "--plugin-args",
        type=json_or_file,
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
    # -v and -q contradict each other: argparse refuses both, and tools/make_boutiques.py
    # turns the group into Boutiques' "disables-inputs"
    logging_options = run.add_mutually_exclusive_group()
    logging_options.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        default=config_default("verbosity"),
        help="more log messages (-vv for debugging) and a progress line per finished node group",
    )
    logging_options.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=config_default("quiet"),
        help="no progress display and only warnings and errors in the log",
    )

    prep = parser.add_argument_group("Participant level: preprocessing and tensor fitting")
    prep.add_argument(
        "--denoise",
        choices=DENOISE_METHODS,
        default=config_default("denoise"),
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
        default=config_default("fit_method"),
        help="tensor fitting method",
    )
    prep.add_argument(
        "--b0-threshold",
        type=float,
        default=config_default("b0_threshold"),
        metavar="B",
        help="b-values at or below this count as b=0 (s/mm^2)",
    )
    prep.add_argument(
        "--dti-max-bval",
        type=positive_float,
        default=config_default("dti_max_bval"),
        metavar="B",
        help="fit the tensor to b=0 and shells at or below this b-value (s/mm^2)",
    )
    prep.add_argument(
        "--combine-runs",
        choices=["separate", "average"],
        default=config_default("combine_runs"),
        help="with several DWI runs (run-<n>, same acq-/dir-) in a session: 'separate' "
        "processes each run as its own series (one ROI table per run); 'average' denoises each "
        "run, joins them, motion-corrects every volume to one reference and fits one tensor to "
        "them all (one series and one ROI table without the run- entity)",
    )

    reg = parser.add_argument_group("Participant level: templates, atlases and ROIs")
    reg.add_argument(
        "--template",
        default=config_default("template"),
        metavar="NAME",
        help="template space (TemplateFlow name). Without TemplateFlow files, the "
        "nilearn-shipped MNI152NLin2009aSym is used and recorded",
    )
    reg.add_argument(
        "--atlas",
        default=config_default("atlas"),
        metavar="NAME|FILE",
        help="ROI set: 'ketamine7' (7 ROIs of the reference study) or a NIfTI label image "
        "in template space with a TSV of labels (see --atlas-labels)",
    )
    reg.add_argument(
        "--atlas-labels",
        type=existing_file,
        default=config_default("atlas_labels"),
        metavar="TSV",
        help="labels of a user atlas: columns 'index' and 'name' (default: the atlas "
        "path with .tsv)",
    )
    reg.add_argument(
        "--csf-md-threshold",
        type=threshold_or_none,
        default=config_default("csf_md_threshold"),
        metavar="MD|none",
        help="exclude ROI voxels whose MD exceeds this (um^2/ms) as CSF-contaminated "
        "(healthy grey matter is 0.7-0.9, CSF 3.0); 'none' keeps every voxel",
    )
    reg.add_argument(
        "--gm-threshold",
        type=fraction_or_none,
        default=config_default("gm_threshold"),
        metavar="P|none",
        help="keep ROI voxels whose grey-matter fraction is at least P: the participant's own, "
        "from the T1w segmentation averaged over each DWI voxel, when there is a T1w; else the "
        "template's probability, warped into the session. 'none' keeps white matter and CSF inside "
        "the atlas labels",
    )
    reg.add_argument(
        "--no-longitudinal", dest="longitudinal", action="store_false",
        help="register each session to the template on its own instead of through the "
        "within-subject midpoint space (not recommended: biased change)")

    add_group_arguments(parser)
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
        ignore=tuple(dict.fromkeys(config_default("ignore") if args.ignore is None else args.ignore)),
        use_syn_sdc=args.use_syn_sdc,
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
    if args.atlas != "ketamine7" and not Path(args.atlas).suffix and "/" not in args.atlas:
        parser.error(
            f"--atlas '{args.atlas}' is neither 'ketamine7' nor a NIfTI file; give the path "
            "of a label image in template space (.nii or .nii.gz)"
        )
    return config_from_args(args)
