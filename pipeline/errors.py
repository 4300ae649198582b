"""The project's own error types: the CLI maps these to exit codes and readable messages."""


class PipelineError(Exception):
    """Base class: an expected failure with a message meant for a person."""


class ContractError(PipelineError):
    """A data contract file is missing, malformed or inconsistent."""


class ConfigError(PipelineError):
    """A federation config file is missing, malformed or inconsistent."""


class DataError(PipelineError):
    """An extract cannot be read or does not meet its contract."""


class QuorumError(PipelineError):
    """Fewer sites than the quorum could take part."""


class BudgetError(PipelineError):
    """A privacy spend would exceed a site's budget, or a site's policy refused it."""


def format_validation_error(exc: Exception) -> str:
    """One line per pydantic error: the dotted location and the message."""
    lines = []
    for err in exc.errors():  # type: ignore[attr-defined]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)
