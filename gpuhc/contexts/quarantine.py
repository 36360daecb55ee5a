"""The quarantine job's step on the node (`gpuhc quarantine --run`, from sbatch/quarantine.sbatch):
the quarantine suite (the lightweight checks, DCGM at level 3 where installed, the deep checks),
then a verdict with its evidence, recorded with the report, and acted on under gpuhc's ownership.

First act: the node is drained again ("quarantine job N running"), so whatever ends the job (a
crash, scancel, the time limit) it stays out of service unless a verdict returns it. Verdicts:

- RETURN_TO_SERVICE: no finding at RESET or worse and no checker error. The node is resumed (it
  is plain IDLE once the reservation goes) if the drain that brought it was at RESET or below, or
  at REBOOT and the node booted since; a node drained at ISOLATE is never returned automatically.
- RESET: with quarantine.auto_reset the GPUs are reset and the failing checks run once more: a
  pass returns the node as above, a failure is REBOOT.
- REBOOT: drained ``gpuhc: REBOOT quarantine <check>: <detail>``; with quarantine.auto_reboot,
  ``scontrol reboot ASAP nextstate=DOWN``; the resume rules (passes after a new boot id) follow.
- REPLACE (an ISOLATE finding): drained ``gpuhc: ISOLATE quarantine ... (replace)``; never resumed.
- INCONCLUSIVE: a checker could not run (no torch, no DCGM where required, a crash): drained again
  with the reason it came with plus ``quarantine inconclusive``; never a hardware verdict.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from .. import policy
from ..acting import carry_out, log
from ..backends.slurm import Slurm, SlurmError
from ..model import Report, Severity
from ..session import node_name
from ..text import clean
from .pipeline import NodeContext, Request

VERDICTS = ("RETURN_TO_SERVICE", "RESET", "REBOOT", "REPLACE", "INCONCLUSIVE")
BY_TIER = {Severity.RESET: "RESET", Severity.REBOOT: "REBOOT", Severity.ISOLATE: "REPLACE"}
MARKS = "quarantine-jobs"           # state_dir/MARKS/JOBID: the epilog starts the finisher for these
REASON_MAX = 200


def verdict(report: Report) -> str:
    """The verdict of a quarantine report: a hardware finding decides; else a checker error is
    INCONCLUSIVE; else RETURN_TO_SERVICE."""
    worst = max((f.severity for f in report.findings if f.severity.is_tier), key=lambda s: s.rank,
                default=Severity.PASS)
    if worst.rank >= Severity.RESET.rank:
        return BY_TIER[worst]
    if any(f.severity is Severity.ERROR for f in report.findings):
        return "INCONCLUSIVE"
    return "RETURN_TO_SERVICE"


def reason(report: Report, tier: Severity, suffix: str = "") -> str:
    """``gpuhc: TIER quarantine <check>: <detail>`` from the report's worst finding of ``tier``."""
    base = policy.drain_reason(report)
    detail = base[len(policy.PREFIX):].strip()
    words = detail.split(None, 1)
    rest = words[1] if len(words) > 1 else ""
    text = "%s %s quarantine %s%s" % (policy.PREFIX, tier.value, rest, suffix)
    return clean(text if len(text) <= REASON_MAX else text[:REASON_MAX - len(suffix) - 3] + "..." + suffix)


def mark_job(state_dir: str, job_id: str) -> None:
    """Tell this node's epilog that job ``job_id`` is a quarantine: it starts the finisher."""
    path = os.path.join(state_dir, MARKS)
    os.makedirs(path, mode=0o700, exist_ok=True)
    with open(os.path.join(path, str(int(job_id))), "w") as fh:
        fh.write("quarantine\n")


def take_mark(state_dir: str, job_id: Optional[str]) -> bool:
    """Whether job ``job_id`` was a quarantine on this node (the mark is removed)."""
    if not job_id or not str(job_id).isdigit():
        return False
    path = os.path.join(state_dir, MARKS, str(int(job_id)))
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


