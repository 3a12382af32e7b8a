"""The preflight and the series decisions made before the graph runs (issue 14).

- per-series problems found from headers and text files within seconds, naming the file
  and the fix, while the good series go on;
- single-shell data above ``--dti-max-bval``: the tensor on the lowest shell, with a note
  that reaches the sidecar; the fit recovers the simulated MD;
- ``--combine-runs average``: two runs of a session become one series without ``run-``,
  denoised per run, joined, motion-corrected to one reference and fitted together.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_bids, write_tiny_dwi

from bids_ketamine.bids import collect_dwi, load_layout
from bids_ketamine.config import Config
from bids_ketamine.cli.preflight import preflight


def _config(root, tmp_path, **options) -> Config:
    options = {"denoise": "none", **options}
    return Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant",
                  work_dir=tmp_path / "work", **options)


def _series(root):
    return collect_dwi(load_layout(root, validate=False))


def test_preflight_reports_each_bad_series_and_keeps_the_good(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", subjects=("01",), sessions=("a", "b", "c", "d"))
    dwi = root / "sub-01"
    truncated = dwi / "ses-b" / "dwi" / "sub-01_ses-b_dwi.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-300])
    short_bval = dwi / "ses-c" / "dwi" / "sub-01_ses-c_dwi.bval"
    short_bval.write_text(" ".join(short_bval.read_text().split()[:-1]) + "\n")
    (dwi / "ses-d" / "dwi" / "sub-01_ses-d_dwi.bvec").unlink()
    started = time.perf_counter()
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    elapsed = time.perf_counter() - started
    assert [s.prefix for s in usable["01"]] == ["sub-01_ses-a"]
    assert len(problems) == 3
    assert f"'{truncated}' cannot be read as NIfTI" in problems[0] and "re-copy it" in problems[0]
    assert f"'{short_bval}' lists 13 b-values" in problems[1] and "must list one per volume" in problems[1]
    assert "sub-01_ses-d_dwi.bval/sub-01_ses-d_dwi.bvec" in problems[2] and "add the gradient files" in problems[2]
    assert elapsed < 5, f"preflight took {elapsed:.1f} s"


def test_preflight_reads_no_image_data(tmp_path, monkeypatch):
    """Headers and text only: decoding the image data during the preflight is an error here."""
    root = make_tiny_bids(tmp_path / "bids", subjects=("01",), sessions=("a",))

    def forbidden(*args, **kwargs):
        raise AssertionError("the preflight decoded image data")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", forbidden)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "_get_scaled", forbidden)
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    assert not problems and [s.fit_bval for s in usable["01"]] == [1500.0]


def _high_b_bids(root, high_b=2500.0):
    root = make_tiny_bids(root, subjects=("01",), sessions=("a",))
    bvals = np.r_[np.zeros(2), np.full(12, high_b)]
    write_tiny_dwi(root / "sub-01" / "ses-a" / "dwi", "sub-01_ses-a", bvals=bvals, shape=SHAPE)
    return root


def test_high_b_single_shell_decided_in_preflight(tmp_path):
    root = _high_b_bids(tmp_path / "bids")
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    (series,) = usable["01"]
    assert not problems and series.fit_bval == 2500.0
    assert series.notes == ("no shell at or below --dti-max-bval 1500 in 'sub-01_ses-a_dwi.bval' (shells "
                            "b=2500): the tensor was fitted to b=0 and the lowest shell, b=2500; at high b "
                            "the signal is not mono-exponential, so MD, AD and RD are lower than at b~1000 "
                            "and comparable only with data of the same b-value",)
    usable, _ = preflight(_config(root, tmp_path, dti_max_bval=3000.0), _series(root))
    assert usable["01"][0].fit_bval == 3000.0 and usable["01"][0].notes == ()


def test_reverse_phase_encoding_reference_set_aside(tmp_path):
    """Like real-sdc's acq-rpe_dir-PA (b=0, five b=2, one b=2000): no tensor series.  Without a
    dir- entity the same scheme is a problem that names the file."""
    root = make_tiny_bids(tmp_path / "bids", subjects=("01",), sessions=("a",))
    folder = root / "sub-01" / "ses-a" / "dwi"
    bvals, bvecs = np.r_[0, np.full(5, 2.0), 2000.0], np.r_[np.zeros((6, 3)), [[1.0, 0, 0]]]
    write_tiny_dwi(folder, "sub-01_ses-a_acq-rpe_dir-PA", bvals=bvals, bvecs=bvecs)
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    assert [s.prefix for s in usable["01"]] == ["sub-01_ses-a"] and not problems
    (folder / "sub-01_ses-a_acq-rpe_dir-PA_dwi.nii.gz").rename(folder / "sub-01_ses-a_acq-rpe_dwi.nii.gz")
    for ext in (".bval", ".bvec", ".json"):
        (folder / f"sub-01_ses-a_acq-rpe_dir-PA_dwi{ext}").rename(folder / f"sub-01_ses-a_acq-rpe_dwi{ext}")
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    assert [s.prefix for s in usable["01"]] == ["sub-01_ses-a"]
    assert problems == [f"'{folder / 'sub-01_ses-a_acq-rpe_dwi.bval'}' lists 1 diffusion-weighted volume(s) at "
                        "b <= 2000; a tensor needs at least 6: exclude the series with --bids-filter-file (a "
                        "reverse phase-encoding reference is recognised by its dir- entity and set aside)"]


def _run_series_wf(tmp_path, config, series):
    """Run the preprocessing and tensor sub-workflows of one series; return their outputs."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_ketamine.workflows.base import series_summary
    from bids_ketamine.workflows.dwi_preproc import init_dwi_preproc_wf, set_series_inputs
    from bids_ketamine.workflows.tensor import init_tensor_wf

    runs = series.runs or (series,)
    workflow = pe.Workflow(name="series_wf", base_dir=str(tmp_path / "work"))
    workflow.config["execution"] = {"crashdump_dir": str(tmp_path / "crashes"), "crashfile_format": "txt"}
    preproc = init_dwi_preproc_wf(config, n_runs=len(runs))
    set_series_inputs(preproc, series)
    tensor = init_tensor_wf(config, dti_max_bval=series.fit_bval)
    summary = pe.Node(niu.Function(function=series_summary, input_names=[
        "source", "bval_file", "warnings", "protocol_warnings", "options"], output_names=["summary"]),
        name="summary")
    summary.inputs.source = [str(s) for s in series.sources]
    summary.inputs.protocol_warnings = list(series.notes)
    summary.inputs.options = {}
    workflow.connect([
        (preproc, tensor, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                           ("dwi_file", "bval_file", "bvec_file", "mask_file")]),
        (preproc, summary, [("outputnode.bval_file", "bval_file"), ("outputnode.warnings", "warnings")]),
    ])
    graph = workflow.run()
    results = {node.name: node.result.outputs for node in graph.nodes()}
    return SimpleNamespace(md_file=results["fit_tensor"].md_file,
                           bval_file=results["motion_correct"].bval_file,
                           motion_file=results["motion_correct"].motion_file,
                           summary=results["summary"].summary)


