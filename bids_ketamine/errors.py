"""Errors a user can act on.

Raise :class:`InputError` (or a subclass) for anything the user must fix: the command line
entry point prints its message as one line, without a traceback, and exits with status 1.
Messages name the file concerned and what to do.
"""


class InputError(Exception):
    """A problem with the input data or options that the user can fix."""


class DatasetError(InputError):
    """The BIDS dataset is missing, invalid or holds nothing to process."""


class ClinicalDataError(InputError):
    """participants.tsv, sessions.tsv or phenotype/ tables are unusable."""
