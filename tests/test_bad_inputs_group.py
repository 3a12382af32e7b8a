"""Bad input at the group level (and the output-folder rows of both levels).

One test per row of the reliability matrix (issue "Reliability: bad input gets a clear
error, faults lose nothing, reruns are exact").  Each row ends either

- in a clear error: exit status 1 and ONE line ``bids-ketamine: error: ...`` on stderr that
  names the file concerned and what to do, never a traceback; or
- in a documented exclusion: the run succeeds, the participants left out are listed with
  their reason in ``group/models.json`` and every other participant is analysed.

The DWI-level rows (gradients, damaged images, NaN voxels) are in tests/test_gradients.py,
the command-line rows (no DWI at all, unknown labels, OUTPUT_DIR inside BIDS_DIR) in
tests/test_cli.py.  The data are fabricated with :mod:`bids_ketamine.group.synthetic`
(participants.tsv, sessions.tsv and participant-level ROI tables, no imaging).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.cli.run import main
from bids_ketamine.group.synthetic import random_study, write_study

ROIS = ["BA10_L", "vACC"]
N_SUBJECTS = 9
SEED = 4  # 5 ketamine, 4 placebo


# ----------------------------------------------------------------------------- helpers
def fabricate():
    """Tables of a small study: participants, per-session scores, ROI values."""
    return random_study(N_SUBJECTS, rois=ROIS, seed=SEED)


def write(root: Path, participants, scores, roi_values) -> tuple[Path, Path]:
    """Write a fabricated study; return (BIDS_DIR, OUTPUT_DIR)."""
    bids, out = root / "bids", root / "out"
    write_study(bids, out, participants, scores, roi_values)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "fabricated", "BIDSVersion": "1.9.0"}))
    return bids, out


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run ``bids-ketamine`` in-process; return (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def run_group(bids: Path, out: Path, capsys, *options) -> tuple[int, str]:
    return run_cli([bids, out, "group", "--n-permutations", "0", *options], capsys)


def the_error_line(err: str) -> str:
    """The single error line of stderr (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("bids-ketamine: error:")]
    assert len(lines) == 1, err
    return lines[0]


def excluded(out: Path) -> dict[str, list[dict]]:
    """models.json exclusions by participant."""
    document = json.loads((out / "group" / "models.json").read_text())
    by_subject: dict[str, list[dict]] = {}
    for entry in document["excluded"]:
        by_subject.setdefault(entry["participant_id"], []).append(entry)
    return by_subject


def interaction_n_obs(out: Path) -> pd.Series:
    """n_obs of each interaction model (change measure), indexed by (roi, outcome)."""
    models = pd.read_csv(out / "group" / "models.tsv", sep="\t", keep_default_na=False)
    rows = models.loc[(models["model"] == "interaction") & (models["measure"] == "change")]
    return rows.groupby(["roi", "outcome"])["n_obs"].first()


def read_change(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "group" / "change.tsv", sep="\t", na_values="n/a",
                       keep_default_na=False)


# ----------------------------------------------------------------------------- rows
@pytest.mark.parametrize("lone_session", ["pre", "mid"])
def test_single_session_participant_is_excluded_and_listed(tmp_path, capsys, lone_session):
    """A participant with one session: documented exclusion, the others analysed.

    ``pre`` is the baseline label of everyone else (the participant is placed at
    baseline and lacks the follow-up); ``mid`` is a label nobody else has (no pair can
    be formed at all).
    """
    participants, scores, rois = fabricate()
    lone = "0003"
    keep_scores = (scores["participant_id"] != lone) | (scores["session_id"] == "pre")
    scores = scores.loc[keep_scores].copy()
    keep_rois = (rois["participant_id"] != lone) | (rois["session_id"] == "pre")
    rois = rois.loc[keep_rois].copy()
    scores.loc[scores["participant_id"] == lone, "session_id"] = lone_session
    rois.loc[rois["participant_id"] == lone, "session_id"] = lone_session
    bids, out = write(tmp_path, participants, scores, rois)

    status, err = run_group(bids, out, capsys)
    assert status == 0, err
    reasons = [entry["reason"] for entry in excluded(out)[f"sub-{lone}"]]
    expected = "no follow-up session" if lone_session == "pre" else "only one session (mid)"
    assert any(expected in reason for reason in reasons), reasons
    assert set(excluded(out)) == {f"sub-{lone}"}  # nobody else left out
    assert (interaction_n_obs(out) == N_SUBJECTS - 1).all()
    change = read_change(out)
    others = change.loc[change["participant_id"] != f"sub-{lone}"]
    assert len(others) == (N_SUBJECTS - 1) * len(ROIS) and others["change"].notna().all()


