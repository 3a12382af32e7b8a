"""The tissue table (brain, white and grey matter) of a series, against hand-counted phantoms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.dwi.tissue_stats import TISSUE_MIN_FRACTION, TISSUESTATS_COLUMNS, tissue_statistics
from bids_ketamine.interfaces.roi import TissueStats

SHAPE = (10, 10, 10)


def _phantom():
    """Slabs along x: white matter (x 0-3, MD 0.70), a WM/GM mixture (x 4-5, MD 0.75, fractions
    0.5 / 0.5: in neither tissue), grey matter (x 6-8, MD 0.80, GM 0.7; its row y = 0 at x = 6
    has MD 2.5, CSF) and CSF (x 9, MD 3.0)."""
    md = np.empty(SHAPE)
    wm, gm = np.zeros(SHAPE), np.zeros(SHAPE)
    md[:4], wm[:4] = 0.70, 1.0
    md[4:6], wm[4:6], gm[4:6] = 0.75, 0.5, 0.5
    md[6:9], gm[6:9] = 0.80, 0.7
    md[6, 0] = 2.5
    md[9] = 3.0
    return md, {"wm": wm, "gm": gm}


def _rows(table, param="md"):
    return table[table["param"] == param].set_index("tissue")


def test_tissue_medians_and_counts_are_the_hand_counted_ones():
    md, fractions = _phantom()
    fa = np.where(md < 1.1, 0.3, 0.05)
    table = tissue_statistics({"fa": fa, "md": md}, np.ones(SHAPE, bool), tissue_fractions=fractions)
    assert list(table.columns) == TISSUESTATS_COLUMNS
    assert list(table["tissue"]) == [t for t in TISSUE_MIN_FRACTION for _ in ("fa", "md")]
    rows = _rows(table)
    # brain: 400 x 0.70, 200 x 0.75, 290 x 0.80, 10 x 2.5, 100 x 3.0; no CSF rule
    assert rows.loc["brain", "n_voxels"] == 1000
    assert rows.loc["brain", "median"] == pytest.approx(0.75)
    # white matter: fraction >= 0.9 only (the mixture slab is out)
    assert rows.loc["wm", "n_voxels"] == 400
    assert rows.loc["wm", "median"] == pytest.approx(0.70)
    # grey matter: fraction >= 0.6, less the CSF row (MD 2.5 > 1.1)
    assert rows.loc["gm", "n_voxels"] == 290
    assert rows.loc["gm", "median"] == pytest.approx(0.80)
    # other maps over the same voxels
    assert _rows(table, "fa").loc["gm", "n_voxels"] == 290
    assert _rows(table, "fa").loc["gm", "median"] == pytest.approx(0.3)


def test_the_csf_rule_reads_the_participants_md_not_the_sessions():
    md, fractions = _phantom()
    participant_md = md.copy()
    participant_md[7, 0] = 1.5  # CSF in the participant's MD (mean of the sessions), not in this one's
    rows = _rows(tissue_statistics({"md": md}, np.ones(SHAPE, bool), tissue_fractions=fractions, md=participant_md))
    assert rows.loc["gm", "n_voxels"] == 280
    rows = _rows(tissue_statistics({"md": md}, np.ones(SHAPE, bool), tissue_fractions=fractions,
                                   csf_md_threshold=None))
    assert rows.loc["gm", "n_voxels"] == 300


def test_the_mask_limits_every_tissue_and_missing_fractions_leave_rows_empty():
    md, fractions = _phantom()
    mask = np.ones(SHAPE, bool)
    mask[:, 5:] = False  # half of every slab
    rows = _rows(tissue_statistics({"md": md}, mask, tissue_fractions={"wm": fractions["wm"]}))
    assert rows.loc["brain", "n_voxels"] == 500
    assert rows.loc["wm", "n_voxels"] == 200
    assert rows.loc["gm", "n_voxels"] == 0 and np.isnan(rows.loc["gm", "median"])
    rows = _rows(tissue_statistics({"md": md}, mask))
    assert list(rows["n_voxels"]) == [500, 0, 0]


def test_bad_input_is_named():
    md, fractions = _phantom()
    with pytest.raises(ValueError, match="map 'gm' has shape"):
        tissue_statistics({"md": md}, np.ones(SHAPE, bool), tissue_fractions={"gm": fractions["gm"][:5]})
    with pytest.raises(ValueError, match="an MD map is needed"):
        tissue_statistics({"fa": md}, np.ones(SHAPE, bool))
    with pytest.raises(ValueError, match="no parameter maps"):
        tissue_statistics({}, np.ones(SHAPE, bool))


def test_interface_writes_the_table_within_the_shared_mask(tmp_path):
    md, fractions = _phantom()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shared = np.ones(SHAPE, np.uint8)
    shared[:, :, 5:] = 0
    files = {}
    for name, values in {"md": md, "fa": md * 0 + 0.2, "ad": md, "rd": md, "mask": np.ones(SHAPE, np.uint8),
                         "shared_mask": shared, **fractions}.items():
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.Nifti1Image(values.astype(np.float32), affine).to_filename(files[name])
    interface = TissueStats(mask_file=files["mask"], shared_mask_file=files["shared_mask"], csf_md_threshold=1.1,
                            **{f"{p}_file": files[p] for p in ("fa", "md", "ad", "rd", "gm", "wm")})
    result = interface.run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_file, sep="\t")
    rows = _rows(table)
    assert rows.loc["brain", "n_voxels"] == 500
    assert rows.loc["wm", "n_voxels"] == 200 and rows.loc["wm", "median"] == pytest.approx(0.70)
    assert rows.loc["gm", "n_voxels"] == 145 and rows.loc["gm", "median"] == pytest.approx(0.80)
    assert set(table["param"]) == {"fa", "md", "ad", "rd"}


def _tissue_rows(subject, session, md_wm, entities=""):
    return [{"participant_id": subject, "session_id": session, "tissue": tissue, "param": "md",
             "median": md_wm + offset, "entities": entities}
            for tissue, offset in (("brain", 0.1), ("wm", 0.0), ("gm", 0.05))]


def test_group_reads_each_sessions_tissue_medians(tmp_path, caplog):
    """A session's value: its table without acq/run entities when present, else the mean of its
    series; participants outside the list are left out; a dataset column of the same name wins."""
    from bids_ketamine.group.synthetic import write_tissue_tables
    from bids_ketamine.group.tissue import join_session_measures, tissue_measures

    rows = (_tissue_rows("01", "pre", 0.70) + _tissue_rows("01", "post", 0.72)
            + _tissue_rows("02", "pre", 0.60, "_acq-a") + _tissue_rows("02", "pre", 0.64, "_acq-b")
            + _tissue_rows("02", "post", 0.66) + _tissue_rows("02", "post", 9.0, "_acq-a")
            + _tissue_rows("03", "pre", 0.5))
    write_tissue_tables(tmp_path, pd.DataFrame(rows))
    measures = tissue_measures(tmp_path, ["01", "02"]).set_index(["participant_id", "session_id"])
    assert list(measures.columns) == ["md_brain", "md_wm", "md_gm"]
    assert measures.loc[("01", "post"), "md_wm"] == pytest.approx(0.72)
    assert measures.loc[("02", "pre"), "md_wm"] == pytest.approx(0.62)      # two series: their mean
    assert measures.loc[("02", "post"), "md_wm"] == pytest.approx(0.66)     # the session table
    assert measures.loc[("02", "post"), "md_brain"] == pytest.approx(0.76)
    assert "03" not in measures.index.get_level_values(0)

    scores = pd.DataFrame({"participant_id": ["01", "01"], "session_id": ["pre", "post"],
                           "madrs": [30.0, 20.0], "md_gm": [1.0, 2.0]})
    joined = join_session_measures(scores, measures.reset_index()).set_index(["participant_id", "session_id"])
    assert joined.loc[("01", "post"), "md_gm"] == 2.0                      # the dataset's column
    assert joined.loc[("02", "pre"), "md_wm"] == pytest.approx(0.62)        # a session without scores
    assert np.isnan(joined.loc[("02", "pre"), "madrs"])
    assert "hide the participant level's tissue measures" in caplog.text


def test_group_names_a_damaged_tissue_table(tmp_path):
    from bids_ketamine.errors import InputError
    from bids_ketamine.group.synthetic import write_tissue_tables
    from bids_ketamine.group.tissue import tissue_measures

    write_tissue_tables(tmp_path, pd.DataFrame(_tissue_rows("01", "pre", 0.7)))
    (path,) = tmp_path.rglob("*_tissuestats.tsv")
    path.write_text("tissue\tparam\tmean\nwm\tmd\t0.7\n")
    with pytest.raises(InputError, match=f"{path.name} lacks column.*median.*rerun the participant level"):
        tissue_measures(tmp_path)
    assert tissue_measures(tmp_path / "nothing").empty


@pytest.mark.slow  # about 2 minutes: 4 simulated participants (demo preset, 4 mm), participant level
def test_white_matter_change_tracks_the_simulated_scanner_drift(tmp_path):
    """The simulator multiplies every diffusivity of a follow-up session by its scanner drift
    (``--scanner-drift``, drawn per participant, in ``*_effects.json``) and changes grey matter
    only otherwise: the participant level's white-matter median MD must change by the drift."""
    import json

    from participant_runs import run_participant

    from bids_ketamine.cli.simulate import main as simulate_main
    from bids_ketamine.group.tissue import tissue_measures

    bids, out = tmp_path / "bids", tmp_path / "out"
    simulate_main([str(bids), "--n-subjects", "4", "--seed", "3", "--preset", "demo", "--effect-model", "blobs",
                   "--scanner-drift", "3", "--quiet"])
    run_participant(bids, out, tmp_path / "work")
    measured = tissue_measures(out).set_index(["participant_id", "session_id"])
    drift, change = [], []
    for effects_file in sorted((bids / "sourcedata" / "simulation").glob("sub-*/sub-*_effects.json")):
        subject = effects_file.name.split("_")[0][4:]
        sessions = {s["session_id"]: s["drift_pct"] for s in json.loads(effects_file.read_text())["sessions"]}
        drift.append(100 * ((1 + sessions["post"] / 100) / (1 + sessions["pre"] / 100) - 1))
        change.append(100 * (measured.loc[(subject, "post"), "md_wm"] / measured.loc[(subject, "pre"), "md_wm"] - 1))
    drift, change = np.array(drift), np.array(change)
    print("true drift %", drift.round(2), "white-matter MD change %", change.round(2))
    assert len(drift) == 4 and np.std(drift) > 1.0  # the drift varies: the check can fail
    assert np.abs(change - drift).max() < 0.5
