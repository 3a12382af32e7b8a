"""End to end: fabricated participants.tsv, sessions.tsv and ROI tables -> group outputs."""

import json

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.config import Config
from bids_ketamine.errors import ClinicalDataError, InputError
from bids_ketamine.group.run import run_group_level
from bids_ketamine.group.synthetic import write_study

ROIS = ["BA10_L", "amygdala_L", "vACC"]


@pytest.fixture
def study(tmp_path):
    """16 participants with known values and planted problems."""
    rng = np.random.default_rng(7)
    labels = [f"{i:02d}" for i in range(1, 16)]
    groups = ["ketamine"] * 9 + ["saline"] * 4 + [None, "saline"]
    participants = pd.DataFrame({
        "participant_id": [f"sub-{s}" if i % 2 else s for i, s in enumerate(labels)],
        "group": groups, "age": rng.integers(20, 60, 15), "sex": rng.choice(["F", "M"], 15),
    })
    # sub-16 has outputs but is not in participants.tsv
    subjects = labels + ["16"]
    md = {(s, ses, roi): 0.8 + 0.05 * rng.standard_normal()
          for s in subjects for ses in ("pre", "post") for roi in ROIS}
    scores = []
    for s in subjects:
        base = rng.normal(30, 4)
        scores.append({"participant_id": s, "session_id": "pre", "acq_time": "2020-03-01T10:00:00",
                       "madrs": round(base), "qids_sr": round(rng.normal(15, 3)),
                       "bhb": 0.1 + rng.random()})
        if s != "13":  # sub-13: no follow-up at all
            scores.append({"participant_id": s, "session_id": "post",
                           "acq_time": "2020-03-02T10:00:00",
                           "madrs": np.nan if s == "11" else round(base - rng.normal(8, 6)),
                           "qids_sr": 15.0 - rng.normal(4, 3), "bhb": 0.5 + rng.random()})
    rows = []
    for (s, ses, roi), value in md.items():
        if s == "13" and ses == "post":
            continue
        coverage = 0.5 if (s, ses, roi) == ("12", "post", "amygdala_L") else 0.97
        if (s, ses) == ("02", "post"):  # two runs, no session table: averaged by n_voxels
            rows.append(dict(participant_id=s, session_id=ses, roi=roi, param="md", mean=value,
                             n_voxels=300, coverage=coverage, entities="_run-1"))
            rows.append(dict(participant_id=s, session_id=ses, roi=roi, param="md",
                             mean=value + 0.06, n_voxels=100, coverage=coverage, entities="_run-2"))
            continue
        rows.append(dict(participant_id=s, session_id=ses, roi=roi, param="md", mean=value,
                         n_voxels=400, coverage=coverage, entities=""))
        rows.append(dict(participant_id=s, session_id=ses, roi=roi, param="fa", mean=0.2,
                         n_voxels=400, coverage=coverage, entities=""))
        if (s, ses) == ("03", "pre"):  # session table present: the acq- series is not used
            rows.append(dict(participant_id=s, session_id=ses, roi=roi, param="md", mean=5.0,
                             n_voxels=400, coverage=coverage, entities="_acq-x"))
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, pd.DataFrame(scores), pd.DataFrame(rows))
    expected = {key: value for key, value in md.items()}
    for roi in ROIS:
        expected[("02", "post", roi)] = (md[("02", "post", roi)] * 300
                                        + (md[("02", "post", roi)] + 0.06) * 100) / 400
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", n_permutations=0)
    return config, expected, pd.DataFrame(scores)


def _bh(p):
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1)
    result = np.empty_like(p)
    result[order] = adjusted
    return result


