"""Workflows that describe themselves: the methods text is assembled from the graph that is built.

A few lines in the manner of niworkflows' ``LiterateWorkflow`` (not a dependency here): every
factory sets ``workflow.__desc__`` to the paragraph that states what its nodes do, with the
options it was built with; :meth:`LiterateWorkflow.visit_desc` joins the paragraphs of a
workflow and of the sub-workflows it contains, in the order they run.  Citations are written
``[@key]`` (a key of :mod:`bids_ketamine.reports.references`, or ``atlas:<name>`` for the
references of an atlas); the participant report turns them into numbered references.
"""

from __future__ import annotations

from nipype.pipeline import engine as pe


class LiterateWorkflow(pe.Workflow):
    """A nipype workflow with a methods paragraph (``__desc__``, ``__postdesc__``)."""

    def __init__(self, name, base_dir=None):
        super().__init__(name, base_dir)
        self.__desc__ = None
        self.__postdesc__ = None

    def visit_desc(self) -> str:
        """This workflow's paragraph, then those of its sub-workflows (topological order,
        each distinct text once), then its ``__postdesc__``."""
        parts = [self.__desc__] if self.__desc__ else []
        for node in pe.utils.topological_sort(self._graph)[0]:
            if isinstance(node, LiterateWorkflow):
                text = node.visit_desc()
                if text and text not in parts:
                    parts.append(text)
        if self.__postdesc__:
            parts.append(self.__postdesc__)
        return " ".join(part.strip() for part in parts)
