"""Designs beyond two sessions and two arms (issue 16).

- repeated infusions with an early biomarker, several outcome sessions, one arm: the
  percent-improvement model at each outcome session against the simulation truth and a
  closed-form OLS (numpy, HC3);
- more than two sessions: the MixedLM trajectory rows against a direct statsmodels fit and
  the simulated time x treatment effect;
- ``<outcome>_change`` of another outcome as a covariate, against a closed-form OLS;
- null calibration of the early-change term over 200 simulated null studies (tables only).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from bids_ketamine.cli.run import main as run_main
from bids_ketamine.cli.simulate import main as simulate_main
from bids_ketamine.config import Config
from bids_ketamine.errors import ClinicalDataError
from bids_ketamine.group import clinical, models, response, tables
from bids_ketamine.group.run import run_group_level
from bids_ketamine.group.synthetic import multisession_study, random_study, write_study, write_tissue_tables
from bids_ketamine.simulate.infusion import InfusionDesign, repeated_infusion_tables


def _ols_hc3(design: np.ndarray, y: np.ndarray):
    """Closed-form OLS with HC3 standard errors and t-based 95 % CI."""
    inverse = np.linalg.inv(design.T @ design)
    beta = inverse @ design.T @ y
    residual = y - design @ beta
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    meat = design.T @ (design * (residual / (1 - leverage))[:, None] ** 2)
    se = np.sqrt(np.diag(inverse @ meat @ inverse))
    half = stats.t.ppf(0.975, len(y) - design.shape[1]) * se
    return beta, se, beta - half, beta + half


def _read_tsv(path):
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _rows(models_table, **where):
    mask = np.ones(len(models_table), dtype=bool)
    for column, value in where.items():
        mask &= models_table[column].astype(str) == str(value)
    return models_table.loc[mask].set_index("term")


def test_repeated_infusion_recovers_the_biomarker_effect(tmp_path):
    """Both command lines: simulate the study (no imaging), run the group level on it."""
    design = InfusionDesign(n_subjects=40, seed=3)
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert simulate_main([str(bids), "--design", "repeated-infusion", "--n-subjects", "40",
                          "--seed", "3", "--quiet"]) == 0
    with pytest.raises(SystemExit) as status:
        run_main([str(bids), str(out), "group", "--params", "metabolite", "--outcomes", "madrs",
                  "--outcome-sessions", *design.outcome_sessions, "--n-permutations", "0"])
    assert status.value.code == 0
    group = out / "group"
    assert (group / "report.html").is_file()
    truth = json.loads((bids / "sourcedata" / "simulation" / "truth.json").read_text())
    coefficients = truth["group_level"]["coefficients_by_outcome_session"]
    model_table = _read_tsv(group / "models.tsv")
    document = json.loads((group / "models.json").read_text())
    assert document["arms"]["design"] == "single-arm"
    assert "treatment" not in set(model_table["term"])

    # independent reading of the raw BIDS tables
    participants = _read_tsv(bids / "participants.tsv").set_index("participant_id")
    scores = pd.concat([_read_tsv(bids / s / f"{s}_sessions.tsv").assign(participant_id=s)
                        for s in participants.index]).set_index(["participant_id", "session_id"])
    subjects = participants.index.to_numpy()

    def at(session, column):
        return scores.xs(f"ses-{session}", level=1).loc[subjects, column].to_numpy(float)

    change = at("inf1", "metabolite") - at("baseline", "metabolite")
    baseline = at("baseline", "madrs")
    for session in design.outcome_sessions:
        improvement = 100 * (baseline - at(session, "madrs")) / baseline
        x = np.column_stack([np.ones(len(subjects)), change, baseline,
                             participants["age"].to_numpy(float),
                             (participants["sex"] == "M").to_numpy(float)])
        beta, se, low, high = _ols_hc3(x, improvement)
        rows = _rows(model_table, model="single_arm", measure="pctimprovement",
                     outcome_session=session)
        term = rows.loc["metabolite_change"]
        assert term["estimate"] == pytest.approx(beta[1], rel=1e-6, abs=1e-9)
        assert term["std_error"] == pytest.approx(se[1], rel=1e-6, abs=1e-9)
        assert term["conf_low"] == pytest.approx(low[1], rel=1e-6)
        assert rows["n_obs"].iloc[0] == len(subjects)
        true = coefficients[session]["metabolite_change"]
        assert term["conf_low"] <= true <= term["conf_high"], (session, term.to_dict(), true)

    for name in ("change.tsv", "outcomes.tsv", "response.tsv"):
        assert set(_read_tsv(group / name)["outcome_session"]) == set(design.outcome_sessions)
    sessions = _read_tsv(group / "sessions.tsv")
    assert set(sessions["session_id"]) == set(design.sessions)

    # the trajectory (single arm: no treatment terms), whichever random effects were kept
    (fit,) = document["trajectory"]["fits"]
    assert set(fit["fallbacks"]) <= {f"{r} ({m})" for r in ("intercept and time slope", "intercept")
                                     for m in models.MIXED_METHODS}
    scored = sessions.loc[sessions["madrs"].notna()]
    people = participants.loc[scored["participant_id"]]
    data = scored.assign(metabolite_change=scored["participant_id"].map(
        dict(zip(subjects, change))).to_numpy(),
        age=people["age"].to_numpy(float), sex=(people["sex"] == "M").to_numpy(float))
    direct = smf.mixedlm("madrs ~ time + metabolite_change + time:metabolite_change + age + sex",
                         data, groups=data["participant_id"], re_formula=fit["re_formula"]
                         ).fit(reml=True, method=fit["method"])
    rows = _rows(model_table, model="trajectory")
    np.testing.assert_allclose(rows["estimate"], direct.fe_params, rtol=1e-5)
    assert fit["n_obs"] == len(data) == 3 * len(subjects)
    assert {"trajectory", "single_arm", "remission_logit"} <= set(model_table["model"])
    figures = {p.name for p in (group / "figures").glob("*.png")}
    assert "trajectory_outcome-madrs.png" in figures
    assert {f"scatter_param-metabolite_outcome-madrs_session-{s}_roi-na.png"
            for s in design.outcome_sessions} <= figures


def test_trajectory_rows_equal_a_direct_mixedlm_fit(tmp_path):
    participants, scores, rois, truth = multisession_study(60, seed=11, time_treatment=-3.0)
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, scores, rois)
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", outcomes=("madrs",),
                    n_permutations=0)
    run_group_level(config)
    group = out / "group"
    document = json.loads((group / "models.json").read_text())
    assert document["sessions"]["order"] == ["pre", "d1", "w1", "m1"]
    (fit,) = document["trajectory"]["fits"]
    formula = document["formulas"]["trajectory/{param}/madrs"].split(" (")[0].replace(
        "{param}", "md")
    assert formula == ("madrs ~ time + treatment + md_change + time:treatment + time:md_change "
                       "+ age + sex")

    sessions = _read_tsv(group / "sessions.tsv")
    assert len(sessions) == 60 * 4
    values = sessions.pivot(index="participant_id", columns="session_id", values="value")
    people = participants.set_index("participant_id")
    data = sessions.assign(
        md_change=sessions["participant_id"].map(values["d1"] - values["pre"]),
        treatment=sessions["participant_id"].map((people["group"] == "ketamine").astype(float)),
        age=sessions["participant_id"].map(people["age"]).astype(float),
        sex=sessions["participant_id"].map((people["sex"] == "M").astype(float)),
    )
    direct = smf.mixedlm(formula, data, groups=data["participant_id"],
                         re_formula=fit["re_formula"]).fit(reml=True, method=fit["method"])
    rows = _rows(_read_tsv(group / "models.tsv"), model="trajectory")
    assert fit["random_effects"] == "intercept and time slope"
    for term, name in (("Intercept", "intercept"), ("time", "time"), ("treatment", "treatment"),
                       ("md_change", "md_change"), ("time:treatment", "time:treatment"),
                       ("time:md_change", "time:md_change"), ("age", "age"), ("sex", "sex")):
        assert rows.at[name, "estimate"] == pytest.approx(direct.fe_params[term], rel=1e-6,
                                                          abs=1e-6)
        assert rows.at[name, "std_error"] == pytest.approx(direct.bse_fe[term], rel=1e-6)
    assert rows.at["time", "n_obs"] == 240
    effect = rows.loc["time:treatment"]
    assert effect["conf_low"] <= truth["time:treatment"] <= effect["conf_high"]
    assert effect["p_value"] < 0.001  # the effect is found, not only covered


def _assert_interaction_with(out, participants, scores, rois, covariate: str, values) -> None:
    """The group level's MADRS interaction model with ``covariate`` and age: its formula, and its
    estimates and HC3 errors against OLS computed here; ``values(wide, subjects)`` gives the
    covariate's column (``wide``: the session scores, one column per measure and session)."""
    document = json.loads((out / "group" / "models.json").read_text())
    assert document["formulas"]["interaction/md/madrs_change"] == (
        f"madrs_change ~ treatment + md_change + treatment:md_change + {covariate} + age")
    wide = scores.pivot(index="participant_id", columns="session_id")
    md = rois.pivot(index="participant_id", columns="session_id", values="mean")
    people = participants.assign(participant_id=participants["participant_id"].str[4:]) \
        .set_index("participant_id")
    subjects = wide.index
    treatment = (people.loc[subjects, "group"] == "ketamine").to_numpy(float)
    md_change = (md["post"] - md["pre"]).loc[subjects].to_numpy()
    x = np.column_stack([np.ones(len(subjects)), treatment, md_change, treatment * md_change,
                         values(wide, subjects), people.loc[subjects, "age"].to_numpy(float)])
    y = (wide[("madrs", "post")] - wide[("madrs", "pre")]).to_numpy()
    beta, se, _, _ = _ols_hc3(x, y)
    rows = _rows(_read_tsv(out / "group" / "models.tsv"), model="interaction", measure="change")
    names = ["intercept", "treatment", "md_change", "treatment:md_change", covariate, "age"]
    np.testing.assert_allclose(rows.loc[names, "estimate"], beta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rows.loc[names, "std_error"], se, rtol=1e-6)
    assert set(rows["outcome_session"].astype(str)) == {"post"}


