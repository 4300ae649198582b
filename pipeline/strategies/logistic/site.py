"""A site's side of the non-private logistic regression: its Newton statistics."""

from __future__ import annotations

import numpy as np

from pipeline.protocol.messages import MaskedUpdate, ModelUpdate
from pipeline.strategies.base import SiteHandler
from pipeline.strategies.logistic.newton import site_statistics


class LogisticSite(SiteHandler):
    requests = frozenset({"newton_statistics"})

    def newton_statistics(
        self, job_id: str, weights: np.ndarray, *, secure: dict | None = None
    ) -> ModelUpdate | MaskedUpdate:
        """Non-private sufficient statistics of one Newton step at `weights`
        (:func:`~pipeline.strategies.logistic.newton.site_statistics`), with the row
        count they cover. Asked once per job at given weights: a sum without one site
        at weights already answered would isolate that site's statistics."""
        rows = self.site.train_rows()
        self.site.authorize(job_id, self.strategy, 0.0)
        self.site.answer_once_at(job_id, weights)
        vector = site_statistics(rows.linear, rows.y, np.asarray(weights, dtype=np.float64))
        self.site.audit("newton_statistics", job_id)
        return self.site.send(job_id, vector, len(rows), secure)
