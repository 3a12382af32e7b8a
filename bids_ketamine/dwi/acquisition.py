"""Acquisition parameters of a participant's DWI series, compared between sessions.

MD measured with a different protocol is not comparable at the few-percent level that
longitudinal effects live at: on the real rescans of ``sub-canon``, a field of view rotated
28.5 degrees in-plane moves amygdala MD by 6-7 %, and the year with a scanner software
upgrade reads 3-4 % higher everywhere (docs/participant.md).  The participant level
therefore compares every series with its counterparts in the participant's other sessions
and records the differences as warnings (sidecar and report); it does not refuse to run.

Compared: matrix and voxel size, the orientation of the field of view (the angle between
the voxel axes, ignoring how the axes are stored), b-value shells, and the scanner,
software, echo time, phase encoding and acceleration recorded in the BIDS sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from bids_ketamine.dwi.gradients import same_shells, shells

#: Sidecar fields compared between sessions, with the tolerance of numeric values.
SIDECAR_FIELDS: dict[str, float] = {
    "Manufacturer": 0.0,
    "ManufacturersModelName": 0.0,
    "MagneticFieldStrength": 0.05,
    "SoftwareVersions": 0.0,
    "EchoTime": 0.0005,
    "PhaseEncodingDirection": 0.0,
    "PhaseEncodingAxis": 0.0,
    "ParallelReductionFactorInPlane": 0.0,
    "MultibandAccelerationFactor": 0.0,
}

#: Field-of-view orientations further apart than this (degrees) are reported.
MAX_ORIENTATION_DEG = 10.0

#: Voxel sizes further apart than this (mm, any axis) are reported.
VOXEL_SIZE_TOLERANCE_MM = 0.05


@dataclass
class Acquisition:
    """What was acquired in one DWI series.

    Attributes
    ----------
    shape : tuple of int
        Spatial matrix size.
    voxel_size : tuple of float
        Voxel size in mm.
    axes : ndarray, shape (3, 3)
        Unit vectors of the voxel axes in world space (columns).
    shells : dict or None
        Rounded b-value -> number of volumes (None without a ``.bval`` file).
    sidecar : dict
        The values of :data:`SIDECAR_FIELDS` found in the JSON sidecar.
    """

    shape: tuple
    voxel_size: tuple
    axes: np.ndarray = field(repr=False)
    shells: dict | None
    sidecar: dict[str, Any]


def read_acquisition(series) -> Acquisition:
    """The :class:`Acquisition` of a :class:`bids_ketamine.bids.DwiSeries` (headers only).

    An unreadable ``.bval`` gives ``shells=None`` here: the series' loading step reports it
    with the file name and the fix.
    """
    header = nib.load(str(series.dwi)).header
    affine = header.get_best_affine()
    zooms = np.asarray(header.get_zooms()[:3], dtype=float)
    try:
        bvals = np.loadtxt(series.bval, ndmin=1) if series.bval else None
    except (OSError, ValueError):
        bvals = None
    return Acquisition(
        shape=tuple(int(n) for n in header.get_data_shape()[:3]),
        voxel_size=tuple(float(z) for z in zooms),
        axes=affine[:3, :3] / zooms,
        shells=shells(bvals) if bvals is not None else None,
        sidecar={key: series.sidecar[key] for key in SIDECAR_FIELDS if key in series.sidecar},
    )


def orientation_difference_deg(axes_a, axes_b) -> float:
    """Largest angle (degrees) between a voxel axis of one grid and the nearest axis of the other.

    Axis order and sign are ignored, so the same field of view stored as LAS or RAS, or with
    its axes permuted, differs by 0; a field of view rotated in-plane by 28.5 degrees differs
    by 28.5.

    Parameters
    ----------
    axes_a, axes_b : array-like, shape (3, 3)
        Voxel axes in world space (columns; normalised here).
    """
    axes_a = np.asarray(axes_a, dtype=float)
    axes_b = np.asarray(axes_b, dtype=float)
    if axes_a.shape != (3, 3) or axes_b.shape != (3, 3):
        raise ValueError(f"expected two 3x3 axis matrices, got {axes_a.shape} and {axes_b.shape}")
    axes_a = axes_a / np.linalg.norm(axes_a, axis=0)
    axes_b = axes_b / np.linalg.norm(axes_b, axis=0)
    best_cosine = np.abs(axes_a.T @ axes_b).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(best_cosine.min(), -1.0, 1.0))))


def _differs(value_a, value_b, tolerance: float) -> bool:
    if isinstance(value_a, (int, float)) and isinstance(value_b, (int, float)):
        return abs(float(value_a) - float(value_b)) > tolerance
    return value_a != value_b


def _shell_text(shell_counts: dict) -> str:
    return ", ".join(f"b={b:g} x{n}" for b, n in sorted(shell_counts.items()))


def acquisition_differences(first: Acquisition, second: Acquisition) -> list[str]:
    """Human-readable differences between two acquisitions (empty when they match).

    Fields missing from both sidecars are not compared; a field recorded in one sidecar only
    is reported as such.
    """
    differences = []
    if first.shape != second.shape:
        differences.append(f"matrix {first.shape} vs {second.shape}")
    if np.max(np.abs(np.subtract(first.voxel_size, second.voxel_size))) > VOXEL_SIZE_TOLERANCE_MM:
        sizes = ["x".join(f"{z:.2f}" for z in a.voxel_size) for a in (first, second)]
        differences.append(f"voxel size {sizes[0]} vs {sizes[1]} mm")
    angle = orientation_difference_deg(first.axes, second.axes)
    if angle > MAX_ORIENTATION_DEG:
        differences.append(f"field of view oriented {angle:.1f} degrees differently")
    if first.shells is not None and second.shells is not None and not same_shells(first.shells, second.shells):
        differences.append(f"shells {_shell_text(first.shells)} vs {_shell_text(second.shells)}")
    for key, tolerance in SIDECAR_FIELDS.items():
        in_first, in_second = key in first.sidecar, key in second.sidecar
        if not (in_first or in_second):
            continue
        value_a = first.sidecar.get(key, "not recorded")
        value_b = second.sidecar.get(key, "not recorded")
        if in_first != in_second or _differs(value_a, value_b, tolerance):
            differences.append(f"{key} {value_a} vs {value_b}")
    return differences


def _acquisition_entities(item) -> dict[str, str]:
    """The entities that name an acquisition (acq, dir): ``run`` only repeats one."""
    return {key: value for key, value in item.entities.items() if key != "run"}


def _counterparts(item, series: Sequence) -> list:
    """The series of other sessions to compare ``item`` with: those with the same acq/dir
    entities where a session has them, else every series of that session."""
    entities = _acquisition_entities(item)
    found = []
    for session in sorted({s.session for s in series if s.session != item.session}, key=str):
        candidates = [s for s in series if s.session == session]
        same = [s for s in candidates if _acquisition_entities(s) == entities]
        found.extend(same or candidates)
    return found


def longitudinal_acquisition_warnings(series: Sequence) -> dict[str, list[str]]:
    """Warnings for every series whose acquisition differs from its counterparts in the
    participant's other sessions.

    Parameters
    ----------
    series : sequence of :class:`bids_ketamine.bids.DwiSeries`
        All DWI series of one participant.

    Returns
    -------
    dict
        Series prefix -> warnings (series without differences are absent).  Nothing is
        compared for datasets without sessions.
    """
    if len({s.session for s in series}) < 2:
        return {}
    acquisitions = {s.prefix: read_acquisition(s) for s in series}
    warnings: dict[str, list[str]] = {}
    for item in series:
        for other in _counterparts(item, series):
            differences = acquisition_differences(acquisitions[item.prefix],
                                                  acquisitions[other.prefix])
            if differences:
                warnings.setdefault(item.prefix, []).append(
                    f"acquisition differs from {other.prefix}: {'; '.join(differences)}. MD "
                    "changes between these sessions mix any biological change with the protocol "
                    "difference (docs/participant.md)"
                )
    return warnings
