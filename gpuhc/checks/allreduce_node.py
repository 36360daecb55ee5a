"""allreduce_node: torch.distributed all-reduce across the node's GPUs (NCCL, one process per GPU;
gloo on the CPU), sizes doubling up to allreduce_node.max_bytes, measured like nccl-tests (algbw =
bytes / time; busbw = algbw * 2(n-1)/n). Below allreduce_min_fraction of the expected bus bandwidth
at the largest size (nccl.expect_busbw_gbps, else the profile's busbw_gbps) is RESET, and so is a
run that fails, hangs past its timeout, or returns wrong sums."""
from __future__ import annotations

from typing import Any, Dict, List

from ..backends.deep import DeepError
from ..model import Finding, Severity
from .base import Context, deep_error_finding, threshold
from .meta import CheckMeta, Threshold

NAME = "allreduce_node"
META = CheckMeta(
    description="all-reduce bus bandwidth across the node's GPUs (nccl-tests' formulas) against the profile",
    suites=("quarantine", "bench", "deep"),
    contexts=("check", "sweep", "quarantine", "bench"),
    exclusive=True,
    thresholds={
        "allreduce_min_fraction": Threshold(0.90, "nccl-tests NCCL_TESTS_MIN_BW: pass at 90% of the expected bus "
                                                  "bandwidth"),
    },
)


def gather(ctx: Context) -> Dict[str, Any]:
    conf = ctx.config["allreduce_node"]
    gpus = ctx.healthy_gpus()
    data: Dict[str, Any] = {"gpus": len(gpus), "device": getattr(ctx.deep, "kind", ""),
                            "expect": ctx.config["nccl"]["expect_busbw_gbps"]}
    if len(gpus) < 2:
        return data
    try:
        data["result"] = ctx.deep.allreduce([r.index for r in gpus], int(conf["max_bytes"]), float(conf["timeout"]),
                                            ctx.progress)
    except DeepError as err:
        data["error"] = {"code": err.code, "detail": err.detail}
    return data


def expected_busbw(data: Dict[str, Any], profile) -> Any:
    """The bus bandwidth to hold the node to: config's nccl.expect_busbw_gbps, else the profile's
    (a GPU figure, not for a CPU run), else None."""
    if data.get("expect") is not None:
        return float(data["expect"])
    if profile is not None and data.get("device") != "torch-cpu":
        return getattr(profile, "busbw_gbps", None)
    return None


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    if data["gpus"] < 2:
        return [Finding(NAME, Severity.SKIP, "%d GPU: no all-reduce inside the node" % data["gpus"])]
    if data.get("error"):
        return [deep_error_finding(NAME, data["error"], "the all-reduce across %d GPUs" % data["gpus"])]
    result = data["result"]
    sizes = result.get("sizes") or []
    where = "across %d GPUs (%s)" % (data["gpus"], result.get("backend") or "?")
    if not result.get("ok") or not sizes:
        return [Finding(NAME, Severity.RESET, "all-reduce %s failed: %s" % (where, result.get("error") or "no result"),
                        remediation="drain; check NVLink (nvidia-smi nvlink -s) and the fabric manager, reset the "
                                    "GPUs and run it again")]
    wrong = sum(int(s.get("wrong") or 0) for s in sizes)
    last = sizes[-1]
    busbw, size = float(last["busbw_gbps"]), int(last["size_bytes"])
    metrics = {"busbw_gbps": round(busbw, 3), "algbw_gbps": round(float(last["algbw_gbps"]), 3),
               "allreduce_bytes": size}
    metrics.update(size_metrics(sizes))
    if wrong:
        return [Finding(NAME, Severity.RESET, "all-reduce %s returned %d wrong elements" % (where, wrong),
                        metrics=metrics, remediation="drain; reset the GPUs and run it again")]
    expected = expected_busbw(data, profile)
    need = threshold(config, "allreduce_min_fraction")
    shown = "busbw %.1f GB/s at %s %s" % (busbw, _size(size), where)
    if expected and busbw < expected * need:
        return [Finding(NAME, Severity.RESET, "%s, below %.0f%% of the expected %.0f GB/s" % (shown, 100 * need, expected),
                        metrics=metrics,
                        remediation="drain; check NVLink and the fabric manager, then gpu_bench's P2P figures to "
                                    "find the slow GPU or link")]
    return [Finding(NAME, Severity.PASS, shown + ("" if expected else " (no expected value)"), metrics=metrics)]


def size_metrics(sizes: List[Dict[str, Any]]) -> Dict[str, float]:
    """Every size's figures as metrics (``time_us@BYTES``, ``algbw_gbps@BYTES``, ``busbw_gbps@BYTES``),
    so the store keeps the curve and `gpuhc bench` prints it as nccl-tests does."""
    out: Dict[str, float] = {}
    for s in sizes:
        n = int(s["size_bytes"])
        for key in ("time_us", "algbw_gbps", "busbw_gbps"):
            out["%s@%d" % (key, n)] = round(float(s[key]), 3)
    return out


def size_rows(metrics: Dict[str, float]) -> List[Dict[str, float]]:
    """size_metrics back to rows, smallest size first."""
    rows: Dict[int, Dict[str, float]] = {}
    for key, value in metrics.items():
        name, _, n = key.partition("@")
        if n.isdigit():
            rows.setdefault(int(n), {"size_bytes": int(n)})[name] = value
    return [rows[n] for n in sorted(rows)]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return "%g %s" % (n / scale, unit)
    return "%d B" % n
