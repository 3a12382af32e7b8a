"""Group-level figures (PNG, matplotlib Agg) and the data behind each (TSV).

- ``scatter_param-<p>_outcome-<o>_roi-<roi>.png|.tsv``: change in the parameter against
  change in the outcome, one colour per arm, with each arm's least-squares line and its
  95 % confidence band (unadjusted: the line of outcome change on parameter change
  alone; the adjusted estimates are in models.tsv).
- ``forest_param-<p>_term-interaction.png|.tsv``: estimate and 95 % CI of the
  ``treatment:<p>_change`` term of every ROI x outcome interaction model
  (``term-single_arm``: the ``<p>_change`` term of the single-arm models).
- ``trajectory_outcome-<o>.png|.tsv``: the outcome at every session by arm, mean and 95 %
  CI per session, one thin line per participant.

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot state) and written
atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from bids_ketamine.utils.atomic import atomic_path, atomic_write_tsv

_ARM_COLOURS = ("#c0392b", "#2c7fb8")


def safe_name(text: str) -> str:
    """A file-name-safe version of an ROI or outcome name (``n/a`` -> ``na``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "", str(text).replace(" ", "_")) or "na"


def line_with_band(x, y, grid, level: float = 0.95):
    """Least-squares line of ``y`` on ``x`` and the confidence band of its mean.

    Parameters
    ----------
    x, y : array-like
        Data (at least 3 points, ``x`` not constant).
    grid : array-like
        Where to evaluate the line.
    level : float
        Confidence level.

    Returns
    -------
    fit, low, high : numpy.ndarray
        The line and the band over ``grid`` (NaN when the line cannot be fitted).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    grid = np.asarray(grid, dtype=float)
    nan = np.full(grid.shape, np.nan)
    if len(x) < 3 or np.ptp(x) == 0:
        return nan, nan, nan
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = len(x) - 2
    sigma2 = residual @ residual / dof
    inverse = np.linalg.inv(design.T @ design)
    points = np.column_stack([np.ones_like(grid), grid])
    se = np.sqrt(sigma2 * np.einsum("ij,jk,ik->i", points, inverse, points))
    fit = points @ coef
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return fit, fit - half, fit + half


def scatter_data(frame: pd.DataFrame, x_column: str, y_column: str,
                 arms: list[str], n_grid: int = 50) -> pd.DataFrame:
    """The data of one scatter figure: the points, then each arm's line and band.

    Returns
    -------
    pandas.DataFrame
        ``kind`` (``point`` or ``fit``), ``group``, ``participant_id``, ``x``, ``y``,
        ``fit``, ``conf_low``, ``conf_high``.
    """
    pieces = []
    for arm in arms:
        rows = frame.loc[frame["group"] == arm]
        pieces.append(pd.DataFrame({
            "kind": "point", "group": arm, "participant_id": "sub-" + rows.index.astype(str),
            "x": rows[x_column].to_numpy(float), "y": rows[y_column].to_numpy(float),
        }))
        if len(rows) >= 3:
            grid = np.linspace(rows[x_column].min(), rows[x_column].max(), n_grid)
            fit, low, high = line_with_band(rows[x_column], rows[y_column], grid)
            pieces.append(pd.DataFrame({
                "kind": "fit", "group": arm, "participant_id": "n/a", "x": grid,
                "y": np.nan, "fit": fit, "conf_low": low, "conf_high": high,
            }))
    data = pd.concat(pieces, ignore_index=True)
    for column in ("fit", "conf_low", "conf_high"):
        if column not in data:
            data[column] = np.nan
    return data[["kind", "group", "participant_id", "x", "y", "fit", "conf_low", "conf_high"]]


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def plot_scatter(data: pd.DataFrame, x_label: str, y_label: str, title: str,
                 path: Path) -> Path:
    """Draw a scatter figure from :func:`scatter_data` and write PNG + TSV."""
    figure = Figure(figsize=(4.8, 4.0))
    figure.subplots_adjust(left=0.16, right=0.97, bottom=0.13, top=0.91)
    axes = figure.add_subplot()
    for colour, (arm, rows) in zip(_ARM_COLOURS * 4, data.groupby("group", sort=False)):
        points = rows.loc[rows["kind"] == "point"]
        axes.scatter(points["x"], points["y"], s=14, alpha=0.7, color=colour, label=arm)
        line = rows.loc[rows["kind"] == "fit"]
        if len(line) and line["fit"].notna().all():
            axes.plot(line["x"], line["fit"], color=colour)
            axes.fill_between(line["x"], line["conf_low"], line["conf_high"], color=colour,
                              alpha=0.2, linewidth=0)
    axes.axhline(0, color="0.6", linewidth=0.6)
    axes.axvline(0, color="0.6", linewidth=0.6)
    return _finish(figure, axes, x_label, y_label, title, data, path)


def _finish(figure: Figure, axes, x_label: str, y_label: str, title: str, data: pd.DataFrame,
            path: Path) -> Path:
    """Label the axes, add the legend, write the data (TSV) and the figure (PNG)."""
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize=10)
    axes.legend(frameon=False, fontsize=8)
    path = Path(path)
    atomic_write_tsv(data, path.with_suffix(".tsv"))
    return _save(figure, path)


def forest_data(models: pd.DataFrame, param: str, model: str = "interaction",
                term: str | None = None) -> pd.DataFrame:
    """One term of one parameter's models (change outcomes), one row per ROI x outcome.

    The default is the ``treatment:<param>_change`` term of the interaction models; with
    several outcome sessions the outcome is labelled ``<outcome> (ses-<label>)``.
    """
    term = term or f"treatment:{param}_change"
    rows = models.loc[(models["model"] == model) & (models["param"] == param)
                      & (models["term"] == term) & (models["measure"] == "change")].copy()
    if "outcome_session" in rows and rows["outcome_session"].nunique() > 1:
        rows["outcome"] = rows["outcome"] + " (ses-" + rows["outcome_session"].astype(str) + ")"
    return rows[["roi", "outcome", "term", "estimate", "conf_low", "conf_high", "p_value",
                 "p_fdr", "n_obs"]].reset_index(drop=True)


def trajectory_data(scores: pd.DataFrame, outcome: str, arms: list[str]) -> pd.DataFrame:
    """The data of a trajectory figure: each participant's scores, then each arm's mean and
    95 % confidence interval (t) per session.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant and session: ``participant_id``, ``group``,
        ``session_id``, ``time`` and the ``outcome`` column.
    outcome : str
        The score.
    arms : list of str
        Arms, in legend order.

    Returns
    -------
    pandas.DataFrame
        ``kind`` (``participant`` or ``mean``), ``group``, ``participant_id``,
        ``session_id``, ``time``, ``value``, ``n``, ``conf_low``, ``conf_high``.
    """
    known = scores.loc[scores[outcome].notna() & scores["group"].isin(arms)]
    people = pd.DataFrame({
        "kind": "participant", "group": known["group"], "participant_id": known["participant_id"],
        "session_id": known["session_id"], "time": known["time"],
        "value": known[outcome].astype(float)})
    means = []
    for (arm, time, session), rows in known.groupby(["group", "time", "session_id"], sort=True):
        values = rows[outcome].to_numpy(float)
        mean, n = values.mean(), len(values)
        half = (stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
        means.append({"kind": "mean", "group": arm, "participant_id": "n/a", "session_id": session,
                      "time": time, "value": mean, "n": n, "conf_low": mean - half,
                      "conf_high": mean + half})
    data = pd.concat([people, pd.DataFrame(means)], ignore_index=True)
    for column in ("n", "conf_low", "conf_high"):
        if column not in data:
            data[column] = np.nan
    rank = data["group"].map({arm: i for i, arm in enumerate(arms)})
    data = data.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)
    return data[["kind", "group", "participant_id", "session_id", "time", "value", "n",
                 "conf_low", "conf_high"]]


def plot_trajectory(data: pd.DataFrame, title: str, y_label: str, path: Path) -> Path:
    """Draw a trajectory figure from :func:`trajectory_data` and write PNG + TSV."""
    figure = Figure(figsize=(5.6, 4.0))
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.91)
    axes = figure.add_subplot()
    arms = list(dict.fromkeys(data["group"]))
    shift = {arm: 0.06 * (i - (len(arms) - 1) / 2) for i, arm in enumerate(arms)}
    for colour, arm in zip(_ARM_COLOURS * 4, arms):
        rows = data.loc[data["group"] == arm]
        people = rows.loc[rows["kind"] == "participant"]
        for _, person in people.groupby("participant_id", sort=False):
            person = person.sort_values("time")
            axes.plot(person["time"], person["value"], color=colour, linewidth=0.5, alpha=0.3)
        mean = rows.loc[rows["kind"] == "mean"].sort_values("time")
        axes.errorbar(mean["time"] + shift[arm], mean["value"],
                      yerr=[mean["value"] - mean["conf_low"], mean["conf_high"] - mean["value"]],
                      color=colour, marker="o", markersize=4, capsize=3, linewidth=1.8,
                      label=f"{arm} (mean, 95 % CI)")
    ticks = data.drop_duplicates("time").sort_values("time")
    axes.set_xticks(ticks["time"])
    axes.set_xticklabels([f"ses-{s}" for s in ticks["session_id"]], fontsize=8)
    return _finish(figure, axes, "session", y_label, title, data, path)


def plot_forest(data: pd.DataFrame, title: str, path: Path) -> Path:
    """Draw a forest plot from :func:`forest_data` and write PNG + TSV."""
    height = 1.2 + 0.28 * max(len(data), 1)
    figure = Figure(figsize=(6.0, height))
    figure.subplots_adjust(left=0.36, right=0.97, bottom=0.6 / height, top=1 - 0.45 / height)
    axes = figure.add_subplot()
    positions = np.arange(len(data))[::-1]
    for colour, (outcome, rows) in zip(_ARM_COLOURS * 4, data.groupby("outcome", sort=False)):
        where = positions[rows.index.to_numpy()]
        axes.errorbar(rows["estimate"], where,
                      xerr=[rows["estimate"] - rows["conf_low"], rows["conf_high"] - rows["estimate"]],
                      fmt="o", color=colour, capsize=2, markersize=4, label=outcome)
    axes.axvline(0, color="0.5", linewidth=0.8)
    axes.set_yticks(positions)
    axes.set_yticklabels([f"{r} / {o}" for r, o in zip(data["roi"], data["outcome"])], fontsize=8)
    axes.set_xlabel("interaction estimate (95 % CI)")
    axes.set_title(title, fontsize=10)
    if len(data):
        axes.legend(frameon=False, fontsize=8)
    path = Path(path)
    atomic_write_tsv(data, path.with_suffix(".tsv"))
    return _save(figure, path)
