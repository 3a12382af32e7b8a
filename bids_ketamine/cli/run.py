"""Entry point of ``bids-ketamine``: parse, check the inputs, run a level, build the reports.

Errors the user can fix (:class:`~bids_ketamine.errors.InputError`) are printed as one line
(``bids-ketamine: error: ...``) with exit status 1, never a traceback.  A participant-level
run whose series or nodes failed exits with status 1 after processing everything it could
(unless ``--stop-on-first-crash``), listing what failed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Sequence

from bids_ketamine import __version__
from bids_ketamine.cli.parser import parse_args
from bids_ketamine.config import Config
from bids_ketamine.derivatives import TENSOR_PARAMS
from bids_ketamine.errors import InputError

LOGGER = logging.getLogger("bids_ketamine")


def setup_logging(verbosity: int, quiet: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with -vv, WARNING with -q; quiet nipype unless verbose."""
    level = logging.WARNING if quiet else logging.DEBUG if verbosity >= 2 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s [%(name)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    LOGGER.setLevel(level)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nipype_logger = logging.getLogger(name)
        nipype_logger.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
        nipype_logger.propagate = False  # nipype has its own handler: no duplicated lines
    for name in ("dipy", "bidsschematools"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


def _limit_threads(n_threads: int) -> None:
    """Cap BLAS/OpenMP threads of this process and its children."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(var, str(n_threads))


def dataset_description() -> dict:
    """Content of the derivatives' dataset_description.json."""
    return {
        "Name": "bids_ketamine derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "bids_ketamine",
            "Version": __version__,
            "Description": "Longitudinal grey-matter diffusion tensor ROI statistics and group models",
        }],
    }


def run_participant(config: Config) -> int:
    """Run the participant level; return the exit status."""
    from bids_ketamine.bids import check_bids_dir, check_output_dir, collect_dwi, load_layout
    from bids_ketamine.utils.atomic import write_dataset_description

    check_bids_dir(config.bids_dir)
    check_output_dir(config.bids_dir, config.output_dir)
    layout = load_layout(config.bids_dir, validate=not config.skip_bids_validation,
                         database_dir=config.bids_database_dir)
    series_by_subject = collect_dwi(layout, config.participant_label, config.session_label,
                                    config.bids_filters)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    if config.reports_only:
        return build_participant_reports(config, sorted(series_by_subject))

    write_dataset_description(config.output_dir, dataset_description())
    from bids_ketamine.cli.workflow import run_participant_workflows

    failed = run_participant_workflows(config, series_by_subject, layout)
    status = build_participant_reports(config, sorted(series_by_subject))
    if failed:
        for item in failed:
            print(f"bids-ketamine: error: {item}", file=sys.stderr)
        return 1
    return status


def build_participant_reports(config: Config, subjects: list[str]) -> int:
    """Build each participant's HTML report from the outputs on disk.

    The reports (mostly figures) are built in ``config.nprocs`` processes at once.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bids_ketamine.reports.participant import build_participant_report

    workers = max(1, min(int(config.nprocs or 1), len(subjects)))
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1 else None)
    submit = pool.submit if pool else _call_now
    futures = [(subject, submit(build_participant_report, config.output_dir, subject))
               for subject in subjects]
    status = 0
    for subject, future in futures:
        try:
            LOGGER.info("Report: %s", future.result())
        except Exception as err:  # noqa: BLE001 - a report must never hide the results
            LOGGER.error("Could not build the report of sub-%s: %s", subject, err)
            status = 1
    if pool:
        pool.shutdown()
    return status


def _call_now(function, *args):
    """``function(*args)`` as a finished :class:`concurrent.futures.Future`."""
    from concurrent.futures import Future

    future = Future()
    try:
        future.set_result(function(*args))
    except Exception as err:  # noqa: BLE001 - handed to the caller through the future
        future.set_exception(err)
    return future


def run_group(config: Config) -> int:
    """Run the group level; return the exit status."""
    from bids_ketamine.bids import check_bids_dir, check_group_inputs, check_output_dir

    check_bids_dir(config.bids_dir)
    check_output_dir(config.bids_dir, config.output_dir)
    check_output_dir(config.bids_dir, config.output_dir / "group")
    if {param.lower() for param in config.params} & set(TENSOR_PARAMS):
        check_group_inputs(config.output_dir, config.atlas_name)
    from bids_ketamine.reports.group import build_group_report

    if not config.reports_only:
        from bids_ketamine.group.run import run_group_level

        run_group_level(config)
    path = build_group_report(config.output_dir)
    LOGGER.info("Group report: %s", path)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``bids-ketamine``."""
    config = parse_args(argv)
    setup_logging(config.verbosity, config.quiet)
    _limit_threads(config.omp_nthreads)
    started = time.time()
    LOGGER.info("bids-ketamine %s, %s level, BIDS_DIR=%s OUTPUT_DIR=%s", __version__,
                config.analysis_level, config.bids_dir, config.output_dir)
    try:
        if config.analysis_level == "participant":
            status = run_participant(config)
        else:
            status = run_group(config)
    except InputError as err:
        print(f"bids-ketamine: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bids-ketamine: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    LOGGER.info("Finished in %.1f s with status %d", time.time() - started, status)
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
