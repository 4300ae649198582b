"""Federated gradient-boosted trees: every site is one worker of one XGBoost collective.

Histogram-based boosting (Chen & Guestrin, "XGBoost: A Scalable Tree Boosting System",
KDD 2016) needs only per-bin sums of gradients and hessians to grow a tree. When every
site bins its rows on the same grid, the sum of the sites' histograms is the histogram of
the pooled data, so the collective (allreduce of histograms, then identical split and leaf
decisions on every worker) trains the model that pooling would have trained, while rows
stay at their sites. Two conditions make that exact and keep the invariants:

* **The bin grid comes from the contract, never from data.** XGBoost's default is a
  quantile sketch of the training data, and a sketch's cut points are observed values
  (a site's distinctive BMI of 27.123456 can become a cut, then a split threshold in the
  published model). Here the cuts are fixed by the contract's ranges (evenly spaced,
  ``max_bin`` bins), category indices and 0/1, and each site quantizes with
  ``QuantileDMatrix(..., ref=reference_matrix(contract))``: a matrix built from synthetic
  grid rows only. :func:`train_worker` checks the cuts before training and records their
  digest in the model.
* **Global quantities come from aggregates.** ``base_score`` is the global prevalence
  (sum of the sites' positives over the sum of their rows, see :func:`global_base_score`);
  no ``scale_pos_weight`` tuned on one site's balance.

The communicator's server (:mod:`pipeline.strategies.xgboost.collective`) sees the sum of
the sites' gradient histograms under the ``secure`` communicator (each site's relay masks
its own), every site's under ``federated`` and ``rabit``.

Evaluation metrics in a collective are reduced across workers: ``logloss`` (the default
here) is the exact global mean over all sites' validation rows, so early stopping decides
on the federated validation loss and every worker stops at the same round. AUC is not:
XGBoost combines per-worker parts, which misses the pairs across sites (0.864 against a
pooled 0.856 on the test federation), so it is refused as an evaluation metric here;
AUC belongs to the federated evaluation, from sufficient statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost as xgb
from xgboost import collective

if TYPE_CHECKING:
    from pipeline.contract import Contract, Feature

MAX_BIN = 256
GRID_ATTR = "contract_grid_sha256"
EVALS_ATTR = "evals_result"
_FORCED = {"objective": "binary:logistic", "tree_method": "hist"}
_FORBIDDEN = ("scale_pos_weight",)
# Means whose numerator and denominator XGBoost sums across workers: exactly the pooled
# value, so early stopping on them decides as pooled training would.
_EXACT_METRICS = frozenset({"logloss", "error", "rmse", "mae"})


# -- the bin grid ----------------------------------------------------------------------
def _grid_values(feature: Feature, max_bin: int) -> np.ndarray:
    """The synthetic values of one feature's reference column (float32, ascending)."""
    if feature.kind == "numeric":
        lo, hi = feature.range  # type: ignore[misc]
        # max_bin equal-width bins over [lo, hi]: the bin starts, hi itself is not a start.
        return np.linspace(lo, hi, max_bin + 1)[:-1].astype(np.float32)
    if feature.kind == "categorical":
        return np.arange(len(feature.categories or []), dtype=np.float32)
    return np.array([0.0, 1.0], dtype=np.float32)


def feature_types(contract: Contract) -> list[str]:
    """XGBoost feature types: ``c`` (native categorical) for categories, ``q`` otherwise."""
    return ["c" if f.kind == "categorical" else "q" for f in contract.features]


