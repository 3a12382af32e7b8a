"""Visual reports built from the outputs on disk (so ``--reports-only`` can rebuild them).

- :func:`build_participant_report`: ``OUTPUT_DIR/sub-<label>.html``, the per-subject QC report.
- :func:`build_group_report`: ``OUTPUT_DIR/group/report.html``, the group results.
"""

from bids_ketamine.reports.group import build_group_report
from bids_ketamine.reports.participant import build_participant_report

__all__ = ["build_group_report", "build_participant_report"]