def test_change_covariate_enters_the_formula(tmp_path):
    participants, scores, rois = random_study(24, rois=("vACC",), seed=5)
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, scores, rois)
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", outcomes=("madrs",),
                    covariates=("qids_sr_change", "age"), n_permutations=0)
    run_group_level(config)
    _assert_interaction_with(out, participants, scores, rois, "qids_sr_change",
                             lambda wide, _: (wide[("qids_sr", "post")] - wide[("qids_sr", "pre")]).to_numpy())


def test_tissue_measure_change_as_a_covariate(tmp_path):
    """``--covariates md_wm_change``: the change of the participant level's white-matter median
    MD (its tissue tables) enters the interaction model like a clinical score's change, and
    ``--params md_wm`` analyses that global change itself."""
    participants, scores, rois = random_study(24, rois=("vACC",), seed=5)
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, scores, rois)
    rng = np.random.default_rng(11)
    subjects = sorted(rois["participant_id"].unique())
    md_wm = {(s, ses): 0.7 + 0.03 * rng.standard_normal() for s in subjects for ses in ("pre", "post")}
    write_tissue_tables(out, pd.DataFrame([
        {"participant_id": s, "session_id": ses, "tissue": "wm", "param": "md", "median": value}
        for (s, ses), value in md_wm.items()]))
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", outcomes=("madrs",),
                    covariates=("md_wm_change", "age"), n_permutations=0)
    run_group_level(config)
    _assert_interaction_with(out, participants, scores, rois, "md_wm_change",
                             lambda _, subjects: [md_wm[(s, "post")] - md_wm[(s, "pre")] for s in subjects])

    run_group_level(config.replace(params=("md_wm",), covariates=()))
    change = _read_tsv(out / "group" / "change.tsv").set_index("participant_id")
    assert set(change["param"]) == {"md_wm"}
    for subject in subjects:
        wm_change = md_wm[(subject, "post")] - md_wm[(subject, "pre")]
        assert change.at[f"sub-{subject}", "change"] == pytest.approx(wm_change, rel=1e-5)
    # outputs of a version before the tissue tables: the error says to rerun the participant level
    for path in out.rglob("*_tissuestats.tsv"):
        path.unlink()
    for option in ({"covariates": ("md_wm_change",)}, {"params": ("md_wm",)}):
        with pytest.raises(ClinicalDataError, match="tissuestats.tsv tables.*rerun the participant level"):
            run_group_level(config.replace(**option))


