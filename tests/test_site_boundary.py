"""The site's boundary against a curious coordinator: what a site enforces comes from its
own files, every release goes through its policy, a round is answered once, a sum without
one site at weights already answered never comes, pins in a request are ignored,
evaluation and drift are on the site's terms, and its own ledger refuses what its budget
cannot pay for. Site actors held in this process (the same class Ray runs)."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.federation import make_config, secure_round_in_process, write_site_policy

from pipeline.config import load_config
from pipeline.errors import BudgetError, DataError
from pipeline.models.digest import payload_digest
from pipeline.privacy.ledger import RELEASED, UNUSED
from pipeline.protocol.secure_sum import RosterError, SiteKeys
from pipeline.scratch import scratch_prefix
from pipeline.site.actor import SiteActor
from pipeline.site.policy import SitePolicy, policy_path, read_policy
from pipeline.synth import synthesize


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    config, _ = synthesize(tmp_path_factory.mktemp("boundary"), sites=4, rows=2000, seed=31)
    return load_config(config)


@pytest.fixture
def actors(federation) -> list[SiteActor]:
    """Four loaded sites under their default policies, fresh processes' worth of state."""
    for s in federation.sites:
        write_site_policy(s.path, epsilon_budget=1.5)
        for suffix in ("ledger.sqlite", "models.json"):
            s.path.parent.joinpath(f"{s.path.name}.{suffix}").unlink(missing_ok=True)
    out = [SiteActor(s.name, str(s.path), str(federation.contract)) for s in federation.sites]
    for actor in out:
        actor.load("j", "logistic", 0.2, 0)
    return out


def _dim(actor: SiteActor) -> int:
    return actor.boundary.train_rows().linear.shape[1] + 1


def _newton(actors, job: str, round_: int, weights: np.ndarray) -> np.ndarray:
    def ask(actor, secure):
        return actor.handle("logistic", "newton_statistics", job, weights, secure=secure)

    return secure_round_in_process(actors, job, round_, ask)


def test_synth_writes_each_site_a_policy_file_it_then_enforces(federation) -> None:
    for s in federation.sites:
        assert policy_path(s.path).exists()
        assert read_policy(s.path).secure_aggregation  # the default a hospital starts from


def test_the_policy_is_the_sites_own_and_a_disagreeing_coordinator_is_refused(
    federation,
) -> None:
    site = federation.sites[0]
    write_site_policy(site.path, strategies=["dp-fedavg"])
    try:
        told = SiteActor(site.name, str(site.path), str(federation.contract), SitePolicy())
        with pytest.raises(BudgetError, match="own policy differs.*strategies"):
            told.validate("j", min_rows=10)
        # Whatever the coordinator thinks, the site serves only what its file lists.
        own = SiteActor(site.name, str(site.path), str(federation.contract))
        with pytest.raises(BudgetError, match="refuses strategy 'logistic'"):
            own.validate("j", "logistic", min_rows=10)  # a job it would refuse ends at admission
        with pytest.raises(BudgetError, match="refuses strategy 'logistic'"):
            own.load("j", "logistic", 0.2, 0)
        own.load("j", "dp-fedavg", 0.2, 0)
        with pytest.raises(BudgetError, match="refuses strategy 'logistic'"):
            own.handle("logistic", "newton_statistics", "j", np.zeros(_dim(own)), secure=None)
    finally:
        write_site_policy(site.path)


def test_a_release_in_the_clear_is_refused(actors) -> None:
    with pytest.raises(BudgetError, match="only through secure aggregation"):
        actors[0].handle("logistic", "newton_statistics", "j", np.zeros(_dim(actors[0])))
    assert not hasattr(actors[0], "fit_local_logistic")
    assert not hasattr(actors[0], "evaluate_pair")
    with pytest.raises(BudgetError, match="has no 'fit_local_logistic'"):
        actors[0].handle("logistic", "fit_local_logistic", "j")


