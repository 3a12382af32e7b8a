"""Progress of long work: what is running, how far along, how long to go.

:class:`Progress` counts the finished items of one long task (workflow nodes, cross-validation
fits) and shows them in one of three modes (:func:`progress_mode`):

- ``"bar"`` when stderr is a terminal: a live tqdm bar, redrawn every second, with console log
  messages printed above it;
- ``"log"`` otherwise (batch jobs, cluster logs): plain log lines through the
  ``bids_ketamine.progress`` logger, one at each milestone (a participant finished, a node
  failed; with ``--verbose`` also each finished node group) and a status line at most once
  every :data:`LOG_INTERVAL_S` seconds, also while a long node runs without events;
- ``"off"`` with ``--quiet``.

:class:`WorkflowProgress` is nipype's ``status_callback`` (called by the Linear, MultiProc and
batch-scheduler plugins with ``(node, "start" | "end" | "exception")``): it counts nodes and
participants against the totals of the workflow graph.  Nothing is written to disk.

Kept as one module (~560 lines): the counter, its terminal and log displays and the nipype
callback share one display state.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Callable, TextIO

LOGGER = logging.getLogger("bids_ketamine.progress")

#: Longest silence between two status lines in ``"log"`` mode (seconds).
LOG_INTERVAL_S = 60.0
#: Redraw period of the terminal bar (seconds), so elapsed time and ETA stay current.
BAR_REFRESH_S = 1.0
#: Columns and lines assumed on a terminal that does not report its size.
FALLBACK_SIZE = (120, 24)
#: nipype plugins that call ``status_callback`` (the Graph plugins submit everything at once).
CALLBACK_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SGE", "PBS", "LSF",
                    "Condor", "OAR", "IPython")
#: Typical seconds of the participant workflow's nodes (one series, small simulated preset,
#: benchmarks/results/participant_small.json): the weights of the ETA (:func:`node_cost`).
NODE_SECONDS = {
    "denoise": 9.5, "motion_correct": 8.8, "template_registration": 6.5, "load_dwi": 1.2,
    "mask_to_atlas": 1.1, "brain_mask": 1.0, "midpoint": 0.9, "fit_tensor": 0.7,
    "degibbs": 3.0, "maps_to_template": 0.4, "coverage": 0.35, "gm_to_native": 0.3,
    "atlas_to_native": 0.25, "roistats": 0.05,
}
#: Cost of any other node, and of a node run in nipype's main process.
DEFAULT_NODE_SECONDS = 0.5
MAIN_PROCESS_COST = 0.01
_PARTICIPANT_WF = re.compile(r"^sub_(?P<label>[A-Za-z0-9]+)_wf$")

#: Held while a display changes or writes.  nipype's MultiProc forks its workers while the
#: heartbeat thread may be writing: forking waits for the lock, so no child starts with the
#: stream's lock held by a thread that does not exist in it.
_DISPLAY_LOCK = threading.RLock()
#: Bars on screen.  A forked worker inherits them: they are disabled there, or the worker's
#: log messages (written above the bar) would redraw its stale copy.
_OPEN_BARS: list = []


def _after_fork_in_child() -> None:
    for bar in _OPEN_BARS:
        bar.disable = True
    _DISPLAY_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_DISPLAY_LOCK.acquire, after_in_parent=_DISPLAY_LOCK.release,
                        after_in_child=_after_fork_in_child)


def progress_mode(quiet: bool, stream: TextIO | None = None) -> str:
    """How progress is shown: ``"off"``, ``"bar"`` (a terminal) or ``"log"``.

    Parameters
    ----------
    quiet : bool
        ``--quiet``: no progress at all.
    stream : file, optional
        Where the bar would go (default ``sys.stderr``).
    """
    if quiet:
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # closed or file-less streams
        return "log"


def display_options(config) -> dict:
    """:class:`Progress` options of a run: the mode from ``--quiet`` and stderr, ``--verbose``."""
    return {"mode": progress_mode(config.quiet), "verbose": config.verbosity >= 1}


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour); ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    whole = int(round(max(seconds, 0.0)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_console(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler)
            and getattr(handler, "stream", None) in (sys.stdout, sys.stderr))


class _AboveBar(logging.Handler):
    """A console log handler's stand-in while a bar is shown: same level, filters and format,
    written above the bar (``tqdm.write``)."""

    def __init__(self, handler: logging.StreamHandler):
        super().__init__(handler.level)
        self.setFormatter(handler.formatter)
        self.filters = list(handler.filters)
        self.stream = handler.stream
        self._pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            if os.getpid() == self._pid:
                tqdm.write(self.format(record), file=self.stream)
            else:  # a forked worker: erase the bar's line; the main process redraws it
                self.stream.write(f"\r\x1b[K{self.format(record)}\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class Progress:
    """Count the finished items of one long task and show them (see the module docstring).

    Parameters
    ----------
    description : str
        What the task is (``"participant level"``, ``"prediction of madrs_change"``).
    total : int
        Items to finish.
    total_work : float, optional
        Their expected cost in any unit (default: one per item); the ETA is the elapsed time
        per unit of work done, times the work left.
    unit : str
        Name of an item, singular (``"node"``, ``"fit"``).
    mode : {"bar", "log", "off"}
    status : str
        What is going on, shown after the counts (updated by :meth:`update`).
    verbose : bool
        Also log the minor milestones (``--verbose``).
    interval : float
        Longest silence between two status lines in ``"log"`` mode (seconds).
    stream : file, optional
        The bar's stream (default ``sys.stderr``).
    clock : callable
        Seconds since some origin (tests pass a fake clock).
    heartbeat : bool
        Redraw the bar / write overdue status lines from a background thread when no item
        finishes for a while (a long node).
    """

    def __init__(self, description: str, total: int, *, total_work: float | None = None,
                 unit: str = "item", mode: str = "log", status: str = "",
                 verbose: bool = False, interval: float = LOG_INTERVAL_S,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 heartbeat: bool = True):
        if mode not in ("bar", "log", "off"):
            raise ValueError(f"progress mode must be 'bar', 'log' or 'off', not {mode!r}")
        self.description = description
        self.total = int(total)
        self.unit = unit
        self.mode = mode
        self.verbose = verbose
        self.interval = float(interval)
        self.done = 0
        self.status = status
        self.total_work = float(self.total if total_work is None else total_work)
        self.work_done = 0.0
        self.in_progress = 0.0  # work of the items started and not finished
        self._worked = 0.0  # work of the items that took time (not found cached): the ETA's rate
        self.clock = clock
        self.started = clock()
        self._last_line = self.started
        self._lock = _DISPLAY_LOCK
        self._closed = False
        self._bar = None
        self._redirected: list = []
        self._stop = threading.Event()
        self._thread = None
        if mode == "bar":
            self._open_bar(stream if stream is not None else sys.stderr)
        if mode != "off" and heartbeat:
            period = BAR_REFRESH_S if mode == "bar" else min(self.interval / 4, 15.0)
            self._thread = threading.Thread(target=self._beat, args=(period,), daemon=True,
                                            name="bids_ketamine-progress")
            self._thread.start()

    # ----------------------------------------------------------------------------- display
    def _open_bar(self, stream: TextIO) -> None:
        from tqdm import tqdm

        try:  # tqdm draws nothing on a terminal that reports no size (0 x 0)
            sized = min(os.get_terminal_size(stream.fileno())) > 0
        except (AttributeError, OSError, ValueError):
            sized = False
        self._bar = tqdm(total=self.total, desc=self.description, unit=self.unit, file=stream,
                         dynamic_ncols=sized, ncols=None if sized else FALLBACK_SIZE[0],
                         nrows=None if sized else FALLBACK_SIZE[1], leave=True, mininterval=0,
                         postfix=self.timing(),
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                    "{unit}s{postfix}")
        _OPEN_BARS.append(self._bar)
        # console log messages (ours and nipype's) go above the bar instead of through it
        self._redirected = []
        for name in ("", "nipype.workflow", "nipype.interface", "nipype.utils"):
            logger = logging.getLogger(name)
            handlers = list(logger.handlers)
            logger.handlers = [_AboveBar(h) if _is_console(h) else h for h in handlers]
            self._redirected.append((logger, handlers))
        self._draw()

    def _draw(self) -> None:
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(self.timing(), refresh=True)

    def _beat(self, period: float) -> None:
        while not self._stop.wait(period):
            with self._lock:
                if self._closed:
                    return
                if self.mode == "bar":
                    self._draw()
                elif self.clock() - self._last_line >= self.interval:
                    self.log(self.line())

    def log(self, text: str) -> None:
        """Write one line to the progress log (in every mode but ``"off"``)."""
        if self.mode == "off":
            return
        self._last_line = self.clock()
        LOGGER.info("%s", text)

    # ----------------------------------------------------------------------------- numbers
    def eta(self) -> float | None:
        """Seconds left: elapsed time per unit of work that took time, times the work left.

        Items running now count as half done: without it the estimate would soar while a
        few long items (denoising, registration) run and nothing finishes.
        """
        if self.done >= self.total:
            return 0.0
        credited = self._worked + self.in_progress / 2
        if credited <= 0:
            return None
        elapsed = self.clock() - self.started
        left = self.total_work - self.work_done - self.in_progress / 2
        return elapsed / credited * max(left, 0.0)

    def timing(self) -> str:
        """``<status>, elapsed M:SS, ETA M:SS`` (the bar's postfix)."""
        parts = [self.status] if self.status else []
        parts.append(f"elapsed {format_duration(self.clock() - self.started)}")
        parts.append(f"ETA {format_duration(self.eta())}")
        return ", ".join(parts)

    def line(self) -> str:
        """One status line: ``<description>: 12/40 nodes (30 %), <status>, elapsed, ETA``."""
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.description}: {self.done}/{self.total} {self.unit}s ({percent:.0f} %), "
                f"{self.timing()}")

    # ----------------------------------------------------------------------------- updates
    def update(self, advance: int = 0, *, work: float | None = None, instant: bool = False,
               in_progress: float | None = None, status: str | None = None,
               milestone: str | None = None, minor: bool = False) -> None:
        """Record finished items and show the new state.

        Parameters
        ----------
        advance : int
            Items just finished.
        work : float, optional
            Their cost (default: ``advance``, one per item).
        instant : bool
            They took no time (found cached): they count as done but not in the ETA's rate.
        in_progress : float, optional
            Work of the items running now.
        status : str, optional
            New status text (e.g. what is running now).
        milestone : str, optional
            An event worth a line of its own (a participant finished).
        minor : bool
            The milestone is shown only when verbose.
        """
        with self._lock:
            if self._closed:
                return
            self.done += advance
            work = float(advance if work is None else work)
            self.work_done += work
            if not instant:
                self._worked += work
            if in_progress is not None:
                self.in_progress = float(in_progress)
            if status is not None:
                self.status = status
            show = milestone is not None and (self.verbose or not minor)
            if self.mode == "bar":
                if show:
                    self._bar.write(milestone, file=self._bar.fp)
                self._draw()
            elif self.mode == "log":
                if show:
                    self.log(f"{milestone}; {self.line()}")
                elif self.clock() - self._last_line >= self.interval:
                    self.log(self.line())

    def close(self, summary: str | None = None) -> None:
        """Stop the display; in ``"log"`` mode, write a last line (``summary`` or the status)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if self.mode == "bar":
                self._draw()
                self._bar.close()
                _OPEN_BARS.remove(self._bar)
                for logger, handlers in self._redirected:
                    logger.handlers = handlers
                if summary:
                    LOGGER.info("%s", summary)
            elif self.mode == "log":
                self.log(summary or self.line())
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StageProgress:
    """A ``progress(stage, done, total)`` callback shown by a :class:`Progress`.

    For computations that report their own counts in stages (the group level's
    cross-validation folds, then permutations): the display opens at the first call; a line
    is logged when the stage's kind changes (``"outer fold 20/20 done"``).

    Parameters
    ----------
    description : str
    unit : str
    **options
        Passed to :class:`Progress`.
    """

    def __init__(self, description: str, unit: str = "item", **options):
        self.description = description
        self.unit = unit
        self.options = options
        self.progress: Progress | None = None
        self._stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` items are finished, now in ``stage``."""
        if self.progress is None:
            self.progress = Progress(self.description, total, unit=self.unit, **self.options)
        kind = stage.rsplit(" ", 1)[0]
        milestone = None
        if self._stage and kind != self._stage.rsplit(" ", 1)[0]:
            milestone = f"{self._stage} done"
        self._stage = stage
        self.progress.update(done - self.progress.done, status=stage, milestone=milestone)

    def close(self) -> None:
        """Stop the display (no-op when it never opened)."""
        if self.progress is not None:
            self.progress.close()


