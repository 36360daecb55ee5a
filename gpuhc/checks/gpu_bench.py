"""gpu_bench: per GPU, dense matmul TFLOP/s (each of gpu_bench.dtypes), HBM bandwidth (device copy of
1 GiB), host<->device bandwidth (pinned), and GPU-to-GPU copy bandwidth (each pair, or each GPU to
its neighbour on big nodes), held to the profile (matmul_tflops, hbm_gbps, pcie_gbps, p2p_gbps:
what a healthy node of the type measures) with a floor, and to the node's best GPU. Below either is
RESET (a slow GPU drags every job that spans it). On the CPU (deep.device: cpu, the tests) neither
applies (the "GPUs" are one processor measured in turn): figures only. Figures go to the findings'
metrics."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..backends.deep import DeepError
from ..model import Finding, GpuRef, Severity
from .base import Context, deep_error_finding, threshold
from .meta import CheckMeta, Threshold

NAME = "gpu_bench"
META = CheckMeta(
    description="matmul TFLOP/s, HBM, PCIe and P2P bandwidth per GPU against the profile and the node's best GPU",
    suites=("quarantine", "bench", "deep"),
    contexts=("check", "sweep", "quarantine", "bench"),
    exclusive=True,
    thresholds={
        "bench_profile_floor": Threshold(0.80, "gpuhc: below 80% of what a healthy GPU of the profile measures "
                                               "(published measurements in instance-profiles.conf) is RESET"),
        "bench_peer_tolerance": Threshold(0.10, "huggingface gpu-fryer / Imbue: more than 10% below the best GPU "
                                                "of the same node is RESET"),
    },
)
# metric -> (profile key, unit, what)
METRICS = {"matmul_tflops": ("matmul_tflops", "TFLOP/s", "matmul"),
           "hbm_gbps": ("hbm_gbps", "GB/s", "HBM copy"),
           "pcie_gbps": ("pcie_gbps", "GB/s", "host<->device copy"),
           "p2p_gbps": ("p2p_gbps", "GB/s", "GPU-to-GPU copy")}


def gather(ctx: Context) -> Dict[str, Any]:
    conf = ctx.config["gpu_bench"]
    gpus = ctx.healthy_gpus()
    data: Dict[str, Any] = {"gpus": gpus, "dtypes": list(conf["dtypes"]), "device": getattr(ctx.deep, "kind", "")}
    if not gpus:
        return data
    try:
        data["result"] = ctx.deep.bench([r.index for r in gpus], list(conf["tests"]), list(conf["dtypes"]),
                                        float(conf["timeout"]), ctx.progress)
    except DeepError as err:
        data["error"] = {"code": err.code, "detail": err.detail}
    return data


def figures(result: Dict[str, Any], dtypes: List[str]) -> Dict[int, Dict[str, float]]:
    """{gpu: {metric: value}}: matmul in the first dtype asked, PCIe as the slower direction, P2P as
    the slowest copy the GPU takes part in."""
    out: Dict[int, Dict[str, float]] = {}
    for gpu, row in (result.get("gpus") or {}).items():
        fig = out.setdefault(int(gpu), {})
        matmul = row.get("matmul_tflops") or {}
        first = next((matmul[d] for d in dtypes if matmul.get(d) is not None), None)
        if first is not None:
            fig["matmul_tflops"] = float(first)
        for d, v in matmul.items():
            if v is not None:
                fig["matmul_tflops_%s" % d] = float(v)
        if row.get("hbm_gbps") is not None:
            fig["hbm_gbps"] = float(row["hbm_gbps"])
        ways = [row[k] for k in ("h2d_gbps", "d2h_gbps") if row.get(k) is not None]
        if ways:
            fig["pcie_gbps"] = float(min(ways))
    for pair in result.get("p2p") or []:
        for gpu in (pair["src"], pair["dst"]):
            fig = out.setdefault(int(gpu), {})
            fig["p2p_gbps"] = min(fig.get("p2p_gbps", float("inf")), float(pair["gbps"]))
    return out


def _judge(metric: str, value: float, expected: Optional[float], best: float,
           config: Optional[Dict[str, Any]]) -> Optional[Tuple[str, float]]:
    """Why this figure is too low (and the bar it missed), or None."""
    _, unit, what = METRICS[metric]
    floor = threshold(config, "bench_profile_floor")
    if expected and value < expected * floor:
        return ("%s %.1f %s, below %.0f%% of the profile's %.0f" % (what, value, unit, 100 * floor, expected),
                expected * floor)
    tol = threshold(config, "bench_peer_tolerance")
    if best > 0 and value < best * (1.0 - tol):
        return ("%s %.1f %s, %.0f%% below the node's best GPU (%.1f)" % (what, value, unit,
                                                                         100 * (1 - value / best), best),
                best * (1.0 - tol))
    return None


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    gpus: List[GpuRef] = data["gpus"]
    if not gpus:
        return [Finding(NAME, Severity.SKIP, "no GPU answered the inventory: nothing to measure")]
    if data.get("error"):
        return [deep_error_finding(NAME, data["error"], "the benchmarks")]
    result = data["result"]
    figs = figures(result, data.get("dtypes") or ["bf16"])
    on_gpu = data.get("device", "") != "torch-cpu"
    # on the CPU every "GPU" is the same processor, measured one after the other: neither the
    # profile nor the peers say anything (figures only)
    best = {m: max((f.get(m, 0.0) for f in figs.values()), default=0.0) if on_gpu else 0.0 for m in METRICS}
    out = []
    for ref in gpus:
        fig = figs.get(ref.index, {})
        metrics = {k: round(v, 3) for k, v in fig.items()}
        slow = []
        for metric, (key, _, _) in METRICS.items():
            if metric not in fig:
                continue
            expected = getattr(profile, key, None) if (profile is not None and on_gpu) else None
            why = _judge(metric, fig[metric], expected, best[metric], config)
            if why:
                slow.append(why[0])
        if slow:
            out.append(Finding(NAME, Severity.RESET, "; ".join(slow), gpu=ref, metrics=metrics,
                               remediation="drain, reset the GPU and benchmark again (gpuhc bench); check PCIe "
                                           "link, NVLink and clocks; replace it if it stays slow"))
        elif fig:
            shown = ", ".join("%s %.1f" % (m, fig[m]) for m in METRICS if m in fig)
            out.append(Finding(NAME, Severity.PASS, shown, gpu=ref, metrics=metrics))
        else:
            out.append(Finding(NAME, Severity.ERROR, "no benchmark figure for this GPU", gpu=ref))
    for test, why in sorted((result.get("skipped") or {}).items()):
        out.append(Finding(NAME, Severity.SKIP, "%s not measured: %s" % (test, why)))
    return out
