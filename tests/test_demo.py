"""``bids-ketamine-demo``: its comparison of the group result with the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.cli import run
from bids_ketamine.cli.demo import interaction_versus_truth
from bids_ketamine.group.synthetic import write_study
from bids_ketamine.simulate import simulate_trial


@pytest.mark.parametrize("covariates", [[], ["--covariates"]], ids=["default", "none"])
def test_refit_on_true_md_reproduces_the_group_level(tmp_path, covariates):
    """With ROI tables holding the true ROI MD, the group level's interaction estimates are
    those the demo refits from truth.tsv, with the covariates the group level used."""
    bids = simulate_trial(tmp_path / "bids", n_subjects=9, seed=4, progress=False, images=False)
    out = tmp_path / "derivatives"
    truth = pd.read_csv(bids / "sourcedata" / "simulation" / "truth.tsv", sep="\t")
    values = pd.concat([
        pd.DataFrame({"participant_id": truth["participant_id"].str[4:], "session_id": session,
                      "roi": truth["roi"], "param": "md", "mean": truth[column],
                      "n_voxels": 100, "coverage": 1.0})
        for session, column in (("pre", "md_baseline"), ("post", "md_followup"))
    ], ignore_index=True)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    scores = pd.concat([pd.read_csv(path, sep="\t").assign(participant_id=path.parent.name[4:])
                        for path in sorted(bids.glob("sub-*/sub-*_sessions.tsv"))])
    scores["session_id"] = scores["session_id"].str[4:]
    write_study(bids, out, participants, scores, values)
    with pytest.raises(SystemExit) as done:
        run.main([str(bids), str(out), "group", "--n-permutations", "0", *covariates])
    assert done.value.code in (0, None)

    table = interaction_versus_truth(bids, out)
    assert sorted(table.index) == sorted(truth["roi"].unique())
    assert (table["n_obs"] == 9).all()
    # equal up to the 6 decimals of the ROI tables
    scale = table["true_md_estimate"].abs().max()
    np.testing.assert_allclose(table["estimate"], table["true_md_estimate"], rtol=0, atol=1e-4 * scale)
    assert table.loc["BA10_L", "generative"] == 250.0
    assert table.loc["amygdala_R", "generative"] == 0.0