def _short_name(parts: list[str]) -> str:
    """``dwi_preproc_ses-pre_wf.denoise`` -> ``dwi_preproc_ses-pre/denoise``."""
    return "/".join(part[:-3] if part.endswith("_wf") else part for part in parts)


def node_cost(node) -> float:
    """A node's expected cost, for the ETA (seconds on the small simulated preset).

    From :data:`NODE_SECONDS` by the node's name (its series key stripped); a node run in
    nipype's main process (a list merge, a derivatives sink) costs :data:`MAIN_PROCESS_COST`,
    any other node :data:`DEFAULT_NODE_SECONDS`.  Only the ratios matter: the ETA scales them
    by the pace of the nodes already finished.
    """
    name = node.name
    for prefix, seconds in NODE_SECONDS.items():
        if name == prefix or name.startswith(prefix + "_"):
            return seconds
    return MAIN_PROCESS_COST if node.run_without_submitting else DEFAULT_NODE_SECONDS


def expected_nodes(workflow) -> dict[str, tuple[str | None, float]]:
    """Nodes that nipype will run, by full name: (participant label or None, cost).

    Identity nodes without iterables (``inputnode``/``outputnode``) are removed by nipype
    before running and are not counted.  The cost is :func:`node_cost`.
    """
    from nipype.interfaces.utility import IdentityInterface

    nodes = {}
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if (isinstance(node.interface, IdentityInterface) and node.iterables is None
                and not hasattr(node, "joinsource")):
            continue
        match = _PARTICIPANT_WF.match(name.split(".", 1)[0])
        nodes[f"{workflow.name}.{name}"] = (match.group("label") if match else None,
                                            node_cost(node))
    return nodes