def _early_change_p_values(design: InfusionDesign) -> dict:
    """p of the early-change term at each outcome session, computed on the tables with the
    group level's own functions (pairing, percent improvement, covariate coding, OLS)."""
    participants, scores, _ = repeated_infusion_tables(design)
    people = participants.assign(participant_id=participants["participant_id"].str[4:]) \
        .set_index("participant_id")
    people["treatment"] = 1.0
    values = tables.values_from_scores(scores, design.biomarker)
    first = design.sessions[0]
    predictor = pd.DataFrame({"baseline": first, "followup": design.biomarker_session},
                             index=people.index)
    paired = tables.pair_sessions(values, predictor)
    p_values = {}
    for session in design.outcome_sessions:
        pairs = tables.pair_outcomes(scores, predictor.assign(followup=session), ["madrs"],
                                     people.index)
        data = people.join(response.clinical_outcomes(pairs, ["madrs"], 50.0, {"madrs": 10.0}))
        encoded, terms, _ = models.encode_covariates(data, ["madrs_baseline", "age", "sex"])
        frame = tables.model_frame(paired, encoded, design.biomarker, tables.NO_ROI)
        fitted = models.fit_ols(frame, "madrs_pctimprovement",
                                models.interaction_terms(design.biomarker, terms, True))
        p_values[session] = fitted.set_index("term").at[f"{design.biomarker}_change", "p_value"]
    return p_values