#: Large enough for motion correction's registration pyramid.
SHAPE = (36, 36, 28)


def _ball(path, radius_fraction=3.5):
    """Voxels well inside the simulated ball of write_tiny_dwi."""
    shape = nib.load(path).shape[:3]
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    return np.sqrt((grid ** 2).sum(0)) < min(shape) / radius_fraction


def test_high_b_series_fitted_on_its_shell_with_the_note_in_the_sidecar(tmp_path):
    """write_tiny_dwi's ball decays mono-exponentially with MD 0.8 um^2/ms: the b=2500 fit finds it."""
    root = _high_b_bids(tmp_path / "bids")
    config = _config(root, tmp_path)
    usable, _ = preflight(config, _series(root))
    outputs = _run_series_wf(tmp_path, config, usable["01"][0])
    md = nib.load(outputs.md_file).get_fdata()
    assert np.median(md[_ball(outputs.md_file)]) == pytest.approx(0.8, rel=0.03)
    assert outputs.summary["Warnings"] == list(usable["01"][0].notes)


def _two_run_bids(root):
    """One session with two runs: run-2 is the head shifted by one voxel (3 mm), other noise."""
    root = make_tiny_bids(root, subjects=("01",), sessions=("a",))
    folder = root / "sub-01" / "ses-a" / "dwi"
    for ext in (".nii.gz", ".bval", ".bvec", ".json"):
        (folder / f"sub-01_ses-a_dwi{ext}").unlink()
    write_tiny_dwi(folder, "sub-01_ses-a_run-1", seed=1, shape=SHAPE)
    second = write_tiny_dwi(folder, "sub-01_ses-a_run-2", seed=2, n_b0=1, n_dirs=9, shape=SHAPE)
    img = nib.load(second)
    nib.Nifti1Image(np.roll(img.get_fdata(dtype=np.float32), 1, axis=0), img.affine).to_filename(second)
    return root


def test_combine_runs_makes_one_series_without_run(tmp_path):
    root = _two_run_bids(tmp_path / "bids")
    usable, problems = preflight(_config(root, tmp_path), _series(root))
    assert not problems and [s.prefix for s in usable["01"]] == ["sub-01_ses-a_run-1", "sub-01_ses-a_run-2"]
    usable, problems = preflight(_config(root, tmp_path, combine_runs="average"), _series(root))
    (series,) = usable["01"]
    assert not problems and series.prefix == "sub-01_ses-a" and series.entities == {}
    assert [run.entities["run"] for run in series.runs] == ["1", "2"]
    assert [p.name for p in series.sources] == ["sub-01_ses-a_run-1_dwi.nii.gz", "sub-01_ses-a_run-2_dwi.nii.gz"]