@pytest.mark.parametrize("missing_cell", ["n/a", ""])
def test_missing_clinical_value_excludes_only_the_affected_models(tmp_path, capsys, missing_cell):
    """MADRS missing at follow-up ('n/a' or an empty cell): out of the MADRS models only."""
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants, scores, rois)
    path = bids / "sub-0004" / "sub-0004_sessions.tsv"
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["session_id"] == "ses-post", "madrs"] = missing_cell
    table.to_csv(path, sep="\t", index=False)

    status, err = run_group(bids, out, capsys)
    assert status == 0, err
    entries = excluded(out)
    assert set(entries) == {"sub-0004"}
    (entry,) = entries["sub-0004"]
    assert "madrs at follow-up" in entry["reason"]
    assert entry["outcomes"] == ["madrs"] and entry["rois"] == ROIS
    n_obs = interaction_n_obs(out)
    for roi in ROIS:
        assert n_obs[(roi, "madrs")] == N_SUBJECTS - 1
        assert n_obs[(roi, "qids_sr")] == N_SUBJECTS
    change = read_change(out).set_index(["participant_id", "roi"])
    assert np.isnan(change.loc[("sub-0004", ROIS[0]), "madrs_change"])
    assert np.isfinite(change.loc[("sub-0004", ROIS[0]), "qids_sr_change"])


@pytest.mark.parametrize("where", ["sessions", "participants"])
def test_non_numeric_clinical_value_is_an_error(tmp_path, capsys, where):
    """A word where a number belongs ('twelve' among MADRS scores, 'thirty' among ages).

    Decision: an ERROR naming the file, the line, the participant (and session), the
    column and the value, and the fix (write the number, or n/a when missing).  Not an
    exclusion: such a cell is a typing error, and treating it as missing would hide it,
    while keeping the column as text silently dropped MADRS from the outcomes (or turned
    age into a categorical covariate).  'n/a' (and an empty cell) is the BIDS missing
    value: see the test above.  A column mostly of text (e.g. handedness R/L) stays text.
    """
    participants, scores, rois = fabricate()
    if where == "sessions":
        scores["madrs"] = scores["madrs"].astype(object)
        index = scores.index[(scores["participant_id"] == "0002") & (scores["session_id"] == "post")]
        scores.loc[index, "madrs"] = "twelve"
        path, fragments = Path("sub-0002") / "sub-0002_sessions.tsv", ["sub-0002", "ses-post",
                                                                         "'twelve'", "'madrs'"]
    else:
        participants["age"] = participants["age"].astype(object)
        participants.loc[participants["participant_id"] == "sub-0005", "age"] = "thirty"
        path, fragments = Path("participants.tsv"), ["sub-0005", "'thirty'", "'age'", "line 6"]
    bids, out = write(tmp_path, participants, scores, rois)

    status, err = run_group(bids, out, capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(bids / path), *fragments, "not a number", "n/a if the value is missing"]:
        assert fragment in line, (fragment, line)
    assert not (out / "group" / "models.tsv").exists()


def test_participants_without_the_group_column(tmp_path, capsys):
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants.rename(columns={"group": "arm"}), scores, rois)
    status, err = run_group(bids, out, capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(bids / "participants.tsv"), "no column 'group'", "arm",
                     "--group-column"]:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize("case", ["third_arm", "other_names"])
