"""Property-based tests (hypothesis): label parsing, the TSV readers and the change tables.

Each property is checked on 50-100 generated examples (``deadline=None``: the shared test
machine is slow at times).  The expectations are independent of the code under test:
round trips through pandas, closed-form arithmetic (change = follow-up - baseline), and
invariances (row order, swapping the sessions).
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bids_ketamine.cli.parser import strip_label
from bids_ketamine.group import clinical, roistats, tables
from bids_ketamine.group.synthetic import random_study, write_study

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(max_examples=25, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALNUM = string.ascii_letters + string.digits
labels = st.text(alphabet=ALNUM, min_size=1, max_size=16)
prefixes = st.sampled_from(["sub", "ses"])
#: ASCII characters BIDS labels cannot hold (whitespace is stripped at the ends, so it is
#: only generated inside a label).
ascii_invalid = st.sampled_from(sorted(set(string.punctuation) | {" ", "\t"}))


# ----------------------------------------------------------------------------- labels
@FAST
@given(label=labels, prefix=prefixes)
def test_label_with_or_without_prefix_round_trips(label, prefix):
    assert strip_label(label, prefix) == label
    assert strip_label(f"{prefix}-{label}", prefix) == label
    assert strip_label(f"  {prefix}-{label}\n", prefix) == label
    # idempotent, and the prefix added back gives the BIDS entity
    once = strip_label(f"{prefix}-{label}", prefix)
    assert strip_label(once, prefix) == once
    assert f"{prefix}-{once}" == f"{prefix}-{label}"


@FAST
@given(head=labels, tail=labels, bad=ascii_invalid, prefix=prefixes, with_prefix=st.booleans())
def test_label_with_invalid_ascii_character_is_rejected(head, tail, bad, prefix, with_prefix):
    text = f"{prefix}-{head}{bad}{tail}" if with_prefix else f"{head}{bad}{tail}"
    with pytest.raises(ValueError, match=f"not a valid {prefix} label"):
        strip_label(text, prefix)


@pytest.mark.parametrize("prefix", ["sub", "ses"])
def test_empty_label_is_rejected(prefix):
    for text in ("", f"{prefix}-", "   "):
        with pytest.raises(ValueError):
            strip_label(text, prefix)


@pytest.mark.parametrize("bad", ["é", "²", "ª", "\u0663"])  # the last: ARABIC-INDIC DIGIT THREE
def test_label_with_non_ascii_letter_or_digit_is_rejected(bad):
    """str.isalnum() alone accepts these; BIDS labels are [A-Za-z0-9]+."""
    with pytest.raises(ValueError, match="not a valid sub label"):
        strip_label(f"sub-01{bad}", "sub")


# ----------------------------------------------------------------------------- TSV readers
#: Text cells that cannot be mistaken for numbers or for BIDS's missing value.
words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8).map(lambda w: "t" + w)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
maybe_float = st.one_of(st.none(), finite)


@st.composite
def clinical_tables(draw):
    """A participants-like table: ids with leading zeros, floats with n/a, ints, words."""
    n = draw(st.integers(1, 12))
    ids = draw(st.lists(st.from_regex(r"\A(sub-)?[0-9]{1,4}\Z"), min_size=n, max_size=n,
                        unique_by=lambda s: s.removeprefix("sub-")))
    return pd.DataFrame({
        "participant_id": ids,
        "session_id": draw(st.lists(st.sampled_from(["ses-pre", "post", "ses-01", "007"]),
                                    min_size=n, max_size=n)),
        "madrs": np.array([np.nan if v is None else v
                           for v in draw(st.lists(maybe_float, min_size=n, max_size=n))]),
        "age": draw(st.lists(st.integers(18, 90), min_size=n, max_size=n)),
        "site": draw(st.lists(st.one_of(st.none(), words), min_size=n, max_size=n)),
    })


@FAST
@given(table=clinical_tables())
def test_read_bids_tsv_round_trips(table):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "participants.tsv"
        table.to_csv(path, sep="\t", index=False, na_rep="n/a")
        read = clinical.read_bids_tsv(path)
    assert list(read.columns) == list(table.columns)
    # identifiers stay text: '007' is not 7
    assert read["participant_id"].tolist() == table["participant_id"].tolist()
    assert read["session_id"].tolist() == table["session_id"].tolist()
    np.testing.assert_array_equal(read["madrs"].to_numpy(float), table["madrs"].to_numpy(float))
    assert read["age"].tolist() == table["age"].tolist()
    expected_site = [None if pd.isna(v) else v for v in table["site"]]
    assert [None if pd.isna(v) else v for v in read["site"]] == expected_site


@st.composite
def roi_tables(draw):
    """A participant-level ROI table as the contract describes it (values may be n/a)."""
    rois = draw(st.lists(st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,10}\Z"), min_size=1,
                         max_size=8, unique=True))
    params = draw(st.lists(st.sampled_from(["fa", "md", "ad", "rd"]), min_size=1, max_size=4,
                           unique=True))
    keys = [(roi, param) for roi in rois for param in params]
    n = len(keys)
    values = st.lists(st.one_of(st.none(), st.floats(0, 5, allow_nan=False)), min_size=n,
                      max_size=n)
    column = lambda: np.array([np.nan if v is None else v for v in draw(values)], dtype=float)  # noqa: E731
    return pd.DataFrame({
        "roi": [k[0] for k in keys], "param": [k[1] for k in keys],
        "mean": column(), "median": column(), "std": column(),
        "n_voxels": np.array(draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)),
                             dtype=float),
        "coverage": np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))),
    })


@FAST
@given(table=roi_tables(), upper=st.booleans())
def test_read_roistats_round_trips(table, upper):
    written = table.assign(param=table["param"].str.upper()) if upper else table
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sub-01_ses-pre_atlas-ketamine7_model-tensor_roistats.tsv"
        written.to_csv(path, sep="\t", index=False, na_rep="n/a")
        read = roistats.read_roistats(path)
    pd.testing.assert_frame_equal(read, table[list(roistats.ROISTATS_COLUMNS)],
                                  check_exact=True)


@SLOWER
@given(tables_by_session=st.lists(roi_tables(), min_size=1, max_size=4),
       statistic=st.sampled_from(["median", "mean"]))
def test_load_roi_values_reads_every_table_exactly(tables_by_session, statistic):
    """The bulk reader of the group level gives the chosen ROI statistic of every table,
    n/a = NaN."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        expected = []
        for index, table in enumerate(tables_by_session):
            subject, session = f"{index // 2:02d}", ("pre", "post")[index % 2]
            dwi = out / f"sub-{subject}" / f"ses-{session}" / "dwi"
            dwi.mkdir(parents=True)
            table.to_csv(dwi / f"sub-{subject}_ses-{session}_atlas-ketamine7_model-tensor_"
                               "roistats.tsv", sep="\t", index=False, na_rep="n/a")
            expected.append(table.assign(participant_id=subject, session_id=session))
        values, notes, roi_value = roistats.load_roi_values(out, "ketamine7", statistic=statistic)
    expected = pd.concat(expected, ignore_index=True)
    assert notes == []
    assert roi_value["statistic"] == statistic
    keys = ["participant_id", "session_id", "roi", "param"]
    got = values.set_index(keys).sort_index()
    want = expected.set_index(keys).sort_index()
    assert got.index.equals(want.index)
    np.testing.assert_array_equal(got["value"].to_numpy(), want[statistic].to_numpy())
    np.testing.assert_array_equal(got["n_voxels"].to_numpy(), want["n_voxels"].to_numpy())
    np.testing.assert_array_equal(got["coverage"].to_numpy(), want["coverage"].to_numpy())