@pytest.mark.slow  # ~10-30 s: 400 OLS fits through the group level's table functions
def test_null_calibration_of_the_early_change_term():
    n_datasets = 200
    p_values = pd.DataFrame([_early_change_p_values(InfusionDesign(n_subjects=30, seed=seed,
                                                                   null=True))
                             for seed in range(n_datasets)])
    rejected = (p_values < 0.05).mean()
    for session, fraction in rejected.items():
        assert 0.03 <= fraction <= 0.07, (session, fraction)


def test_single_arm_without_a_group_column(tmp_path):
    participants, scores, rois = random_study(16, rois=("vACC",), seed=2)
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants.drop(columns="group"), scores, rois)
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", outcomes=("madrs",),
                    covariates=(), n_permutations=0)
    run_group_level(config)
    document = json.loads((out / "group" / "models.json").read_text())
    assert document["arms"]["design"] == "single-arm" and document["arms"]["n"] == {"all": 16}
    rows = _rows(_read_tsv(out / "group" / "models.tsv"), model="single_arm", measure="change")
    assert list(rows.index) == ["intercept", "md_change"]
    md = rois.pivot(index="participant_id", columns="session_id", values="mean")
    wide = scores.pivot(index="participant_id", columns="session_id", values="madrs")
    x = np.column_stack([np.ones(16), (md["post"] - md["pre"]).loc[wide.index]])
    beta, se, _, _ = _ols_hc3(x, (wide["post"] - wide["pre"]).to_numpy())
    np.testing.assert_allclose(rows["estimate"], beta, rtol=1e-6)
    np.testing.assert_allclose(rows["std_error"], se, rtol=1e-6)


