"""Clinical tables: participants.tsv, sessions.tsv, phenotype/, arms and session choice."""

import pandas as pd
import pytest

from bids_ketamine.errors import ClinicalDataError
from bids_ketamine.group import clinical


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_participants_group_column_and_labels(tmp_path):
    _write(tmp_path / "participants.tsv",
           "participant_id\tarm\tage\nsub-01\tketamine\t30\n02\tsaline\tn/a\n")
    table = clinical.read_participants(tmp_path, "arm")
    assert table.index.tolist() == ["01", "02"]
    assert table["group"].tolist() == ["ketamine", "saline"]
    with pytest.raises(ClinicalDataError, match="--group-column") as err:
        clinical.read_participants(tmp_path, "group")
    assert "participants.tsv" in str(err.value)


def test_arms_errors_list_the_values(tmp_path):
    table = pd.DataFrame({"group": ["ketamine", "saline", "midazolam", None]},
                         index=["1", "2", "3", "4"])
    with pytest.raises(ClinicalDataError, match="'midazolam'"):
        clinical.assign_arms(table, "ketamine", None, tmp_path / "participants.tsv")
    with pytest.raises(ClinicalDataError, match="'midazolam'"):
        clinical.assign_arms(table, "ketamine", "saline", tmp_path / "participants.tsv")
    treatment, control = clinical.assign_arms(table.iloc[[0, 1, 3]], "ketamine", None, "p.tsv")
    assert control == "saline"
    assert treatment.tolist()[:2] == [1.0, 0.0] and pd.isna(treatment.iloc[2])


def test_sessions_and_phenotype_merge(tmp_path):
    _write(tmp_path / "sub-01" / "sub-01_sessions.tsv",
           "session_id\tacq_time\tmadrs\nses-b\t2021-01-02T10:00:00\t12\nses-a\t2021-01-01T10:00:00\t30\n")
    _write(tmp_path / "phenotype" / "qids.tsv",
           "participant_id\tsession_id\tqids_sr\nsub-01\ta\t15\nsub-01\tb\t6\n")
    scores = clinical.read_session_scores(tmp_path)
    scores = scores.set_index("session_id")
    assert scores.at["a", "madrs"] == 30 and scores.at["b", "qids_sr"] == 6
    assert clinical.resolve_outcomes(None, scores.reset_index(), ("madrs", "qids_sr"), tmp_path) == [
        "madrs", "qids_sr"]
    with pytest.raises(ClinicalDataError, match="hamd"):
        clinical.resolve_outcomes(("hamd",), scores.reset_index(), ("madrs",), tmp_path)
    # acq_time orders b after a although "b" > "a" would also agree: reverse the times
    times = scores.reset_index()[["session_id", "acq_time"]].assign(participant_id="01")
    choice = clinical.choose_sessions({"01": {"a", "b"}}, times, None, None)
    assert choice.table.loc["01", ["baseline", "followup"]].tolist() == ["a", "b"]
    assert choice.summary["rule"] == "acq_time"


def test_conflicting_values_raise(tmp_path):
    _write(tmp_path / "sub-01" / "sub-01_sessions.tsv", "session_id\tmadrs\nses-a\t30\n")
    _write(tmp_path / "phenotype" / "m.tsv", "participant_id\tsession_id\tmadrs\nsub-01\tses-a\t31\n")
    with pytest.raises(ClinicalDataError, match="differs between"):
        clinical.read_session_scores(tmp_path)


def test_session_order_rules():
    no_times = pd.DataFrame(columns=["participant_id", "session_id", "acq_time"])
    # acq_time wins over labels
    times = pd.DataFrame({"participant_id": ["1", "1"], "session_id": ["1", "2"],
                          "acq_time": pd.to_datetime(["2020-02-01", "2020-01-01"])})
    choice = clinical.choose_sessions({"1": {"1", "2"}}, times, None, None)
    assert choice.table.loc["1", "baseline"] == "2"
    # labels: pre before post (not alphabetical), natural numbers (2 before 10)
    choice = clinical.choose_sessions({"1": {"pre", "post"}, "2": {"2", "10"}, "3": {"pre"}},
                                      no_times, None, None)
    assert choice.table.loc["1", ["baseline", "followup"]].tolist() == ["pre", "post"]
    assert choice.table.loc["2", ["baseline", "followup"]].tolist() == ["2", "10"]
    assert "only one session" in choice.problems["3"]
    assert "per_participant" in choice.summary
    with pytest.raises(ClinicalDataError, match="--baseline-session"):
        clinical.choose_sessions({"1": {"a", "b", "c"}}, no_times, None, None)
    given = clinical.choose_sessions({"1": {"a", "b", "c"}, "2": {"a"}}, no_times, "a", "c")
    assert given.table.loc["1", "followup"] == "c" and pd.isna(given.table.loc["2", "followup"])
    one = clinical.choose_sessions({"1": {"x", "y"}}, no_times, None, "x")
    assert one.table.loc["1", ["baseline", "followup"]].tolist() == ["y", "x"]