def test_differencing_four_sites_against_three_at_the_same_weights_gets_no_answer(
    actors,
) -> None:
    w = np.zeros(_dim(actors[0]))
    full = _newton(actors, "diff", 0, w)
    assert full[-1] == sum(len(a.boundary.train_rows()) for a in actors)
    three = actors[1:]
    with pytest.raises(BudgetError, match="roster changed"):
        _newton(three, "diff", 0, w)  # the job again, without one site
    with pytest.raises(RosterError, match="already set up round 0"):
        actors[1].boundary.secure["diff"].setup(0)  # the same round again
    with pytest.raises(BudgetError, match="already had an answer at these weights"):
        three[0].handle("logistic", "newton_statistics", "diff", w, secure={"round": 1, "keys": {}})
    # Nor can it claim a site dropped after everyone's input: each reveals once.
    survivors = [a.site for a in three]
    with pytest.raises(RosterError, match="already revealed round 0"):
        three[0].secure_reveal(
            "diff", 0, survivors=survivors, dropped=[actors[0].site], confirmations={}
        )


def test_pins_offered_in_a_request_are_ignored(actors) -> None:
    w = np.zeros(_dim(actors[0]))
    _newton(actors, "first", 0, w)  # every site pins the others' keys on first use
    victim, impostor = actors[1], SiteKeys.generate(actors[1].site)
    roster = [a.public_key("second").signed_key for a in actors]
    roster[1] = impostor.signed_public_key("second")  # the coordinator stands in for it
    offered = {a.site: a.identity_key() for a in actors}
    offered[victim.site] = impostor.identity_public_bytes().hex()
    with pytest.raises(RosterError, match=f"'{victim.site}'.*does not verify"):
        actors[0].secure_setup("second", 0, roster=roster, identities=offered)
    audit = actors[0].boundary.audit_log.path.read_text()
    assert "pin_mismatch" in audit


def test_a_site_that_trusts_no_first_use_takes_no_key_from_a_request(federation) -> None:
    site = federation.sites[2]
    pins = site.path.parent / f"{site.path.name}.pins.json"
    pins.unlink(missing_ok=True)
    write_site_policy(site.path, trust_on_first_use=False)
    try:
        strict = SiteActor(site.name, str(site.path), str(federation.contract))
        others = [SiteKeys.generate(f"peer{i}") for i in range(3)]
        roster = [strict.public_key("j").signed_key] + [k.signed_public_key("j") for k in others]
        offered = {k.site: k.identity_public_bytes().hex() for k in others}
        with pytest.raises(RosterError, match="no pinned identity"):
            strict.secure_setup("j", 0, roster=roster, identities=offered)
        assert not pins.exists()
    finally:
        write_site_policy(site.path)


def test_evaluation_only_of_a_job_the_site_trained_once_and_bounded(actors) -> None:
    w = np.zeros(_dim(actors[0]))
    _newton(actors, "trained", 0, w)
    from pipeline.models.logistic import LogisticModel

    contract = actors[0].contract
    payload = LogisticModel(contract, w).site_payload()
    with pytest.raises(BudgetError, match="only the models of a job it trained"):
        actors[0].evaluate_models("never-trained:eval", {"m": payload}, secure={})
    with pytest.raises(BudgetError, match="not fixed first"):
        actors[0].evaluate_models("trained:eval", {"m": payload}, secure={})
    for actor in actors:
        actor.fix_model("trained", payload)
    crafted = {f"threshold-{i}": payload for i in range(3)}
    with pytest.raises(BudgetError, match="at most 2 models"):
        actors[0].evaluate_models("trained:eval", crafted, secure={})

    def ask(actor, secure):
        return actor.evaluate_models("trained:eval", {"m": payload}, secure=secure)

    secure_round_in_process(actors, "trained:eval", 0, ask)
    with pytest.raises(BudgetError, match="once"):
        actors[0].evaluate_models("trained:eval", {"m": payload}, secure={})


