"""Interaction power of a 40-subject trial for each ROI statistic (issue 20).

Model-based: the simulator's trial model (:func:`bids_ketamine.simulate.trial.draw_participants`,
2:1 ketamine:saline, its outcome models with the reference study's interactions in left BA10
and left amygdala for MADRS) gives each participant's true ROI MD change and MADRS change; each
ROI statistic adds its own measurement error to the MD change, drawn from the residuals
(recovered - ideal change, percent of MD) it showed on the harder simulator
(``precision_benchmark.py``: ``residual_sd_per_roi`` of one motion level); the app's
interaction model (:func:`bids_ketamine.group.models.fit_ols`, HC3, MADRS change ~ treatment +
MD change + treatment x MD change + baseline MADRS + age) is fitted per replicate and ROI.
Power is the share of replicates with the interaction's p < 0.05 in the ROIs where the model
has one; the same share in the ROIs without one is the false-positive rate.

The images are not simulated (40 subjects x hundreds of replicates of the participant level
would take days on 2 cores): measurement error enters only through the residual SDs measured
with the images, assumed normal and independent across participants and ROIs.

Usage::

    python benchmarks/power_benchmark.py --precision benchmarks/results/precision.json \
        --level moderate --replicates 300
    # measurement error without the simulator's interpolation: results/power_exact_heavy.json
    python benchmarks/power_benchmark.py --precision benchmarks/results/precision_exact.json \
        --level heavy --replicates 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
#: Error-free reference (the true change), beside the statistics.
TRUTH = "truth (no error)"


def trial_table(seed: int, n_subjects: int, rois) -> pd.DataFrame:
    """One simulated trial: per participant x ROI the true MD change (um^2/ms), the baseline MD
    and the MADRS change, with treatment, baseline MADRS and age."""
    from bids_ketamine.simulate.trial import TrialDesign, default_outcome_models, draw_participants

    design = TrialDesign(n_subjects=n_subjects, seed=seed)
    rows = []
    for person in draw_participants(design, list(rois), default_outcome_models()):
        for index, roi in enumerate(rois):
            rows.append({"participant": person.label, "roi": roi,
                         "treatment": float(person.group == "ketamine"),
                         "md_baseline": float(person.roi_md[0, index]),
                         "md_change": float(person.roi_md[1, index] - person.roi_md[0, index]),
                         "madrs_change": float(person.scores["madrs"][1] - person.scores["madrs"][0]),
                         "madrs_baseline": float(person.scores["madrs"][0]), "age": float(person.age)})
    return pd.DataFrame(rows)


def power(precision: dict, level: str, statistics, n_subjects: int, replicates: int, seed: int) -> pd.DataFrame:
    """Share of replicates with p < 0.05 for the treatment x MD change term, per statistic and ROI."""
    from bids_ketamine.config import KETAMINE7_ROIS
    from bids_ketamine.group.models import fit_ols, interaction_terms

    residual_sd = {row["statistic"]: row["residual_sd_per_roi"] for row in precision["levels"][level]["summary"]
                   if "residual_sd_per_roi" in row}
    missing = [name for name in statistics if name not in residual_sd]
    if missing:
        raise SystemExit(f"{missing} have no residual_sd_per_roi in the precision results: rerun "
                         "precision_benchmark.py --evaluate-only")
    rng = np.random.default_rng(seed)
    terms = interaction_terms("md", ["madrs_baseline", "age"])
    hits = {(name, roi): 0 for name in (TRUTH, *statistics) for roi in KETAMINE7_ROIS}
    for replicate in range(replicates):
        table = trial_table(seed + replicate, n_subjects, KETAMINE7_ROIS)
        for name in (TRUTH, *statistics):
            error_pct = 0.0 if name == TRUTH else rng.normal(size=len(table)) * table["roi"].map(residual_sd[name])
            frame = table.assign(md_change=table["md_change"] + error_pct / 100.0 * table["md_baseline"])
            for roi, rows in frame.groupby("roi"):
                fitted = fit_ols(rows.reset_index(drop=True), "madrs_change", terms)
                p_value = fitted.loc[fitted["term"] == "treatment:md_change", "p_value"].iloc[0]
                hits[(name, roi)] += int(p_value < 0.05)
    out = pd.Series(hits, name="power").div(replicates).rename_axis(["statistic", "roi"]).reset_index()
    return out.pivot(index="statistic", columns="roi", values="power").loc[[TRUTH, *statistics]]


def output_name(precision: Path, level: str) -> str:
    """The results file of a precision file and level: ``power.json`` for the moderate level of
    ``precision.json``, ``power_exact_heavy.json`` for the heavy level of ``precision_exact.json``."""
    name = precision.stem.replace("precision", "power", 1)
    return f"{name}.json" if level == "moderate" else f"{name}_{level}.json"


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", type=Path, default=RESULTS / "precision.json")
    parser.add_argument("--level", default="moderate")
    parser.add_argument("--statistics", nargs="+", default=["median", "mean", "roi_gm_weighted_median"])
    parser.add_argument("--n-subjects", type=int, default=40)
    parser.add_argument("--replicates", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    precision = json.loads(args.precision.read_text())
    table = power(precision, args.level, args.statistics, args.n_subjects, args.replicates, args.seed)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / output_name(args.precision, args.level)).write_text(json.dumps({
        "n_subjects": args.n_subjects, "replicates": args.replicates, "level": args.level,
        "precision": str(args.precision), "power": table.round(3).to_dict(orient="index")}, indent=2) + "\n")
    markdown = table.round(3).to_markdown() if hasattr(table, "to_markdown") else table.round(3).to_string()
    print(f"interaction power (p < 0.05), {args.n_subjects} subjects, {args.replicates} replicates, "
          f"measurement error of the '{args.level}' level:")
    print(markdown)
    return table


if __name__ == "__main__":
    main()
