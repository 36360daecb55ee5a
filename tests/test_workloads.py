"""The torch engine (gpuhc/workloads/), run for real: on the CPU here (small sizes, gloo), and on
CUDA in the `gpu`-marked tests when a GPU is present."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[torch]')")


def cuda_count():
    if not HAS_TORCH:
        return 0
    from gpuhc.workloads._common import torch
    t = torch()
    return t.cuda.device_count() if t.cuda.is_available() else 0


needs_cuda = pytest.mark.skipif(cuda_count() == 0, reason="no CUDA device")


def test_importing_workloads_does_not_import_torch():
    code = ("import sys, gpuhc, gpuhc.workloads, gpuhc.workloads.stress, gpuhc.workloads.bench, "
            "gpuhc.workloads.allreduce; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- stress ----------------------------------------------------------------------------------

@needs_torch
def test_stress_healthy_devices_agree():
    from gpuhc.workloads import stress
    lines = []
    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.4, dtype="fp32", n=128, progress=lines.append)
    assert r.ok and r.faulty == [] and r.exact
    for d in r.devices:
        assert d.iterations > 0 and d.tflops > 0
        assert d.checked == d.iterations and d.mismatches == 0      # every product compared once
        assert d.ref_ok and d.max_error <= r.tolerance and not d.faulty
    assert lines and lines[-1].startswith("stress: done")
    assert r.as_dict()["devices"][1]["device"] == "cpu:1"


@needs_torch
def test_stress_names_the_device_that_computes_wrong():
    from gpuhc.workloads import stress

    def fault(index, iteration, c):        # device 1 gets every product wrong by 1.0 in one element
        if index == 1:
            c.view(-1)[5] += 1.0

    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.3, dtype="fp32", n=128, fault=fault)
    assert not r.ok and r.faulty == ["cpu:1"]
    good, bad = r.devices
    assert not good.faulty and good.mismatches == 0 and good.ref_ok
    assert bad.faulty and not bad.agrees and not bad.ref_ok
    assert bad.mismatches == bad.checked == bad.iterations > 0
    assert "CPU float64 reference" in bad.reason


@needs_torch
@pytest.mark.parametrize("depth", [1, 3])
def test_stress_catches_an_intermittent_fault_during_the_run(depth):
    """depth 3: three iterations queued before any is collected (as on a GPU), so each product is
    compared after three newer ones were launched: the comparison must still see its own product."""
    import torch

    from gpuhc.workloads import stress

    def fault(index, iteration, c):        # right at setup, wrong from iteration 3 on (one low bit)
        if index == 1 and iteration >= 3:
            c.view(torch.int32).view(-1)[77] ^= 1

    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.3, dtype="fp32", n=128, slots=5, depth=depth, fault=fault)
    assert r.faulty == ["cpu:1"]
    bad = r.devices[1]
    assert bad.agrees                       # its setup product was right
    assert bad.first_mismatch_iteration == 3 and bad.first_mismatch_elements == 1
    assert bad.mismatches == bad.iterations - 2 and bad.checked == bad.iterations
    assert bad.first_mismatch_max_abs > 0
    assert "differ from the expected result" in bad.reason
    assert r.devices[0].mismatches == 0 and r.devices[0].checked == r.devices[0].iterations


@needs_torch
def test_stress_low_bit_disagreement_majority_or_both_named():
    """A 1-ulp difference passes any honest tolerance: with three devices the odd one out is named;
    with two, nothing can tell which is right, so both are named and the reason says so."""
    import torch

    from gpuhc.workloads import stress

    def fault(index, iteration, c):
        if index == 1:
            c.view(torch.int32).view(-1)[9] += 1

    r3 = stress.run(["cpu:0", "cpu:1", "cpu:2"], duration_s=0.2, dtype="fp32", n=64, fault=fault)
    assert r3.faulty == ["cpu:1"] and "differs bitwise" in r3.devices[1].reason
    r2 = stress.run(["cpu:0", "cpu:1"], duration_s=0.2, dtype="fp32", n=64, fault=fault)
    assert r2.faulty == ["cpu:0", "cpu:1"]
    assert all("cannot tell" in d.reason for d in r2.devices)


@needs_torch
def test_stress_a_device_that_fails_under_load_is_named_and_the_others_go_on():
    from gpuhc.workloads import stress

    def fault(index, iteration, c):
        if index == 0 and iteration == 4:
            raise RuntimeError("CUDA error: unspecified launch failure")

    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.3, dtype="fp32", n=64, fault=fault)
    assert r.faulty == ["cpu:0"]
    assert "failed under load at iteration 4" in r.devices[0].reason and "launch failure" in r.devices[0].reason
    assert r.devices[0].iterations == 3
    assert r.devices[1].iterations > 3 and not r.devices[1].faulty


@needs_torch
def test_stress_a_device_that_stops_completing_work_is_named_hung(monkeypatch):
    from gpuhc.workloads import stress

    class Never:                            # a CUDA event whose work never completes
        def query(self):
            return False

    launch = stress._launch

    def hanging_launch(t, d, i, depth, fault):
        launch(t, d, i, depth, fault)
        if d.index == 1 and i >= 3:
            entry = d.pending.pop()
            d.pending.append((Never(),) + entry[1:])

    monkeypatch.setattr(stress, "_launch", hanging_launch)
    t0 = time.monotonic()
    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.2, dtype="fp32", n=64, hang_s=0.3)
    assert time.monotonic() - t0 < 5
    assert r.faulty == ["cpu:1"] and "hung" in r.devices[1].reason
    assert r.devices[1].iterations == 2 and not r.devices[0].faulty


@needs_torch
def test_stress_tolerance_mode_judges_by_the_reference():
    """Mixed GPU models cannot be compared bitwise: each device is then judged by the CPU reference."""
    from gpuhc.workloads import stress

    def fault(index, iteration, c):
        if index == 0:
            c.view(-1)[200] -= 0.5

    r = stress.run(["cpu:0", "cpu:1"], duration_s=0.2, dtype="fp32", n=64, exact=False, fault=fault)
    assert not r.exact and r.faulty == ["cpu:0"]
    assert "CPU float64 reference" in r.devices[0].reason and r.devices[0].mismatches == 0
    assert not r.devices[1].faulty


@needs_torch
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_stress_half_precision_within_its_bound(dtype):
    from gpuhc.workloads import stress
    r = stress.run("cpu", duration_s=0.1, dtype=dtype, n=64)
    assert r.ok and r.devices[0].max_error <= r.tolerance
    assert r.tolerance == stress.tolerance(dtype, 64)


# ---- bench -----------------------------------------------------------------------------------

@needs_torch
def test_matmul_tflops_positive():
    from gpuhc.workloads import bench
    r = bench.matmul("cpu", dtype="fp32", n=128, iters=3)
    assert r.tflops > 0 and r.tflops_best >= r.tflops > 0
    assert r.timer == "perf_counter" and r.l2_flush_bytes == 0 and r.flops_per_iter == 2 * 128 ** 3
    assert r.skipped is None


@needs_torch
def test_copy_bandwidths_on_cpu():
    from gpuhc.workloads import bench
    h = bench.hbm("cpu", nbytes=4 << 20, iters=3)
    assert h.gbps > 0 and "read+write" in h.convention
    p = bench.pcie("cpu")
    assert p.skipped and "CPU" in p.skipped and p.h2d_gbps == 0.0
    q = bench.p2p("cpu", "cpu")
    assert q.skipped and q.gbps == 0.0


# ---- all-reduce ------------------------------------------------------------------------------

SIZES = [4096, 1 << 20]


@pytest.fixture(scope="module")
def healthy3():
    from gpuhc.workloads import allreduce
    return allreduce.launch_local(3, sizes=SIZES, warmup=1, iters=4, timeout_s=30, wait_s=120)


@needs_torch
def test_allreduce_sums_and_bus_bandwidth(healthy3):
    from gpuhc.workloads import allreduce
    r = healthy3
    assert r.ok, r.errors
    assert r.returncodes == [0, 0, 0]
    assert [s.size_bytes for s in r.sizes] == SIZES
    for rank in r.ranks:                    # every rank saw the expected sum and the same group figures
        assert rank.ok and [s.wrong for s in rank.sizes] == [0, 0]
        assert [s.time_us for s in rank.sizes] == [s.time_us for s in r.sizes]
    for s in r.sizes:
        assert s.count == s.size_bytes // 4 and s.dtype == "float"
        assert s.algbw_gbps == pytest.approx(s.size_bytes / (s.time_us * 1e-6) / 1e9)
        assert s.busbw_gbps == pytest.approx(s.algbw_gbps * 2 * (3 - 1) / 3)
    table = allreduce.format_table(r)
    assert "busbw" in table and "1048576" in table and "262144" in table


@needs_torch
def test_a_slow_rank_cuts_the_group_bus_bandwidth(healthy3):
    from gpuhc.workloads import allreduce
    slow = allreduce.launch_local(3, sizes=SIZES, warmup=1, iters=4, timeout_s=30, delays={2: 0.05}, wait_s=120)
    assert slow.ok, slow.errors             # slow, not broken
    assert slow.ranks[2].delay_s == 0.05
    for fast, s in zip(healthy3.sizes, slow.sizes):
        assert s.time_us > 50000 * 0.9      # the delay is in every rank's time: it is the group's
        assert s.busbw_gbps < fast.busbw_gbps / 3


@needs_torch
def test_a_hanging_rank_is_a_failure_within_the_timeout():
    from gpuhc.workloads import allreduce
    t0 = time.monotonic()
    r = allreduce.launch_local(2, sizes=[4096], warmup=1, iters=2, timeout_s=3, hang_rank=1,
                               watchdog_grace_s=1, wait_s=60)
    took = time.monotonic() - t0
    assert not r.ok
    assert r.ranks[1] is None and r.returncodes[1] == allreduce.WATCHDOG_EXIT
    assert "watchdog" in r.errors[1]
    r0 = r.ranks[0]
    assert r0 is not None and not r0.ok and r0.failed_step.startswith("all_reduce of 4096 B")
    assert "Timed out" in r0.error or "timeout" in r0.error.lower()
    assert took < 3 + 1 + 25                # timeout + grace + process start-up on a busy machine


@needs_torch
def test_allreduce_in_process_one_rank_with_a_delay_hook():
    from gpuhc.workloads import allreduce
    calls = []
    r = allreduce.run(0, 1, backend="gloo", sizes=[1024], warmup=1, iters=2, timeout_s=20,
                      init_method="tcp://127.0.0.1:%d" % allreduce.free_port(),
                      delay_hook=lambda size, i: calls.append((size, i)) or 0.0)
    assert r.ok and r.error is None, r.error
    assert calls == [(1024, 0), (1024, 1), (1024, 2)]
    assert r.sizes[0].busbw_gbps == 0.0 and r.sizes[0].algbw_gbps > 0   # one rank: factor 2(n-1)/n = 0


# ---- on a GPU --------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_gpu_matmul_within_10_percent_of_a_plain_matmul_loop():
    from gpuhc.workloads import bench
    ours = bench.matmul("cuda:0", dtype="bf16", n=8192, iters=30)
    plain = bench.plain_matmul_tflops("cuda:0", dtype="bf16", n=8192, iters=50)
    assert ours.timer == "cuda-events" and ours.l2_flush_bytes > 0
    assert abs(ours.tflops / plain - 1) <= 0.10, (ours.tflops, plain)


@pytest.mark.gpu
@needs_cuda
def test_gpu_stress_bench_and_allreduce():
    from gpuhc.workloads import allreduce, bench, stress
    r = stress.run("cuda", duration_s=10, dtype="bf16")
    assert r.ok, [d.reason for d in r.devices]
    assert all(d.iterations > 0 and d.tflops > 0 and d.slots > 3 for d in r.devices)
    assert bench.hbm("cuda:0").gbps > 0
    p = bench.pcie("cuda:0")
    assert p.skipped is None and p.h2d_gbps > 0 and p.d2h_gbps > 0
    q = bench.p2p("cuda:0", "cuda:1")
    assert (q.skipped is not None) == (cuda_count() < 2)
    n = cuda_count()
    lr = allreduce.launch_local(n, backend="nccl", sizes=[1 << 20, 1 << 28], timeout_s=120, wait_s=600)
    assert lr.ok, lr.errors
