"""dcgm: NVIDIA's active diagnostic, `dcgmi diag -r LEVEL -j`, turned into per-GPU findings.

It loads the GPUs for seconds (level 1) to hours (level 4), so it belongs to the intensive and
dcgm suites, never to the prolog. Levels 3 and 4 run only where the node is exclusive (quarantine,
sweep, or `dcgm.exclusive: true`) and no GPU is in MIG mode. A failed test is judged by the
severity DCGM attaches to each error (dcgmErrorSeverity_t): ISOLATE -> ISOLATE, RESET and
TRIAGE -> RESET, MONITOR and CONFIG -> MONITOR; a failure without one (DCGM 2.x) -> RESET;
`dcgm.overrides` sets the tier of an error id. A diagnostic that cannot run (dcgmi missing where
required, no host engine, a timeout, output that is not the diagnostic's JSON) is ERROR: a
checker failure, never a node fault.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import dcgm as dcgm_diag
from ..model import Finding, GpuRef, Severity
from .base import Context, per_gpu
from .meta import CheckMeta

NAME = "dcgm"
META = CheckMeta(
    description="NVIDIA DCGM active diagnostic (dcgmi diag), levels 3-4 only where the node is exclusive",
    suites=("intensive", "dcgm", "sweep", "quarantine"),
)
EXCLUSIVE_CONTEXTS = ("quarantine", "sweep")
DEFAULT_FAIL = Severity.RESET          # a failure that carries no DCGM severity
BY_DCGM_SEVERITY = {1: Severity.MONITOR, 2: Severity.ISOLATE, 3: Severity.RESET, 4: Severity.RESET,
                    5: Severity.MONITOR, 6: Severity.RESET}
REMEDIATION = {
    Severity.ISOLATE: "DCGM says isolate this GPU: keep it drained, collect nvidia-bug-report.sh and the "
                      "diag log (/var/log/nvidia-dcgm), and have the GPU replaced",
    Severity.RESET: "drain, reset the GPU (nvidia-smi -r) or reboot, then rerun dcgmi diag; replace it if it fails again",
    Severity.MONITOR: "recorded; rerun dcgmi diag if it recurs",
}


def level_for(conf: Dict[str, Any], context: str) -> int:
    return int(conf.get("levels", {}).get(context, conf["level"]))


def refusal(level: int, context: str, exclusive: bool, mig_gpus: Sequence[int]) -> Optional[str]:
    """Why a diag of this level must not run here, or None."""
    if level < 3:
        return None
    if not exclusive and context not in EXCLUSIVE_CONTEXTS:
        return ("level %d needs the node exclusive and this is a %s run (levels 3/4 run only where "
                "dcgm.exclusive is set: a node no job shares)" % (level, context))
    if mig_gpus:
        return "level %d cannot run with MIG enabled (GPU %s)" % (level, ",".join(map(str, mig_gpus)))
    return None


def _command(res) -> Dict[str, Any]:
    return {"rc": res.rc, "stdout": res.stdout, "stderr": res.stderr, "timed_out": res.timed_out}


def gather(ctx: Context) -> Dict[str, Any]:
    conf = ctx.config["dcgm"]
    level = level_for(conf, ctx.context)
    data: Dict[str, Any] = {"level": level, "gpus": ctx.healthy_gpus(), "required": conf["required"],
                            "timeout": float(conf["timeout"])}
    if level not in (1, 2, 3, 4):
        return data
    mig: List[int] = []
    if level >= 3:
        mig = [e.gpu.index for e in per_gpu(ctx, ctx.gpu.modes) if e.error is None and (e.value or {}).get("mig_current")]
    data["refused"] = refusal(level, ctx.context, conf["exclusive"], mig)
    if data["refused"]:
        return data
    timeout = ctx.command_timeout()
    probe = ctx.host.run(["dcgmi", "discovery", "-l"], timeout=timeout)
    if probe.rc != 127 and not probe.ok and conf["start_hostengine"]:
        data["hostengine"] = _command(ctx.host.run(["nv-hostengine"], timeout=timeout))
        probe = ctx.host.run(["dcgmi", "discovery", "-l"], timeout=timeout)
    data["discovery"] = _command(probe)
    if probe.ok:
        data["diag"] = _command(ctx.host.run(["dcgmi", "diag", "-r", str(level), "-j"], timeout=data["timeout"]))
    return data


def _first_line(*texts: Optional[str]) -> str:
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()[:200]
    return ""


def _error(message: str, remediation: str = "") -> List[Finding]:
    return [Finding(NAME, Severity.ERROR, message, device="dcgm", remediation=remediation)]


def _not_run(data: Dict[str, Any]) -> Optional[List[Finding]]:
    """The findings of a diagnostic that did not run, or None when it did."""
    level = data["level"]
    if level not in (1, 2, 3, 4):
        return _error("dcgm level %r is not a DCGM run level (1-4)" % level, "set dcgm.level to 1, 2, 3 or 4")
    if data.get("refused"):
        hint = ("turn MIG off on the drained node (nvidia-smi -mig 0, then a GPU reset), or lower dcgm.level"
                if "MIG" in data["refused"] else
                "run it in a job that has the node to itself (sbatch --exclusive, or in a MAINT reservation) "
                "with a config that sets dcgm.exclusive: true, or lower dcgm.level")
        return _error("dcgmi diag -r %d refused: %s" % (level, data["refused"]), hint)
    probe = data.get("discovery") or {}
    if probe.get("rc") == 127:
        if data.get("required"):
            return _error("dcgmi not found, and dcgm.required is set", "install datacenter-gpu-manager")
        return [Finding(NAME, Severity.SKIP, "DCGM not installed (dcgmi not found)")]
    if probe.get("rc") != 0 or probe.get("timed_out"):
        started = data.get("hostengine")
        tried = "" if started is None else "; nv-hostengine start: %s" % (
            "rc %d" % started["rc"] if not started.get("timed_out") else "timed out")
        return _error("cannot reach the DCGM host engine: %s%s" % (_first_line(probe.get("stdout"), probe.get("stderr"))
                                                                   or "rc %s" % probe.get("rc"), tried),
                      "systemctl start nvidia-dcgm (or nv-hostengine); check /var/log/nv-hostengine.log")
    diag = data.get("diag") or {}
    if diag.get("timed_out"):
        return _error("dcgmi diag -r %d did not finish within %gs" % (level, data["timeout"]),
                      "raise dcgm.timeout, or look for a hung GPU (dmesg, nvidia-smi)")
    if diag.get("rc") == 127:
        return _error("dcgmi diag could not be started: %s" % _first_line(diag.get("stderr")))
    return None


def _severity(warnings: List[dcgm_diag.DiagWarning], overrides: Dict[str, str]) -> Severity:
    found = []
    for w in warnings:
        override = overrides.get(str(w.error_id)) if w.error_id is not None else None
        if override:
            found.append(Severity.parse(override))
        elif w.severity in BY_DCGM_SEVERITY:
            found.append(BY_DCGM_SEVERITY[w.severity])
    return max(found, key=lambda s: s.rank) if found else DEFAULT_FAIL


def _problem(result: dcgm_diag.DiagResult, overrides: Dict[str, str], level: int,
             where: Dict[str, Any]) -> Optional[Finding]:
    if result.status == "FAIL":
        severity = _severity(result.warnings, overrides)
    elif result.status in ("PASS", "SKIP"):
        return None
    else:
        severity = Severity.MONITOR          # Warn, or a status this parser does not know
    first = next((w for w in result.warnings if w.text), None)
    detail = first.text if first else "; ".join(result.info) or "no detail given"
    metrics: Dict[str, float] = {"level": level}
    if first is not None and first.error_id is not None:
        metrics["error_id"] = first.error_id
    if first is not None and first.severity is not None:
        metrics["dcgm_severity"] = first.severity
    verb = "failed" if result.status == "FAIL" else result.status.lower()
    tag = ""
    if first is not None and first.error_id is not None:
        named = (", %s" % dcgm_diag.SEVERITY_NAMES.get(first.severity, first.severity)
                 if first.severity is not None else "")
        tag = " [DCGM error %d%s]" % (first.error_id, named)
    return Finding(NAME, severity, "%s %s: %s%s" % (result.test, verb, detail[:300], tag), metrics=metrics,
                   remediation=REMEDIATION[severity], **where)


def _targets(result: dcgm_diag.DiagResult, refs: Dict[int, GpuRef]) -> List[Dict[str, Any]]:
    """Where a result's findings go: each GPU it names, a non-GPU entity, or the node."""
    if result.gpus:
        return [{"gpu": refs.get(g, GpuRef(g))} for g in result.gpus]
    return [{"device": result.entity or "dcgm"}]


