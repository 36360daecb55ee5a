"""Runs the checks of a suite: per-check timeouts inside one total budget; a check that
times out or raises becomes a finding naming it, and the run goes on.

Each check's gather step runs in a daemon thread the runner waits on for at most
the check's timeout (or what is left of the budget): a GPU call stuck in the
kernel cannot be interrupted, but it cannot hold the run either. When the time
runs out inside a GPU call, the GPU library is marked hung (REBOOT) and later GPU
checks are skipped instead of queueing behind it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import checks as catalogue
from . import config, localstate, profiles
from .backends.gpu import GpuError
from .bounded import Overtime, call_within
from .checks.base import BOOTS, Context, gpu_error_finding, state_file
from .errors import ConfigError
from .model import Finding, GpuRef, Report, Severity


def suite_checks(cfg: dict, suite: str) -> List[str]:
    suites = cfg["suites"]
    if suite not in suites:
        raise ConfigError("unknown suite %r (defined: %s)" % (suite, ", ".join(sorted(suites))))
    return validate_names(suites[suite], "suites.%s" % suite)


def validate_names(names: Sequence[str], where: str) -> List[str]:
    known = catalogue.names()
    for n, name in enumerate(names):
        if name not in known:
            raise ConfigError("%s[%d]: unknown check %r (known: %s)" % (where, n, name, ", ".join(known)))
    return list(names)


def hang_finding(ctx: Context, name: str, timeout: float) -> Finding:
    """What a call of check ``name`` that ran out of time means: a REBOOT finding naming the GPU
    call it was stuck in (the GPU library is then marked hung), else an ERROR."""
    hung = ctx.gpu.mark_hung()
    if hung is not None:
        call, gpu, _ = hung
        ref = GpuRef(gpu) if gpu is not None else None
        inv = ctx.inventory
        if inv is not None and gpu is not None:
            ref = next((r for r in inv.gpus if r.index == gpu), ref)
        return Finding(name, Severity.REBOOT, "GPU library call %s%s did not return within %.3gs"
                       % (call, "" if gpu is None else " on GPU %d" % gpu, timeout), gpu=ref,
                       remediation="drain and reboot the node: the GPU or its driver is hung")
    return Finding(name, Severity.ERROR, "check did not finish within %.3gs" % timeout)


class Runner:
    def __init__(self, ctx: Context, detect: Callable[[Context], profiles.Detection]):
        self.ctx = ctx
        self.detect = detect
        self.detection: Optional[profiles.Detection] = None
        self.new_state: dict = {}

    def run_check(self, name: str, deadline: float) -> Tuple[List[Finding], Any]:
        module = catalogue.load(name)
        meta = module.META
        if self.ctx.context not in meta.contexts:
            return [Finding(name, Severity.SKIP, "not run in a %s run (runs in: %s)"
                            % (self.ctx.context, ", ".join(meta.contexts)))], None
        if meta.needs_gpu:
            why = self.ctx.gpu_unavailable()
            if why is not None:
                return [Finding(name, Severity.SKIP, "not run: %s" % why)], None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return [Finding(name, Severity.ERROR, "not run: the run's time budget was used up")], None
        timeout = min(config.check_timeout(self.ctx.config, name), remaining)
        try:
            data = call_within(lambda: module.gather(self.ctx), timeout, "gpuhc-check")
        except Overtime:
            return [hang_finding(self.ctx, name, timeout)], None
        except GpuError as err:
            return [gpu_error_finding(name, err, profile=self.ctx.profile)], None
        except OSError as exc:          # a file or device the check reads: say which and why, no errno dump
            where = ": %s" % exc.filename if exc.filename else ""
            return [Finding(name, Severity.ERROR, "cannot read%s: %s" % (where, exc.strerror or exc))], None
        except Exception as exc:
            return [Finding(name, Severity.ERROR, "check failed while gathering: %s: %s" % (type(exc).__name__, exc))], None
        if isinstance(data, dict) and "_state" in data:
            self.new_state[name] = data["_state"]
        return self.evaluate(name, module, data), data

    def evaluate(self, name: str, module: Any, data: Any) -> List[Finding]:
        try:
            findings = list(module.evaluate(data, self.ctx.profile, self.ctx.config))
        except Exception as exc:
            return [Finding(name, Severity.ERROR, "check failed while evaluating: %s: %s" % (type(exc).__name__, exc))]
        return findings or [Finding(name, Severity.PASS, "ok")]

    def run(self, names: Sequence[str], budget: float, suite: Optional[str] = None) -> Report:
        started_wall = time.time()
        self.load_state()
        deadline = time.monotonic() + budget
        findings: List[Finding] = []
        # The inventory (nvml) runs first, always: GPU checks start from it, the xid check maps
        # bus ids with it, and profile detection may need the GPU model and count; its findings
        # are evaluated once the profile is known.
        names = [n for n in names if n != "nvml"]
        nvml_findings, first_data = self._gather_inventory(deadline)
        self.detection = self.detect(self.ctx)
        self.ctx.profile = self.detection.profile
        if first_data is not None:
            nvml_findings = self.evaluate("nvml", catalogue.load("nvml"), first_data)
        findings.extend(nvml_findings)
        for name in names:
            out, _ = self.run_check(name, deadline)
            findings.extend(out)
        self._save_state()
        return Report(node=self.ctx.node, context=self.ctx.context, profile=self.ctx.profile.name,
                      started=started_wall, ended=time.time(), findings=findings, job_id=self.ctx.job_id,
                      boot_id=self.ctx.boot_id, suite=suite, gpus=self._gpus())

    def _gather_inventory(self, deadline: float) -> Tuple[List[Finding], Any]:
        module = catalogue.load("nvml")
        timeout = min(config.check_timeout(self.ctx.config, "nvml"), max(deadline - time.monotonic(), 0))
        try:
            return [], call_within(lambda: module.gather(self.ctx), timeout, "gpuhc-check")
        except Overtime:
            return [hang_finding(self.ctx, "nvml", timeout)], None
        except Exception as exc:
            return [Finding("nvml", Severity.ERROR, "inventory failed: %s: %s" % (type(exc).__name__, exc))], None

    def load_state(self) -> None:
        self.ctx.previous = localstate.read(self.ctx.config["state_dir"], state_file(self.ctx.node)) or {}
        self.ctx.boot_id = self._boot_id()

    def _save_state(self) -> None:
        """This run's check states written over the file as it is now (another gpuhc may have
        written since this run read it); a check with a ``keep(new, current)`` function keeps
        what others changed meanwhile (an operator's marks on Xid events)."""
        if not self.new_state:
            return

        def change(current: Any) -> dict:
            merged = dict(current) if isinstance(current, dict) else dict(self.ctx.previous)
            boots = merged.get(BOOTS)
            boots = dict(boots) if isinstance(boots, dict) else {}
            for name, state in self.new_state.items():
                keep = getattr(catalogue.load(name), "keep", None)
                merged[name] = keep(state, merged.get(name)) if keep is not None else state
                boots[name] = self.ctx.boot_id
            merged[BOOTS] = boots
            return merged

        localstate.update(self.ctx.config["state_dir"], state_file(self.ctx.node), change)

    def _boot_id(self) -> Optional[str]:
        try:
            return self.ctx.host.boot_id()
        except Exception:
            return None

    def _gpus(self) -> List[dict]:
        inv = self.ctx.inventory
        if inv is None:
            return []
        out = []
        for ref in inv.gpus:
            d = ref.to_dict()
            d["name"] = inv.names.get(ref.index)
            d["serial"] = inv.serials.get(ref.index)
            out.append(d)
        return out