class WorkflowProgress:
    """nipype's ``status_callback``: nodes and participants finished, the node running now.

    Parameters
    ----------
    nodes : dict
        Full node name -> (participant label, cost) (:func:`expected_nodes`).
    **options
        Passed to :class:`Progress` (``mode``, ``verbose``, ``interval``, ``clock``...).
    """

    def __init__(self, nodes: dict[str, str | None], **options):
        self.nodes = {name: label for name, (label, _) in nodes.items()}
        self.costs = {name: cost for name, (_, cost) in nodes.items()}
        self.left = {}
        for label in self.nodes.values():
            if label is not None:
                self.left[label] = self.left.get(label, 0) + 1
        self.participants = len(self.left)
        self.finished_participants: list[str] = []
        self.failed_participants: list[str] = []
        self.failed_nodes: list[str] = []
        self._groups_left: dict[tuple, int] = {}
        for name in self.nodes:
            group = self._group(name)
            self._groups_left[group] = self._groups_left.get(group, 0) + 1
        self._running: dict[str, float] = {}
        self._ended: set[str] = set()
        self.progress = Progress("participant level", len(self.nodes), unit="node",
                                 total_work=sum(self.costs.values()), status=self._status(),
                                 **options)
        if self.progress.mode == "log":
            self.progress.log(f"{self.progress.description}: {self.participants} "
                               f"participant(s), {len(self.nodes)} nodes to run or reuse")

    # nipype keeps the plugin arguments, this callback included, in every MapNode
    # (``node.use_plugin``), deep-copies the node and pickles it to a worker.  The copy in the
    # main process is this reporter; the one a worker receives is inert (it shows nothing:
    # the main process reports the events).
    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        return {"_inert": True}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @staticmethod
    def _group(name: str) -> tuple:
        """A node's group: its sub-workflow under the participant, or the node itself."""
        parts = name.split(".")
        return tuple(parts[1:3])

    def _label(self, name: str) -> str:
        parts = name.split(".")[1:]
        label = self.nodes.get(name)
        if label is not None:
            return f"sub-{label} {_short_name(parts[1:])}"
        return _short_name(parts)

    def _status(self) -> str:
        finished = len(self.finished_participants)
        text = f"participants {finished}/{self.participants}"
        if self.failed_participants:
            text += f" ({len(self.failed_participants)} failed)"
        if self._running:
            newest = max(self._running, key=self._running.get)
            text += f", running {self._label(newest)}"
            if len(self._running) > 1:
                text += f" (+{len(self._running) - 1})"
        return text

    def __call__(self, node, status: str) -> None:
        """Record one nipype event (``node``: the executed node, ``status``: its event)."""
        if self.__dict__.get("_inert"):
            return
        name = node.fullname
        if status == "start":
            self._running[name] = self.progress.clock()
            self.progress.update(in_progress=self._running_work(), status=self._status())
            return
        if status not in ("end", "exception") or name in self._ended:
            # nipype reports "end" after "exception" for nodes run in the main process
            return
        self._ended.add(name)
        started = self._running.pop(name, None)
        known = name in self.nodes
        label = self.nodes.get(name)
        milestone, minor = None, False
        if status == "exception":
            self.failed_nodes.append(name)
            if label is not None and label not in self.failed_participants:
                self.failed_participants.append(label)
            milestone = f"{self._label(name)} failed"
        elif known:
            group = self._group(name)
            self._groups_left[group] -= 1
            if label is not None:
                self.left[label] -= 1
                if self.left[label] == 0 and label not in self.failed_participants:
                    self.finished_participants.append(label)
                    milestone = (f"sub-{label} finished ({len(self.finished_participants)}/"
                                 f"{self.participants} participants)")
            if milestone is None and self._groups_left[group] == 0:
                prefix = f"sub-{label} " if label is not None else ""
                members = group[1:] if label is not None else group
                milestone, minor = f"{prefix}{_short_name(list(members))} done", True
        self.progress.update(1 if known else 0, work=self.costs.get(name, 0.0),
                             instant=started is None, in_progress=self._running_work(),
                             status=self._status(), milestone=milestone, minor=minor)

    def _running_work(self) -> float:
        return sum(self.costs.get(name, 0.0) for name in self._running)

    def summary(self) -> str:
        """The last line: participants and nodes finished, failures, time."""
        progress = self.progress
        text = (f"{progress.description}: {len(self.finished_participants)}/{self.participants} "
                f"participants and {progress.done}/{progress.total} nodes finished")
        if self.failed_nodes:
            text += (f"; {len(self.failed_nodes)} node(s) failed in "
                     f"{len(self.failed_participants)} participant(s)")
        return text + f", in {format_duration(progress.clock() - progress.started)}"

    def close(self) -> None:
        """Stop the display and write the summary line."""
        self.progress.close(self.summary())
