"""Slurm HealthCheckProgram: the non-invasive suite; drains like the prolog, and on a pass clears
gpuhc's MONITOR comment and resumes a gpuhc drain on enough evidence."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from .. import policy
from ..backends.slurm import Slurm
from ..model import Report, Severity
from ..resume import healthy_again
from .pipeline import NodeContext


class HealthCheck(NodeContext):
    name = "healthcheck"

    def decide(self, cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm], deadline: float,
               owns: Optional[Callable[[Any], bool]]) -> policy.Action:
        if report.overall is Severity.PASS:
            return healthy_again(cfg, report, slurm, deadline)
        return super().decide(cfg, report, slurm, deadline, owns)


CONTEXT = HealthCheck()
