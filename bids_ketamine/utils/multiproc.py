"""nipype's MultiProc plugin without its garbage-collection cost.

Why not nipype's ``MultiProc`` as it is: its scheduler calls :func:`gc.collect` before every
submission round (``MultiProcPlugin._send_procs_to_workers``, nipype 1.8-1.11).  A full
collection walks every object the scheduler process holds: the imported scientific stack
(DIPY, nilearn, scipy, matplotlib) and the execution graph with its traits, several hundred
thousand objects.  Measured on one participant of the ``demo`` acquisition, 2 processes on
2 cores: 138 collections took 37.5 s of a 85 s run (0.27 s each), the scheduler process used
35.5 s of CPU, and so the worker processes had about one core between them.

:class:`MultiProcPlugin` freezes what exists when the run starts (:func:`gc.freeze`, meant for
exactly this: long-lived objects the collector need not walk again) and unfreezes it at the
end.  Collections then walk only what the run creates.  The nodes run in forked workers as
before; nothing else changes.  Numbers: ``benchmarks/README.md`` ("MultiProc scheduler").
"""

from __future__ import annotations

import gc

from nipype.pipeline.plugins.multiproc import MultiProcPlugin as _NipypeMultiProcPlugin


class MultiProcPlugin(_NipypeMultiProcPlugin):
    """nipype's MultiProc, with the objects alive at the start frozen for the garbage collector.

    Used through ``workflow.run(plugin=MultiProcPlugin(plugin_args=...))``; the class name ends
    in ``Plugin`` as nipype requires (nipype names the plugin ``MultiProc`` from it).
    """

    def run(self, graph, config, updatehash=False):
        gc.collect()
        gc.freeze()
        try:
            return super().run(graph, config, updatehash=updatehash)
        finally:
            gc.unfreeze()
