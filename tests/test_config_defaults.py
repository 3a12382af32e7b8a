"""One source of option defaults: the command line and recorded runs read them from Config."""

import dataclasses
from pathlib import Path

from bids_ketamine.cli.parser import parse_args
from bids_ketamine.config import Config

#: Options whose default depends on the machine or on other options (set by the parser).
MACHINE = {"bids_dir", "output_dir", "analysis_level", "nprocs", "omp_nthreads"}


def test_command_line_defaults_are_the_config_defaults(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant"])
    for item in dataclasses.fields(Config):
        if item.name not in MACHINE:
            assert getattr(config, item.name) == Config.default(item.name), item.name
    assert Config.default("csf_md_threshold") == 1.1


def test_a_recorded_config_reads_back_with_missing_options_at_their_defaults(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="group",
                    csf_md_threshold=None, params=("md", "fa"), atlas_labels=tmp_path / "l.tsv",
                    participant_label=("01",))
    assert Config.from_dict(config.to_dict()) == config
    recorded = config.to_dict()
    del recorded["gm_threshold"], recorded["min_coverage"]
    recorded["option_of_another_version"] = 3
    back = Config.from_dict(recorded)
    assert back.gm_threshold == 0.5 and back.min_coverage == 0.8 and back.csf_md_threshold is None
    assert back.bids_dir == Path(tmp_path)
