"""The coordinator's federation runtime: Ray started or joined, one actor per site placed
on its node, calls with timeouts and quorum (:mod:`~pipeline.federation.runtime`); the
round written once (:mod:`~pipeline.federation.rounds`), the server optimisers and the
aggregation arithmetic; secure evaluation and drift. Nothing here knows a strategy."""
