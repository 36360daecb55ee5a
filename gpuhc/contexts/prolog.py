"""Slurm Prolog: the quick suite before the job; an unhealthy node is drained with gpuhc's reason
and the prolog exits 1, so Slurm requeues the job and keeps that reason."""
from __future__ import annotations

from .. import policy
from ..model import Report
from .pipeline import NodeContext


class Prolog(NodeContext):
    name = "prolog"

    def exit_code(self, report: Report, action: policy.Action) -> int:
        # requeue the job only where gpuhc owns the node's state: drained now, or already by gpuhc
        if report.overall.unhealthy and action.kind in (policy.DRAIN, policy.HELD):
            return 1
        return 0


CONTEXT = Prolog()
