"""The pooled baseline: what training on every site's rows in one place would give.

Only tests and benchmarks call this, to measure a federated job against the model pooling
would have trained; they may read every extract. A federated job never does: its rows
stay in the site actors. The splits, grid and parameters are the job's own, so the two
models differ only by where the rows were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import FederationConfig, SiteConfig
from pipeline.contract import Contract, load_contract
from pipeline.extract import read_frame
from pipeline.features import FeatureEncoder
from pipeline.splits import train_test, validation_mask


@dataclass(frozen=True)
class SiteRows:
    """One site's rows, split as its actor splits them."""

    name: str
    train_T: np.ndarray  # training rows as FeatureEncoder.tree_matrix
    train_y: np.ndarray
    test: pd.DataFrame  # held-out rows, raw contract columns
    test_y: np.ndarray


def site_split(
    cfg: FederationConfig, site: SiteConfig, contract: Contract
) -> tuple[tuple[pd.DataFrame, np.ndarray], tuple[pd.DataFrame, np.ndarray]]:
    """One site's (training, held-out) rows and labels, exactly as its actor splits them:
    by key, or all of its extract against its held-out extract (``test_path``)."""
    df = read_frame(site.path, contract.arrow_schema)
    held = None if site.test_path is None else read_frame(site.test_path, contract.arrow_schema)
    return train_test(df, contract, cfg.training.seed, cfg.training.test_fraction, held=held)


def site_rows(cfg: FederationConfig) -> tuple[Contract, list[SiteRows]]:
    """Every site's training and held-out rows, read here in one process."""
    contract = load_contract(cfg.contract)
    encoder = FeatureEncoder(contract)
    out = []
    for site in cfg.sites:
        (train, train_y), (test, test_y) = site_split(cfg, site, contract)
        out.append(
            SiteRows(
                site.name,
                encoder.tree_matrix(train),
                train_y.astype(np.float64),
                test.reset_index(drop=True),
                test_y.astype(np.float64),
            )
        )
    return contract, out


def train_xgboost(
    contract: Contract,
    cfg: FederationConfig,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    nthread: int | None = None,
):  # -> xgboost.Booster
    """XGBoost on the (tree matrix, labels) parts as one table, as a federated job trains:
    the same parameters, contract grid, validation rows and early stopping, and by
    default, like a site's worker, every core this process may use."""
    from pipeline.models import trees

    x, seed = cfg.training.xgboost, cfg.training.seed
    masks = [validation_mask(len(y), seed) for _, y in parts]
    y_all = np.concatenate([y for _, y in parts])
    params = trees.booster_params(
        base_score=trees.global_base_score(int(y_all.sum()), len(y_all)),
        max_depth=x.max_depth,
        learning_rate=x.learning_rate,
        seed=seed,
        nthread=nthread,
    )
    pairs = list(zip(parts, masks, strict=True))
    raw = trees.train_worker(
        np.vstack([T[~m] for (T, _), m in pairs]),
        np.concatenate([y[~m] for (_, y), m in pairs]),
        X_valid=np.vstack([T[m] for (T, _), m in pairs]),
        y_valid=np.concatenate([y[m] for (_, y), m in pairs]),
        ref_params={"contract": contract, "max_bin": x.max_bin},
        params=params,
        num_boost_round=x.rounds,
        communicator_env=None,
        early_stopping_rounds=x.early_stopping_rounds,
    )
    return trees.load_booster(raw)


def train_logistic(X: np.ndarray, y: np.ndarray, *, l2: float) -> np.ndarray:
    """Pooled logistic regression on the encoded rows of every site, as one table: the
    objective of the federated ``logistic`` strategy (mean log-loss plus
    ``l2 / 2 * ||w||^2``, intercept unpenalised), minimised by scikit-learn to a tight
    tolerance. scikit-learn's objective is ``C * sum(log-loss) + ||w||^2 / 2``, the
    same up to a factor with ``C = 1 / (l2 * n)``; its Newton solver, like the federated one.
    Returns the weights (last: intercept)."""
    from sklearn.linear_model import LogisticRegression

    penalty = {"C": 1.0 / (l2 * len(y))} if l2 > 0 else {"penalty": None}
    model = LogisticRegression(solver="newton-cholesky", tol=1e-12, max_iter=1000, **penalty)
    model.fit(X, y)
    return np.append(model.coef_.ravel(), model.intercept_)
