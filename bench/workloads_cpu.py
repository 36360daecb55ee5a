#!/usr/bin/env python3
"""The torch workloads' CPU figures (gpuhc/workloads/): dense fp32 matmul TFLOP/s, memory copy
bandwidth (read+write), a short stress run, and a 2-rank gloo all-reduce sweep on 127.0.0.1 (busbw
with nccl-tests' formula). On a GPU node, add --device cuda for the GPU figures of the same code
(matmul beside a plain torch.matmul loop, HBM, PCIe, stress; the all-reduce then uses NCCL over
every visible GPU).

These are sanity figures of the code path, not of a GPU: the CPU numbers say the engine works and
how fast this machine is, nothing about a fleet.
Usage: python bench/workloads_cpu.py [--device cpu|cuda] [--json]
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpuhc.workloads import allreduce, bench, stress  # noqa: E402
from gpuhc.workloads._common import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--stress-s", type=float, default=3.0)
    a = ap.parse_args()
    t = torch()
    cuda = a.device.startswith("cuda")
    out = {"torch": t.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "threads": t.get_num_threads(), "device": a.device}
    t0 = time.perf_counter()
    if cuda:
        out["matmul"] = [bench.matmul(a.device, dtype=d).as_dict() for d in ("bf16", "fp16", "tf32", "fp32")]
        out["plain_matmul_bf16_tflops"] = bench.plain_matmul_tflops(a.device, "bf16")
        out["hbm"] = bench.hbm(a.device).as_dict()
        out["pcie"] = bench.pcie(a.device).as_dict()
        out["stress"] = stress.run("cuda", duration_s=a.stress_s, dtype="bf16").as_dict()
        world, backend, sizes = max(1, t.cuda.device_count()), "nccl", [1 << 20, 1 << 24, 1 << 28, 1 << 30]
    else:
        out["matmul"] = [bench.matmul("cpu", dtype="fp32", n=n, iters=10).as_dict() for n in (512, 1024)]
        out["hbm"] = bench.hbm("cpu", nbytes=64 << 20, iters=10).as_dict()
        out["pcie"] = bench.pcie("cpu").as_dict()
        out["stress"] = stress.run(["cpu:0", "cpu:1"], duration_s=a.stress_s, dtype="fp32").as_dict()
        world, backend, sizes = 2, "gloo", [4096, 65536, 1 << 20, 16 << 20]
    lr = allreduce.launch_local(world, backend=backend, sizes=sizes, warmup=3, iters=10, timeout_s=120, wait_s=900)
    out["allreduce"] = {"world": world, "backend": backend, "ok": lr.ok, "errors": lr.errors,
                        "sizes": [s.as_dict() for s in lr.sizes]}
    out["elapsed_s"] = time.perf_counter() - t0
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print("torch %s, Python %s, %s, %d CPUs (torch threads %d), device %s" % (
        out["torch"], out["python"], out["machine"], out["cpus"], out["threads"], a.device))
    for m in out["matmul"]:
        print("matmul %-4s n=%-5d %9.4f TFLOP/s (median of %d; mean %.4f, best %.4f)" % (
            m["dtype"], m["n"], m["tflops"], m["iters"], m["tflops_mean"], m["tflops_best"]))
    if "plain_matmul_bf16_tflops" in out:
        print("plain torch.matmul loop bf16: %.1f TFLOP/s" % out["plain_matmul_bf16_tflops"])
    h = out["hbm"]
    print("copy %d MiB: %.2f GB/s (read+write; best %.2f)" % (h["nbytes"] >> 20, h["gbps"], h["gbps_best"]))
    p = out["pcie"]
    print("pcie: " + (("skipped: " + p["skipped"]) if p["skipped"] else "h2d %.1f GB/s, d2h %.1f GB/s" % (
        p["h2d_gbps"], p["d2h_gbps"])))
    s = out["stress"]
    verdict = "ok" if s["ok"] else "FAULTY " + ",".join(s["faulty"])
    print("stress %s n=%d %.0f s: %s; " % (s["dtype"], s["n"], s["duration_s"], verdict) + "; ".join("%s %d it %.4f TFLOP/s %d mismatches max_error %.2g" % (
            d["device"], d["iterations"], d["tflops"], d["mismatches"], d["max_error"]) for d in s["devices"]))
    print("all-reduce, %d ranks, %s:" % (world, backend))
    print(allreduce.format_table(lr.sizes))
    for e in lr.errors:
        print("# " + e)
    print("(%.1f s)" % out["elapsed_s"])


if __name__ == "__main__":
    main()