def test_a_crafted_model_is_refused_for_evaluation(actors) -> None:
    """The oracle of the finding: a coordinator scores a threshold model of its own on the
    site's held-out patients. A site scores only the job's fixed model and the models of
    earlier jobs it trained in (what a registry alias can name), checked by digest."""
    from pipeline.models.logistic import LogisticModel

    contract = actors[0].contract
    w = np.zeros(_dim(actors[0]))
    _newton(actors, "earlier", 0, w)
    earlier = LogisticModel(contract, w + 0.01).site_payload()
    for actor in actors:
        assert actor.fix_model("earlier", earlier).known == ()
        actor.finish("earlier")

    _newton(actors, "job", 0, w)
    own = LogisticModel(contract, w + 0.02).site_payload()
    crafted = LogisticModel(contract, np.r_[np.zeros(len(w) - 1), 5.0]).site_payload()
    site = actors[0]
    reply = site.fix_model("job", own, compare=[payload_digest(earlier), payload_digest(crafted)])
    assert reply.known == (payload_digest(earlier),)
    with pytest.raises(BudgetError, match="fixed already"):
        site.fix_model("job", crafted)  # one model per job: the first one stands
    with pytest.raises(BudgetError, match="champion is not a model of a job it trained in"):
        site.evaluate_models("job:eval", {"job": own, "champion": crafted}, secure={})
    # Refused before anything was scored: the job's real evaluation still runs once.
    for actor in actors[1:]:
        actor.fix_model("job", own)

    def ask(actor, secure):
        return actor.evaluate_models("job:eval", {"job": own, "champion": earlier}, secure=secure)

    replies = secure_round_in_process(actors, "job:eval", 0, ask)
    assert replies is not None
    audit = [json.loads(line) for line in site.boundary.audit_log.path.read_text().splitlines()]
    assert any(e["request"] == "refused" and e.get("reason") == "evaluation" for e in audit)
    assert site.boundary.models.of_job("job") == payload_digest(own)


def test_a_site_fixes_only_the_booster_its_own_worker_trained(actors) -> None:
    """Under XGBoost the site holds the job's model itself: a coordinator cannot fix
    another booster in its place."""
    site = actors[0]
    site.boundary.authorize("trees", "xgboost", 0.0)
    site.boundary.held["trees"] = payload_digest({"booster": b"the site's own booster"})
    with pytest.raises(BudgetError, match="not the model the site's own worker trained"):
        site.fix_model("trees", {"booster": b"a booster of the coordinator's"})
    assert site.fix_model("trees", {"booster": b"the site's own booster"}).digest


def test_drift_months_are_the_sites_own(actors) -> None:
    with pytest.raises(TypeError):
        actors[0].drift("d", reference=["2025-10"], current=[], secure={})
    with pytest.raises(DataError, match="no months to compare"):
        actors[0].drift("d", secure={})  # nothing trained yet: no reference of its own


def test_the_sites_own_ledger_refuses_what_its_budget_cannot_pay(actors) -> None:
    site = actors[0]
    first = site.reserve("dp-1", "dp-fedavg", epsilon=1.0, delta=1e-5)
    assert first.remaining == pytest.approx(0.5)
    # The coordinator's ledger may have room; the site's does not.
    with pytest.raises(BudgetError, match="own ledger refuses"):
        site.reserve("dp-2", "dp-fedavg", epsilon=1.0, delta=1e-5)
    # Nothing was released under dp-1: the job ends and the site gives it back.
    keys = Path(tempfile.mkdtemp(prefix=scratch_prefix("dp-1", "xgb-tls")))
    assert site.finish("dp-1").spend == UNUSED
    assert not keys.exists()  # the job's key directory went with it
    assert site.boundary.ledger.entries_of("dp-1", site.site)["status"] == UNUSED
    request = dict(epsilon=1.0, clip=1.0, noise_multiplier=5.0, rounds=1, round_=0)
    # A coordinator that ends a job to have it given back cannot then spend under it.
    with pytest.raises(BudgetError, match="no reservation"):
        site.handle("dp-fedavg", "logistic_gradient", "dp-1", np.zeros(_dim(site)), **request)
    site.reserve("dp-3", "dp-fedavg", epsilon=1.0, delta=1e-5)

    def ask(actor, secure):
        return actor.handle(
            "dp-fedavg",
            "logistic_gradient",
            "dp-3",
            np.zeros(_dim(actor)),
            secure=secure,
            **request,
        )

    for other in actors[1:]:
        other.reserve("dp-3", "dp-fedavg", epsilon=1.0, delta=1e-5)
    secure_round_in_process(actors, "dp-3", 0, ask)
    assert site.finish("dp-3").spend == RELEASED  # released: never refunded
    assert site.boundary.ledger.entries_of("dp-3", site.site)["status"] == RELEASED
    with pytest.raises(BudgetError, match="no reservation"):
        site.handle("dp-fedavg", "logistic_gradient", "unreserved", np.zeros(_dim(site)), **request)


