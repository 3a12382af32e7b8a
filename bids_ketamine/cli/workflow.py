"""Running the participant workflow: nipype execution settings, environment, output checks.

The graph is built by :func:`bids_ketamine.workflows.base.init_bids_ketamine_wf` (wiring only);
this module decides how it runs (plugin and its arguments, crash files, resource monitor, the
progress display), records the options of the run (``sub-<s>/log/config.json``) and the
methods text of the graph built (``sub-<s>/log/methods.md``), and checks
afterwards that every series wrote its ROI table.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from pathlib import Path

from bids_ketamine import __version__
from bids_ketamine.bids import DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.derivatives import config_path, methods_path
from bids_ketamine.errors import InputError
from bids_ketamine.utils.atomic import atomic_write_text
from bids_ketamine.utils.multiproc import MultiProcPlugin
from bids_ketamine.utils.progress import display_options
from bids_ketamine.utils.workflow_progress import CALLBACK_PLUGINS, WorkflowProgress, expected_nodes
from bids_ketamine.cli.preflight import plan_fieldmaps, preflight, usable_t1w
from bids_ketamine.workflows.base import init_bids_ketamine_wf
from bids_ketamine.workflows.outputs import output_path

LOGGER = logging.getLogger("bids_ketamine.workflows.base")


def write_run_records(workflow, config: Config, subjects: list[str]) -> None:
    """Record, per participant, the options of the run (``log/config.json``) and the methods text
    of the workflow built for it (``log/methods.md``: the ``__desc__`` of every sub-workflow,
    :meth:`~bids_ketamine.workflows.literate.LiterateWorkflow.visit_desc`)."""
    for subject in subjects:
        record = config_path(config.output_dir, subject)
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, config.to_json() + "\n")
        atomic_write_text(methods_path(config.output_dir, subject),
                          workflow.get_node(f"sub_{subject}_wf").visit_desc() + "\n")


#: The file in the work directory that records which version of the app filled it.
WORK_DIR_STAMP = "bids_ketamine_version.json"


def stamp_work_dir(work_dir: Path) -> None:
    """Warn when ``work_dir`` was filled by another version of the app, then record this one.

    nipype reuses a node's cached result when the node's inputs are unchanged, whatever code
    produced it, so after an upgrade a reused work directory mixes results of both versions.
    """
    stamp = Path(work_dir) / WORK_DIR_STAMP
    try:
        previous = json.loads(stamp.read_text()).get("version") if stamp.exists() else None
    except (OSError, ValueError, AttributeError):
        previous = "unknown"
    if previous is not None and previous != __version__:
        LOGGER.warning("work directory %s was filled by bids-ketamine %s and this is %s: steps whose inputs "
                       "are unchanged reuse the results of %s; to recompute everything, delete it or pass "
                       "another -w/--work-dir", work_dir, previous, __version__, previous)
    atomic_write_text(stamp, json.dumps({"version": __version__}) + "\n")


def run_participant_workflows(config: Config, series_by_subject: dict[str, list[DwiSeries]],
                              layout=None) -> list[str]:
    """Check, build and run the participant workflow; return one message per failure.

    ``layout`` (the input dataset's) is where the participants' T1w images are looked for;
    without it every participant takes the DWI-only path.
    """
    usable, problems = preflight(config, series_by_subject)
    if not usable:
        raise InputError("no DWI series can be processed: " + "; ".join(problems))
    work_dir = config.work_dir or (config.output_dir.parent / "work")
    config = config.replace(work_dir=work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp_work_dir(work_dir)
    t1w_by_subject = usable_t1w(config, layout, list(usable)) if layout is not None else {}
    usable = plan_fieldmaps(config, usable, series_by_subject, t1w_by_subject)
    workflow, template, atlas = init_bids_ketamine_wf(config, usable, t1w_by_subject)
    workflow.base_dir = str(work_dir)
    crash_dir = work_dir / "crashes"
    workflow.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": config.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        "hash_method": "content",
        "create_report": False,
        "poll_sleep_duration": 1 if config.plugin.startswith(("SLURM", "SGE", "PBS", "LSF")) else 0.1,
    }
    if config.resource_monitor:
        # nipype's resource monitor (psutil): peak memory and CPU of every node in its result
        from nipype import config as nipype_config

        nipype_config.enable_resource_monitor()
        workflow.config["monitoring"] = {"enabled": True}
        workflow.config["execution"]["resource_monitor_frequency"] = 0.5
    else:
        workflow.config["monitoring"] = {"enabled": False}
    plugin_args = dict(config.plugin_args)
    # nipype's cluster plugins read LOGNAME, unset in some containers and batch shells
    os.environ.setdefault("LOGNAME", getpass.getuser())
    if config.plugin.endswith("Graph"):
        # nipype 1.11's graph plugins fail without it
        plugin_args.setdefault("dont_resubmit_completed_jobs", True)
    if config.plugin in ("MultiProc", "LegacyMultiProc"):
        plugin_args.setdefault("n_procs", config.nprocs)
        if config.mem_gb:
            plugin_args.setdefault("memory_gb", config.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
    write_run_records(workflow, config, list(usable))
    LOGGER.info("Template %s (%s), atlas %s; running %d participant(s) with %s",
                template.name, template.source, atlas.name, len(usable), config.plugin)
    started = time.time()
    # nipype's resource monitor writes its sample files (.proc-*) into the current folder
    monitor_dir = work_dir / "resource_monitor"
    previous_dir = os.getcwd()
    if config.resource_monitor:
        monitor_dir.mkdir(exist_ok=True)
        os.chdir(monitor_dir)
    progress, display = None, display_options(config)
    if config.plugin in CALLBACK_PLUGINS and display["mode"] != "off":
        progress = WorkflowProgress(expected_nodes(workflow), **display)
        plugin_args["status_callback"] = progress
    try:
        # MultiProc through our subclass: nipype's spends a core on garbage collection
        plugin = (MultiProcPlugin(plugin_args=plugin_args) if config.plugin == "MultiProc"
                  else config.plugin)
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:
        LOGGER.error("Some nodes failed: %s", str(err).splitlines()[0])
        if config.stop_on_first_crash:
            problems.append(f"processing stopped at the first crash; crash files in {crash_dir}")
    finally:
        if progress is not None:
            progress.close()
        os.chdir(previous_dir)
    LOGGER.info("Participant workflow finished in %.1f s", time.time() - started)
    if config.plugin.endswith("Graph"):
        # Graph plugins return once every job is queued: the outputs appear as the jobs end.
        LOGGER.info("All jobs were submitted to the scheduler with %s; when they have finished, "
                    "rerun with --reports-only to build the reports", config.plugin)
        return problems
    for subject, series in usable.items():
        for item in series:
            table = output_path(config.output_dir, item, "roistats_file", tpl=template.name,
                                atlas=atlas.name, denoise=config.denoise)
            if not table.exists():
                problems.append(f"{item.prefix}: processing failed (no {table.name}); see the crash "
                                f"files in {crash_dir}, fix the cause and rerun (finished steps are reused)")
    return problems
