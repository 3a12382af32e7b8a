"""The participant level run in-process through the command line, for the end-to-end tests."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bids_ketamine.cli.run import main
from bids_ketamine.config import DEFAULT_ROI_STATISTIC


def run_participant(bids_dir: Path, out_dir: Path, work_dir: Path, *extra: str) -> None:
    with pytest.raises(SystemExit) as done:
        main([str(bids_dir), str(out_dir), "participant", "-w", str(work_dir), "--nprocs", "2",
              "--omp-nthreads", "1", *extra])
    assert done.value.code == 0, f"participant level failed with status {done.value.code}"


def read_roistats(out_dir: Path, param: str = "md") -> pd.DataFrame:
    """All ROI tables of a run as one long table (participant_id, session, roi, mean, coverage)."""
    rows = []
    for path in sorted(out_dir.glob("sub-*/ses-*/dwi/*_roistats.tsv")):
        subject = path.name.split("_")[0]
        session = path.name.split("_")[1][4:]
        table = pd.read_csv(path, sep="\t")
        table = table[table["param"] == param]
        rows.append(table.assign(participant_id=subject, session=session))
    assert rows, f"no ROI tables in {out_dir}"
    return pd.concat(rows, ignore_index=True)


def truth_table(bids_dir: Path) -> pd.DataFrame:
    """The simulator's truth table (one row per participant x ROI)."""
    return pd.read_csv(bids_dir / "sourcedata" / "simulation" / "truth.tsv", sep="\t")


#: The ROI statistic the acceptance criteria are checked on: the group level's default.
STATISTIC = DEFAULT_ROI_STATISTIC


def recovered_md(out_dir: Path, statistic: str = STATISTIC) -> pd.DataFrame:
    """One ROI statistic of MD per participant x ROI, baseline and follow-up side by side."""
    table = read_roistats(out_dir)
    wide = table.pivot_table(index=["participant_id", "roi"], columns="session", values=statistic)
    return wide.rename(columns={"pre": "md_baseline", "post": "md_followup"}).reset_index()


def roistats_tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every ROI table of an output folder, by file name, rows in a fixed order."""
    tables = {}
    for path in sorted(out.glob("sub-*/ses-*/dwi/*_roistats.tsv")):
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        tables[path.name] = table.sort_values(["roi", "param"], ignore_index=True)
    return tables


def assert_same_tables(got: dict, want: dict, atol: float | None) -> None:
    """Same files, same rows; values equal (atol None) or within atol (1e-6)."""
    assert sorted(got) == sorted(want)
    for name in want:
        if atol is None:
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
        else:
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=0,
                                          atol=atol, obj=name)


def with_sessions_exchanged(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables of :func:`roistats_tables` with ``ses-pre`` and ``ses-post`` exchanged in their
    names (a run on :func:`swap_sessions`'s copy, named as the original's)."""
    exchanged = {"ses-pre": "ses-post", "ses-post": "ses-pre"}
    return {re.sub(r"ses-(pre|post)", lambda found: exchanged[found.group(0)], name): table
            for name, table in tables.items()}


def swap_sessions(bids_dir: Path, target: Path, *, n_subjects: int = 1) -> tuple[Path, list[str]]:
    """A copy of ``bids_dir`` (without sourcedata) in which the first ``n_subjects`` participants'
    ``ses-pre`` and ``ses-post`` are renamed into each other; returns it and those participants."""
    shutil.copytree(bids_dir, target, ignore=shutil.ignore_patterns("sourcedata"))
    subjects = sorted(p.name for p in target.glob("sub-*") if p.is_dir())[:n_subjects]
    for subject in subjects:
        for old, new in (("ses-pre", "ses-tmp"), ("ses-post", "ses-pre"), ("ses-tmp", "ses-post")):
            for path in sorted((target / subject).rglob(f"*{old}*"), key=lambda p: -len(p.parts)):
                path.rename(path.with_name(path.name.replace(old, new)))
        sessions = target / subject / f"{subject}_sessions.tsv"
        if sessions.exists():
            text = sessions.read_text().replace("pre\t", "tmp\t").replace("post\t", "pre\t")
            sessions.write_text(text.replace("tmp\t", "post\t"))
    return target, subjects