def contract_grid(contract: Contract, max_bin: int = MAX_BIN) -> dict[str, np.ndarray]:
    """Per feature, the cut values XGBoost reports for the contract's bin grid.

    Numeric features get ``max_bin`` equal-width bins over the contract range; the cuts
    are the inner bin edges plus the two sentinels XGBoost adds to every numeric feature
    (``v0 - (|v0| + 1e-5)`` below the first bin start and ``v + (|v| + 1e-5)`` above the
    last one), in float32 as XGBoost stores them. Values above the range share the last
    bin, values below it the first (validation refuses both anyway). Booleans are numeric
    with bin starts 0 and 1. Categorical features are native categoricals whose cuts are
    the category indices, one bin each. Nothing here depends on data: the same contract
    gives the same grid everywhere.
    """
    _check_max_bin(max_bin)
    grid: dict[str, np.ndarray] = {}
    for f in contract.features:
        v = _grid_values(f, max_bin)
        if f.kind == "categorical":
            grid[f.name] = v
            continue
        lo, hi = float(v[0]), float(v[-1])  # XGBoost computes the sentinels in double
        sentinels = np.array([lo - (abs(lo) + 1e-5), hi + (abs(hi) + 1e-5)], dtype=np.float32)
        grid[f.name] = np.concatenate([sentinels[:1], v[1:], sentinels[1:]])
    return grid


