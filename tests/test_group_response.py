"""Percent improvement, response and remission on hand-computed examples."""

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.group import response


def test_percent_improvement_by_hand():
    # MADRS 30 -> 15: 50 %; 40 -> 10: 75 %; 20 -> 25: -25 %; 0 -> 0: undefined; missing
    improvement = response.percent_improvement([30, 40, 20, 0, np.nan], [15, 10, 25, 0, 12])
    np.testing.assert_allclose(improvement[:3], [50.0, 75.0, -25.0])
    assert np.isnan(improvement[3]) and np.isnan(improvement[4])
    with pytest.raises(ValueError, match="same shape"):
        response.percent_improvement([1, 2], [1])


def test_response_and_remission_thresholds():
    improvement = np.array([50.0, 49.9, 75.0, np.nan])
    np.testing.assert_array_equal(response.is_response(improvement, 50.0)[:3], [1.0, 0.0, 1.0])
    assert np.isnan(response.is_response(improvement)[3])
    # MADRS remission <= 10, QIDS-SR <= 5: boundary values count as remission
    np.testing.assert_array_equal(response.is_remission([10, 11, 3], 10.0), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(response.is_remission([5, 6], 5.0), [1.0, 0.0])


def test_rates_per_arm_by_hand():
    wide = pd.DataFrame({
        "group": ["ketamine"] * 4 + ["placebo"] * 3,
        "madrs_baseline": [30, 40, 20, 30, 30, 30, 25],
        "madrs_followup": [15, 8, 25, 12, 28, 10, 20],
    })
    frame = response.clinical_outcomes(wide, ["madrs"], 50.0, {"madrs": 10.0})
    # ketamine: 50 %, 80 %, -25 %, 60 % -> responders 3/4; remission (<=10): 8 -> 1/4
    # placebo: 6.67 %, 66.7 %, 20 % -> responders 1/3; remission: 10 -> 1/3
    rates = response.response_rates(frame, ["madrs"]).set_index("group")
    assert rates.at["ketamine", "n_response"] == 3
    assert rates.at["ketamine", "response_rate"] == pytest.approx(0.75)
    assert rates.at["ketamine", "remission_rate"] == pytest.approx(0.25)
    assert rates.at["placebo", "response_rate"] == pytest.approx(1 / 3)
    assert rates.at["placebo", "n_remission"] == 1
    assert rates.at["ketamine", "pctimprovement_mean"] == pytest.approx((50 + 80 - 25 + 60) / 4)
    # an outcome without a remission threshold gets no remission column
    other = response.clinical_outcomes(wide, ["madrs"], 50.0, {})
    assert "madrs_remission" not in other
    assert np.isnan(response.response_rates(other, ["madrs"])["remission_rate"]).all()
