"""Federation config: one YAML file, checked by pydantic, with defaults for everything but
the list of sites. Relative paths are relative to the config file, so a config can travel
with its data.

The config is the coordinator's edge, read by the commands and the job's stages; nothing
below them reads it whole. It is composed of what the layers below own: each site's
policy (:mod:`pipeline.site.policy`), the strategies' training settings and their names
(:mod:`pipeline.strategies`), the gate's policy (:mod:`pipeline.gate`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, format_validation_error
from pipeline.gate import GatePolicy
from pipeline.site.policy import SitePolicy
from pipeline.strategies import DEFAULT as DEFAULT_STRATEGY
from pipeline.strategies import StrategyName
from pipeline.strategies.settings import TrainingSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONTRACT = PROJECT_ROOT / "schemas" / "diabetes_ehr.yaml"
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SITE_NAME_RULE = (
    "site names are 1-63 lower-case letters, digits, '-' or '_', not starting with '-' or '_'"
)


def valid_site_name(name: str) -> bool:
    """Whether `name` may name a site: it becomes a folder and file names beside the
    extract, so nothing that could leave a folder (``/``, ``..``) or hide (``.``)."""
    return bool(_SITE_NAME.fullmatch(name))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteConfig(_Strict):
    name: str
    path: Path
    resource: str | None = Field(
        None, description="Ray custom resource the site's node offers, e.g. 'site:northgate'"
    )
    epsilon_budget: float | None = Field(None, gt=0, description="overrides privacy.epsilon_budget")
    identity_key: str | None = Field(
        None, description="the site's pinned Ed25519 public key (hex), for secure aggregation"
    )
    policy: SitePolicy | None = Field(
        None,
        description="the coordinator's view of the site's own policy (the file beside its "
        "extract); the site refuses a job whose config disagrees with it",
    )
    test_path: Path | None = Field(
        None,
        description="held-out rows the site keeps apart (a later period, a published "
        "split): the site trains on all of `path` and evaluates on these",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not valid_site_name(v):
            raise ValueError(SITE_NAME_RULE)
        return v


class PrivacyConfig(_Strict):
    epsilon_budget: float = Field(10.0, gt=0, description="lifetime epsilon per site")
    epsilon_per_job: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1e-2)
    clip_norm: float | None = Field(
        None,
        gt=0,
        description="per-example gradient clipping bound (L2) for dp-fedavg, in the "
        "standardized coordinates it trains in; default: the planner's",
    )
    noise_to_signal: float = Field(
        0.1,
        gt=0,
        description="dp-fedavg planner: the most noise one round's mean gradient may carry, "
        "relative to the clip; it sets the number of rounds (at most training.rounds)",
    )
    noise: Literal["per-site", "distributed"] = Field(
        "per-site",
        description="dp-fedavg: every site adds the full noise of each release, or each adds "
        "a share and secure aggregation sums them (pipeline.privacy.distributed)",
    )
    collusion_threshold: int = Field(
        1,
        ge=0,
        description="distributed noise: how many sites may collude with the coordinator "
        "(or leave a round) before a site's guarantee weakens",
    )
    ledger: Path = Path("privacy_ledger.sqlite")


class ValidationConfig(_Strict):
    unknown_columns: Literal["warn", "fail"] = "fail"
    min_rows: int = Field(100, ge=1)
    leakage_auc: float = Field(0.98, gt=0.5, le=1.0)


class MlflowConfig(_Strict):
    tracking_uri: str | None = None
    experiment: str | None = None
    model_name: str = "diabetes-risk"


class ServingConfig(_Strict):
    """`pipeline serve`: limits, access control and how often the alias is re-read."""

    max_rows: int = Field(10_000, ge=1, description="most patients in one request")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest scoring request body"
    )
    max_hook_bytes: int = Field(1024 * 1024, ge=1024, description="largest CDS Hooks request body")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a client must send a request's headers within this"
    )
    public_url: str | None = Field(
        None,
        description="where clients reach the service (links on CDS Hooks cards, the OpenAPI "
        "document's server); default: the bound address. Never taken from a request",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values answered (name or name:port); default: the bound "
        "address and localhost, which keeps pages of other sites out (DNS rebinding)",
    )
    deadline_s: float = Field(10.0, gt=0, description="per-request deadline")
    poll_s: float = Field(30.0, gt=0, description="how often the registry alias is re-read")
    token_file: Path | None = Field(
        None, description="file holding the bearer token (required off loopback)"
    )
    token_env: str = Field(
        "PIPELINE_SERVE_TOKEN", description="environment variable holding the bearer token"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    access_log: Path | None = Field(None, description="also append the access log here")

    @model_validator(mode="after")
    def _pair(self) -> ServingConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("serving: tls_cert and tls_key go together")
        return self


class TrainingConfig(TrainingSettings):
    """What the strategies train with (:class:`pipeline.strategies.settings.
    TrainingSettings`), and the strategy a job trains when it names none."""

    model: StrategyName = DEFAULT_STRATEGY


class GateConfig(_Strict):
    """The promotion gate: when a challenger becomes the champion."""

    auc_margin: float = Field(
        0.005, ge=0, description="how much lower than the champion's AUC is still accepted"
    )
    auc_floor: float = Field(0.70, ge=0, le=1, description="AUC a first champion must reach")
    calibration_slope: tuple[float, float] = (0.8, 1.2)
    calibration_intercept: float = Field(
        0.2, ge=0, description="largest |calibration-in-the-large|, log-odds"
    )
    max_epsilon: float | None = Field(
        None,
        gt=0,
        description="the consortium's privacy policy: only a differentially private job "
        "that charged every site at most this epsilon yields a champion",
    )
    strategies: list[StrategyName] = Field(
        default_factory=list,
        description="the strategies a champion may come from (empty: any)",
    )

    @field_validator("calibration_slope")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("calibration_slope must be [low, high] with 0 < low <= high")
        return v

    def policy(self) -> GatePolicy:
        return GatePolicy(
            auc_margin=self.auc_margin,
            auc_floor=self.auc_floor,
            slope_range=self.calibration_slope,
            intercept_max=self.calibration_intercept,
            max_epsilon=self.max_epsilon,
            strategies=tuple(self.strategies),
        )


class RetrainConfig(_Strict):
    """Scheduled retraining (``pipeline retrain``)."""

    strategies: list[StrategyName] = Field(
        default_factory=list, description="strategies to retrain; default: training.model"
    )


class RayConfig(_Strict):
    address: str | None = None
    num_cpus: int | None = None
    allow_unauthenticated: bool = Field(
        False,
        description="run even with Ray's token authentication off (RAY_AUTH_MODE=disabled): "
        "anyone who reaches the cluster can then run code beside the sites' rows",
    )


class FederationConfig(_Strict):
    """A whole federation: sites, quorum, privacy, tracking and training defaults."""

    federation: str = "federation"
    contract: Path = DEFAULT_CONTRACT
    sites: list[SiteConfig] = Field(min_length=1)
    min_sites: int | None = Field(None, ge=1, description="quorum; default: a majority")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    path: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        names = [s.name for s in self.sites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"site names must be unique; repeated: {dupes}")
        if self.min_sites is not None and self.min_sites > len(self.sites):
            raise ValueError(f"min_sites={self.min_sites} but only {len(self.sites)} sites")
        if self.privacy.noise == "distributed":
            if not self.training.secure_aggregation:
                raise ValueError(
                    "privacy.noise 'distributed' needs training.secure_aggregation: without "
                    "it the coordinator sees each site's share of the noise"
                )
            self.noise_shares()
        return self

    def noise_shares(self) -> int:
        """Shares of each dp-fedavg release's noise: 1 when every site adds all of it."""
        if self.privacy.noise != "distributed":
            return 1
        from pipeline.privacy.distributed import noise_shares

        return noise_shares(self.quorum, self.privacy.collusion_threshold)

    @property
    def quorum(self) -> int:
        return self.min_sites or max(1, math.ceil(len(self.sites) / 2))

    def site(self, name: str) -> SiteConfig:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def site_budget(self, name: str) -> float:
        return self.site(name).epsilon_budget or self.privacy.epsilon_budget

    @property
    def tracking_uri(self) -> str:
        """The config's ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI`` (the team's
        server, as every MLflow tool reads it), else the local store
        ``mlruns/mlflow.db`` in the working directory."""
        return (
            self.mlflow.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path('mlruns').resolve()}/mlflow.db"
        )


def load_config(path: str | Path) -> FederationConfig:
    """Read a federation config; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a federation config must be a YAML mapping")
    try:
        cfg = FederationConfig.model_validate(raw)
    except ValidationError as exc:
        msg = format_validation_error(exc)
        raise ConfigError(f"{path}: invalid federation config:\n{msg}") from exc
    return _resolve_paths(cfg, path.resolve().parent, path)


def _resolve_paths(cfg: FederationConfig, base: Path, path: Path) -> FederationConfig:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    cfg.path = path.resolve()
    cfg.contract = resolve(cfg.contract)
    cfg.privacy.ledger = resolve(cfg.privacy.ledger)
    for site in cfg.sites:
        site.path = resolve(site.path)
        if site.test_path is not None:
            site.test_path = resolve(site.test_path)
    for name in ("token_file", "tls_cert", "tls_key", "access_log"):
        value = getattr(cfg.serving, name)
        if value is not None:
            setattr(cfg.serving, name, resolve(value))
    return cfg