def grid_digest(grid: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a bin grid (names and float32 cuts): recorded in every trained model."""
    h = hashlib.sha256()
    for name, cuts in grid.items():
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(cuts, dtype=np.float32).tobytes() + b"\0")
    return h.hexdigest()


def reference_matrix(contract: Contract, max_bin: int = MAX_BIN) -> xgb.QuantileDMatrix:
    """A QuantileDMatrix of synthetic grid rows whose cuts are :func:`contract_grid`.

    Every column cycles through its grid values (the sketch keeps up to ``max_bin``
    distinct values exactly), so no site row is ever sketched.
    """
    _check_max_bin(max_bin)
    columns = [_grid_values(f, max_bin) for f in contract.features]
    rows = max(len(c) for c in columns)
    X = np.column_stack([np.resize(c, rows) for c in columns])
    return xgb.QuantileDMatrix(
        X,
        feature_names=contract.feature_names,
        feature_types=feature_types(contract),
        enable_categorical=True,
        max_bin=max_bin,
        nthread=1,
    )


def site_matrix(
    X: np.ndarray,
    y: np.ndarray | None,
    ref: xgb.QuantileDMatrix,
    *,
    max_bin: int = MAX_BIN,
    nthread: int = 1,
) -> xgb.QuantileDMatrix:
    """A site's rows (``FeatureEncoder.tree_matrix``) quantized on the reference's cuts."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != ref.num_col():
        raise ValueError(
            f"site matrix has shape {X.shape}; the contract has {ref.num_col()} features"
        )
    return xgb.QuantileDMatrix(
        X,
        y,
        ref=ref,
        max_bin=max_bin,
        feature_names=ref.feature_names,
        feature_types=ref.feature_types,
        enable_categorical=True,
        nthread=nthread,
    )


def matrix_cuts(dmatrix: xgb.DMatrix) -> dict[str, np.ndarray]:
    """The cut values a (Quantile)DMatrix quantizes with, per feature name."""
    indptr, values = dmatrix.get_quantile_cut()
    names = dmatrix.feature_names or [f"f{i}" for i in range(dmatrix.num_col())]
    return {n: values[indptr[i] : indptr[i + 1]] for i, n in enumerate(names)}


def _check_max_bin(max_bin: int) -> None:
    if not isinstance(max_bin, int) or max_bin < 2:
        raise ValueError(f"max_bin must be an integer >= 2, got {max_bin!r}")


# -- parameters ------------------------------------------------------------------------
def global_base_score(positives: int, n: int) -> float:
    """Global prevalence from the sites' label counts (sums over sites, never one site's)."""
    if not 0 < positives < n:
        raise ValueError(f"need 0 < positives < n for a base score, got {positives}/{n}")
    return positives / n


def booster_params(
    *,
    base_score: float,
    max_depth: int = 4,
    learning_rate: float = 0.1,
    min_child_weight: float = 1.0,
    reg_lambda: float = 1.0,
    seed: int = 0,
    nthread: int | None = None,
) -> dict[str, Any]:
    """The XGBoost parameters of a federated job, as :func:`train_worker` expects them.

    Without `nthread` each worker uses every core its process may run on: a hospital's
    worker owns its node, and the largest site is the one every round waits for."""
    params = {
        "base_score": base_score,
        "max_depth": max_depth,
        "learning_rate": learning_rate,
        "min_child_weight": min_child_weight,
        "reg_lambda": reg_lambda,
        "seed": seed,
        "eval_metric": "logloss",
    }
    return params if nthread is None else {**params, "nthread": nthread}


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, as a container or Ray sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def training_params(params: Mapping[str, Any], max_bin: int = MAX_BIN) -> dict[str, Any]:
    """`params` checked and completed: what xgboost.train receives, on every worker alike."""
    if "base_score" not in params:
        raise ValueError("params need base_score from the global label counts")
    forbidden = [k for k in _FORBIDDEN if k in params]
    if forbidden:
        raise ValueError(f"params {forbidden} would come from one site's data; not allowed")
    for key, value in _FORCED.items():
        if params.get(key, value) != value:
            raise ValueError(f"params[{key!r}] must be {value!r} for federated trees")
    if params.get("max_bin", max_bin) != max_bin:
        raise ValueError(f"params['max_bin'] differs from the reference grid's {max_bin}")
    metrics = params.get("eval_metric", "logloss")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    inexact = [m for m in metrics if m.split("@")[0] not in _EXACT_METRICS]
    if inexact:
        raise ValueError(
            f"eval_metric {inexact}: in a collective only {sorted(_EXACT_METRICS)} are the "
            "pooled value (AUC is reduced from per-site parts, not over all rows)"
        )
    defaults = {"nthread": available_cores(), "eval_metric": "logloss"}
    return {**defaults, **params, **_FORCED, "max_bin": max_bin}


# -- the site's side -------------------------------------------------------------------
def train_worker(
    X: np.ndarray,
    y: np.ndarray,
    *,
    ref_params: Mapping[str, Any],
    params: Mapping[str, Any],
    num_boost_round: int,
    communicator_env: Mapping[str, Any] | None,
    X_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    early_stopping_rounds: int | None = None,
) -> bytes:
    """Train as one worker of the collective; returns the global model (UBJSON bytes).

    Every worker returns the same bytes. Runs inside the site: X and y never leave it,
    only gradient histograms (and evaluation sums) go to the collective.

    Parameters
    ----------
    X, y : arrays
        The site's ``FeatureEncoder.tree_matrix`` rows and 0/1 labels.
    ref_params : mapping
        Keyword arguments of :func:`reference_matrix`: ``{"contract": ..., "max_bin": ...}``.
    params : mapping
        XGBoost parameters with the global ``base_score`` (see :func:`booster_params`).
    num_boost_round : int
        Maximum number of boosting rounds.
    communicator_env : mapping or None
        ``FederatedAggregator.env(rank)`` or ``RabitServer.env(rank)``; None trains alone,
        in this process, on the same grid and parameters: the pooled baseline.
    X_valid, y_valid : arrays, optional
        The site's validation rows. Every worker must pass them, or none: the metric is
        reduced across workers (an empty array is fine for a site without any).
    early_stopping_rounds : int, optional
        Stop when the federated validation metric has not improved for this many rounds;
        the returned model is cut to the best round.

    The model's attributes hold ``contract_grid_sha256`` (digest of the cuts every worker
    checked it used) and, with validation data, ``evals_result`` (per-round federated
    validation metric, JSON) plus XGBoost's ``best_iteration`` / ``best_score``.
    """
    max_bin = int(ref_params.get("max_bin", MAX_BIN))
    full = training_params(params, max_bin)
    if (X_valid is None) != (y_valid is None):
        raise ValueError("pass both X_valid and y_valid, or neither")
    if early_stopping_rounds is not None and X_valid is None:
        raise ValueError("early stopping needs validation data")
    grid = contract_grid(**ref_params)
    # Built before joining the collective: the reference is sketched locally from the
    # grid rows alone, never merged with anything.
    ref = reference_matrix(**ref_params)
    nthread = int(full["nthread"])
    context = (
        contextlib.nullcontext()
        if communicator_env is None
        else collective.CommunicatorContext(**communicator_env)
    )
    with context:
        dtrain = site_matrix(X, y, ref, max_bin=max_bin, nthread=nthread)
        _agree_on_grid(dtrain, grid)
        evals = []
        if X_valid is not None:
            # XGBoost wants the training matrix as the reference; its cuts are the grid.
            dvalid = site_matrix(X_valid, y_valid, dtrain, max_bin=max_bin, nthread=nthread)
            evals = [(dvalid, "valid")]
        history: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            full,
            dtrain,
            num_boost_round=num_boost_round,
            evals=evals,
            evals_result=history,
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
        )
    if early_stopping_rounds is not None:
        best, score = booster.best_iteration, booster.best_score
        booster = booster[: best + 1]
        booster.set_attr(best_iteration=str(best), best_score=str(score))
    booster.set_attr(**{GRID_ATTR: grid_digest(grid)})
    if history:
        booster.set_attr(**{EVALS_ATTR: json.dumps(history)})
    return bytes(booster.save_raw("ubj"))


