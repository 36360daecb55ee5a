"""What every check shares: the run context, per-GPU gathering, and GPU errors mapped to findings.

A check module defines::

    NAME = "ecc"
    META = CheckMeta(...)             # checks/meta.py: suites, contexts, exclusive, timeout, thresholds
    def gather(ctx) -> data           # backend calls only; bounded by the runner's timeout
    def evaluate(data, profile, config) -> [Finding]   # pure; tested on fixtures

``gather`` for per-GPU data uses :func:`per_gpu`, whose entries ``evaluate``
turns into findings with :func:`gpu_findings`, so a lost GPU or an NVML
error is reported once, the same way, by every check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

from ..backends.gpu import (
    DRIVER_NOT_LOADED,
    GPU_IS_LOST,
    INSUFFICIENT_POWER,
    IRQ_ISSUE,
    LIBRARY_NOT_FOUND,
    NOT_SUPPORTED,
    RESET_REQUIRED,
    TIMEOUT,
    UNINITIALIZED,
    GpuBackend,
    GpuError,
)
from ..backends.host import Host
from ..model import Finding, GpuRef, Severity
from ..profiles import Profile


@dataclass
class Inventory:
    """What NVML lists, gathered once per run by the ``nvml`` check."""
    driver_version: Optional[str] = None
    gpus: List[GpuRef] = field(default_factory=list)
    names: Dict[int, str] = field(default_factory=dict)
    serials: Dict[int, Optional[str]] = field(default_factory=dict)
    minors: Dict[int, Optional[int]] = field(default_factory=dict)   # /dev/nvidiaN numbers (Slurm's GPU ids)
    errors: Dict[int, GpuError] = field(default_factory=dict)   # per-GPU identity failures
    error: Optional[GpuError] = None                             # node-wide failure

    @property
    def model(self) -> Optional[str]:
        names = [n for n in self.names.values() if n]
        return names[0] if names else None


@dataclass
class Context:
    node: str
    context: str
    gpu: GpuBackend
    host: Host
    config: Dict[str, Any]
    profile: Optional[Profile] = None
    job_id: Optional[str] = None
    inventory: Optional[Inventory] = None
    # what each check kept from the previous run on this node (counters for deltas, cursors);
    # a gather step returns its new state as data["_state"] and the runner saves them together
    previous: Dict[str, Any] = field(default_factory=dict)
    # when an operator last acknowledged this node's findings (gpuhc resume --force); asked only
    # by a check that has something to clear, since it reads shared storage
    ack_time: Callable[[], Optional[float]] = lambda: None
    # the GPUs of the job this run belongs to (SLURM_JOB_GPUS: device minor numbers); None when
    # not known (no job, no GPU gres): every GPU is then taken as the job's
    job_gpus: Optional[Set[int]] = None

    def job_owns(self, index: int) -> bool:
        """Whether the GPU at NVML index ``index`` is this run's job's (True when not known)."""
        if self.job_gpus is None:
            return True
        minor = self.inventory.minors.get(index) if self.inventory is not None else None
        return (index if minor is None else minor) in self.job_gpus

    # this boot's id (the runner sets it before the checks run); None when it cannot be read
    boot_id: Optional[str] = None
    # the deep backend (backends/deep.py: stress, bench, all-reduce under load), for the exclusive
    # checks; and where their progress lines go (stderr for gpuhc bench, sweep and quarantine)
    deep: Any = None
    progress: Callable[[str], None] = lambda line: None

    def previous_state(self, check: str) -> Dict[str, Any]:
        value = self.previous.get(check)
        return value if isinstance(value, dict) else {}

    def booted_since(self, check: str) -> bool:
        """Whether the node booted since ``check`` last saved its state: counters that start again
        with the driver (PCIe replays, NVLink errors, IB link_downed) then count from zero, not
        from the old boot's last value. False where either boot id is unknown."""
        boots = self.previous.get(BOOTS)
        was = boots.get(check) if isinstance(boots, dict) else None
        return bool(self.boot_id and was and was != self.boot_id)

    def command_timeout(self) -> float:
        return float(self.config["timeouts"]["command"])

    def gpu_unavailable(self) -> Optional[str]:
        """Why GPU checks cannot run now, or None."""
        if self.gpu.hung is not None:
            call, gpu, _ = self.gpu.hung
            return "GPU library hung in %s%s" % (call, "" if gpu is None else " on GPU %d" % gpu)
        if self.inventory is not None and self.inventory.error is not None:
            return "GPU library unavailable: %s" % self.inventory.error.code
        return None

    def healthy_gpus(self) -> List[GpuRef]:
        inv = self.inventory
        if inv is None:
            return []
        return [ref for ref in inv.gpus if ref.index not in inv.errors]


BOOTS = "_boots"      # key of the state file: check -> the boot id its state was saved in


def state_file(node: str) -> str:
    """Name of the local state file holding every check's state for a node."""
    return "checks-%s" % node


@dataclass
class Entry:
    """One GPU's answer to a gather step: a value or an error."""
    gpu: GpuRef
    value: Any = None
    error: Optional[GpuError] = None


def per_gpu(ctx: Context, fn: Callable[[int], Any]) -> List[Entry]:
    """Call ``fn(index)`` for every GPU that answered the inventory; a per-GPU error is kept
    in its entry; a node-wide one propagates (the runner reports it)."""
    out = []
    for ref in ctx.healthy_gpus():
        try:
            out.append(Entry(ref, fn(ref.index)))
        except GpuError as err:
            if err.node_wide:
                raise
            out.append(Entry(ref, error=err))
    return out