# ----------------------------------------------------------------------------- change tables
@st.composite
def paired_values(draw):
    """Long ROI values of participants with a baseline/follow-up pair (cells may be absent)."""
    n = draw(st.integers(1, 10))
    rois = draw(st.lists(st.sampled_from(["BA10_L", "vACC", "amygdala_R"]), min_size=1,
                         max_size=3, unique=True))
    labels = draw(st.lists(st.from_regex(r"\A[0-9]{2}\Z"), min_size=n, max_size=n, unique=True))
    pair = draw(st.sampled_from([("pre", "post"), ("1", "2"), ("b", "a")]))
    rows = []
    for subject in labels:
        for roi in rois:
            for session in pair:
                value = draw(st.one_of(st.none(), finite))
                if value is not None:
                    rows.append((subject, session, roi, "md", value,
                                 draw(st.floats(0, 1))))
    values = pd.DataFrame(rows, columns=["participant_id", "session_id", "roi", "param", "value",
                                         "coverage"])
    sessions = pd.DataFrame({"baseline": pair[0], "followup": pair[1]},
                            index=pd.Index(labels, name="participant_id"))
    return values, sessions


@FAST
@given(data=paired_values())
def test_change_is_followup_minus_baseline(data):
    values, sessions = data
    paired = tables.pair_sessions(values, sessions)
    lookup = {(r.participant_id, r.session_id, r.roi): r.value for r in values.itertuples()}
    assert len(paired) == len({(s, roi) for s, _, roi in lookup})
    for row in paired.itertuples():
        base = lookup.get((row.participant_id, sessions.at[row.participant_id, "baseline"],
                           row.roi), np.nan)
        follow = lookup.get((row.participant_id, sessions.at[row.participant_id, "followup"],
                             row.roi), np.nan)
        np.testing.assert_array_equal([row.baseline, row.followup, row.change],
                                      [base, follow, follow - base])


