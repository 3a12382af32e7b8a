"""The command line: options of the contract, and one clear line for each first-met error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bids_ketamine import __version__
from bids_ketamine.cli.parser import build_parser, parse_args, strip_label
from bids_ketamine.cli.run import main


def run_cli(argv, capsys):
    """Run ``bids-ketamine`` in-process; return (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert lines, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("given,expected", [("sub-01", "01"), ("01", "01"), ("subABC", "subABC")])
def test_labels_with_or_without_prefix(given, expected):
    assert strip_label(given, "sub") == expected


def test_invalid_label_rejected():
    with pytest.raises(ValueError, match="not a valid sub label"):
        strip_label("sub-0_1", "sub")


def test_full_command_line_parses(tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "ortho"}}))
    config = parse_args([
        str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
        "--participant-label", "sub-01", "02", "--session-label", "ses-pre", "post",
        "--bids-filter-file", str(filters), "-w", str(tmp_path / "work"), "--nprocs", "2",
        "--omp-nthreads", "1", "--mem-gb", "4", "--plugin", "SLURMGraph",
        "--plugin-args", '{"sbatch_args": "--time=1:00:00"}', "--denoise", "patch2self",
        "--fit-method", "nlls", "--template", "MNI152NLin6Asym", "--skip-bids-validation",
        "--stop-on-first-crash", "--csf-md-threshold", "none",
    ])
    assert config.participant_label == ("01", "02")
    assert config.session_label == ("pre", "post")
    assert config.bids_filters == {"dwi": {"acquisition": "ortho"}}
    assert config.plugin == "SLURMGraph" and config.plugin_args == {"sbatch_args": "--time=1:00:00"}
    assert config.denoise == "patch2self" and config.fit_method == "nlls"
    assert config.csf_md_threshold is None and config.skip_bids_validation
    group = parse_args([str(tmp_path), str(tmp_path / "out"), "group", "--baseline-session", "ses-pre",
                        "--followup-session", "post", "--covariates", "--params", "md", "bhb",
                        "--remission-threshold", "madrs=12", "--outcomes", "madrs"])
    assert group.baseline_session == "pre" and group.followup_session == "post"
    assert group.covariates == () and group.params == ("md", "bhb")
    assert group.remission_thresholds["madrs"] == 12 and group.remission_thresholds["qids_sr"] == 5
    assert parse_args([str(tmp_path), str(tmp_path / "o"), "group"]).covariates is None


def test_plugin_args_from_yaml_file(tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --mem=4G\n")
    config = parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--plugin-args", str(path)])
    assert config.plugin_args == {"sbatch_args": "--mem=4G"}


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_bids_dir_missing(tmp_path, capsys):
    status, err = run_cli([tmp_path / "nope", tmp_path / "out", "participant"], capsys)
    assert status == 1
    assert_one_line_error(err, "does not exist", str(tmp_path / "nope"))


def test_bids_dir_without_description(tiny_bids, tmp_path, capsys):
    (tiny_bids / "dataset_description.json").unlink()
    status, err = run_cli([tiny_bids, tmp_path / "out", "participant"], capsys)
    assert status == 1
    assert_one_line_error(err, "dataset_description.json", "is missing")


def test_no_dwi(tiny_bids, tmp_path, capsys):
    for sub in tiny_bids.glob("sub-*"):
        shutil.rmtree(sub)
    (tiny_bids / "sub-01" / "anat").mkdir(parents=True)
    status, err = run_cli([tiny_bids, tmp_path / "out", "participant"], capsys)
    assert status == 1
    assert_one_line_error(err, "no DWI found", str(tiny_bids))


def test_unknown_participant_lists_available(tiny_bids, tmp_path, capsys):
    status, err = run_cli([tiny_bids, tmp_path / "out", "participant", "--participant-label", "sub-99"],
                          capsys)
    assert status == 1
    assert_one_line_error(err, "99", "not found", "available: sub-01, sub-02")


def test_unknown_session_lists_available(tiny_bids, tmp_path, capsys):
    status, err = run_cli([tiny_bids, tmp_path / "out", "participant", "--session-label", "mid"], capsys)
    assert status == 1
    assert_one_line_error(err, "mid", "not found", "ses-post, ses-pre")


def test_output_inside_bids_dir(tiny_bids, capsys):
    status, err = run_cli([tiny_bids, tiny_bids / "out", "participant"], capsys)
    assert status == 1
    assert_one_line_error(err, "inside BIDS_DIR", "derivatives")


def test_output_under_derivatives_is_accepted(tiny_bids):
    from bids_ketamine.bids import check_output_dir

    check_output_dir(tiny_bids, tiny_bids / "derivatives" / "bids_ketamine")


def test_group_without_participant_outputs(tiny_bids, tmp_path, capsys):
    status, err = run_cli([tiny_bids, tmp_path / "out", "group"], capsys)
    assert status == 1
    assert_one_line_error(err, "no participant-level outputs", "run 'bids-ketamine")


def test_bad_filter_file(tmp_path, capsys):
    bad = tmp_path / "f.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--bids-filter-file", str(bad)])
    assert exit_info.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "bids_ketamine", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_collect_dwi_filters_and_prefix(tiny_bids):
    from bids_ketamine.bids import collect_dwi, load_layout

    layout = load_layout(tiny_bids)
    found = collect_dwi(layout, ("01",), ("pre",))
    assert list(found) == ["01"]
    (series,) = found["01"]
    assert series.prefix == "sub-01_ses-pre" and series.bval.name == "sub-01_ses-pre_dwi.bval"
    assert series.sidecar["PhaseEncodingDirection"] == "j-"


def test_ignore_is_repeatable_and_defaults_to_nothing(tmp_path):
    """``--ignore`` takes several values, given at once or repeated (fMRIPrep's action="extend");
    a repeated flag must not drop the earlier values (it did: ``--ignore t1w --ignore fieldmaps``
    ran the T1w path)."""
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    assert parse_args(base).ignore == ()
    assert parse_args([*base, "--ignore", "t1w", "fieldmaps"]).ignore == ("t1w", "fieldmaps")
    assert parse_args([*base, "--ignore", "t1w", "--ignore", "fieldmaps"]).ignore == ("t1w", "fieldmaps")
    assert parse_args([*base, "--ignore", "t1w", "--ignore", "t1w"]).ignore == ("t1w",)


def test_work_dir_from_another_version_is_warned_about(tmp_path, caplog):
    """A work directory filled by another version is reported (nipype would reuse its results
    whatever code made them), with the fix; the stamp then records this version."""
    import logging

    from bids_ketamine.cli.workflow import WORK_DIR_STAMP, stamp_work_dir

    caplog.set_level(logging.WARNING, logger="bids_ketamine")
    stamp_work_dir(tmp_path)  # a new work directory: nothing to warn about
    assert caplog.records == []
    assert json.loads((tmp_path / WORK_DIR_STAMP).read_text()) == {"version": __version__}
    stamp_work_dir(tmp_path)  # the same version again
    assert caplog.records == []
    (tmp_path / WORK_DIR_STAMP).write_text(json.dumps({"version": "0.0.1"}))
    stamp_work_dir(tmp_path)
    [record] = caplog.records
    assert f"filled by bids-ketamine 0.0.1 and this is {__version__}" in record.getMessage()
    assert str(tmp_path) in record.getMessage() and "-w/--work-dir" in record.getMessage()
    assert json.loads((tmp_path / WORK_DIR_STAMP).read_text()) == {"version": __version__}