def test_a_cap_on_non_private_jobs_per_day(federation) -> None:
    site = federation.sites[3]
    write_site_policy(site.path, max_nonprivate_jobs_per_day=0)
    try:
        capped = SiteActor(site.name, str(site.path), str(federation.contract))
        capped.load("j", "logistic", 0.2, 0)
        with pytest.raises(BudgetError, match="at most 0 non-private jobs a day"):
            capped.handle("logistic", "newton_statistics", "j", np.zeros(_dim(capped)))
    finally:
        write_site_policy(site.path)


# -- a site lost mid-round, on real Ray ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["logistic", "dp-fedavg"])
def test_a_site_killed_mid_round_is_recovered_without_a_second_answer(
    ray_session, four_sites_copy: Path, tmp_path: Path, monkeypatch, strategy: str
) -> None:
    """The victim dies after its round set-up and before its input: the others' shares
    recover the round, the job completes, and no site answered any round twice."""
    import ray

    from pipeline.job import run_job
    from pipeline.strategies.base import TrainingJob

    cfg = load_config(make_config(four_sites_copy, tmp_path, min_sites=3))
    victim = cfg.sites[1].name
    real = TrainingJob.asker
    killed = threading.Event()

    def asker(self, request, *args, **kwargs):
        ask = real(self, request, *args, **kwargs)

        def killing(secure):
            if secure is not None and secure["round"] == 2 and not killed.is_set():
                actor = self.runtime.actors[victim]
                ray.kill(actor)
                for _ in range(300):  # gone before its input: a kill is asynchronous
                    try:
                        ray.get(actor.pid.remote(), timeout=5)
                    except ray.exceptions.RayActorError:
                        break
                    time.sleep(0.1)
                killed.set()
            return ask(secure)

        return killing

    monkeypatch.setattr(TrainingJob, "asker", asker)
    result = run_job(cfg, strategy=strategy, register=False)
    assert killed.is_set() and victim in result.dropped
    assert result.metrics.auc > 0.7
    for s in cfg.sites:
        if s.name == victim:
            continue
        entries = [
            json.loads(line)
            for line in (s.path.parent / f"{s.path.name}.audit.jsonl").read_text().splitlines()
        ]
        inputs = [(e["job"], e["round"]) for e in entries if e["request"] == "masked" and e["job"]]
        mine = [i for i in inputs if i[0] == result.job_id]
        assert mine and len(mine) == len(set(mine)), mine
        reveals = [e for e in entries if e["request"] == "secure_reveal"]
        assert any(victim in e["dropped"] for e in reveals)


def test_label_counts_leave_a_site_only_inside_the_secure_sum(actors) -> None:
    """XGBoost's base score: the coordinator decodes the federation's count of positives,
    never one site's (in the clear it is refused; masked it is not the site's count)."""
    from pipeline.protocol.secure_sum import encode

    with pytest.raises(BudgetError, match="only through secure aggregation"):
        actors[0].handle("xgboost", "label_counts", "base")
    inputs = {}

    def ask(actor, secure):
        reply = actor.handle("xgboost", "label_counts", "counts", secure=secure)
        inputs[actor.site] = reply.masked
        return reply

    total = secure_round_in_process(actors, "counts", 0, ask)
    rows = [a.boundary.train_rows() for a in actors]
    assert total[0] == pytest.approx(sum(float(r.y.sum()) for r in rows), abs=1e-6)
    assert total[1] == pytest.approx(sum(len(r) for r in rows), abs=1e-6)
    for actor, r in zip(actors, rows, strict=True):
        plain = encode(np.array([float(r.y.sum()), float(len(r))]))
        assert not np.array_equal(inputs[actor.site], plain)
