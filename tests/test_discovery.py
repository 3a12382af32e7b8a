"""Finding the DWI series of any BIDS dataset (issue 14).

- entities come from root-relative paths: a dataset stored under a folder named like a
  datatype (``perf``, ``anat``, ``func``, ``dwi``) or ``motion`` is found whole;
- gradient files and sidecars are reached through the BIDS inheritance principle;
- the real layouts of ../shared/data/bids-layouts (0-byte images) are listed exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, make_tiny_bids, write_tiny_dwi

from bids_ketamine.bids import collect_dwi, inherited_files, load_layout, relative_entities

LAYOUTS = SHARED / "data" / "bids-layouts"


@pytest.mark.parametrize("parent", ["perf", "anat", "func", "dwi", "motion", "sub-99/ses-x"])
def test_dataset_under_a_folder_named_like_an_entity(tmp_path, parent):
    root = make_tiny_bids(tmp_path / parent / "bids")
    found = collect_dwi(load_layout(root))
    assert sorted(found) == ["01", "02"]
    assert [s.prefix for s in found["01"]] == ["sub-01_ses-post", "sub-01_ses-pre"]
    for series in found["01"] + found["02"]:
        assert series.bval == series.dwi.with_name(series.prefix + "_dwi.bval")
        assert series.sidecar["PhaseEncodingDirection"] == "j-"
    assert collect_dwi(load_layout(root), ("02",), ("pre",))["02"][0].prefix == "sub-02_ses-pre"


def test_relative_entities_ignore_the_folders_above_the_root(tmp_path):
    path = tmp_path / "perf" / "sub-9" / "bids" / "sub-01" / "dwi" / "sub-01_run-02_dwi.nii.gz"
    assert relative_entities(tmp_path / "perf" / "sub-9" / "bids", path) == {
        "subject": "01", "run": "02", "datatype": "dwi", "suffix": "dwi", "extension": ".nii.gz"}


def test_gradients_and_sidecars_inherited(tmp_path):
    """Root dwi.bval/dwi.bvec/dwi.json apply to every image; a subject-level sidecar overrides
    the root's values for its subject; files beside the image win over inherited ones."""
    root = make_tiny_bids(tmp_path / "bids", subjects=("01", "02"), sessions=("pre",))
    for subject in ("01", "02"):
        folder = root / f"sub-{subject}" / "ses-pre" / "dwi"
        for ext in (".bval", ".bvec", ".json"):
            shutil.move(folder / f"sub-{subject}_ses-pre_dwi{ext}", root / f"dwi{ext}")
    (root / "dwi.json").write_text(json.dumps({"EchoTime": 0.08, "PhaseEncodingDirection": "j-"}))
    (root / "sub-02" / "sub-02_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j"}))
    own = write_tiny_dwi(root / "sub-02" / "ses-pre" / "dwi", "sub-02_ses-pre_acq-own", n_dirs=7)
    found = collect_dwi(load_layout(root))
    first, = found["01"]
    assert (first.bval, first.bvec) == (root / "dwi.bval", root / "dwi.bvec")
    assert first.sidecar == {"EchoTime": 0.08, "PhaseEncodingDirection": "j-"}
    inherited, own_series = found["02"]
    assert own_series.bval == own.with_name("sub-02_ses-pre_acq-own_dwi.bval")
    assert inherited.bval == root / "dwi.bval"
    assert inherited.sidecar == {"EchoTime": 0.08, "PhaseEncodingDirection": "j"}
    assert inherited.sidecar_files == (root / "dwi.json", root / "sub-02" / "sub-02_dwi.json")


def test_inheritance_skips_files_with_other_entities(tmp_path):
    (tmp_path / "acq-a_dwi.bval").write_text("0 1000\n")
    (tmp_path / "acq-b_dwi.bval").write_text("0 2000\n")
    (tmp_path / "dwi.bval").write_text("0 3000\n")
    image = tmp_path / "sub-01" / "dwi" / "sub-01_acq-b_dwi.nii.gz"
    image.parent.mkdir(parents=True)
    image.touch()
    found = inherited_files(tmp_path, image, relative_entities(tmp_path, image), ".bval")
    assert found == [tmp_path / "dwi.bval", tmp_path / "acq-b_dwi.bval"]


# --- the real layouts of ../shared/data/bids-layouts --------------------------------------------

def _expected_layouts() -> dict[str, list[tuple]]:
    """The DWI series of each layout as its README describes them:
    (subject, session, series prefix, bval source, json sources)."""
    ds114 = [(f"{s:02d}", ses, f"sub-{s:02d}_ses-{ses}", "dwi.bval", ())
             for s in range(1, 11) for ses in ("retest", "test")]
    ds117 = [(s, "mri", f"sub-{s}_ses-mri", f"sub-{s}/ses-mri/dwi/sub-{s}_ses-mri_dwi.bval",
              (f"sub-{s}/ses-mri/dwi/sub-{s}_ses-mri_dwi.json",))
             for s in ("01", "02", "03", "04", "05", "06", "09", "12", "13", "14", "15")]
    ukbb = [(f"{s:02d}", None, f"sub-{s:02d}", "dwi.bval", ("dwi.json",)) for s in range(1, 15)]
    eeg = [(s, None, f"sub-{s}_acq-{acq}", f"sub-{s}/dwi/sub-{s}_acq-{acq}_dwi.bval", (f"acq-{acq}_dwi.json",))
           for s in ("32", "35", "36") for acq in ("NODDI10DIR", "NODDI33DIR")]
    return {"ds114": ds114, "ds000117": ds117, "genetics_ukbb": ukbb, "eeg_rest_fmri": eeg}


def discovery_table(root: Path) -> list[tuple]:
    """(subject, session, prefix, bval source, json sources, n volumes, shells) of each series."""
    from bids_ketamine.dwi.gradients import read_gradients, shells

    rows = []
    for series in [s for found in collect_dwi(load_layout(root)).values() for s in found]:
        assert series.bvec == series.bval.with_suffix(".bvec")
        bvals, _ = read_gradients(series.bval, series.bvec)
        rows.append((series.subject, series.session, series.prefix, series.bval.relative_to(root).as_posix(),
                     tuple(p.relative_to(root).as_posix() for p in series.sidecar_files), len(bvals),
                     shells(bvals)))
    return rows


@pytest.mark.parametrize("name", sorted(_expected_layouts()))
def test_real_layouts_listed_exactly(name):
    root = LAYOUTS / name
    if not (root / "dataset_description.json").exists():
        pytest.skip(f"real BIDS layouts not found at {LAYOUTS} (the shared/ folder beside the repo)")
    table = discovery_table(root)
    assert [row[:5] for row in table] == _expected_layouts()[name]
    for row in table:
        bvals = np.loadtxt(root / row[3])
        assert row[5] == bvals.size
        assert sum(row[6].values()) == bvals.size and set(row[6]) == set(np.unique(bvals).tolist())
