"""`gpuhc quarantine`'s modes, each one call: start (controller), --list, --cancel, --reconcile,
--finish (controller side: controller/quarantine.py) and --run (inside the job: contexts/quarantine.py).
Returns (text, exit code) for the command line to print."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import GpuhcError
from ..model import EXIT_UNKNOWN

ROWS = ["NODE", "RESULT", "RESERVATION", "JOB", "WHY"]


def _slurm(cfg: Dict[str, Any]) -> Any:
    from ..acting import slurm_backend

    slurm = slurm_backend(cfg, time.monotonic() + float(cfg["quarantine"]["timeout"]))
    if slurm is None:
        raise GpuhcError("quarantine needs Slurm here (slurm.backend: none, or no slurm.conf on this host)")
    return slurm


def _table(rows: List[Dict[str, Any]], as_json: bool) -> str:
    from ..output import table

    if as_json:
        return json.dumps(rows, indent=2)
    return table([[r.get("node", ""), r.get("result", ""), r.get("reservation", ""), r.get("job_id", ""),
                   r.get("why", "")] for r in rows], ROWS)


def main(cfg: Dict[str, Any], nodelist: Optional[str], force: bool, dry_run: bool, show_list: bool, cancel: bool,
         reconcile: bool, run_here: bool, finish_node: Optional[str], job: Optional[str], node: Optional[str],
         simulate: Optional[str], as_json: bool) -> Tuple[str, int]:
    from ..backends.slurm import SlurmError
    from ..controller import quarantine as quarantine_control
    from ..hostlist import expand

    modes = [m for m, on in (("--list", show_list), ("--cancel", cancel), ("--reconcile", reconcile),
                             ("--run", run_here), ("--finish", bool(finish_node))) if on]
    if len(modes) > 1:
        raise GpuhcError("%s: give one" % " and ".join(modes))
    if run_here:
        return _run_here(cfg, node, simulate, as_json)
    try:
        slurm = _slurm(cfg)
        if show_list:
            entries = quarantine_control.listing(cfg, slurm)
            if as_json:
                return json.dumps([e.to_dict() for e in entries], indent=2), 0
            from ..output import table

            return (table([[e.node, e.reservation, e.job_id or "-", e.job_state or "-", _when(e.started), e.reason]
                           for e in entries], ["NODE", "RESERVATION", "JOB", "STATE", "STARTED", "REASON"])
                    if entries else "no node in quarantine"), 0
        if reconcile:
            rows = quarantine_control.reconcile(cfg, slurm)
            return (_table(rows, as_json) if rows else ("[]" if as_json else "nothing to repair")), 0
        if finish_node:
            row = quarantine_control.finish(cfg, slurm, finish_node, job, wait=float(cfg["quarantine"]["finish_wait"]))
            return _table([row], as_json), 0 if row["result"] == "finished" else 1
        if not nodelist:
            raise GpuhcError("give a NODELIST (or --list, --reconcile)")
        nodes = expand(nodelist, "NODELIST")
        if cancel:
            rows = quarantine_control.cancel(cfg, slurm, nodes)
        else:
            rows = quarantine_control.start(cfg, slurm, nodes, force=force, dry_run=dry_run)
    except SlurmError as exc:
        return "gpuhc: error: Slurm: %s" % exc, EXIT_UNKNOWN
    ok = {"started", "planned", "cancelled", "skipped"}
    return _table(rows, as_json), 0 if all(r["result"] in ok for r in rows) else 1


def _when(ts: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _run_here(cfg: Dict[str, Any], node: Optional[str], simulate: Optional[str], as_json: bool) -> Tuple[str, int]:
    from ..contexts import bench
    from ..contexts import quarantine as quarantine_job
    from ..contexts.pipeline import run as run_pipeline
    from ..output import report_text

    if cfg["slurm"]["backend"] == "none":
        raise GpuhcError("quarantine --run acts through Slurm (slurm.backend: none)")
    outcome = run_pipeline(cfg, quarantine_job.CONTEXT, node=node, simulate=simulate,
                           progress=bench.progress_to_stderr)
    report = outcome.report
    if as_json:
        return json.dumps(dict(report.to_dict(), action_taken=outcome.action.to_dict()), indent=2), outcome.exit_code
    lines = [report_text(report, outcome.detection), "",
             "verdict: %s (%s%s)" % (report.verdict, outcome.action.kind,
                                     ": " + outcome.action.why if outcome.action.why else "")]
    return "\n".join(lines), outcome.exit_code