def test_unknown_arm_labels_list_the_values(tmp_path, capsys, case):
    """A third value in the group column, or arms not named as the options say."""
    participants, scores, rois = fabricate()
    if case == "third_arm":
        participants.loc[participants["participant_id"] == "sub-0001", "group"] = "midazolam"
        found = ["'ketamine'", "'midazolam'", "'placebo'"]
    else:
        participants["group"] = participants["group"].map({"ketamine": "KET", "placebo": "PBO"})
        found = ["'KET'", "'PBO'"]
    bids, out = write(tmp_path, participants, scores, rois)
    status, err = run_group(bids, out, capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(bids / "participants.tsv"), *found, "--treatment-label",
                     "--control-label"]:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize("spelling", ["same", "with_and_without_prefix"])
def test_duplicated_participant_rows(tmp_path, capsys, spelling):
    participants, scores, rois = fabricate()
    duplicate = participants.loc[participants["participant_id"] == "sub-0006"].copy()
    if spelling == "with_and_without_prefix":
        duplicate["participant_id"] = "0006"
    bids, out = write(tmp_path, pd.concat([participants, duplicate]), scores, rois)
    status, err = run_group(bids, out, capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(bids / "participants.tsv"), "sub-0006", "more than once",
                     "one row per participant"]:
        assert fragment in line, (fragment, line)


def test_labels_with_and_without_prefixes_give_identical_results(tmp_path, capsys):
    """participants.tsv and sessions.tsv labels written 'sub-01'/'ses-pre' or '01'/'pre'."""
    participants, scores, rois = fabricate()
    results = {}
    for variant in ("prefixed", "mixed"):
        table = participants.copy()
        bids, out = write(tmp_path / variant, table, scores, rois)
        if variant == "mixed":  # every other participant and session written bare
            bare = table["participant_id"].str.replace("sub-", "", regex=False)
            table["participant_id"] = np.where(np.arange(len(table)) % 2, bare,
                                               table["participant_id"])
            table.to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")
            for number, path in enumerate(sorted(bids.glob("sub-*/sub-*_sessions.tsv"))):
                sessions = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
                sessions.loc[sessions.index % 2 == number % 2, "session_id"] = \
                    sessions["session_id"].str.replace("ses-", "", regex=False)
                sessions.to_csv(path, sep="\t", index=False)
            assert "0002\t" in (bids / "participants.tsv").read_text()
            assert "\npre\t" in (bids / "sub-0001" / "sub-0001_sessions.tsv").read_text()
        status, err = run_group(bids, out, capsys)
        assert status == 0, err
        group = out / "group"
        results[variant] = {
            name: pd.read_csv(group / name, sep="\t", keep_default_na=False)
            for name in ("change.tsv", "models.tsv", "outcomes.tsv", "response.tsv")
        }
        results[variant]["excluded"] = json.loads((group / "models.json").read_text())["excluded"]
    for name in ("change.tsv", "models.tsv", "outcomes.tsv", "response.tsv"):
        pd.testing.assert_frame_equal(results["prefixed"][name], results["mixed"][name])
    assert results["prefixed"]["excluded"] == results["mixed"]["excluded"] == []
    assert len(results["mixed"]["change.tsv"]) == N_SUBJECTS * len(ROIS)


def test_damaged_roi_table_names_the_file_and_the_rerun(tmp_path, capsys):
    """A participant-level ROI table cut short (a job killed before atomic writes existed)."""
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants, scores, rois)
    (table,) = out.glob("sub-0007/ses-post/dwi/*_roistats.tsv")
    text = table.read_text()
    table.write_text(text[: text.rindex("\t")])  # the last row loses its last cell
    status, err = run_group(bids, out, capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(table), "damaged", "--participant-label 0007"]:
        assert fragment in line, (fragment, line)


