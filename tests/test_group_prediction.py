"""Nested cross-validated elastic net: known signal, null data, and scikit-learn's ElasticNetCV."""

import numpy as np
import pytest
from sklearn.linear_model import ElasticNetCV
from sklearn.model_selection import KFold

from bids_ketamine.group import prediction


def _features(rng, n, signal):
    changes = rng.normal(0, 0.02, (n, 7))
    treatment = (rng.random(n) < 0.6).astype(float)
    X, names = prediction.treatment_change_features(changes, treatment,
                                                    [f"md_change[r{i}]" for i in range(7)])
    y = signal * changes[:, 2] / 0.02 + rng.normal(0, 1, n)
    return X, y, names


def test_strong_signal_is_predicted():
    rng = np.random.default_rng(11)
    X, y, names = _features(rng, 60, signal=3.0)
    result = prediction.predict_outcome(X, y, names, n_permutations=39, seed=1)
    assert result.scheme["outer"] == "10-fold"
    assert result.r2 > 0.5
    assert result.p_value == pytest.approx(1 / 40)  # no permutation reaches the real R^2
    strongest = int(np.argmax(np.abs(result.std_beta)))
    assert names[strongest] == "md_change[r2]"
    assert result.selection_frequency[strongest] == 1.0
    assert result.std_beta[strongest] > 0.8  # true standardised beta 3 / sqrt(10) ~ 0.95


def test_leave_one_out_and_null_data():
    rng = np.random.default_rng(12)
    X, y, names = _features(rng, 30, signal=3.0)
    loo = prediction.predict_outcome(X, y, names, n_permutations=0, seed=0)
    assert loo.scheme["outer"] == "leave-one-out" and np.isnan(loo.p_value)
    assert loo.r2 > 0.5
    X, y, names = _features(rng, 80, signal=0.0)
    null = prediction.predict_outcome(X, y, names, n_permutations=0, seed=0)
    assert null.r2 <= 0.05


def test_hyperparameters_match_elasticnetcv():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((70, 9))
    y = X[:, 0] - 0.5 * X[:, 3] + rng.standard_normal(70)
    alpha, ratio = prediction.choose_hyperparameters(X, y, 5, seed=3)
    reference = ElasticNetCV(l1_ratio=list(prediction.L1_RATIOS), alphas=prediction.N_ALPHAS,
                             eps=prediction.ALPHA_MIN_RATIO, cv=KFold(5, shuffle=True, random_state=3),
                             max_iter=10000, tol=1e-4).fit(X, y)
    assert ratio == reference.l1_ratio_
    assert alpha == pytest.approx(reference.alpha_, rel=1e-6)


def test_cost_rule_and_checks():
    assert prediction.cv_scheme(50, 200)["outer"] == "leave-one-out"
    assert prediction.cv_scheme(150, 200)["outer"] == "10-fold"
    large = prediction.cv_scheme(1000, 500)
    assert large["outer"] == "5-fold" and large["inner_folds"] == 3
    assert large["n_permutations"] == prediction.LARGE_N_MAX_PERMUTATIONS
    with pytest.raises(ValueError, match="at least 10"):
        prediction.predict_outcome(np.zeros((5, 2)), np.zeros(5), ["a", "b"])
    with pytest.raises(ValueError, match="complete"):
        prediction.predict_outcome(np.full((12, 1), np.nan), np.zeros(12), ["a"])
