"""nipype's ``status_callback`` for the participant level: nodes and participants finished.

:class:`WorkflowProgress` counts the nodes of the workflow graph (:func:`expected_nodes`,
weighted by :func:`node_cost` for the ETA) and shows them through
:class:`bids_ketamine.utils.progress.Progress`.
"""

from __future__ import annotations

import re

from bids_ketamine.utils.progress import Progress, format_duration

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