def test_session_order_and_option_errors(tmp_path):
    found = {"1": {"a", "b", "c"}, "2": {"a", "c"}}
    no_times = pd.DataFrame(columns=["participant_id", "session_id", "acq_time"])
    assert clinical.order_sessions(found, no_times, None) == (None, "unknown (acq_time missing; "
                                                                    "give --sessions)")
    order, rule = clinical.order_sessions(found, no_times, ("c", "a", "b"))
    assert order == ["c", "a", "b"] and "given" in rule
    with pytest.raises(ClinicalDataError, match="ses-x"):
        clinical.order_sessions(found, no_times, ("a", "x"))
    times = pd.DataFrame({"participant_id": ["1", "1", "1"], "session_id": ["a", "b", "c"],
                          "acq_time": pd.to_datetime(["2020-03-01", "2020-01-01", "2020-02-01"])})
    assert clinical.order_sessions(found, times, None)[0] == ["b", "c", "a"]

    participants, scores, rois, _ = multisession_study(8, seed=1)
    bids, out = tmp_path / "bids", tmp_path / "out"
    write_study(bids, out, participants, scores, rois)
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group", outcomes=("madrs",),
                    n_permutations=0)
    with pytest.raises(ClinicalDataError, match="ses-y4"):
        run_group_level(config.replace(outcome_sessions=("w1", "y4")))


def test_command_line_options_reach_the_config(tmp_path):
    from bids_ketamine.cli.parser import parse_args

    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "group",
                         "--outcome-sessions", "ses-inf4", "m12", "--outcome-baseline-session",
                         "ses-baseline", "--sessions", "baseline", "inf1", "inf4", "m12",
                         "--covariates", "qids_sr_change", "age"])
    assert config.outcome_sessions == ("inf4", "m12")
    assert config.outcome_baseline_session == "baseline"
    assert config.sessions == ("baseline", "inf1", "inf4", "m12")
    assert config.covariates == ("qids_sr_change", "age")
    defaults = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "group"])
    assert (defaults.outcome_sessions, defaults.outcome_baseline_session, defaults.sessions) == (
        None, None, None)


def test_trajectory_figure_data_means_and_intervals(tmp_path):
    from bids_ketamine.group.figures import plot_trajectory, trajectory_data

    rng = np.random.default_rng(0)
    scores = pd.DataFrame({
        "participant_id": np.repeat([f"sub-{i}" for i in range(10)], 3),
        "group": np.repeat(["a"] * 6 + ["b"] * 4, 3),
        "session_id": np.tile(["s0", "s1", "s2"], 10), "time": np.tile([0, 1, 2], 10),
        "madrs": rng.normal(25, 5, 30)})
    scores.loc[4, "madrs"] = np.nan  # a missing score is left out of its session's mean
    data = trajectory_data(scores, "madrs", ["b", "a"])
    assert data["group"].iloc[0] == "b"
    means = data.loc[data["kind"] == "mean"].set_index(["group", "session_id"])
    for (arm, session), rows in scores.dropna().groupby(["group", "session_id"]):
        values = rows["madrs"].to_numpy()
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                     scale=stats.sem(values))
        assert means.loc[(arm, session), "n"] == len(values)
        assert means.loc[(arm, session), "conf_low"] == pytest.approx(low)
        assert means.loc[(arm, session), "conf_high"] == pytest.approx(high)
    assert (data["kind"] == "participant").sum() == 29
    path = plot_trajectory(data, "t", "madrs", tmp_path / "trajectory.png")
    assert path.is_file() and path.with_suffix(".tsv").is_file()
