"""`gpuhc check`: an operator's run on this node. The same pipeline without Slurm: it never drains;
the report is printed and recorded, and the exit code says what was found."""
from __future__ import annotations

from typing import Any, Dict, List

from .. import policy
from ..model import Report
from .pipeline import NodeContext, Request


class Check(NodeContext):
    acts = False
    to_syslog = False

    def __init__(self, name: str = "check") -> None:
        self.name = name        # `gpuhc check --context NAME` (hidden) runs as another context would

    def decide(self, cfg, report, slurm, deadline, owns) -> policy.Action:
        return policy.Action(policy.NONE, why="")

    def record(self, cfg: Dict[str, Any], report: Report, req: Request, deadline: float) -> List[str]:
        if req.simulate and not req.node:
            # a scenario tried by hand is not this node's health (nor a node of the fleet's)
            return ["note: simulated run not recorded (give --node NAME to record it as that node)"]
        from ..store import record_safely

        warning = record_safely(cfg, report)
        return ["warning: %s" % warning] if warning else []

    def exit_code(self, report: Report, action: policy.Action) -> int:
        return report.exit_code


CONTEXT = Check()
