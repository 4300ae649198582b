"""Named points where a crash test stops the process, so that it can kill it exactly
there (SIGKILL cannot be aimed at a line from outside).

With ``PIPELINE_STOP_AT=<point>`` in its environment, a process that reaches that point
stops itself (SIGSTOP); the test sees it stopped, checks what it left so far and kills
it. Without the variable a point costs one environment lookup. The points are listed in
:data:`POINTS`, in the order a retraining passes them.
"""

from __future__ import annotations

import os
import signal

STOP_AT = "PIPELINE_STOP_AT"
POINTS = (
    "validation",  # the sites are validating their extracts
    "reservation",  # every ledger holds the job's reservation; no noise drawn yet
    "training",  # the first training round has been released
    "evaluation",  # the model is trained; the held-out evaluation starts
    "registration",  # the model version is registered; the gate has not decided
    "alias",  # half of the champion's alias move is done
)


def stop_point(name: str) -> None:
    """Stop here if the environment names this point (see the module docstring)."""
    if os.environ.get(STOP_AT) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
