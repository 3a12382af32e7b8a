"""The participant workflow graph for a matrix of options (built only, never run).

In the manner of fMRIPrep's ``workflows/tests/test_base.py``: each case builds the graph of one
participant from small header-only inputs and checks which nodes exist and how they connect.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine import derivatives
from bids_ketamine.bids import DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.workflows.base import init_bids_ketamine_wf

BVALS = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000])


def _series(root: Path, session: str, **entities: str) -> DwiSeries:
    folder = root / "sub-01" / f"ses-{session}" / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "_".join(["sub-01", f"ses-{session}"] + [f"{k[:3]}-{v}" for k, v in entities.items()])
    dwi = folder / f"{stem}_dwi.nii.gz"
    nib.Nifti1Image(np.zeros((6, 6, 6, BVALS.size), np.int16), np.diag([3.0, 3, 3, 1])).to_filename(dwi)
    bval, bvec = dwi.with_name(f"{stem}_dwi.bval"), dwi.with_name(f"{stem}_dwi.bvec")
    bval.write_text(" ".join(map(str, BVALS)) + "\n")
    np.savetxt(bvec, np.vstack([np.zeros(BVALS.size), np.ones(BVALS.size), np.zeros(BVALS.size)]))
    return DwiSeries(subject="01", session=session, dwi=dwi, bval=bval, bvec=bvec,
                     entities=dict(entities), fit_bval=1000.0)


CASES = list(itertools.product(("mppca", "none"), (True, False), (0.5, None), (1, 2)))


@pytest.mark.parametrize("denoise, longitudinal, gm_threshold, n_sessions", CASES)
def test_participant_graph(tmp_path, denoise, longitudinal, gm_threshold, n_sessions):
    series = [_series(tmp_path / "bids", session) for session in ("pre", "post")[:n_sessions]]
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", denoise=denoise, longitudinal=longitudinal,
                    gm_threshold=gm_threshold)
    workflow, template, atlas = init_bids_ketamine_wf(config, {"01": series})
    graph = workflow._create_flat_graph()
    nodes = {node.fullname.split(".", 2)[-1]: node for node in graph.nodes()}
    names = set(nodes)
    edges = {(a.fullname.split(".", 2)[-1], b.fullname.split(".", 2)[-1]): data["connect"]
             for a, b, data in graph.edges(data=True)}

    # one midpoint + template registration per participant, or per series without --longitudinal
    n_registrations = 1 if longitudinal else n_sessions
    assert sum(name.startswith("midpoint") for name in names) == n_registrations
    assert sum(name.startswith("template_registration") for name in names) == n_registrations
    assert ("ds_midpoint_b0" in names) == (longitudinal and n_sessions == 2)

    for item in series:
        key = item.key
        sinks = {name.split(".")[-1] for name in names if name.startswith(f"derivatives_{key}_wf.ds_")}
        expected = {f"ds_{f}" for f in derivatives.SERIES_OUTPUTS if not (f == "noise_file" and denoise == "none")}
        expected |= {f"ds_{f}" for f in derivatives.SERIES_SIDECARS}
        assert sinks == expected
        inputnode = f"derivatives_{key}_wf.inputnode"
        fed = {dst for (_, b), pairs in edges.items() if b == inputnode for _, dst in pairs}
        fed |= {name for name, value in nodes[inputnode].inputs.get().items() if value is not None}
        assert fed == {sink[3:] for sink in sinks}  # every sink is fed, nothing else
        for sink in sinks:
            assert (inputnode, f"derivatives_{key}_wf.{sink}") in edges
        assert (f"gm_to_native_{key}" in names) == (gm_threshold is not None)
        assert ("gm_file" in {dst for _, dst in edges.get((f"gm_to_native_{key}", f"roistats_{key}"), [])}) \
            == (gm_threshold is not None)
        # ROI statistics: atlas warped into this series' own grid, maps of this series
        assert ("out_file", "dseg_file") in edges[(f"atlas_to_native_{key}", f"roistats_{key}")]
        tensor_fit = [a for a, b in edges if b == f"roistats_{key}" and a.startswith(f"tensor_{key}_wf.")]
        assert tensor_fit, "the ROI statistics read this series' tensor maps"
        assert ("out_file", "roistats_file") in edges[(f"roistats_{key}", inputnode)]
        roistats = nodes[f"roistats_{key}"]
        assert roistats.inputs.csf_md_threshold == config.csf_md_threshold
        suffix = "" if n_registrations == 1 else f"_{key}"
        assert ("midpoint_file", "moving_file") in edges[(f"midpoint{suffix}", f"template_registration{suffix}")]
        assert (f"template_registration{suffix}", f"atlas_to_native_{key}") in edges
