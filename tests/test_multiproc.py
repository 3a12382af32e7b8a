"""The MultiProc plugin subclass (utils/multiproc.py): same results, collector walks less."""

from __future__ import annotations

import gc

import nipype.pipeline.engine as pe
from nipype.interfaces import utility as niu

from bids_ketamine.utils.multiproc import MultiProcPlugin


def _square(x):
    return x * x


def test_runs_a_graph_with_the_startup_objects_frozen(tmp_path):
    workflow = pe.Workflow(name="squares", base_dir=str(tmp_path))
    merge = pe.Node(niu.Merge(3), name="merge", run_without_submitting=True)
    for index in range(3):
        node = pe.Node(niu.Function(input_names=["x"], output_names=["y"], function=_square),
                       name=f"square{index}")
        node.inputs.x = index + 2
        workflow.connect(node, "y", merge, f"in{index + 1}")
    frozen_during_run = []

    def callback(node, status):
        # the scheduler calls this in its own process: how many objects the collector skips
        frozen_during_run.append(gc.get_freeze_count())

    before = gc.get_freeze_count()
    result = workflow.run(plugin=MultiProcPlugin(plugin_args={"n_procs": 2, "status_callback": callback}))
    merged = next(node for node in result.nodes() if node.name == "merge").result.outputs.out
    assert merged == [4, 9, 16]
    assert frozen_during_run and min(frozen_during_run) > 10_000  # the imported stack at least
    assert gc.get_freeze_count() == before  # unfrozen afterwards
