"""Group models against closed-form least squares, simulation truth and hand BH."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_ketamine.group import models


def _change_table(rng, n, interaction, slope=-30.0):
    treatment = (rng.random(n) < 0.6).astype(float)
    md_change = rng.normal(0, 0.03, n)
    baseline = rng.normal(30, 5, n)
    age = rng.integers(20, 60, n).astype(float)
    noise = rng.normal(0, 4, n)
    madrs_change = (-6 * treatment + slope * md_change + interaction * treatment * md_change
                    + 0.1 * (baseline - 30) + noise)
    return pd.DataFrame({"treatment": treatment, "md_change": md_change,
                         "madrs_baseline": baseline, "age": age, "madrs_change": madrs_change})


def _closed_form(frame, dependent, columns):
    X = np.column_stack([np.ones(len(frame))] + [
        np.prod([frame[p].to_numpy() for p in c.split(":")], axis=0) for c in columns])
    y = frame[dependent].to_numpy()
    xtx_inv = np.linalg.inv(X.T @ X)
    beta = xtx_inv @ X.T @ y
    resid = y - X @ beta
    n, k = X.shape
    dof = n - k
    se_classical = np.sqrt(np.diag(xtx_inv) * (resid @ resid) / dof)
    leverage = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    meat = X.T @ (X * (resid ** 2 / (1 - leverage) ** 2)[:, None])
    se_hc3 = np.sqrt(np.diag(xtx_inv @ meat @ xtx_inv))
    return beta, se_classical, se_hc3, dof


TERMS = ["treatment", "md_change", "treatment:md_change", "madrs_baseline", "age"]


@pytest.mark.parametrize("cov_type", ["HC3", "nonrobust"])
def test_ols_equals_closed_form(cov_type):
    frame = _change_table(np.random.default_rng(3), 45, interaction=-50.0)
    table = models.fit_ols(frame, "madrs_change", TERMS, cov_type=cov_type)
    beta, se_classical, se_hc3, dof = _closed_form(frame, "madrs_change", TERMS)
    se = se_hc3 if cov_type == "HC3" else se_classical
    t = beta / se
    p = 2 * stats.t.sf(np.abs(t), dof)
    half = stats.t.ppf(0.975, dof) * se
    assert table["term"].tolist() == ["intercept", *TERMS]
    np.testing.assert_allclose(table["estimate"], beta, rtol=1e-6)
    np.testing.assert_allclose(table["std_error"], se, rtol=1e-6)
    np.testing.assert_allclose(table["statistic"], t, rtol=1e-6)
    np.testing.assert_allclose(table["p_value"], p, rtol=1e-6)
    np.testing.assert_allclose(table["conf_low"], beta - half, rtol=1e-6)
    np.testing.assert_allclose(table["conf_high"], beta + half, rtol=1e-6)
    assert (table["n_obs"] == 45).all()
    # standardised coefficient: estimate x SD(column) / SD(y)
    product = frame["treatment"] * frame["md_change"]
    expected = beta[3] * product.std() / frame["madrs_change"].std()
    assert table.loc[3, "std_estimate"] == pytest.approx(expected, rel=1e-9)


def test_ci_covers_true_interaction_and_null_rejection_rate():
    rng = np.random.default_rng(2024)
    true_interaction = -120.0
    frame = _change_table(rng, 60, true_interaction)
    row = models.fit_ols(frame, "madrs_change", TERMS).set_index("term").loc["treatment:md_change"]
    assert row["conf_low"] < true_interaction < row["conf_high"]
    assert row["p_value"] < 0.05  # effect 3x its standard error at n = 60

    rejections = []
    for _ in range(300):
        null = _change_table(rng, 60, 0.0)
        p = models.fit_ols(null, "madrs_change", TERMS).set_index("term").at[
            "treatment:md_change", "p_value"]
        rejections.append(p < 0.05)
    assert 0.03 <= np.mean(rejections) <= 0.07


def test_benjamini_hochberg_by_hand():
    rng = np.random.default_rng(0)
    rows = []
    for roi in ["A", "B", "C", "D", "E"]:
        for outcome in ["madrs", "qids_sr"]:
            for term in ["treatment", "md_change"]:
                rows.append({"model": "interaction", "param": "md", "measure": "change",
                             "roi": roi, "outcome": outcome, "term": term,
                             "p_value": rng.uniform(0, 0.2)})
    table = pd.DataFrame(rows)
    table.loc[3, "p_value"] = np.nan
    result = models.add_fdr(table)
    for term, family in result.groupby("term"):
        valid = family.dropna(subset=["p_value"])
        p = valid["p_value"].to_numpy()
        m = len(p)
        order = np.argsort(p)
        adjusted = np.empty(m)
        running = 1.0
        for rank in range(m, 0, -1):  # step-up: min over larger ranks of p * m / rank
            running = min(running, p[order[rank - 1]] * m / rank)
            adjusted[order[rank - 1]] = running
        np.testing.assert_allclose(valid["p_fdr"], adjusted, rtol=1e-12)
    assert np.isnan(result.loc[3, "p_fdr"])


def test_encode_covariates_keeps_names():
    frame = pd.DataFrame({"sex": ["F", "M", "M", None], "site": ["a", "b", "c", "a"],
                          "age": [20, 30, 40, 50]})
    encoded, terms, coding = models.encode_covariates(frame, ["age", "sex", "site"])
    assert terms == ["age", "sex", "site[b]", "site[c]"]
    assert encoded["sex"].tolist()[:3] == [0.0, 1.0, 1.0] and np.isnan(encoded["sex"].iloc[3])
    assert coding["sex"] == {"0": "F", "1": "M"}
    assert encoded["site[c]"].tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="not a column"):
        models.encode_covariates(frame, ["bmi"])


def _newton_logit(X, y, iterations=50):
    beta = np.zeros(X.shape[1])
    for _ in range(iterations):
        prob = 1 / (1 + np.exp(-X @ beta))
        information = X.T @ (X * (prob * (1 - prob))[:, None])
        beta = beta + np.linalg.solve(information, X.T @ (y - prob))
    prob = 1 / (1 + np.exp(-X @ beta))
    information = X.T @ (X * (prob * (1 - prob))[:, None])
    return beta, np.sqrt(np.diag(np.linalg.inv(information)))


def test_logit_equals_newton_and_survives_separation():
    rng = np.random.default_rng(5)
    frame = _change_table(rng, 120, -80.0)
    frame["remission"] = (frame["madrs_change"] + rng.normal(0, 4, 120) < -6).astype(float)
    terms = ["treatment", "md_change", "treatment:md_change"]
    table = models.fit_logit(frame, "remission", terms)
    X = np.column_stack([np.ones(120), frame["treatment"], frame["md_change"],
                         frame["treatment"] * frame["md_change"]])
    beta, se = _newton_logit(X, frame["remission"].to_numpy())
    np.testing.assert_allclose(table["estimate"], beta, rtol=1e-5)
    np.testing.assert_allclose(table["std_error"], se, rtol=1e-5)
    assert (table["note"] == "").all()

    separated = frame.copy()
    separated["remission"] = (separated["md_change"] > 0).astype(float)
    result = models.fit_logit(separated, "remission", terms)
    assert result["estimate"].isna().all()
    assert result["note"].str.contains("separation").all()

    constant = frame.assign(remission=0.0)
    assert models.fit_logit(constant, "remission", terms)["note"].str.contains("every").all()


def test_degenerate_design_reports_instead_of_crashing():
    frame = _change_table(np.random.default_rng(1), 30, 0.0).assign(treatment=1.0)
    table = models.fit_ols(frame, "madrs_change", TERMS)
    assert table["estimate"].isna().all()
    assert "rank deficient" in table["note"].iloc[0]