def _agree_on_grid(dtrain: xgb.DMatrix, grid: Mapping[str, np.ndarray]) -> None:
    """Before the first histogram: every worker checks its cuts are its contract's grid,
    and all workers hold the same grid (a site on another contract version would add
    its histograms bin by bin to bins that mean other values). Collective, so all
    workers fail together instead of some waiting forever for the one that failed."""
    cuts = matrix_cuts(dtrain)
    bad = [n for n, c in grid.items() if n not in cuts or not np.array_equal(cuts[n], c)]
    digest = np.frombuffer(bytes.fromhex(grid_digest(cuts)), dtype=np.uint8).astype(np.int32)
    low = collective.allreduce(np.concatenate([[int(not bad)], digest]), collective.Op.MIN)
    high = collective.allreduce(digest, collective.Op.MAX)
    if bad:
        raise RuntimeError(f"this site's cuts differ from the contract grid for {bad}")
    if low[0] == 0:
        raise RuntimeError("another site's cuts differ from its contract grid")
    if (low[1:] != high).any():
        raise RuntimeError("the sites quantize on different grids: different contracts?")


# -- using a model -----------------------------------------------------------------------
def load_booster(raw: bytes | bytearray) -> xgb.Booster:
    """The booster from :func:`train_worker`'s bytes."""
    booster = xgb.Booster(model_file=bytearray(raw))
    booster.set_param({"nthread": 1})
    return booster


def _dmatrix(booster: xgb.Booster, X: np.ndarray) -> xgb.DMatrix:
    return xgb.DMatrix(
        np.asarray(X, dtype=np.float64),
        feature_names=booster.feature_names,
        feature_types=booster.feature_types,
        enable_categorical=True,
        nthread=1,
    )


def predict_proba(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Risk probabilities for ``tree_matrix`` rows."""
    return booster.predict(_dmatrix(booster, X))


def contributions(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Per-row SHAP contributions (log-odds), one column per feature plus the bias last."""
    return booster.predict(_dmatrix(booster, X), pred_contribs=True)


def feature_importance(booster: xgb.Booster, names: Sequence[str]) -> dict[str, float]:
    """Average gain per split of each feature, in `names` order; 0 for unused features."""
    scores = booster.get_score(importance_type="gain")
    return {n: float(scores.get(n, 0.0)) for n in names}


def split_thresholds(booster: xgb.Booster) -> dict[str, np.ndarray]:
    """Every numeric split threshold of the model, per feature name (float32)."""
    model = json.loads(bytes(booster.save_raw("json")))
    names = booster.feature_names or []
    found: dict[str, list[float]] = {}
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        left, kinds = tree["left_children"], tree["split_type"]
        for node, (feat, cond) in enumerate(
            zip(tree["split_indices"], tree["split_conditions"], strict=True)
        ):
            if left[node] != -1 and kinds[node] == 0:
                name = names[feat] if names else f"f{feat}"
                found.setdefault(name, []).append(cond)
    return {n: np.asarray(v, dtype=np.float32) for n, v in found.items()}


def off_grid_thresholds(
    booster: xgb.Booster, grid: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Numeric split thresholds that are not cuts of `grid` (empty when the model is clean)."""
    out = {}
    for name, values in split_thresholds(booster).items():
        off = values[~np.isin(values, grid.get(name, np.empty(0, np.float32)))]
        if off.size:
            out[name] = off
    return out
