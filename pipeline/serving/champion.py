"""The served version, and following the registry alias that names it.

:class:`Champion` re-reads the alias every ``poll_s`` and at once on :meth:`Champion.wake`
(SIGHUP), loads a new version beside the serving one and swaps one reference, so requests
already running finish on the version they started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.champion import alias_version
from pipeline.models.risk_model import RiskModel
from pipeline.registry import registry_client
from pipeline.serving.errors import ServeError

log = logging.getLogger("pipeline.serving")


@dataclass(frozen=True)
class Served:
    """One loaded registry version: its risk model and its model card."""

    name: str
    version: str
    run_id: str | None
    risk_model: RiskModel
    card: str | None

    @property
    def contract(self) -> Any:
        return self.risk_model.contract


def load_version(client: Any, name: str, version: str) -> Served:
    """Load a registered version and its model card."""
    import mlflow.pyfunc

    mv = client.get_model_version(name, version)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    risk_model = pyfunc.unwrap_python_model()
    if not isinstance(risk_model, RiskModel):
        raise ServeError(f"model {name} version {version} is not the pipeline's risk model")
    risk_model.model_name = name
    risk_model.model_version = str(version)
    return Served(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        risk_model=risk_model,
        card=model_card(mv.run_id),
    )


def model_card(run_id: str | None) -> str | None:
    """The version's model card (``model_card.md`` at the root of its run), or None."""
    if not run_id:
        return None
    import mlflow.artifacts

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_card.md")
    except Exception:  # no card logged for this version (MLflow raises several kinds)
        return None
    return Path(path).read_text()


class Champion:
    """The version an alias points at, followed: re-read every ``poll_s`` and at once
    on :meth:`wake` (SIGHUP). A new version is loaded beside the serving one; then one
    reference is replaced, so a request keeps the version it started with.

    Parameters
    ----------
    tracking_uri, model_name, alias : str
    poll_s : float
    on_swap : callable, optional
        Called with (old, new) after every swap.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str,
        *,
        poll_s: float = 30.0,
        on_swap: Callable[[Served | None, Served], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.poll_s = poll_s
        self.on_swap = on_swap
        self.client = registry_client(tracking_uri)
        self.current: Served | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load and swap in the alias's version if it changed; True when it swapped."""
        with self._lock:
            version = alias_version(self.client, self.model_name, self.alias)
            if version is None:
                if self.current is None:
                    raise ServeError(
                        f"no version of model {self.model_name!r} has the alias "
                        f"{self.alias!r} in {self.tracking_uri}"
                    )
                log.warning(
                    "alias %s of %s is unset; still serving version %s",
                    self.alias,
                    self.model_name,
                    self.current.version,
                )
                return False
            if self.current is not None and self.current.version == version:
                return False
            new = load_version(self.client, self.model_name, version)
            old, self.current = self.current, new
        log.info("serving %s version %s (%s)", self.model_name, version, self.alias)
        if self.on_swap is not None:
            self.on_swap(old, new)
        return True

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.current is None:
            self.refresh()
        self._thread = threading.Thread(target=self._follow, name="champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # keep serving the loaded version
                log.error("could not load the new %s: %s", self.alias, type(exc).__name__)
