"""Simulated two-arm trials with known ground truth (demo data, accuracy tests, power analysis).

Modules, in the order data flows through them:

- :mod:`~bids_ketamine.simulate.trial`: design options, arms, participants, MD changes and
  the clinical outcome model;
- :mod:`~bids_ketamine.simulate.geometry`: scanner grids, rigid and subject transforms;
- :mod:`~bids_ketamine.simulate.anatomy`: template tissue labels, ROIs, WM orientation,
  partial-volume fractions by supersampling;
- :mod:`~bids_ketamine.simulate.motion`: session repositioning and per-volume motion;
- :mod:`~bids_ketamine.simulate.signal`: gradient scheme, tensor signal, Rician noise, bvecs;
- :mod:`~bids_ketamine.simulate.session`: one DWI series (:func:`simulate_session`);
- :mod:`~bids_ketamine.simulate.writer` and :mod:`~bids_ketamine.simulate.study`: the BIDS
  dataset and its truth (:func:`simulate_trial`).

:mod:`~bids_ketamine.simulate.infusion` simulates a repeated-infusion study with an early
plasma biomarker and several outcome sessions, without imaging (clinical tables and truth).
"""

from bids_ketamine.simulate.anatomy import load_template_anatomy
from bids_ketamine.simulate.session import PRESETS, make_acquisition, simulate_session
from bids_ketamine.simulate.study import simulate_trial, truth_map_paths
from bids_ketamine.simulate.trial import TrialDesign, default_outcome_models

__all__ = [
    "PRESETS",
    "TrialDesign",
    "default_outcome_models",
    "load_template_anatomy",
    "make_acquisition",
    "simulate_session",
    "simulate_trial",
    "truth_map_paths",
]
