"""The ``models.json`` record of the group level: software versions and JSON encoding."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine import __version__


def software_versions() -> dict:
    import matplotlib
    import scipy
    import sklearn
    import statsmodels

    return {
        "bids_ketamine": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
        "statsmodels": statsmodels.__version__, "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
    }


def json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def clean_json(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value