def test_participant_without_outputs_is_excluded_and_listed(tmp_path, capsys):
    """Clinical data but no participant-level outputs (e.g. no DWI): listed exclusion."""
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants, scores, rois.loc[rois["participant_id"] != "0008"])
    status, err = run_group(bids, out, capsys)
    assert status == 0, err
    reasons = [entry["reason"] for entry in excluded(out)["sub-0008"]]
    assert any("no md value" in reason for reason in reasons), reasons
    assert (interaction_n_obs(out) == N_SUBJECTS - 1).all()


# ----------------------------------------------------------------------------- output folder
def _unwritable(folder: Path) -> Path:
    """Make ``folder`` unwritable; return the OUTPUT_DIR to give.

    As a regular user: chmod 0o500 on the folder.  As root (permissions do not apply),
    the OUTPUT_DIR given is a path under a regular FILE, which no one can create.
    """
    if os.geteuid() == 0:
        blocker = folder / "not-a-folder"
        blocker.write_text("a regular file\n")
        return blocker / "out"
    folder.chmod(0o500)
    return folder / "out"


def test_unwritable_output_dir_participant_level(tiny_bids, tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    output_dir = _unwritable(parent)
    try:
        status, err = run_cli([tiny_bids, output_dir, "participant"], capsys)
    finally:
        parent.chmod(0o700)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(output_dir), "cannot be written", "choose a folder you can write to"]:
        assert fragment in line, (fragment, line)
    assert not output_dir.exists()


def test_unwritable_output_dir_group_level(tmp_path, capsys):
    """OUTPUT_DIR cannot be written (read-only; as root: a path under a regular file)."""
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants, scores, rois)
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() == 0:
        output_dir = _unwritable(parent)
    else:  # the participant-level outputs are there, but nothing can be added
        output_dir = out
        out.chmod(0o500)
    try:
        status, err = run_group(bids, output_dir, capsys)
    finally:
        out.chmod(0o700)
        parent.chmod(0o700)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(output_dir), "cannot be written", "choose a folder you can write to"]:
        assert fragment in line, (fragment, line)


def test_unwritable_group_folder(tmp_path, capsys):
    """OUTPUT_DIR is writable but OUTPUT_DIR/group cannot be made or written.

    As root (permissions do not apply) OUTPUT_DIR/group is a regular FILE; as a regular
    user it is a read-only folder (chmod 0o500).
    """
    participants, scores, rois = fabricate()
    bids, out = write(tmp_path, participants, scores, rois)
    group = out / "group"
    if os.geteuid() == 0:
        group.write_text("a regular file\n")
    else:
        group.mkdir()
        group.chmod(0o500)
    try:
        status, err = run_group(bids, out, capsys)
    finally:
        if group.is_dir():
            group.chmod(0o700)
    assert status == 1
    line = the_error_line(err)
    for fragment in [str(group), "cannot be written"]:
        assert fragment in line, (fragment, line)


def test_participant_without_dwi_at_the_participant_level(tiny_bids, tmp_path, capsys):
    """One participant has anatomy only (the dataset without any DWI is in test_cli.py).

    Asked for by label: one line naming the participant and those with DWI.  Not asked
    for: the participants with DWI are the ones collected.
    """
    from bids_ketamine.bids import collect_dwi, load_layout

    shutil.rmtree(tiny_bids / "sub-02")
    (tiny_bids / "sub-02" / "ses-pre" / "anat").mkdir(parents=True)
    (tiny_bids / "sub-02" / "ses-pre" / "anat" / "sub-02_ses-pre_T1w.nii.gz").write_bytes(b"")
    status, err = run_cli([tiny_bids, tmp_path / "out", "participant", "--participant-label",
                           "sub-02", "--skip-bids-validation"], capsys)
    assert status == 1
    line = the_error_line(err)
    for fragment in ["sub-02", str(tiny_bids), "have no DWI", "participants with DWI: sub-01"]:
        assert fragment in line, (fragment, line)
    found = collect_dwi(load_layout(tiny_bids, validate=False))
    assert list(found) == ["01"] and {s.session for s in found["01"]} == {"pre", "post"}
