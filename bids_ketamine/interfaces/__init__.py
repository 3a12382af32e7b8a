"""Small nipype interfaces, each wrapping one library call of the package.

The DWI series that pass from node to node in the work folder (loaded, denoised, unwarped,
motion corrected) are written uncompressed (:data:`SERIES_EXTENSION`).  Measured on the small
preset (72 x 84 x 62 x 36 volumes, 2 sessions): denoised and resampled float data gzip to 85-90 %
of their size only (47 of 54 MB), while gzip spent 10 s writing and about 7 s reading them, of
the run's 132 s of CPU.  The derivatives keep ``.nii.gz``:
:class:`~bids_ketamine.interfaces.io.DerivativesSink` compresses on the way out.
"""

from __future__ import annotations

from pathlib import Path

#: Extension of the 4-D series images in the work folder.
SERIES_EXTENSION = ".nii"


def series_file(folder, stem: str) -> str:
    """The work-folder path of a 4-D series image named ``stem`` (:data:`SERIES_EXTENSION`)."""
    return str(Path(folder) / f"{stem}{SERIES_EXTENSION}")
