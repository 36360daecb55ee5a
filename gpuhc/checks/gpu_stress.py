"""gpu_stress: every GPU multiplies the same inputs under a sustained load (most of its memory, for
gpu_stress.duration seconds: 30 in a sweep, 300 in quarantine), the results are compared across
GPUs and with a CPU float64 reference (gpuhc/workloads/stress.py says how), and each GPU's
throughput over the run is held to the node's best GPU. A GPU that computes a wrong result is
ISOLATE (it corrupts training silently: replace it); one more than stress_peer_tolerance below the
best is RESET; hardware clock slowdowns seen during the load are reported with the figure.
Anchors: gpu-burn (compare errors -> faulty), huggingface gpu-fryer (within 10% of the node's
best), Imbue's stress test (copy results across GPUs and compare)."""
from __future__ import annotations

import threading
from typing import Any, Dict, List

from ..backends.deep import DeepError
from ..backends.gpu import GpuError, clock_reason_names
from ..model import Finding, GpuRef, Severity
from .base import Context, deep_error_finding, threshold
from .meta import CheckMeta, Threshold

NAME = "gpu_stress"
META = CheckMeta(
    description="sustained matmul load on every GPU; results compared across GPUs; throughput against the node's best",
    suites=("sweep", "quarantine", "bench", "deep"),
    contexts=("check", "sweep", "quarantine", "bench"),
    exclusive=True,
    thresholds={
        "stress_peer_tolerance": Threshold(0.10, "huggingface gpu-fryer: a GPU more than 10% below the best GPU of "
                                                 "its node under the same load is slow (RESET)"),
    },
)
HARDWARE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
SAMPLE_S = 2.0          # how often clock slowdown reasons are read during the load


def duration_for(conf: Dict[str, Any], context: str) -> float:
    return float(conf["durations"].get(context, conf["duration"]))


def gather(ctx: Context) -> Dict[str, Any]:
    conf = ctx.config["gpu_stress"]
    gpus = ctx.healthy_gpus()
    data: Dict[str, Any] = {"gpus": gpus, "duration": duration_for(conf, ctx.context), "throttle": {}}
    if not gpus:
        return data
    stop = threading.Event()
    seen: Dict[int, set] = {}

    def sample_once() -> None:
        for ref in gpus:
            try:
                names = clock_reason_names(int(ctx.gpu.clock_event_reasons(ref.index) or 0))
            except (GpuError, TypeError, ValueError):
                continue
            seen.setdefault(ref.index, set()).update(n for n in names if n in HARDWARE)

    def sample() -> None:          # what held the clocks down while the load ran
        while not stop.wait(SAMPLE_S):
            sample_once()
    sampler = threading.Thread(target=sample, name="gpuhc-stress-clocks", daemon=True)
    sampler.start()
    try:
        data["result"] = ctx.deep.stress([r.index for r in gpus], data["duration"], conf["dtype"],
                                         float(conf["timeout"]), ctx.progress)
        sample_once()              # and at the end of the load (a short run may see no sample)
    except DeepError as err:
        data["error"] = {"code": err.code, "detail": err.detail}
    finally:
        stop.set()
    data["throttle"] = {i: sorted(v) for i, v in seen.items() if v}
    data["device"] = getattr(ctx.deep, "kind", "")
    return data


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    gpus: List[GpuRef] = data["gpus"]
    if not gpus:
        return [Finding(NAME, Severity.SKIP, "no GPU answered the inventory: nothing to load")]
    error = data.get("error")
    if error:
        return [deep_error_finding(NAME, error, "the stress load")]
    result = data["result"]
    per = result.get("gpus") or {}
    tolerance = threshold(config, "stress_peer_tolerance")
    rates = {i: float(v.get("tflops") or 0.0) for i, v in per.items()}
    # on the CPU every "GPU" is the same processor, loaded one after the other: no peer comparison
    best = max(rates.values(), default=0.0) if data.get("device") != "torch-cpu" else 0.0
    out = []
    for ref in gpus:
        got = per.get(ref.index)
        if got is None:
            out.append(Finding(NAME, Severity.ERROR, "no stress result for this GPU", gpu=ref))
            continue
        rate, throttled = rates[ref.index], (data.get("throttle") or {}).get(ref.index) or []
        metrics = {"stress_tflops": round(rate, 3), "stress_iterations": got.get("iterations") or 0,
                   "stress_mismatches": got.get("mismatches") or 0}
        held = " (clocks held down by %s during the load)" % ", ".join(throttled) if throttled else ""
        if got.get("mismatches") or ref.index in (result.get("faulty") or []) or got.get("ref_ok") is False:
            out.append(Finding(NAME, Severity.ISOLATE, "computed wrong results under load: %s%s"
                               % (got.get("reason") or "%d products differ" % (got.get("mismatches") or 0), held),
                               gpu=ref, metrics=metrics,
                               remediation="take the GPU out of service and have it replaced: it corrupts results "
                                           "silently (collect nvidia-bug-report.sh first)"))
        elif best > 0 and rate < best * (1.0 - tolerance):
            out.append(Finding(NAME, Severity.RESET, "%.0f%% below the node's best GPU under load: %.1f vs %.1f "
                               "TFLOP/s %s%s" % (100 * (1 - rate / best), rate, best, result.get("dtype", ""), held),
                               gpu=ref, metrics=metrics,
                               remediation="drain, reset the GPU and run the stress again; check cooling and power "
                                           "if clocks were held down; replace it if it stays slow"))
        elif throttled:
            out.append(Finding(NAME, Severity.MONITOR, "%.1f TFLOP/s, results match, but%s"
                               % (rate, held.replace(" (", " ").rstrip(")")), gpu=ref, metrics=metrics,
                               remediation="check cooling and power delivery"))
        else:
            out.append(Finding(NAME, Severity.PASS, "%.1f TFLOP/s %s over %.0f s, results match"
                               % (rate, result.get("dtype", ""), float(result.get("duration_s") or 0)),
                               gpu=ref, metrics=metrics))
    return out