def _key(where: Dict[str, Any]) -> Tuple[int, Any]:
    gpu = where.get("gpu")
    return (0, gpu.index) if gpu is not None else (1, where.get("device"))


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    not_run = _not_run(data)
    if not_run is not None:
        return not_run
    level, diag_cmd = data["level"], data["diag"]
    try:
        diag = dcgm_diag.parse(diag_cmd.get("stdout") or "")
    except dcgm_diag.DiagParseError as exc:
        return _error("dcgmi diag -r %d gave no diagnostic (rc %s, %s): %s" % (
            level, diag_cmd.get("rc"), exc, _first_line(diag_cmd.get("stdout"), diag_cmd.get("stderr")) or "no output"))
    if diag.runtime_error:
        return _error("DCGM diagnostic could not run: %s" % diag.runtime_error[:300],
                      "check nv-hostengine and /var/log/nvidia-dcgm/nvvs.log")
    if not diag.results:
        return _error("dcgmi diag -r %d reported no test results" % level)
    overrides = {str(k): v for k, v in (config.get("dcgm", {}).get("overrides") or {}).items()}
    refs = {ref.index: ref for ref in data.get("gpus") or []}
    problems: List[Finding] = []
    tally: Dict[Tuple[int, Any], Dict[str, Any]] = {}
    for result in diag.results:
        for where in _targets(result, refs):
            entry = tally.setdefault(_key(where), {"where": where, "PASS": 0, "SKIP": 0, "other": 0})
            entry[result.status if result.status in ("PASS", "SKIP") else "other"] += 1
            found = _problem(result, overrides, level, where)
            if found is not None:
                problems.append(found)
    version = "DCGM %s" % (diag.version or diag.shape)
    out = list(problems)
    for key in sorted(tally):
        entry = tally[key]
        if entry["other"]:
            continue
        if entry["PASS"] == 0:
            out.append(Finding(NAME, Severity.SKIP, "%s level %d: all %d tests skipped" % (version, level, entry["SKIP"]),
                               **entry["where"]))
            continue
        skipped = " (%d skipped)" % entry["SKIP"] if entry["SKIP"] else ""
        out.append(Finding(NAME, Severity.PASS, "%s level %d: %d tests passed%s" % (version, level, entry["PASS"], skipped),
                           metrics={"level": level, "tests_passed": entry["PASS"]}, **entry["where"]))
    return out
