"""Value types of the command line's arguments (argparse ``type=`` callables), and
:func:`config_default`: every default comes from :class:`~bids_ketamine.config.Config`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bids_ketamine.config import Config
from bids_ketamine.utils.labels import bare_label, strip_label

def config_default(name: str) -> Any:
    """The default of a :class:`Config` field (the one source of defaults)."""
    return Config.default(name)


def label_type(prefix: str):
    def _parse(value: str) -> str:
        try:
            return strip_label(value, prefix)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    _parse.__name__ = f"{prefix} label"
    return _parse


def session_name(value: str) -> str:
    """A session label as given, without its ``ses-`` prefix (checked against the dataset
    by the group level, which names the sessions found)."""
    return bare_label(value, "ses")


def existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file '{value}' does not exist")
    return path.absolute()


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"'{value}' must be 1 or more")
    return number


def as_number(value: str) -> float:
    """A number (``'<value>' is not a number`` otherwise)."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None


def positive_float(value: str) -> float:
    number = as_number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be greater than 0")
    return number


def fraction(value: str) -> float:
    number = as_number(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"'{value}' must lie between 0 and 1")
    return number


def threshold_or_none(value: str) -> float | None:
    if value.lower() in ("none", "off", "0"):
        return None
    return positive_float(value)


def fraction_or_none(value: str) -> float | None:
    if value.lower() in ("none", "off"):
        return None
    return fraction(value)


def json_or_file(value: str) -> dict[str, Any]:
    """Parse ``--plugin-args``: inline JSON, or a JSON/YAML file (fMRIPrep style)."""
    text = value
    source = "the command line"
    if os.path.isfile(value):
        text = Path(value).read_text()
        source = value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml

            parsed = yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - any YAML error is the same user error
            parsed = None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(
            f"plugin arguments from {source} are not a JSON or YAML mapping; "
            'give e.g. \'{"sbatch_args": "--time=2:00:00"}\' or a file holding one'
        )
    if "plugin_args" in parsed and isinstance(parsed["plugin_args"], dict):
        # fMRIPrep's file format: {"plugin": "...", "plugin_args": {...}}
        parsed = dict(parsed["plugin_args"], **{"_plugin": parsed.get("plugin")})
    return parsed


def bids_filters(value: str) -> dict[str, Any]:
    """Read a ``--bids-filter-file`` (pybids/fMRIPrep format: {"dwi": {entity: value}})."""
    path = existing_file(value)
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' is not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' must map query names to entity filters, "
            'e.g. {"dwi": {"acquisition": "ortho"}}'
        )
    unknown = set(filters) - {"dwi"}
    if unknown:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file '{value}' names unknown queries {sorted(unknown)}; "
            "the only query is 'dwi'"
        )
    return filters


def remission(value: str) -> tuple[str, float]:
    name, sep, number = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"'{value}' is not OUTCOME=THRESHOLD (for example madrs=12)"
        )
    try:
        return name.strip(), float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold in '{value}' is not a number") from None
