"""Inferential models: treatment x change (OLS, HC3), simple slopes, logistic, BH-FDR.

The interaction model of the contract (docs/interfaces.md), one per parameter, ROI and
outcome::

    <outcome>_change ~ treatment + <param>_change + treatment:<param>_change + covariates

is fitted with the statsmodels formula API (OLS) and robust HC3 standard errors by
default (``cov_type``), t reference distribution with the residual degrees of freedom,
95 % confidence intervals, and standardised coefficients
(``std_estimate = estimate * sd(design column) / sd(dependent)``).  Term names are
exactly ``intercept``, ``treatment``, ``<param>_change``, ``treatment:<param>_change`` and
the covariate names: variables enter the formula under neutral aliases, so any column
name works and the names come back unchanged.

Kept as one module (~420 lines): the model family (OLS, slopes, logistic, FDR) shares its design
and term-table helpers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import (
    ConvergenceWarning,
    PerfectSeparationError,
    PerfectSeparationWarning,
)

#: Columns of ``models.tsv``: the contract's, then the extensions.
MODEL_COLUMNS = (
    "model", "roi", "param", "outcome", "term", "estimate", "std_error", "statistic",
    "p_value", "p_fdr", "conf_low", "conf_high", "n_obs",
    "measure", "std_estimate", "cov_type", "note", "outcome_session",
)
#: Columns of one fitted model's term table.
TERM_COLUMNS = ("term", "estimate", "std_error", "statistic", "p_value", "conf_low",
                "conf_high", "std_estimate", "n_obs", "cov_type", "note")
#: Groups of rows within which Benjamini-Hochberg is applied.
FDR_FAMILY = ("model", "param", "measure", "term")


def interaction_terms(param: str, covariates: list[str], single_arm: bool = False) -> list[str]:
    """Right-hand side of the interaction model, in the contract's order.

    A single-arm study (``single_arm``) has no treatment terms:
    ``<param>_change + covariates``.
    """
    change = f"{param}_change"
    if single_arm:
        return [change, *covariates]
    return ["treatment", change, f"treatment:{change}", *covariates]


def trajectory_terms(param: str, covariates: list[str], single_arm: bool = False) -> list[str]:
    """Fixed effects of the trajectory model: time, treatment, the predictor change, their
    interactions with time, covariates (no treatment terms in a single-arm study)."""
    change = f"{param}_change"
    arm = [] if single_arm else ["treatment", "time:treatment"]
    return ["time", *arm[:1], change, *arm[1:], f"time:{change}", *covariates]


def slope_terms(param: str, covariates: list[str]) -> list[str]:
    """Right-hand side of a simple-slope model (within one arm)."""
    return [f"{param}_change", *covariates]


def formula(dependent: str, terms: list[str]) -> str:
    """The model formula as written in ``models.json`` (intercept implicit)."""
    return f"{dependent} ~ " + " + ".join(terms)


def encode_covariates(frame: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, list[str], dict]:
    """Make covariates numeric, keeping their names as term names.

    Numeric columns are used as they are.  A text column with two values becomes 0/1
    under its own name (1 = the later value in sorted order, e.g. ``sex`` = 1 for
    ``M`` when the values are ``F``/``M``); with more values, one 0/1 column per
    non-reference value, named ``<name>[<value>]``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Holds the covariate columns.
    names : list of str
        Covariates.

    Returns
    -------
    frame : pandas.DataFrame
        A copy with the encoded columns.
    terms : list of str
        The model terms.
    coding : dict
        How each text covariate was coded (for ``models.json``).

    Raises
    ------
    ValueError
        If a covariate is not a column of ``frame`` or its name holds ``:``.
    """
    encoded = frame.copy()
    terms, coding = [], {}
    for name in names:
        if name not in frame.columns:
            raise ValueError(f"covariate '{name}' is not a column of the model table")
        if ":" in name:
            raise ValueError(f"covariate name '{name}' must not contain ':'; rename the column")
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            encoded[name] = column.astype(float)
            terms.append(name)
            continue
        text = column.map(lambda v: np.nan if pd.isna(v) else str(v).strip())
        levels = sorted(text.dropna().unique())
        if len(levels) <= 2:
            top = levels[-1] if levels else None
            encoded[name] = text.map(lambda v, top=top: np.nan if pd.isna(v) else float(v == top))
            coding[name] = {"0": levels[0] if len(levels) == 2 else None, "1": top}
            terms.append(name)
            continue
        coding[name] = {"reference": levels[0], "columns": {}}
        for level in levels[1:]:
            term = f"{name}[{level}]"
            encoded[term] = text.map(lambda v, level=level: np.nan if pd.isna(v) else float(v == level))
            coding[name]["columns"][term] = level
            terms.append(term)
    return encoded, terms, coding


def _aliased_formula(frame: pd.DataFrame, dependent: str, terms: list[str]):
    """Data with neutral column names, the formula over them, and the way back."""
    variables = list(dict.fromkeys([dependent] + [p for t in terms for p in t.split(":")]))
    alias = {name: f"v{index}" for index, name in enumerate(variables)}
    data = pd.DataFrame({alias[n]: frame[n].to_numpy(dtype=float) for n in variables})
    rhs = [":".join(alias[p] for p in term.split(":")) for term in terms]
    back = dict(zip(rhs, terms))
    back["Intercept"] = "intercept"
    return data, f"{alias[dependent]} ~ " + " + ".join(rhs), back


def _empty_terms(terms: list[str], n_obs: int, cov_type: str, note: str) -> pd.DataFrame:
    rows = pd.DataFrame({"term": ["intercept", *terms]})
    for column in TERM_COLUMNS[1:]:
        rows[column] = np.nan
    rows["n_obs"] = n_obs
    rows["cov_type"] = cov_type
    rows["note"] = note
    return rows


def _design_problem(exog: np.ndarray, endog: np.ndarray) -> str:
    n, k = exog.shape
    if n <= k:
        return f"too few participants ({n}) for {k} coefficients"
    if np.linalg.matrix_rank(exog) < k:
        return "design matrix is rank deficient (a term is constant or collinear in this sample)"
    if np.ptp(endog) == 0:
        return "the dependent variable is constant in this sample"
    return ""


def _term_table(result, back: dict, n_obs: int, cov_type: str, note: str = "") -> pd.DataFrame:
    names = list(result.model.exog_names)
    conf = np.asarray(result.conf_int(alpha=0.05))
    table = pd.DataFrame({
        "term": [back[name] for name in names],
        "estimate": np.asarray(result.params, dtype=float),
        "std_error": np.asarray(result.bse, dtype=float),
        "statistic": np.asarray(result.tvalues, dtype=float),
        "p_value": np.asarray(result.pvalues, dtype=float),
        "conf_low": conf[:, 0],
        "conf_high": conf[:, 1],
    })
    table["std_estimate"] = np.nan
    table["n_obs"] = n_obs
    table["cov_type"] = cov_type
    table["note"] = note
    return table


def fit_ols(frame: pd.DataFrame, dependent: str, terms: list[str],
            cov_type: str = "HC3") -> pd.DataFrame:
    """Fit ``dependent ~ terms`` by OLS (statsmodels formula API).

    Parameters
    ----------
    frame : pandas.DataFrame
        Complete cases only (no missing values in the columns used).
    dependent : str
        Dependent column.
    terms : list of str
        Right-hand side terms; ``a:b`` is the product of columns ``a`` and ``b``.
    cov_type : {"HC3", "nonrobust", "HC0", "HC1", "HC2"}
        Covariance of the estimates: HC3 (default) or classical (``nonrobust``).

    Returns
    -------
    pandas.DataFrame
        One row per term (``intercept`` first) with ``estimate``, ``std_error``,
        ``statistic`` (t), ``p_value`` (two-sided, t with the residual degrees of
        freedom), ``conf_low``/``conf_high`` (95 %), ``std_estimate``, ``n_obs``,
        ``cov_type`` and ``note`` (why the values are missing, if they are).
    """
    if cov_type not in ("HC3", "nonrobust", "HC0", "HC1", "HC2"):
        raise ValueError(f"cov_type must be HC3, HC0-HC2 or nonrobust, not '{cov_type}'")
    data, model_formula, back = _aliased_formula(frame, dependent, terms)
    if data.isna().to_numpy().any():
        raise ValueError("fit_ols needs complete cases; drop the rows with missing values first")
    model = smf.ols(model_formula, data)
    n_obs = int(model.nobs)
    problem = _design_problem(model.exog, model.endog)
    if problem:
        return _empty_terms(terms, n_obs, cov_type, problem)
    result = model.fit(cov_type=cov_type, use_t=True)
    table = _term_table(result, back, n_obs, cov_type)
    sd_dependent = np.std(model.endog, ddof=1)
    sd_columns = np.std(model.exog, axis=0, ddof=1)
    standardised = table["estimate"].to_numpy() * sd_columns / sd_dependent
    table["std_estimate"] = np.where(table["term"] == "intercept", np.nan, standardised)
    return table


def fit_logit(frame: pd.DataFrame, dependent: str, terms: list[str]) -> pd.DataFrame:
    """Fit a logistic regression ``dependent ~ terms`` (0/1 dependent), robustly.

    Perfect or quasi-complete separation, a dependent with one value only, or a
    failure to converge do not raise: the terms come back with missing values (or the
    non-converged estimates) and a ``note`` saying what happened.

    Returns
    -------
    pandas.DataFrame
        As :func:`fit_ols`; ``statistic`` is Wald z, ``std_estimate`` is missing.
    """
    data, model_formula, back = _aliased_formula(frame, dependent, terms)
    if data.isna().to_numpy().any():
        raise ValueError("fit_logit needs complete cases; drop the rows with missing values first")
    endog = data.iloc[:, 0].to_numpy()
    n_obs = len(data)
    if not np.isin(endog, (0.0, 1.0)).all():
        raise ValueError(f"the dependent '{dependent}' of a logistic model must be 0/1")
    if n_obs == 0 or np.ptp(endog) == 0:
        return _empty_terms(terms, n_obs, "nonrobust",
                            f"every participant has {dependent} = {endog[0]:g}" if n_obs
                            else "no participant")
    model = smf.logit(model_formula, data)
    problem = _design_problem(model.exog, model.endog)
    if problem:
        return _empty_terms(terms, n_obs, "nonrobust", problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = model.fit(disp=0, maxiter=200)
        except PerfectSeparationError:
            return _empty_terms(terms, n_obs, "nonrobust",
                                "perfect separation: no maximum-likelihood estimate")
        except np.linalg.LinAlgError:
            return _empty_terms(terms, n_obs, "nonrobust",
                                "singular information matrix (separation or collinearity)")
    kinds = {type(w.message) for w in caught if isinstance(w.message, Warning)}
    with np.errstate(over="ignore"):
        fitted = np.asarray(result.predict(), dtype=float)
    at_bound = (fitted < 1e-6) | (fitted > 1 - 1e-6)
    if PerfectSeparationWarning in kinds or at_bound.any() or not np.all(np.isfinite(result.bse)):
        return _empty_terms(terms, n_obs, "nonrobust",
                            "perfect or quasi-complete separation: no maximum-likelihood estimate")
    note = "" if result.mle_retvals.get("converged", True) and ConvergenceWarning not in kinds \
        else "did not converge: estimates unreliable"
    return _term_table(result, back, n_obs, "nonrobust", note)


def add_fdr(models: pd.DataFrame, family: tuple[str, ...] = FDR_FAMILY) -> pd.DataFrame:
    """Add ``p_fdr``: Benjamini-Hochberg within each family of rows.

    The default family is one model, parameter, measure (change, percent improvement,
    remission) and term: the correction runs across all ROIs x outcomes of it.  Raw
    ``p_value`` is kept; missing p-values stay missing and do not count.

    Parameters
    ----------
    models : pandas.DataFrame
        The tidy model table.
    family : tuple of str
        Columns defining a family.

    Returns
    -------
    pandas.DataFrame
        A copy with ``p_fdr``.
    """
    table = models.copy()
    table["p_fdr"] = np.nan
    for _, rows in table.groupby(list(family), sort=False, dropna=False):
        valid = rows["p_value"].notna()
        if not valid.any():
            continue
        index = rows.index[valid]
        table.loc[index, "p_fdr"] = multipletests(
            rows.loc[valid, "p_value"].to_numpy(dtype=float), method="fdr_bh"
        )[1]
    return table


#: Random-effects structures tried by :func:`fit_trajectory`, richest first.
RANDOM_EFFECTS = (("intercept and time slope", "time"), ("intercept", None))
#: Optimisers tried for each structure: statsmodels' default (BFGS, then L-BFGS and CG),
#: then Powell (derivative-free: converges where the gradient fails near a boundary).
MIXED_METHODS = ("bfgs", "powell")


def _mixed_problem(result, caught, boundary_ok: bool) -> str:
    """Why a MixedLM fit cannot be trusted ('' when it can)."""
    messages = [str(w.message) for w in caught if isinstance(w.message, ConvergenceWarning)]
    if not result.converged or any("failed" in m or "converge" in m for m in messages):
        return "did not converge"
    if not np.all(np.isfinite(np.asarray(result.bse_fe, dtype=float))):
        return "standard errors not finite"
    covariance = np.atleast_2d(np.asarray(result.cov_re, dtype=float))
    if not boundary_ok and (not np.all(np.isfinite(covariance)) or np.linalg.eigvalsh(
            covariance).min() <= 1e-6 * max(float(result.scale), 1e-12)):
        return "random-effects covariance singular (on the boundary)"
    return ""


def fit_trajectory(frame: pd.DataFrame, dependent: str, terms: list[str],
                   participant: str = "participant_id") -> tuple[pd.DataFrame, dict]:
    """Fit a linear mixed model of ``dependent`` over sessions (statsmodels MixedLM, REML).

    Random effects per participant: intercept and ``time`` slope; where that fit does not
    converge or its random-effects covariance is singular, the random intercept alone
    (whose variance may then be 0, on the boundary: the fixed effects are those of OLS).
    Each structure is fitted with :data:`MIXED_METHODS` in turn until one converges.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per participant and session, complete cases, with ``participant`` and
        the columns of ``terms`` (``time`` among them).
    dependent : str
        The outcome score column.
    terms : list of str
        Fixed effects, ``a:b`` = product (:func:`trajectory_terms`).
    participant : str
        The grouping column.

    Returns
    -------
    terms : pandas.DataFrame
        As :func:`fit_ols` (Wald z statistic, normal p-values and 95 % CI); ``note``
        names the random effects and optimiser used (and why richer fits were dropped).
    fit : dict
        ``random_effects``, ``method``, ``re_formula``, ``fallbacks`` (structure and
        optimiser -> why it was not kept), ``n_participants``, ``n_obs``, ``converged``,
        ``random_effects_covariance``.
    """
    data, model_formula, back = _aliased_formula(frame, dependent, terms)
    if data.isna().to_numpy().any():
        raise ValueError("fit_trajectory needs complete cases; drop the rows with missing values first")
    groups = frame[participant].to_numpy()
    n_obs, n_groups = len(data), len(pd.unique(groups))
    time_alias = next(alias for alias, name in back.items() if name == "time")
    info = {"n_obs": n_obs, "n_participants": n_groups, "fallbacks": {}}
    cov_type = "MixedLM REML"
    if n_groups < 3 or n_obs <= len(terms) + 2:
        info.update(random_effects=None, converged=False)
        return _empty_terms(terms, n_obs, cov_type,
                            f"too few participants ({n_groups}) or observations ({n_obs})"), info
    problem, result = "", None
    for name, slope in RANDOM_EFFECTS:
        model = smf.mixedlm(model_formula, data, groups=groups,
                            re_formula=f"~{time_alias}" if slope else None)
        design = _design_problem(model.exog, model.endog)
        if design:
            info.update(random_effects=None, converged=False)
            return _empty_terms(terms, n_obs, cov_type, design), info
        for method in MIXED_METHODS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    fitted = model.fit(reml=True, method=method)
                    problem = _mixed_problem(fitted, caught, boundary_ok=slope is None)
                except (np.linalg.LinAlgError, ValueError) as err:
                    fitted, problem = None, f"failed ({err})"
            result = fitted if fitted is not None else result
            if not problem:
                break
            info["fallbacks"][f"{name} ({method})"] = problem
        if not problem:
            break
    if result is None:
        info.update(random_effects=None, converged=False)
        return _empty_terms(terms, n_obs, cov_type, problem), info
    covariance = np.atleast_2d(np.asarray(result.cov_re, dtype=float))
    info.update(random_effects=name, method=method,
                re_formula="~time" if slope else "~1", converged=not problem,
                random_effects_covariance=covariance.tolist(),
                residual_variance=float(result.scale))
    k = len(result.fe_params)
    conf = np.asarray(result.conf_int(alpha=0.05))[:k]
    table = pd.DataFrame({
        "term": [back[n] for n in result.fe_params.index],
        "estimate": np.asarray(result.fe_params, dtype=float),
        "std_error": np.asarray(result.bse_fe, dtype=float),
        "statistic": np.asarray(result.tvalues, dtype=float)[:k],
        "p_value": np.asarray(result.pvalues, dtype=float)[:k],
        "conf_low": conf[:, 0], "conf_high": conf[:, 1],
    })
    table["std_estimate"] = np.nan
    table["n_obs"] = n_obs
    table["cov_type"] = cov_type
    note = f"random {name} per participant ({method})"
    if slope is None and covariance.min() <= 1e-6 * max(float(result.scale), 1e-12):
        note += ", its variance 0 (boundary)"
    if info["fallbacks"]:
        note += "; dropped: " + "; ".join(f"random {k}: {v}" for k, v in info["fallbacks"].items())
    if problem:
        note += f"; {problem}: estimates unreliable"
    table["note"] = note
    return table, info
