"""The sweep job's step on its node (sbatch/sweep.sbatch runs `gpuhc sweep --run-here`): the
``sweep`` suite (the lightweight checks, DCGM at level 2 where installed, a short gpu_stress),
recorded with context ``sweep``, acting as the healthcheck context does: drain on RESET or worse
with gpuhc's reason, MONITOR in the node comment, a pass clears that comment and may resume a
gpuhc drain on enough evidence, ownership rules unchanged. Unlike the healthcheck it exits like
`gpuhc check` (1 unhealthy, 3 could not determine), so the job's state says what it found."""
from __future__ import annotations

import sys

from .. import policy
from ..model import Report
from .healthcheck import HealthCheck


class Sweep(HealthCheck):
    name = "sweep"

    def exit_code(self, report: Report, action: policy.Action) -> int:
        return report.exit_code


CONTEXT = Sweep()


def progress_to_stderr(line: str) -> None:
    """A progress line of the load (gpu_stress, dcgm): the job's output, stderr."""
    print("gpuhc sweep: %s" % line, file=sys.stderr, flush=True)
