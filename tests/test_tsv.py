"""The one TSV reader (bids_ketamine/utils/tsv.py) and the one label normaliser."""

import math

import pytest

from bids_ketamine.errors import InputError
from bids_ketamine.utils.labels import bare_label
from bids_ketamine.utils.tsv import MISSING_VALUES, read_tsv, read_tsv_rows


def test_every_missing_spelling_is_nan_and_text_stays_text(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("participant_id\tscore\n" + "".join(f"0{i}\t{m}\n" for i, m in enumerate(MISSING_VALUES))
                    + "10\t12.5\n")
    table = read_tsv(path, dtype={"participant_id": str})
    assert table["participant_id"].tolist()[:2] == ["00", "01"]
    assert all(math.isnan(v) for v in table["score"][:len(MISSING_VALUES)])
    assert table["score"].iloc[-1] == 12.5


def test_rows_reader_names_the_damaged_line(tmp_path):
    path = tmp_path / "sub-07_ses-a_atlas-x_model-tensor_roistats.tsv"
    path.write_text("roi\tparam\nA\tmd\nB\n")
    with pytest.raises(InputError, match=r"line 3 has 1 cells, the header 2 .*rerun"):
        read_tsv_rows(path, error=InputError, hint="rerun it")
    path.write_text("")
    with pytest.raises(InputError, match="is empty; rerun it"):
        read_tsv_rows(path, error=InputError, hint="rerun it")
    path.write_bytes(b"roi\xff\n")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        read_tsv_rows(path, error=InputError, hint="rerun it")


@pytest.mark.parametrize("value, prefix, expected", [
    ("sub-01", "sub", "01"), (" 01 ", "sub", "01"), ("ses-pre", "ses", "pre"), (3, "sub", "3"),
    ("sub-sub-1", "sub", "sub-1"),
])
def test_bare_label(value, prefix, expected):
    assert bare_label(value, prefix) == expected
