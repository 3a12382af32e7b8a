"""Cross-validated prediction of clinical change with an elastic net.

The design follows the pre-registered analysis of Abdallah et al. (Neuropsychopharmacology
2021): predict the outcome change from all ROI changes, treatment, and the treatment x ROI
change terms, with an elastic net whose ``alpha`` and ``l1_ratio`` are chosen by an inner
cross-validation inside each outer training fold (nested CV); features are standardised
with the training fold's mean and SD.  Reported: the out-of-sample R^2 (1 - SSE / SST of
the held-out predictions), its permutation p-value (the whole nested CV rerun on permuted
outcomes, ``(1 + #{R^2_perm >= R^2}) / (1 + n_perm)``), and the coefficients retained:
standardised betas of the model refit on all participants and each feature's selection
frequency across outer folds.

Cost rule (docs/group.md), so that 1000 participants take seconds, not hours:

- outer: leave-one-out up to ``LOO_MAX_N`` = 50 participants, 10-fold (shuffled,
  seeded) up to ``LARGE_N`` = 200, 5-fold above;
- inner: 5-fold up to 200 participants, 3-fold above; grid of ``l1_ratio`` in
  (0.1, 0.5, 0.9, 1.0) x 20 ``alpha`` values (log-spaced down to 1e-3 x alpha_max), solved
  as warm-started coordinate-descent paths (scikit-learn ``enet_path``) on a precomputed
  Gram matrix: the same estimator as ``ElasticNetCV`` without its per-call overhead;
- permutations: ``n_permutations`` up to 200 participants, at most
  ``LARGE_N_MAX_PERMUTATIONS`` = 50 above (p resolution 1/51 ~ 0.02, enough to tell
  p < 0.05; a larger sample leaves the null distribution of R^2 narrow).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, enet_path
from sklearn.model_selection import KFold, LeaveOneOut

L1_RATIOS = (0.1, 0.5, 0.9, 1.0)
N_ALPHAS = 20
ALPHA_MIN_RATIO = 1e-3
LOO_MAX_N = 50
LARGE_N = 200
OUTER_FOLDS = 10
LARGE_N_OUTER_FOLDS = 5
SMALL_N_INNER_FOLDS = 5
LARGE_N_INNER_FOLDS = 3
LARGE_N_MAX_PERMUTATIONS = 50
_MAX_ITER = 10000
_TOL = 1e-4


@dataclass
class PredictionResult:
    """Result of :func:`predict_outcome`.

    Attributes
    ----------
    r2 : float
        Out-of-sample R^2 of the held-out predictions.
    p_value : float
        Permutation p-value (NaN when no permutation was run).
    predictions : numpy.ndarray
        Held-out prediction of each participant.
    feature_names : list of str
    std_beta : numpy.ndarray
        Coefficients of the model refit on all participants, for standardised features
        and outcome (coefficient / SD of the outcome).
    selection_frequency : numpy.ndarray
        Fraction of outer folds in which each coefficient was non-zero.
    alpha, l1_ratio : float
        Hyperparameters of the refit on all participants.
    scheme : dict
        Outer and inner CV, grid, permutations actually run, seed.
    null_r2 : numpy.ndarray
        R^2 of each permutation.
    """

    r2: float
    p_value: float
    predictions: np.ndarray
    feature_names: list
    std_beta: np.ndarray
    selection_frequency: np.ndarray
    alpha: float
    l1_ratio: float
    scheme: dict = field(default_factory=dict)
    null_r2: np.ndarray = field(default_factory=lambda: np.empty(0))


def cv_scheme(n_samples: int, n_permutations: int) -> dict:
    """The cross-validation and permutation rule for ``n_samples`` participants."""
    large = n_samples > LARGE_N
    permutations = min(n_permutations, LARGE_N_MAX_PERMUTATIONS) if large else n_permutations
    if n_samples <= LOO_MAX_N:
        outer = "leave-one-out"
    else:
        outer = f"{LARGE_N_OUTER_FOLDS if large else OUTER_FOLDS}-fold"
    return {
        "outer": outer,
        "inner_folds": LARGE_N_INNER_FOLDS if large else SMALL_N_INNER_FOLDS,
        "l1_ratios": list(L1_RATIOS),
        "n_alphas": N_ALPHAS,
        "n_permutations_requested": int(n_permutations),
        "n_permutations": int(max(permutations, 0)),
    }


def _standardise(train: np.ndarray, test: np.ndarray):
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0
    return (train - mean) / scale, (test - mean) / scale


def _alpha_grid(X: np.ndarray, y: np.ndarray, l1_ratio: float) -> np.ndarray:
    n = X.shape[0]
    alpha_max = np.max(np.abs((X - X.mean(0)).T @ (y - y.mean()))) / (n * l1_ratio)
    alpha_max = alpha_max if alpha_max > 0 else 1e-6
    return np.geomspace(alpha_max, alpha_max * ALPHA_MIN_RATIO, N_ALPHAS)


def choose_hyperparameters(X: np.ndarray, y: np.ndarray, n_folds: int,
                           seed: int) -> tuple[float, float]:
    """Pick ``alpha`` and ``l1_ratio`` by K-fold CV (mean squared error).

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
        Standardised features.
    y : numpy.ndarray, shape (n,)
        Outcome.
    n_folds : int
        Inner folds (at most n).
    seed : int
        Seed of the fold split.

    Returns
    -------
    alpha, l1_ratio : float
    """
    grids = [_alpha_grid(X, y, ratio) for ratio in L1_RATIOS]
    errors = np.zeros((len(L1_RATIOS), N_ALPHAS))
    folds = KFold(min(n_folds, len(y)), shuffle=True, random_state=seed)
    for train, test in folds.split(X):
        x_mean, y_mean = X[train].mean(axis=0), y[train].mean()
        centred = np.asfortranarray(X[train] - x_mean)
        y_centred = y[train] - y_mean
        gram = centred.T @ centred
        xy = centred.T @ y_centred
        held_out = X[test] - x_mean
        for index, (ratio, grid) in enumerate(zip(L1_RATIOS, grids)):
            _, coefs, _ = enet_path(
                centred, y_centred, l1_ratio=ratio, alphas=grid, precompute=gram, Xy=xy,
                check_input=False, max_iter=_MAX_ITER, tol=_TOL,
            )
            residuals = y[test][:, None] - (held_out @ coefs + y_mean)
            errors[index] += np.sum(residuals ** 2, axis=0)
    best_ratio, best_alpha = np.unravel_index(np.argmin(errors), errors.shape)
    return float(grids[best_ratio][best_alpha]), float(L1_RATIOS[best_ratio])


def _fit(X: np.ndarray, y: np.ndarray, inner_folds: int, seed: int):
    alpha, ratio = choose_hyperparameters(X, y, inner_folds, seed)
    model = ElasticNet(alpha=alpha, l1_ratio=ratio, max_iter=_MAX_ITER, tol=_TOL).fit(X, y)
    return model, alpha, ratio


def _outer_splits(n_samples: int, scheme: dict, seed: int):
    if scheme["outer"] == "leave-one-out":
        return list(LeaveOneOut().split(np.zeros(n_samples)))
    n_folds = int(scheme["outer"].split("-")[0])
    folds = KFold(n_folds, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(n_samples)))


def nested_cv_predictions(X: np.ndarray, y: np.ndarray, splits: list, inner_folds: int,
                          seed: int, on_fold: Callable[[int], None] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions of the nested-CV elastic net.

    ``on_fold(k)``, when given, is called after the k-th outer fold (1-based) is fitted.

    Returns
    -------
    predictions : numpy.ndarray, shape (n,)
    selected : numpy.ndarray of bool, shape (n_folds, p)
        Which coefficients were non-zero in each outer fold.
    """
    predictions = np.full(len(y), np.nan)
    selected = np.zeros((len(splits), X.shape[1]), dtype=bool)
    # Inputs are checked once by predict_outcome: skip scikit-learn's per-call checks.
    with warnings.catch_warnings(), sklearn.config_context(
        skip_parameter_validation=True, assume_finite=True
    ):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fold, (train, test) in enumerate(splits):
            x_train, x_test = _standardise(X[train], X[test])
            model, _, _ = _fit(x_train, y[train], inner_folds, seed)
            predictions[test] = model.predict(x_test)
            selected[fold] = model.coef_ != 0
            if on_fold is not None:
                on_fold(fold + 1)
    return predictions, selected


