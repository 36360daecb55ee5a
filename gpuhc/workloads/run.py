"""``python -m gpuhc.workloads.run KIND``: one workload in its own process, for the deep backend
(gpuhc/backends/deep.py TorchDeep). Arguments as JSON on stdin, the result as one JSON object on
stdout, progress lines on stderr. A missing torch or CUDA is ``{"error_code": "UNAVAILABLE"}``.

KIND: stress ({devices, duration_s, dtype}), bench ({devices, gpus, tests, dtypes}), allreduce
({world, devices, max_bytes, backend, timeout_s})."""
import json
import sys
import warnings
from typing import Any, Dict, List

from . import _common as common

NEIGHBOURS_ABOVE = 8      # more GPUs than this: P2P from each GPU to its next neighbour only


def stress(args):
    from . import stress as stress_workload

    return stress_workload.run(devices=args["devices"], duration_s=float(args["duration_s"]),
                               dtype=args.get("dtype") or "bf16", progress=common.stderr_progress).as_dict()


def bench(args):
    from . import bench as bench_workload

    labels, gpus = args["devices"], args["gpus"]
    tests, dtypes = set(args.get("tests") or ()), args.get("dtypes") or ["bf16"]
    on_cpu = not any(common.is_cuda(x) for x in labels)
    per_gpu: Dict[Any, Dict[str, Any]] = {}
    p2p: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    for label, gpu in zip(labels, gpus):
        row = per_gpu.setdefault(gpu, {})
        if "matmul" in tests:
            row["matmul_tflops"] = {}
            for dtype in dtypes:
                matmul = bench_workload.matmul(
                    label, dtype=("fp32" if on_cpu and dtype in ("bf16", "fp16", "tf32") else dtype),
                    progress=common.stderr_progress)
                if matmul.skipped:
                    skipped["matmul"] = matmul.skipped
                else:
                    row["matmul_tflops"][dtype] = matmul.tflops
        if "hbm" in tests:
            hbm = bench_workload.hbm(label, progress=common.stderr_progress)
            row["hbm_gbps"] = None if hbm.skipped else hbm.gbps
        if "pcie" in tests:
            pcie = bench_workload.pcie(label, progress=common.stderr_progress)
            if pcie.skipped:
                skipped["pcie"] = pcie.skipped
            else:
                row["h2d_gbps"], row["d2h_gbps"] = pcie.h2d_gbps, pcie.d2h_gbps
    if "p2p" in tests:
        if on_cpu or len(labels) < 2:
            skipped["p2p"] = "no GPU-to-GPU copy on %s" % ("the CPU" if on_cpu else "a single GPU")
        else:
            index = dict(zip(labels, gpus))
            pairs = [(a, b) for a in labels for b in labels if a != b]
            if len(labels) > NEIGHBOURS_ABOVE:
                pairs = [(labels[i], labels[(i + 1) % len(labels)]) for i in range(len(labels))]
            for src, dst in pairs:
                copy = bench_workload.p2p(src, dst, progress=common.stderr_progress)
                if copy.skipped:
                    skipped["p2p"] = copy.skipped
                    break
                p2p.append({"src": index[src], "dst": index[dst], "gbps": copy.gbps, "peer_access": copy.peer_access})
    return {"gpus": per_gpu, "p2p": p2p, "skipped": skipped}


def allreduce(args):
    from . import allreduce as allreduce_workload

    backend = args.get("backend") or "nccl"
    limit = int(args.get("max_bytes") or 0)
    default_sizes = allreduce_workload.DEFAULT_SIZES[backend]
    sizes = [s for s in default_sizes if not limit or s <= limit] or default_sizes[:1]
    run = allreduce_workload.launch_local(int(args["world"]), backend=backend, sizes=sizes,
                                          timeout_s=float(args["timeout_s"]),
                                          devices=args.get("devices") if backend == "nccl" else None,
                                          progress=common.stderr_progress)
    first = next((r for r in run.ranks if r is not None), None)
    return {"ok": run.ok, "world": run.world, "backend": run.backend, "error": "; ".join(run.errors) or None,
            "sizes": [s.as_dict() for s in run.sizes], "elapsed_s": run.elapsed_s,
            "torch_version": first.torch_version if first else None,
            "nccl_version": first.nccl_version if first else None, "env": first.env if first else {}}


KINDS = {"stress": stress, "bench": bench, "allreduce": allreduce}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in KINDS:
        print("usage: python -m gpuhc.workloads.run %s < args.json" % "|".join(KINDS), file=sys.stderr)
        return 2
    # torch warns on import without numpy, which gpuhc does not need: not a progress line
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        args = json.loads(sys.stdin.read() or "{}")
        result = KINDS[argv[0]](args)
    except ImportError as exc:
        result = {"error_code": "UNAVAILABLE", "error": "torch is not installed here (%s)" % exc}
    except RuntimeError as exc:
        code = "UNAVAILABLE" if "CUDA is not available" in str(exc) else "FAILED"
        result = {"error_code": code, "error": str(exc)}
    except Exception as exc:        # the parent reports it as the check's finding
        result = {"error_code": "FAILED", "error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