def test_combine_runs_needs_one_matrix(tmp_path):
    root = _two_run_bids(tmp_path / "bids")
    folder = root / "sub-01" / "ses-a" / "dwi"
    other = write_tiny_dwi(folder, "sub-01_ses-a_run-2", shape=(38, 36, 28))
    usable, problems = preflight(_config(root, tmp_path, combine_runs="average"), _series(root))
    assert not usable
    assert problems == [f"'{other}' has a 38x36x28 grid but '{folder / 'sub-01_ses-a_run-1_dwi.nii.gz'}' "
                        "36x36x28: runs fitted together (--combine-runs average) must share their matrix; "
                        "use --combine-runs separate"]


def test_two_runs_processed_as_one_series(tmp_path):
    """Both runs' volumes reach one motion-corrected series (run-2's shift is found and undone),
    and the tensor fitted to all 28 volumes recovers the simulated MD."""
    root = _two_run_bids(tmp_path / "bids")
    config = _config(root, tmp_path, combine_runs="average", denoise="mppca")
    usable, _ = preflight(config, _series(root))
    outputs = _run_series_wf(tmp_path, config, usable["01"][0])
    assert np.loadtxt(outputs.bval_file).size == 14 + 10
    motion = np.genfromtxt(outputs.motion_file, names=True, delimiter="\t")
    # relative to run-1's first b=0 (the unmoved head)
    shift = np.abs(motion["trans_x"] - motion["trans_x"][0])
    assert np.abs(shift[14:] - 3.0).max() < 0.5 and shift[:14].max() < 0.5, shift
    # joined runs: the output shows the head at the first run's mean position (run-1 unmoved),
    # not between the runs (10 of the 24 volumes 3 mm away: 1.25 mm)
    assert abs(motion["trans_x"][0]) < 0.2, motion["trans_x"][0]
    md = nib.load(outputs.md_file).get_fdata()
    assert np.median(md[_ball(outputs.md_file)]) == pytest.approx(0.8, rel=0.03)
    assert outputs.summary["Sources"] == [str(s) for s in usable["01"][0].sources]


def test_combined_runs_give_one_roi_table_without_run(tmp_path):
    """The participant graph of a two-run session writes one set of outputs, named without run-,
    and its preprocessing joins both runs."""
    from bids_ketamine.workflows.base import init_bids_ketamine_wf

    root = _two_run_bids(tmp_path / "bids")
    config = _config(root, tmp_path, combine_runs="average")
    usable, _ = preflight(config, _series(root))
    workflow, _, atlas = init_bids_ketamine_wf(config, usable)
    nodes = workflow._get_all_nodes()
    outputs = sorted(Path(n.inputs.out_path).name for n in nodes if n.name.startswith("ds_"))
    assert f"sub-01_ses-a_atlas-{atlas.name}_model-tensor_roistats.tsv" in outputs
    assert not [name for name in outputs if "run-" in name]
    (inputnode,) = [n for n in nodes if n.name == "inputnode" and "dwi_preproc" in n.fullname]
    assert [Path(p).name for p in inputnode.inputs.dwi_file] == [p.name for p in usable["01"][0].sources]
    (load,) = [n for n in nodes if n.name == "load_dwi"]
    assert load.iterfield == ["dwi_file", "bval_file", "bvec_file"]
    assert [n.name for n in nodes if n.name == "concatenate_runs"] == ["concatenate_runs"]


def test_methods_name_a_series_fitted_above_dti_max_bval(tmp_path):
    """The tensor workflow of a series fitted on a shell above --dti-max-bval says so in its
    methods text (the graph's description, not the report's)."""
    from bids_ketamine.workflows.tensor import init_tensor_wf

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    dti_max_bval=1500.0)
    above = init_tensor_wf(config, dti_max_bval=2500.0).visit_desc()
    assert "lowest shell (b = 2500 s/mm²)" in above and "at or below b = 1500 s/mm²" in above
    assert "lowest shell" not in init_tensor_wf(config, dti_max_bval=1000.0).visit_desc()


def test_usable_t1w_ignore_unreadable_and_missing(tmp_path, caplog):
    """The T1w images a participant's anatomy uses: none with --ignore t1w; an unreadable one is
    left out with a warning naming it; a participant without one gets one warning."""
    import logging

    from bids_ketamine.cli.preflight import usable_t1w

    root = make_tiny_bids(tmp_path / "bids", subjects=("01", "02"), sessions=("pre", "post"))
    anat = root / "sub-01" / "ses-pre" / "anat"
    anat.mkdir()
    nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)).to_filename(anat / "sub-01_ses-pre_T1w.nii.gz")
    broken = root / "sub-01" / "ses-post" / "anat" / "sub-01_ses-post_T1w.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"")
    layout = load_layout(root, validate=False)
    config = Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant")
    with caplog.at_level(logging.WARNING):
        found = usable_t1w(config, layout, ["01", "02"])
    assert list(found) == ["01"]
    assert [image.session for image in found["01"]] == ["pre"]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert str(broken) in messages and "--ignore t1w" in messages
    assert "sub-02: no usable T1w; the DWI-only path is used" in messages
    assert usable_t1w(config.replace(ignore=("t1w",)), layout, ["01", "02"]) == {}