def out_of_sample_r2(y: np.ndarray, predictions: np.ndarray) -> float:
    """``1 - sum((y - prediction)^2) / sum((y - mean(y))^2)`` (can be negative)."""
    y = np.asarray(y, dtype=float)
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return float("nan")
    return float(1.0 - np.sum((y - np.asarray(predictions)) ** 2) / total)


def _permuted_r2(X, y, splits, inner_folds, seed, permutation_seed):
    permuted = np.random.default_rng(permutation_seed).permutation(y)
    predictions, _ = nested_cv_predictions(X, permuted, splits, inner_folds, seed)
    return out_of_sample_r2(permuted, predictions)


def predict_outcome(X: np.ndarray, y: np.ndarray, feature_names: list[str], *,
                    n_permutations: int = 200, seed: int = 0, n_jobs: int = 1,
                    progress: Callable[[str, int, int], None] | None = None) -> PredictionResult:
    """Nested cross-validated elastic-net prediction with a permutation test.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
        Features (raw: standardised inside each fold).
    y : numpy.ndarray, shape (n,)
        Outcome (e.g. MADRS change).
    feature_names : list of str
        One name per column of ``X``.
    n_permutations : int
        Requested permutations (capped for large n, see :func:`cv_scheme`); 0 = none.
    seed : int
        Seeds the fold splits and the permutations.
    n_jobs : int
        Processes for the permutations (joblib).
    progress : callable, optional
        ``progress(stage, done, total)``, called after each outer fold of the fit
        (``stage="outer fold 3/20"``) and after each permutation (``"permutation 7/200"``);
        ``done`` and ``total`` count outer-fold fits, the unit of work (a permutation is
        one fit per outer fold).

    Returns
    -------
    PredictionResult

    Raises
    ------
    ValueError
        If shapes disagree, values are missing, or there are fewer than 10 participants.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, p) and y (n,), not {X.shape} and {y.shape}")
    if X.shape[1] != len(feature_names):
        raise ValueError(f"{len(feature_names)} feature names for {X.shape[1]} columns")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be complete; drop participants with missing values first")
    if len(y) < 10:
        raise ValueError(f"cross-validated prediction needs at least 10 participants, not {len(y)}")
    scheme = cv_scheme(len(y), n_permutations)
    scheme["seed"] = int(seed)
    splits = _outer_splits(len(y), scheme, seed)
    inner = scheme["inner_folds"]
    n_folds, n_perm = len(splits), scheme["n_permutations"]
    total_fits = n_folds * (1 + n_perm)
    on_fold = None if progress is None else (
        lambda k: progress(f"outer fold {k}/{n_folds}", k, total_fits))
    predictions, selected = nested_cv_predictions(X, y, splits, inner, seed, on_fold)
    r2 = out_of_sample_r2(y, predictions)

    permutation_seeds = np.random.SeedSequence(seed).spawn(n_perm)
    permutation_seeds = [int(s.generate_state(1)[0]) for s in permutation_seeds]
    if n_jobs > 1 and len(permutation_seeds) > 1:
        from joblib import Parallel, delayed

        null_r2 = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_permuted_r2)(X, y, splits, inner, seed, s) for s in permutation_seeds
        )
    else:
        null_r2 = (_permuted_r2(X, y, splits, inner, seed, s) for s in permutation_seeds)
    values = []
    for value in null_r2:  # in permutation order, as each one ends
        values.append(value)
        if progress is not None:
            progress(f"permutation {len(values)}/{n_perm}", n_folds * (1 + len(values)),
                     total_fits)
    null_r2 = np.asarray(values, dtype=float)
    p_value = (
        float((1 + np.sum(null_r2 >= r2)) / (1 + len(null_r2))) if len(null_r2) else float("nan")
    )

    standardised, _ = _standardise(X, X[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model, alpha, ratio = _fit(standardised, y, inner, seed)
    sd_y = y.std()
    return PredictionResult(
        r2=r2,
        p_value=p_value,
        predictions=predictions,
        feature_names=list(feature_names),
        std_beta=model.coef_ / sd_y if sd_y > 0 else model.coef_ * np.nan,
        selection_frequency=selected.mean(axis=0),
        alpha=alpha,
        l1_ratio=ratio,
        scheme=scheme,
        null_r2=null_r2,
    )


def treatment_change_features(changes: np.ndarray, treatment: np.ndarray,
                              change_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Features of the prediction: each change, treatment, and treatment x each change.

    Parameters
    ----------
    changes : numpy.ndarray, shape (n, k)
        Predictor changes (one column per ROI, or one for a per-session measure).
    treatment : numpy.ndarray, shape (n,)
        1 = treatment arm, 0 = control.
    change_names : list of str
        Names of the change columns.

    Returns
    -------
    features : numpy.ndarray, shape (n, 2k + 1)
    names : list of str
        ``<name>``..., ``treatment``, ``treatment:<name>``...
    """
    changes = np.asarray(changes, dtype=float)
    treatment = np.asarray(treatment, dtype=float)
    if changes.ndim != 2 or changes.shape[0] != treatment.shape[0]:
        raise ValueError(
            f"changes must be (n, k) and treatment (n,), not {changes.shape} and {treatment.shape}"
        )
    features = np.column_stack([changes, treatment, changes * treatment[:, None]])
    names = [*change_names, "treatment", *(f"treatment:{name}" for name in change_names)]
    return features, names
