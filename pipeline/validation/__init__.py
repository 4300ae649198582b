"""Validation inside the site: the contract's checks on a site's extract, and what of
their outcome may leave the site.

- :mod:`~pipeline.validation.validate`: the entry point, run inside the site;
- :mod:`~pipeline.validation.summary`: the redacted summary that leaves it;
- :mod:`~pipeline.validation.admission`: which sites a job admits;
- :mod:`~pipeline.validation.suite`: the contract's rules, and their Great Expectations
  suite;
- :mod:`~pipeline.validation.run`: running GE, and the site's Data Docs;
- :mod:`~pipeline.validation.counts`: the row-by-row rules' counts, which add up over files;
- :mod:`~pipeline.validation.whole`: the rules about the whole extract, in plain code;
- :mod:`~pipeline.validation.records`: what the site keeps so that rows are not validated
  twice;
- :mod:`~pipeline.validation.checks` and :mod:`~pipeline.validation.leakage`: the other
  checks computed in plain code.
"""

from pipeline.validation.admission import admit
from pipeline.validation.run import default_docs_dir
from pipeline.validation.suite import UnknownColumns, build_suite
from pipeline.validation.summary import ExpectationResult, ValidationSummary
from pipeline.validation.validate import validate, validate_extract

__all__ = [
    "ExpectationResult",
    "UnknownColumns",
    "ValidationSummary",
    "admit",
    "build_suite",
    "default_docs_dir",
    "validate",
    "validate_extract",
]
