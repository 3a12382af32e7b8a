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

:class:`WorkflowProgress` (in :mod:`bids_ketamine.utils.workflow_progress`, re-exported here)
is nipype's ``status_callback`` (called by the Linear, MultiProc and
batch-scheduler plugins with ``(node, "start" | "end" | "exception")``): it counts nodes and
participants against the totals of the workflow graph.  Nothing is written to disk.

Kept as one module (~390 lines): the counter and its terminal and log displays share one
display state (the lock held across forks, the open bars).
"""

from __future__ import annotations

import logging
import os
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
