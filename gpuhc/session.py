"""Puts a run together: node name, backends (NVML or a scenario), profile detection, the runner."""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import config, localstate, profiles
from .backends.deep import open_deep
from .backends.gpu import GpuBackend
from .backends.host import Host, LocalHost
from .checks.base import Context
from .model import Report
from .runner import Runner, suite_checks, validate_names


def node_name(explicit: Optional[str] = None) -> str:
    """Slurm's name for this node: --node, then SLURMD_NODENAME; the short hostname only outside Slurm.
    A --node or $SLURMD_NODENAME that cannot be a node's name (empty, '/', '..', spaces) is a usage
    error, not a result lost later nor a name passed to scontrol."""
    from .errors import GpuhcError
    from .store import StoreError, check_node_name

    where, name = "--node", explicit
    if name is None:
        where, name = "$SLURMD_NODENAME", os.environ.get("SLURMD_NODENAME")
    if name is None or (where != "--node" and not name):
        return socket.gethostname().split(".")[0]
    try:
        return check_node_name(name)
    except StoreError as exc:
        raise GpuhcError("%s: %s" % (where, exc)) from None


def open_backends(cfg: Dict[str, Any], node: str, simulate: Optional[str] = None) -> Tuple[GpuBackend, Host]:
    target = simulate or cfg.get("simulate")
    if target:
        from . import scenario
        from .backends.sim import SimGpu, SimHost

        sc = scenario.load(target, node)
        return SimGpu(sc), SimHost(sc)
    from .backends.gpu_nvml import NvmlBackend

    return NvmlBackend(), LocalHost(kernel_log=cfg.get("kernel_log", "auto"))


def _cached_facts(cfg: Dict[str, Any], ctx: Context, deadline: Optional[float] = None) -> Dict[str, Any]:
    """Instance type and Slurm features, asked once per boot (they cost a network or Slurm round trip);
    Slurm is not waited for past ``deadline`` (time.monotonic(): the end of the checks' share)."""
    boot = ctx.host.boot_id()
    state_dir = cfg["state_dir"]
    simulated = ctx.host.kind == "sim"
    cached = None if simulated else localstate.read(state_dir, "facts")
    if cached and cached.get("boot_id") == boot and cached.get("node") == ctx.node:
        return cached
    detect = cfg["detect"]
    facts: Dict[str, Any] = {"boot_id": boot, "node": ctx.node, "features": [], "instance_type": None}
    if detect["slurm_features"] and (os.environ.get("SLURMD_NODENAME") or os.environ.get("SLURM_JOB_ID")):
        from .backends.slurm_cli import node_features

        facts["features"] = node_features(ctx.node, timeout=config.budget(cfg, "prolog") / 4, deadline=deadline)
    if detect["cloud_metadata"] or simulated:       # a scenario's instance type is data, not a network call
        facts["instance_type"] = ctx.host.instance_type(float(detect["cloud_timeout"]))
    if not simulated:
        localstate.write(state_dir, "facts", facts)
    return facts


def detector(cfg: Dict[str, Any], known_profiles: Dict[str, profiles.Profile], deadline: Optional[float] = None):
    def detect(ctx: Context) -> profiles.Detection:
        facts: Dict[str, Any] = {}

        def get(key: str):
            if not facts:
                facts.update(_cached_facts(cfg, ctx, deadline))
            return facts.get(key)

        def gpu_model():
            inv = ctx.inventory
            if inv is None or inv.model is None:
                return None
            try:
                on_pci = len(ctx.host.pci_nvidia_gpus())
            except Exception:
                on_pci = 0
            return inv.model, max(len(inv.gpus), on_pci)

        return profiles.detect(known_profiles, forced=cfg.get("profile"), features=lambda: get("features") or [],
                        instance_type=lambda: get("instance_type"), gpu_model=gpu_model)
    return detect


def _ack_time(cfg: Dict[str, Any], node: str) -> Optional[float]:
    from .store import Store

    try:
        return Store.from_config(cfg).ack_time(node)
    except Exception:
        return None


def run(cfg: Dict[str, Any], context: str, suite: Optional[str] = None, checks: Sequence[str] = (),
        node: Optional[str] = None, simulate: Optional[str] = None,
        job_id: Optional[str] = None, job_gpus: Optional[set] = None,
        deadline: Optional[float] = None, progress: Optional[Callable[[str], None]] = None
        ) -> Tuple[Report, profiles.Detection, Context]:
    """One health-check run; raises GpuhcError on bad input (config, profile, scenario). With
    ``deadline`` (time.monotonic() at which the whole context run must end), the checks get what
    is left of it less the share kept for acting on the result."""
    node = node_name(node)
    known_profiles = profiles.load(cfg.get("profiles"))
    if checks:
        names: List[str] = validate_names(list(checks), "--check")
        suite = suite or "custom"
    else:
        suite = suite or cfg["context_suites"].get(context, "lightweight")
        names = suite_checks(cfg, suite)
    gpu, host = open_backends(cfg, node, simulate)
    ctx = Context(node=node, context=context, gpu=gpu, host=host, config=cfg,
                  job_id=job_id or os.environ.get("SLURM_JOB_ID"), job_gpus=job_gpus)
    ctx.ack_time = lambda: _ack_time(cfg, node)
    ctx.deep = open_deep(cfg, getattr(gpu, "scenario", None))      # torch is imported only in its child
    if progress is not None:
        ctx.progress = progress
    limit = config.checks_budget(cfg, context)
    if deadline is not None:
        limit = max(0.0, min(limit, config.checks_deadline(cfg, context, deadline) - time.monotonic()))
    runner = Runner(ctx, detector(cfg, known_profiles, time.monotonic() + limit))
    report = runner.run(names, limit, suite=suite)
    if gpu.hung is None:
        try:
            gpu.close()
        except Exception:
            pass
    if runner.detection is None:        # Runner.run detects the profile before any check
        raise RuntimeError("no profile detection after the run")
    return report, runner.detection, ctx
