"""Named failpoints for fault-injection tests: kill the process at an exact place in a run.

`THRLAB_FAILPOINT=name@n` makes the n-th pass through `failpoint("name")` SIGKILL this process
(n defaults to 1). Unset, a failpoint costs one dict lookup. The names in use are listed in
FAILPOINTS; tests/test_faults.py kills a real run at each and checks that it resumes exactly.
"""
from __future__ import annotations

import os
import signal

FAILPOINTS = (
    "generate",      # after a rollout batch is sampled, before grading
    "update",        # after the first backward of a step, before the optimizer step
    "metrics",       # halfway through writing a metrics line (a torn line is left behind)
    "checkpoint",    # inside a checkpoint write: files on disk, COMPLETE not yet written
    "swap",          # between the two renames that swap a new checkpoint in
    "adapter",       # inside the final adapter save, before its swap
)
_hits: dict[str, int] = {}


def armed(name: str) -> bool:
    """Whether THRLAB_FAILPOINT names this point (for code that must prepare the fault)."""
    return os.environ.get("THRLAB_FAILPOINT", "").partition("@")[0] == name


def failpoint(name: str) -> None:
    """SIGKILL this process if THRLAB_FAILPOINT names this point and its hit count is reached."""
    if not armed(name):
        return
    nth = os.environ["THRLAB_FAILPOINT"].partition("@")[2]
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