_GPU_ERROR_SEVERITY = {
    GPU_IS_LOST: (Severity.REBOOT, "GPU is lost: it fell off the bus or stopped responding",
                  "drain and reboot the node; if it recurs, reseat or replace the GPU (see Xid 79)"),
    RESET_REQUIRED: (Severity.RESET, "GPU requires a reset", "drain and reset the GPU (nvidia-smi -r) or reboot"),
    TIMEOUT: (Severity.REBOOT, "NVML call timed out", "drain and reboot the node"),
    IRQ_ISSUE: (Severity.REBOOT, "interrupt problem talking to the GPU", "drain and reboot the node"),
    INSUFFICIENT_POWER: (Severity.ISOLATE, "GPU reports insufficient power (power cable or supply)",
                         "check the GPU's power connectors and supply"),
    NOT_SUPPORTED: (Severity.SKIP, "not supported on this GPU", ""),
}


def gpu_error_finding(check: str, err: GpuError, gpu: Optional[GpuRef] = None,
                      profile: Optional[Profile] = None) -> Finding:
    """The one mapping from a GPU library error to a finding."""
    if err.node_wide:
        expects = profile.expects_gpus if profile is not None else None
        what = {LIBRARY_NOT_FOUND: "NVIDIA driver library (libnvidia-ml) not found",
                DRIVER_NOT_LOADED: "NVIDIA driver not loaded",
                UNINITIALIZED: "NVML could not be initialised"}[err.code]
        if expects is False:
            return Finding(check, Severity.SKIP, "%s; this profile expects no GPU" % what)
        if profile is None or profile.gpus is None:         # the profile does not say (expects is None)
            return Finding(check, Severity.ERROR, "%s; profile %s does not say whether GPUs are expected"
                           % (what, profile.name if profile else "?"),
                           remediation="load the NVIDIA driver, or set a profile in config.yaml")
        return Finding(check, Severity.REBOOT, "%s but profile %s expects %d GPUs" % (what, profile.name, profile.gpus),
                       remediation="drain and reboot the node; check the driver install (dmesg, nvidia-smi)")
    severity, text, hint = _GPU_ERROR_SEVERITY.get(err.code, (Severity.ERROR, "GPU library error", ""))
    detail = "%s (%s in %s%s)" % (text, err.code, err.call, ": " + err.detail if err.detail else "")
    return Finding(check, severity, detail, gpu=gpu, remediation=hint)


def gpu_findings(check: str, entries: List[Entry],
                 evaluate_one: Callable[[GpuRef, Any], List[Finding]]) -> List[Finding]:
    """Findings of every entry: its error mapped once, or ``evaluate_one(gpu, value)``."""
    out: List[Finding] = []
    for entry in entries:
        if entry.error is not None:
            out.append(gpu_error_finding(check, entry.error, entry.gpu))
        else:
            out.extend(evaluate_one(entry.gpu, entry.value))
    return out


def worst(findings: List[Finding]) -> Severity:
    return max((f.severity for f in findings if f.severity.is_tier), key=lambda s: s.rank,
               default=Severity.PASS)


def by_uuid(entries: List[Entry], fn: Callable[[Any], Any]) -> Dict[str, Any]:
    """{GPU UUID: fn(value)} of the entries that answered: the state a check keeps for deltas,
    keyed by UUID so a swapped board never yields a bogus delta."""
    return {e.gpu.uuid: fn(e.value) for e in entries if e.error is None and e.gpu.uuid}


def kept_for(previous: Dict[str, Any], gpu: GpuRef) -> Any:
    """What the previous run kept for ``gpu`` in a :func:`by_uuid` state; None for a GPU without a
    UUID (nothing is kept for one)."""
    return previous.get(gpu.uuid) if gpu.uuid else None


def delta(now: Optional[float], before: Optional[float], booted: bool = False) -> Optional[float]:
    """Growth of a counter since the previous run; None without a previous value; a counter
    that went down (reset) counts from zero, and so does one that restarts with the driver
    when the node ``booted`` since that run."""
    if booted:
        before = 0
    if now is None or before is None:
        return None
    return now - before if now >= before else now


def threshold(config: Optional[Dict[str, Any]], name: str) -> float:
    """A limit from config's ``thresholds``; the value its check declares (META) when a caller
    passes no config."""
    values = (config or {}).get("thresholds") or {}
    if name in values:
        return values[name]
    from . import default_thresholds

    return default_thresholds()[name].default


def deep_error_finding(check: str, error: Dict[str, Any], what: str) -> Finding:
    """A deep call that gave no result: a hang is the hardware's (RESET: the node's GPUs or links did
    not finish a bounded load); no torch or CUDA, or a crash of the workload, is the checker's (ERROR)."""
    from ..backends.deep import HANG, UNAVAILABLE

    code, detail = error.get("code"), error.get("detail") or ""
    if code == HANG:
        return Finding(check, Severity.RESET, "%s did not finish: %s" % (what, detail),
                       remediation="drain; reset the GPUs (or reboot) and run it again; a GPU that hangs again "
                                   "under load is replaced")
    if code == UNAVAILABLE:
        return Finding(check, Severity.ERROR, "cannot run %s: %s" % (what, detail),
                       remediation="install PyTorch with CUDA on the node (pip install torch) or leave %s out of "
                                   "the suite" % check)
    return Finding(check, Severity.ERROR, "%s failed: %s" % (what, detail))