class Quarantine(NodeContext):
    name = "quarantine"

    def suite(self, cfg: Dict[str, Any], req: Request, slurm: Optional[Slurm]) -> str:
        job = req.env.get("SLURM_JOB_ID")
        if slurm is not None and job:
            was = req.env.get("GPUHC_QUARANTINE_WAS") or ""
            try:
                from ..controller.quarantine import running_reason  # not on every epilog's path

                slurm.drain(node_name(req.node), running_reason(job, was))
            except SlurmError as exc:
                log("warning: could not drain for the quarantine's duration: %s" % exc)
            try:
                mark_job(cfg["state_dir"], job)
            except (OSError, ValueError) as exc:
                log("warning: quarantine mark not written (run gpuhc quarantine --reconcile after the job): %s" % exc)
        return req.suite or cfg["context_suites"].get("quarantine", "quarantine")

    def decide(self, cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm], deadline: float,
               owns: Optional[Callable[[Any], bool]]) -> policy.Action:
        from ..model import Finding

        was = os.environ.get("GPUHC_QUARANTINE_WAS", "")
        report.verdict = verdict(report)
        if was:     # the reason that brought the node here, kept with the verdict (an operator's, if taken over)
            report.findings.append(Finding("quarantine", Severity.PASS, "came to quarantine with: %s" % was))
        if report.verdict == "RESET" and cfg["quarantine"]["auto_reset"]:
            report.verdict = self._reset_and_retry(cfg, report)
        action = _action(cfg, report, was)
        if slurm is None:
            return policy.Action(policy.SKIP, action.reason, "no Slurm to act through")
        done = carry_out(slurm, report.node, action)
        if report.verdict == "REBOOT" and cfg["quarantine"]["auto_reboot"] and done.kind == policy.DRAIN:
            try:
                slurm.reboot([report.node], asap=True, nextstate="DOWN", reason=action.reason)
                done = policy.Action(done.kind, done.reason, done.why + "; reboot requested")
            except SlurmError as exc:
                log("warning: reboot not requested: %s" % exc)
        return done

    def _reset_and_retry(self, cfg: Dict[str, Any], report: Report) -> str:
        """Reset the GPUs of the RESET findings (every GPU for a node-wide one), run the failing
        checks once more: RETURN_TO_SERVICE when they pass, else REBOOT. The evidence is added to
        the report's findings."""
        from .. import reset as gpu_reset
        from .. import session
        from ..model import Finding

        failing = [f for f in report.findings if f.severity is Severity.RESET]
        gpus = sorted({str(f.gpu.index) for f in failing if f.gpu is not None})
        every = any(f.gpu is None for f in failing)
        try:
            rows = gpu_reset.reset(cfg, node=report.node, wanted=[] if every else gpus, every=every, force=True)
        except Exception as exc:        # a reset that cannot run is no pass
            report.findings.append(Finding("quarantine", Severity.REBOOT, "GPU reset failed: %s" % exc))
            return "REBOOT"
        if not rows or any(r.result != "reset" for r in rows):
            detail = "; ".join("GPU %s %s: %s" % (r.gpu, r.result, r.detail) for r in rows) or "no GPU reset"
            report.findings.append(Finding("quarantine", Severity.REBOOT, "GPU reset did not succeed: %s" % detail,
                                           remediation="drain and reboot the node"))
            return "REBOOT"
        checks = sorted({f.check for f in failing})
        again, _, _ = session.run(cfg, "quarantine", checks=checks, node=report.node)
        if again.overall.rank >= Severity.RESET.rank:
            report.findings.append(Finding("quarantine", Severity.REBOOT, "still failing after a GPU reset: %s"
                                           % policy.drain_reason(again)[len(policy.PREFIX):].strip(),
                                           remediation="drain and reboot the node"))
            return "REBOOT"
        report.findings.append(Finding("quarantine", Severity.PASS, "passed %s after resetting GPU %s"
                                       % (", ".join(checks), ",".join(r.gpu for r in rows))))
        return "RETURN_TO_SERVICE"

    def exit_code(self, report: Report, action: policy.Action) -> int:
        return 0 if report.verdict == "RETURN_TO_SERVICE" else (3 if report.verdict == "INCONCLUSIVE" else 1)


def _action(cfg: Dict[str, Any], report: Report, was: str) -> policy.Action:
    """What the verdict does to the node (the node is gpuhc's: drained by the job's first act)."""
    v = report.verdict
    was_tier = policy.reason_severity(was)
    if v == "RETURN_TO_SERVICE":
        if was_tier is Severity.ISOLATE:
            return policy.Action(policy.DRAIN, clean(was + " (quarantine passed; ISOLATE: gpuhc resume --force)",
                                                     REASON_MAX), "ISOLATE is never returned automatically")
        if was_tier is Severity.REBOOT and not _booted_since_drain(cfg, report):
            return policy.Action(policy.DRAIN, clean(was + " (quarantine passed; reboot first)", REASON_MAX),
                                 "drained for REBOOT and not rebooted since")
        return policy.Action(policy.RESUME, why="quarantine passed: returned to service")
    if v == "REPLACE":
        return policy.Action(policy.DRAIN, reason(report, Severity.ISOLATE, " (replace)"), "verdict REPLACE")
    if v in ("REBOOT", "RESET"):
        tier = Severity.REBOOT if v == "REBOOT" else Severity.RESET
        return policy.Action(policy.DRAIN, reason(report, tier), "verdict %s" % v)
    errors = ", ".join(sorted({f.check for f in report.findings if f.severity is Severity.ERROR}))
    base = was if was.startswith(policy.PREFIX) and "quarantine" not in was.split(":", 2)[1] else policy.PREFIX
    return policy.Action(policy.DRAIN, clean("%s quarantine inconclusive: %s could not run" % (base, errors),
                                             REASON_MAX), "verdict INCONCLUSIVE")


def _booted_since_drain(cfg: Dict[str, Any], report: Report) -> bool:
    """Whether the node booted since the gpuhc drain that sent it here (the store's history)."""
    from ..resume import open_store

    try:
        history = open_store(cfg).history(report.node)
    except Exception:
        return False
    drained_by = next((r for r in history if r.action == policy.DRAIN and r.context != "quarantine"), None)
    return bool(drained_by and drained_by.boot_id and report.boot_id and drained_by.boot_id != report.boot_id)


CONTEXT = Quarantine()


def finisher(cfg: Dict[str, Any], node: str, job_id: str) -> None:
    """From the quarantine job's epilog: start `gpuhc quarantine --finish NODE --job JOB` detached (its
    own session, no stdio), which waits for the job to leave Slurm and deletes the reservation. The
    epilog does not wait for it."""
    import subprocess
    import sys

    env = dict(os.environ)
    if cfg.get("_path"):
        env["GPUHC_CONFIG"] = cfg["_path"]
    try:
        subprocess.Popen([sys.executable, "-m", "gpuhc", "quarantine", "--finish", node, "--job", str(job_id)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env, close_fds=True)
    except OSError as exc:
        log("warning: quarantine finisher not started (gpuhc quarantine --reconcile repairs it): %s" % exc)


def after_epilog(cfg: Dict[str, Any], node: str, env: Dict[str, str]) -> List[str]:
    """The epilog of a quarantine job starts its finisher; [] or a note."""
    job = env.get("SLURM_JOB_ID")
    if take_mark(cfg["state_dir"], job):
        finisher(cfg, node, str(job))
        return ["quarantine job %s ended: finisher started" % job]
    return []
