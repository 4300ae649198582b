"""The job's evaluation on real Ray: metrics from securely summed statistics equal the
row-level figures on the same held-out rows, small groups and sites are suppressed, and
the coordinator receives masked vectors only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import brier_score_loss, roc_auc_score
from support.federation import make_config

from pipeline import pooled
from pipeline.config import DEFAULT_CONTRACT, load_config
from pipeline.evaluation import MIN_CELL, Suppressed, stats_vector
from pipeline.federation import runtime
from pipeline.job import run_job
from pipeline.protocol import messages
from pipeline.protocol.secure_sum import encode
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow


def _calibration_slope(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    x = np.log(p / (1 - p))
    return float(LogisticRegression(penalty=None).fit(x[:, None], y).coef_[0, 0])


def test_secure_evaluation_matches_row_level_metrics_and_releases_masked_vectors_only(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = synthesize(tmp_path / "data", sites=4, rows=5000, seed=31)
    contract_path = tmp_path / "contract.yaml"
    raw = yaml.safe_load(DEFAULT_CONTRACT.read_text())
    raw["subgroups"].append({"name": "bmi", "column": "bmi", "edges": [12, 15, 70]})
    contract_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(
        make_config(base, tmp_path, contract=str(contract_path), training={"rounds": 30})
    )

    replies: list[object] = []
    checked = messages.check_reply
    monkeypatch.setattr(runtime, "check_reply", lambda r: replies.append(r) or checked(r))
    result = run_job(cfg, strategy="logistic", register=False)

    # The same held-out rows, read here by the test (never by the job).
    contract, rows = pooled.site_rows(cfg)
    model = result.model
    p = {r.name: model.predict_proba(r.test) for r in rows}
    y = {r.name: r.test_y.astype(int) for r in rows}
    y_all, p_all = np.concatenate(list(y.values())), np.concatenate(list(p.values()))

    m = result.metrics
    assert m.n == len(y_all)
    assert m.auc == pytest.approx(roc_auc_score(y_all, p_all), abs=1e-3)
    assert m.brier == pytest.approx(brier_score_loss(y_all, p_all), abs=2e-3)
    assert m.calibration_slope == pytest.approx(_calibration_slope(y_all, p_all), abs=2e-3)

    # Sites and subgroups: a number exactly when both classes hold 11 patients or more.
    for site in y:
        small = min(y[site].sum(), (1 - y[site]).sum()) < MIN_CELL
        if small:
            assert isinstance(result.per_site[site], Suppressed), site
        else:
            assert result.per_site[site] == pytest.approx(roc_auc_score(y[site], p[site]))
    assert any(isinstance(v, Suppressed) for v in result.per_site.values())
    frames = pd.concat([r.test for r in rows], ignore_index=True)
    for group, mask in contract.subgroup_masks(frames).items():
        yg = y_all[mask]
        reported = result.evaluation.subgroups[group]
        if min(yg.sum(), (1 - yg).sum()) < MIN_CELL:
            assert isinstance(reported, Suppressed), group
        else:
            exact = roc_auc_score(yg, p_all[mask])
            assert reported.auc == pytest.approx(exact, abs=1e-3), (group, len(yg))
    assert isinstance(result.evaluation.subgroups["bmi 12 to <15"], Suppressed)

    # What reached the coordinator: masked vectors and suppressed per-site AUCs only.
    evaluations = [r for r in replies if isinstance(r, messages.MaskedEvaluation)]
    assert sorted(r.site for r in evaluations) == sorted(y)
    # Nothing else: every update and every evaluation statistic came masked.
    assert {type(r) for r in replies} == {
        messages.ValidationReply,
        messages.SiteInfo,
        messages.PublicKeyReply,
        messages.MaskedUpdate,
        messages.MaskedEvaluation,
        messages.RoundSetup,  # the secure sum's round keys and encrypted shares
        messages.Reveal,  # its shares of the round's secrets
        messages.Confirmation,  # its signature on who sent an input
        messages.ModelCommitment,  # the digest of the job's model, fixed before evaluation
        messages.JobEnd,  # its own ledger's status for the job, at the end
    }
    for reply in evaluations:
        site_rows = next(r for r in rows if r.name == reply.site)
        groups = list(contract.subgroup_masks(site_rows.test).values())
        plain = encode(stats_vector(y[reply.site], p[reply.site], groups))
        assert reply.masked.dtype == np.uint64 and reply.masked.shape == plain.shape
        assert np.mean(reply.masked == plain) < 0.01  # nothing of the histogram shows
        assert set(reply.auc) == {"challenger"}
        assert (reply.auc["challenger"] is None) == isinstance(
            result.per_site[reply.site], Suppressed
        )