@FAST
@given(data=paired_values())
def test_swapping_sessions_negates_every_change(data):
    values, sessions = data
    keys = ["participant_id", "roi", "param"]
    forward = tables.pair_sessions(values, sessions).set_index(keys).sort_index()
    swapped = sessions.rename(columns={"baseline": "followup", "followup": "baseline"})
    backward = tables.pair_sessions(values, swapped).set_index(keys).sort_index()
    assert forward.index.equals(backward.index)
    np.testing.assert_array_equal(backward["change"].to_numpy(), -forward["change"].to_numpy())
    np.testing.assert_array_equal(backward["baseline"].to_numpy(), forward["followup"].to_numpy())
    np.testing.assert_array_equal(backward["coverage_baseline"].to_numpy(),
                                  forward["coverage_followup"].to_numpy())


def _change_from_files(bids: Path, out: Path, swap: bool = False) -> pd.DataFrame:
    """change.tsv content from the files, through the group level's public functions."""
    participants = clinical.read_participants(bids)
    scores = clinical.read_session_scores(bids, participants.index)
    values, _, _ = roistats.load_roi_values(out, "ketamine7")
    found = {s: set(values.loc[values["participant_id"] == s, "session_id"])
             for s in participants.index}
    sessions = clinical.choose_sessions(found, scores, None, None).table
    if swap:
        sessions = sessions.rename(columns={"baseline": "followup", "followup": "baseline"})
    paired = tables.pair_sessions(values, sessions)
    outcomes = ["madrs", "qids_sr"]
    wide = tables.pair_outcomes(scores, sessions, outcomes, participants.index)
    return tables.change_table(paired, wide, participants["group"], outcomes)


@SLOWER
@given(n=st.integers(2, 8), seed=st.integers(0, 2**16), shuffle=st.randoms(use_true_random=False))
def test_row_order_of_the_input_files_does_not_matter(n, seed, shuffle):
    """Permuting rows of participants.tsv, sessions.tsv and ROI tables: same change table.

    Also: the clinical change columns are follow-up - baseline of the written scores, and
    swapping the sessions negates every change.
    """
    participants, scores, rois = random_study(n, rois=["BA10_L", "vACC", "amygdala_L"],
                                              seed=seed)

    def permuted(frame):
        order = list(range(len(frame)))
        shuffle.shuffle(order)
        return frame.iloc[order].reset_index(drop=True)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_study(root / "a" / "bids", root / "a" / "out", participants, scores, rois)
        write_study(root / "b" / "bids", root / "b" / "out", permuted(participants),
                    permuted(scores), permuted(rois))
        ordered = _change_from_files(root / "a" / "bids", root / "a" / "out")
        shuffled = _change_from_files(root / "b" / "bids", root / "b" / "out")
        swapped = _change_from_files(root / "a" / "bids", root / "a" / "out", swap=True)
    pd.testing.assert_frame_equal(ordered, shuffled, check_exact=True)
    assert len(ordered) == n * 3
    md = rois.set_index(["participant_id", "session_id", "roi"])["mean"]
    madrs = scores.set_index(["participant_id", "session_id"])["madrs"]
    for row in ordered.itertuples():
        subject = row.participant_id.removeprefix("sub-")
        assert row.change == md[(subject, "post", row.roi)] - md[(subject, "pre", row.roi)]
        assert row.madrs_change == madrs[(subject, "post")] - madrs[(subject, "pre")]
    for column in ("change", "madrs_change", "qids_sr_change"):
        np.testing.assert_array_equal(swapped[column].to_numpy(), -ordered[column].to_numpy())
