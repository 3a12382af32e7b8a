"""Tests of bids_ketamine.dwi.acquisition: protocol differences between a participant's sessions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bids_ketamine.bids import DwiSeries
from bids_ketamine.dwi.acquisition import (
    Acquisition,
    acquisition_differences,
    longitudinal_acquisition_warnings,
    orientation_difference_deg,
)
from bids_ketamine.workflows.base import series_summary

REAL_CANON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dwi" / "sub-canon"


def _rotation_z(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0],
                     [np.sin(angle), np.cos(angle), 0.0],
                     [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("degrees", [0.0, 5.0, 28.5, 40.0])
def test_orientation_difference_of_an_in_plane_rotation(degrees):
    axes = np.diag([2.0, 2.0, 3.0])  # voxel size does not matter
    assert orientation_difference_deg(axes, _rotation_z(degrees) @ axes) == pytest.approx(degrees, abs=1e-6)


def test_orientation_difference_ignores_axis_order_and_sign():
    axes = _rotation_z(12.0) @ np.diag([2.0, 2.0, 2.0])
    stored_otherwise = axes[:, [1, 0, 2]] * np.array([-1.0, 1.0, -1.0])  # e.g. LPS vs RAS storage
    assert orientation_difference_deg(axes, stored_otherwise) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="3x3"):
        orientation_difference_deg(np.eye(4), np.eye(3))


def _acquisition(**changes) -> Acquisition:
    values = dict(shape=(96, 96, 60), voxel_size=(2.0, 2.0, 2.0),
                  axes=np.eye(3), shells={0.0: 6, 1000.0: 64},
                  sidecar={"EchoTime": 0.089, "SoftwareVersions": "VE11C",
                           "PhaseEncodingDirection": "j-"})
    values.update(changes)
    return Acquisition(**values)


def test_identical_acquisitions_have_no_difference():
    assert acquisition_differences(_acquisition(), _acquisition()) == []


def test_each_difference_is_named():
    base = _acquisition()
    cases = {
        "matrix": _acquisition(shape=(128, 128, 60)),
        "voxel size 2.00x2.00x2.00 vs 2.50x2.50x2.50 mm": _acquisition(voxel_size=(2.5, 2.5, 2.5)),
        "field of view oriented 28.5 degrees": _acquisition(axes=_rotation_z(28.5)),
        "shells b=0 x6, b=1000 x64 vs b=0 x6, b=1000 x30": _acquisition(shells={0.0: 6, 1000.0: 30}),
        "EchoTime 0.089 vs 0.095": _acquisition(sidecar={**base.sidecar, "EchoTime": 0.095}),
        "SoftwareVersions VE11C vs XA30": _acquisition(sidecar={**base.sidecar, "SoftwareVersions": "XA30"}),
        "PhaseEncodingDirection j- vs j": _acquisition(sidecar={**base.sidecar, "PhaseEncodingDirection": "j"}),
        "MultibandAccelerationFactor not recorded vs 3":
            _acquisition(sidecar={**base.sidecar, "MultibandAccelerationFactor": 3}),
    }
    for expected, other in cases.items():
        differences = acquisition_differences(base, other)
        assert len(differences) == 1 and differences[0].startswith(expected), (expected, differences)
    # Within tolerance: a 0.3 ms echo time and 0.02 mm voxel difference, 8 degrees of auto-align.
    close = _acquisition(voxel_size=(2.02, 2.0, 2.0), axes=_rotation_z(8.0),
                         sidecar={**base.sidecar, "EchoTime": 0.0893})
    assert acquisition_differences(base, close) == []


def _canon_series(*, with_acquisition_entity: bool = True) -> list[DwiSeries]:
    if not REAL_CANON.is_dir():
        pytest.skip(f"real DWI test data not found at {REAL_CANON}")
    series = []
    for session in ("2020", "2021"):
        for acquisition in ("ortho", "tilted"):
            stem = REAL_CANON / f"ses-{session}" / "dwi" / f"sub-canon_ses-{session}_acq-{acquisition}_dwi"
            entities = {"acquisition": acquisition} if with_acquisition_entity else {"run": acquisition}
            series.append(DwiSeries("canon", session, Path(f"{stem}.nii.gz"), Path(f"{stem}.bval"),
                                    Path(f"{stem}.bvec"), json.loads(Path(f"{stem}.json").read_text()),
                                    entities))
    return series


@pytest.mark.realdata
def test_real_rescans_flag_the_software_upgrade_between_years():
    """sub-canon: the scanner software changed between 2020 and 2021 (the year that reads 3-4 %
    higher) and 2021 records in-plane acceleration; same-acquisition series are matched."""
    series = _canon_series()
    warnings = longitudinal_acquisition_warnings(series)
    assert sorted(warnings) == sorted(s.prefix for s in series)
    for prefix, texts in warnings.items():
        assert len(texts) == 1, texts
        acquisition = prefix.split("_acq-")[1]
        assert f"_acq-{acquisition}:" in texts[0]  # compared with the same acquisition
        assert "SoftwareVersions" in texts[0] and "ParallelReductionFactorInPlane" in texts[0]
        assert "field of view" not in texts[0]


@pytest.mark.realdata
def test_real_rescans_flag_the_rotated_field_of_view():
    """Without acq- entities to match, every series of the other session is compared: ortho vs
    tilted differ by the in-plane angle of the DICOM orientation (arccos 0.879108 = 28.5 deg)."""
    series = _canon_series(with_acquisition_entity=False)
    expected = np.degrees(np.arccos(series[1].sidecar["ImageOrientationPatientDICOM"][0]))
    warnings = longitudinal_acquisition_warnings(series)
    text = " ".join(t for t in warnings["sub-canon_ses-2020_run-ortho"] if "run-tilted" in t)
    assert f"field of view oriented {expected:.1f} degrees differently" in text


@pytest.mark.realdata
def test_unreadable_bval_is_left_to_the_loading_step(tmp_path):
    """A garbage .bval must not fail the graph construction with a bare numpy error."""
    series = _canon_series()
    garbage = tmp_path / "garbage.bval"
    garbage.write_text("zero thousand\n")
    series[0] = dataclasses.replace(series[0], bval=garbage)
    warnings = longitudinal_acquisition_warnings(series)
    assert "shells" not in " ".join(warnings[series[0].prefix])


def test_single_session_and_summary(tmp_path):
    assert longitudinal_acquisition_warnings([]) == {}
    bval = tmp_path / "dwi.bval"
    bval.write_text("0 1000 1000\n")
    summary = series_summary("dwi.nii.gz", str(bval), ["repaired"], ["protocol"], {"fit_method": "wls"})
    assert summary["Warnings"] == ["repaired", "protocol"]
    assert summary["Shells"] == {"0": 1, "1000": 2}
