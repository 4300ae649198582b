"""Federations the tests make themselves, and the configs that point at them."""

from __future__ import annotations

from pathlib import Path

from support import ROOT

HEART_DATA = ROOT.parent / "shared" / "data" / "heart_disease"
HEART_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}


def make_config(base: Path, tmp: Path, **overrides) -> Path:
    """A copy of a synthetic federation config with its own ledger and MLflow store."""
    import yaml

    raw = yaml.safe_load(base.read_text())
    raw["sites"] = [{**s, "path": str((base.parent / s["path"]).resolve())} for s in raw["sites"]]
    raw["contract"] = str(Path(raw["contract"]).resolve())
    raw.setdefault("privacy", {})["ledger"] = str(tmp / "ledger.sqlite")
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db", "experiment": "tests"}
    raw.setdefault("training", {}).update({"rounds": 8, "round_timeout_s": 180})
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = tmp / "federation.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def unseen_hospital_rows(tmp: Path, feature_names: list[str]):
    """Raw feature rows of a hospital no model saw (clinical units, nulls included), and
    the Parquet file that holds them."""
    from pipeline.config import load_config
    from pipeline.extract import read_frame
    from pipeline.synth import synthesize

    config, _ = synthesize(tmp / "unseen", sites=1, rows=500, seed=999)
    features = read_frame(load_config(config).sites[0].path)[feature_names]
    path = tmp / "unseen-rows.parquet"
    features.to_parquet(path)
    return features, path


def served_probabilities(tracking_uri: str, rows: Path, model_uri: str = "models:/diabetes-risk/1"):
    """What the registered model answers for `rows`, loaded by mlflow.pyfunc in a fresh
    interpreter; checks that the clinician-facing columns are there."""
    import subprocess
    import sys

    import numpy as np

    out = rows.with_suffix(".npy")
    script = (
        "import mlflow, pandas as pd, numpy as np\n"
        f"mlflow.set_tracking_uri({tracking_uri!r}); mlflow.set_registry_uri({tracking_uri!r})\n"
        f"m = mlflow.pyfunc.load_model({model_uri!r})\n"
        f"res = m.predict(pd.read_parquet({str(rows)!r}))\n"
        f"np.save({str(out)!r}, res['risk_probability'].to_numpy())\n"
        "print(sorted(res.columns)); print(res['top_factors'].iloc[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top_factors" in done.stdout and "risk_band" in done.stdout
    return np.load(out)


def write_site_policy(path: Path, **fields) -> None:
    """What a hospital does to its site: edit the policy file beside its extract."""
    from pipeline.site.policy import SitePolicy, write_policy

    write_policy(Path(path), SitePolicy(**fields))


def secure_round_in_process(actors, job: str, round_: int, ask):
    """One secure-sum round over site actors held in this process, as the coordinator
    runs it (:func:`pipeline.federation.rounds.secure_sum_round`): `ask(actor, secure)`
    returns the actor's masked reply. Returns the decoded sum."""
    from pipeline.protocol.secure_sum import unmask, verify_roster

    roster = [  # the job's keys, made at its first round
        a.boundary.keys[job].signed_public_key(job)
        if job in a.boundary.keys
        else a.public_key(job).signed_key
        for a in actors
    ]
    identities = {a.site: a.identity_key() for a in actors}
    setups = {
        a.site: a.secure_setup(job, round_, roster=roster, identities=identities) for a in actors
    }
    keys = {s: u.key for s, u in setups.items()}
    shares = {to: {s: u.shares[to] for s, u in setups.items() if to in u.shares} for to in keys}
    secure = {"round": round_, "keys": keys, "shares": shares}
    masked = {a.site: ask(a, secure).masked for a in actors}
    survivors = sorted(masked)
    confirmations = {a.site: a.secure_confirm(job, round_, survivors=survivors) for a in actors}
    reveals = {
        a.site: a.secure_reveal(
            job, round_, survivors=survivors, dropped=[], confirmations=confirmations
        )
        for a in actors
    }
    verified = verify_roster(roster, {s: bytes.fromhex(k) for s, k in identities.items()}, job)
    return unmask(masked, verified, round_, keys, reveals)
