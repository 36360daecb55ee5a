"""``python -m gpuhc.workloads.run KIND``: one workload in its own process, for the deep backend
(gpuhc/backends/deep.py TorchDeep). Arguments as JSON on stdin, the result as one JSON object on
stdout, progress lines on stderr. A missing torch or CUDA is ``{"error_code": "UNAVAILABLE"}``.

KIND: stress ({devices, duration_s, dtype}), bench ({devices, gpus, tests, dtypes}), allreduce
({world, devices, max_bytes, backend, timeout_s})."""
import json
import sys
import warnings

from . import _common as C

NEIGHBOURS_ABOVE = 8      # more GPUs than this: P2P from each GPU to its next neighbour only


def stress(args):
    from . import stress as S

    return S.run(devices=args["devices"], duration_s=float(args["duration_s"]), dtype=args.get("dtype") or "bf16",
                 progress=C.stderr_progress).as_dict()


def bench(args):
    from . import bench as B

    labels, gpus = args["devices"], args["gpus"]
    tests, dtypes = set(args.get("tests") or ()), args.get("dtypes") or ["bf16"]
    on_cpu = not any(C.is_cuda(x) for x in labels)
    out = {"gpus": {}, "p2p": [], "skipped": {}}
    for label, gpu in zip(labels, gpus):
        row = out["gpus"].setdefault(gpu, {})
        if "matmul" in tests:
            row["matmul_tflops"] = {}
            for dtype in dtypes:
                res = B.matmul(label, dtype=("fp32" if on_cpu and dtype in ("bf16", "fp16", "tf32") else dtype),
                               progress=C.stderr_progress)
                if res.skipped:
                    out["skipped"]["matmul"] = res.skipped
                else:
                    row["matmul_tflops"][dtype] = res.tflops
        if "hbm" in tests:
            res = B.hbm(label, progress=C.stderr_progress)
            row["hbm_gbps"] = None if res.skipped else res.gbps
        if "pcie" in tests:
            res = B.pcie(label, progress=C.stderr_progress)
            if res.skipped:
                out["skipped"]["pcie"] = res.skipped
            else:
                row["h2d_gbps"], row["d2h_gbps"] = res.h2d_gbps, res.d2h_gbps
    if "p2p" in tests:
        if on_cpu or len(labels) < 2:
            out["skipped"]["p2p"] = "no GPU-to-GPU copy on %s" % ("the CPU" if on_cpu else "a single GPU")
        else:
            index = dict(zip(labels, gpus))
            pairs = [(a, b) for a in labels for b in labels if a != b]
            if len(labels) > NEIGHBOURS_ABOVE:
                pairs = [(labels[i], labels[(i + 1) % len(labels)]) for i in range(len(labels))]
            for src, dst in pairs:
                res = B.p2p(src, dst, progress=C.stderr_progress)
                if res.skipped:
                    out["skipped"]["p2p"] = res.skipped
                    break
                out["p2p"].append({"src": index[src], "dst": index[dst], "gbps": res.gbps,
                                   "peer_access": res.peer_access})
    return out


def allreduce(args):
    from . import allreduce as A

    backend = args.get("backend") or "nccl"
    limit = int(args.get("max_bytes") or 0)
    sizes = [s for s in A.DEFAULT_SIZES[backend] if not limit or s <= limit] or A.DEFAULT_SIZES[backend][:1]
    run = A.launch_local(int(args["world"]), backend=backend, sizes=sizes, timeout_s=float(args["timeout_s"]),
                         devices=args.get("devices") if backend == "nccl" else None, progress=C.stderr_progress)
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
