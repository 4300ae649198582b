"""Synthetic multi-hospital EHR extracts: the embedded default data, with no download.

- :mod:`~pipeline.synth.population`: the hospitals' patients and their true risk (the
  ground truth, with the published risk models it follows);
- :mod:`~pipeline.synth.federation`: writing a federation of them, and later months.
"""

from pipeline.synth.federation import SiteSummary, append_month, site_entry, synthesize
from pipeline.synth.population import month_of

__all__ = ["SiteSummary", "append_month", "month_of", "site_entry", "synthesize"]
