"""What one job has released at a site, and what it declared it would release.

A site keeps one :class:`JobReleases` per job it served, for as long as its process
lives, so a finished job can never release again and a job cannot loosen what it asked
for at its first release: the first release of each kind (a gradient round, the feature
scales) fixes its noise, clipping bound, number of releases and noise shares
(:class:`Declared`), and every later request of that kind is held to them. A round is
never asked twice (the secure sum recovers a dropout from the others' shares).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import BudgetError


@dataclass(frozen=True)
class Declared:
    """A job's first release of a kind: what every later release of it is held to.

    ``noise_shares`` and ``collusion_threshold``: how many sites' shares make one
    release's noise, and how many colluding sites the shares were sized to tolerate
    (1 and 0: this site adds the full noise, :mod:`pipeline.privacy.distributed`).
    """

    noise_multiplier: float
    bound: float | None
    count: int
    noise_shares: int = 1
    collusion_threshold: int = 0

    def refusal(
        self, noise_multiplier: float, bound: float | None, count: int, noise_shares: int
    ) -> str | None:
        """Why a later request of this kind is refused, or None: less noise, a larger
        bound, more shares (less noise from this site) or more releases."""
        larger_bound = self.bound is not None and (bound is None or bound > self.bound)
        if noise_multiplier < self.noise_multiplier or noise_shares > self.noise_shares:
            return "less noise"
        if larger_bound:
            return "a larger bound"
        if count > self.count:
            return "more releases"
        return None


@dataclass
class JobReleases:
    """Every release one job made at one site.

    Attributes
    ----------
    site, job_id, strategy : str
    epsilon : float
        The per-job epsilon the job claimed at its first request.
    released : int
        Noisy values released so far (gradient rounds, one-shot fits).
    declared : dict of kind -> Declared
    """

    site: str
    job_id: str
    strategy: str
    epsilon: float
    released: int = 0
    declared: dict[str, Declared] = field(default_factory=dict)

    def hold_to(self, kind: str, request: Declared) -> Declared:
        """Fix the job's first release of `kind`, or check a later one against it; returns
        what the job declared. Raises :class:`BudgetError` for a looser request."""
        declared = self.declared.setdefault(kind, request)
        why = declared.refusal(
            request.noise_multiplier, request.bound, request.count, request.noise_shares
        )
        if why == "more releases":
            raise BudgetError(f"site {self.site}: more {kind} releases than the job declared")
        if why is not None:
            raise BudgetError(
                f"site {self.site}: a {kind} release with less noise or a larger bound "
                "than the job declared"
            )
        return declared