def test_end_to_end(study):
    config, expected, scores = study
    written = run_group_level(config)
    group = config.output_dir / "group"
    change = pd.read_csv(group / "change.tsv", sep="\t", na_values="n/a")
    assert list(change.columns) == [
        "participant_id", "group", "roi", "param", "baseline", "followup", "change",
        "madrs_baseline", "madrs_followup", "madrs_change",
        "qids_sr_baseline", "qids_sr_followup", "qids_sr_change"]
    assert set(change["param"]) == {"md"}
    assert "sub-14" not in set(change["participant_id"])  # no group value
    for row in change.itertuples():
        s = row.participant_id[4:]
        assert row.baseline == pytest.approx(expected[(s, "pre", row.roi)], rel=1e-9)
        if s == "13":
            assert np.isnan(row.followup) and np.isnan(row.change)
            continue
        assert row.followup == pytest.approx(expected[(s, "post", row.roi)], rel=1e-9)
        assert row.change == pytest.approx(
            expected[(s, "post", row.roi)] - expected[(s, "pre", row.roi)], rel=1e-9, abs=1e-12)
        madrs = scores.loc[scores["participant_id"] == s].set_index("session_id")["madrs"]
        if s != "11":
            assert row.madrs_change == pytest.approx(madrs["post"] - madrs["pre"])

    document = json.loads((group / "models.json").read_text())
    assert document["sessions"]["baseline"] == "pre" and document["sessions"]["rule"] == "acq_time"
    assert document["options"]["min_coverage"] == 0.8
    assert document["estimation"]["cov_type"].startswith("HC3")
    reasons = {(e["participant_id"], e["reason"]): e for e in document["excluded"]}
    by_subject = {}
    for (subject, reason), entry in reasons.items():
        by_subject.setdefault(subject, []).append((reason, entry))
    assert any("no follow-up session" in r for r, _ in by_subject["sub-13"])
    assert any("column 'group'" in r for r, _ in by_subject["sub-14"])
    assert any("not listed" in r for r, _ in by_subject["sub-16"])
    coverage = [e for r, e in by_subject["sub-12"] if "coverage" in r]
    assert coverage and coverage[0]["rois"] == ["amygdala_L"]
    missing = [e for r, e in by_subject["sub-11"] if "madrs at follow-up" in r]
    assert missing and missing[0]["outcomes"] == ["madrs"]
    series = document["roi_tables"]["multi_series_sessions"]
    assert {(n["participant_id"], n["session_id"]) for n in series} == {
        ("sub-02", "ses-post"), ("sub-03", "ses-pre")}

    models = pd.read_csv(group / "models.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    interaction = models.loc[(models["model"] == "interaction") & (models["measure"] == "change")]
    n_obs = interaction.set_index(["roi", "outcome"])["n_obs"].groupby(level=[0, 1]).first()
    # 14 in arms (15 listed - sub-14); sub-13 lacks follow-up; sub-11 lacks MADRS follow-up;
    # sub-12 low coverage in amygdala_L
    assert n_obs[("BA10_L", "qids_sr")] == 13
    assert n_obs[("BA10_L", "madrs")] == 12
    assert n_obs[("amygdala_L", "madrs")] == 11
    assert set(interaction["term"]) == {"intercept", "treatment", "md_change",
                                        "treatment:md_change", "madrs_baseline",
                                        "qids_sr_baseline", "age", "sex"}
    family = interaction.loc[interaction["term"] == "treatment:md_change"]
    assert len(family) == len(ROIS) * 2
    np.testing.assert_allclose(family["p_fdr"], _bh(family["p_value"]), rtol=1e-10)
    assert {"slope_ketamine", "slope_saline", "remission_logit"} <= set(models["model"])
    assert set(models.loc[models["measure"] == "pctimprovement", "outcome"]) == {
        "madrs_pctimprovement", "qids_sr_pctimprovement"}

    assert (group / "response.tsv").is_file() and (group / "prediction.tsv").is_file()
    names = {p.name for p in written["figures"]}
    assert "forest_param-md_term-interaction.png" in names
    assert "scatter_param-md_outcome-madrs_roi-BA10_L.png" in names
    assert all((group / "figures" / n).is_file() for n in names)
    assert all((group / "figures" / n.replace(".png", ".tsv")).is_file() for n in names)
    assert not [p for p in group.rglob("*") if ".tmp" in p.name]


def test_per_session_predictor_bhb(study):
    config, _, scores = study
    run_group_level(config.replace(params=("bhb",), outcomes=("madrs",), covariates=()))
    change = pd.read_csv(config.output_dir / "group" / "change.tsv", sep="\t",
                         na_values="n/a", keep_default_na=False)
    # no ROI for a per-session measure: roi is "n/a" (read as missing, the BIDS way)
    assert change["roi"].isna().all() and set(change["param"]) == {"bhb"}
    indexed = scores.set_index(["participant_id", "session_id"])["bhb"]
    row = change.loc[change["participant_id"] == "sub-05"].iloc[0]
    assert row["change"] == pytest.approx(indexed[("05", "post")] - indexed[("05", "pre")])
    models = pd.read_csv(config.output_dir / "group" / "models.tsv", sep="\t",
                         keep_default_na=False)
    terms = models.loc[models["model"] == "interaction", "term"]
    assert set(terms) == {"intercept", "treatment", "bhb_change", "treatment:bhb_change"}


def test_user_errors(study, tmp_path):
    config, _, _ = study
    with pytest.raises(InputError, match="run the participant level first"):
        run_group_level(config.replace(output_dir=tmp_path / "empty"))
    with pytest.raises(ClinicalDataError, match="--group-column"):
        run_group_level(config.replace(group_column="arm"))
    with pytest.raises(ClinicalDataError, match="'saline'"):
        run_group_level(config.replace(control_label="placebo"))
    with pytest.raises(ClinicalDataError, match="--params"):
        run_group_level(config.replace(params=("glutamate",)))


@pytest.mark.parametrize("statistic", ["median", "mean", None])
def test_roi_statistic_picks_the_column(tmp_path, statistic):
    """--roi-statistic: change.tsv holds the ROI tables' median or mean, and without the option
    their roi_gm_weighted_median (the default); models.json says which."""
    rng = np.random.default_rng(3)
    subjects = [f"{i:02d}" for i in range(1, 9)]
    participants = pd.DataFrame({"participant_id": subjects,
                                 "group": ["ketamine"] * 4 + ["saline"] * 4})
    scores, rows, expected = [], [], {}
    for s in subjects:
        for ses, madrs in (("pre", 30), ("post", 20 + int(rng.integers(0, 8)))):
            scores.append({"participant_id": s, "session_id": ses, "madrs": madrs, "qids_sr": 12})
            mean = 0.8 + 0.05 * rng.standard_normal()
            median = mean - 0.03 - 0.01 * rng.random()  # a CSF tail pulls the mean up
            weighted = median - 0.01 * rng.random()
            expected[(s, ses)] = {"mean": mean, "median": median, None: weighted}[statistic]
            rows.append(dict(participant_id=s, session_id=ses, roi="vACC", param="md", mean=mean,
                             median=median, roi_gm_weighted_median=weighted, n_voxels=300,
                             coverage=0.95, entities=""))
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, pd.DataFrame(scores), pd.DataFrame(rows))
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", n_permutations=0,
                    roi_statistic=statistic)
    run_group_level(config)
    change = pd.read_csv(out / "group" / "change.tsv", sep="\t").set_index("participant_id")
    for s in subjects:
        assert change.loc[f"sub-{s}", "baseline"] == pytest.approx(expected[(s, "pre")], rel=1e-9)
        assert change.loc[f"sub-{s}", "followup"] == pytest.approx(expected[(s, "post")], rel=1e-9)
    document = json.loads((out / "group" / "models.json").read_text())
    assert document["options"]["roi_statistic"] == statistic
    assert document["roi_value"]["statistic"] == (statistic or "roi_gm_weighted_median")
