"""The deep checks (gpu_stress, gpu_bench, allreduce_node): their evaluate on fixtures, the simulated
nodes whose fault only shows under load, and the torch engine for real on the CPU through the same
backend (TorchDeep runs gpuhc.workloads in a child process)."""
import json
import os
import time

import pytest

from gpuhc import session
from gpuhc.backends.deep import HANG, UNAVAILABLE, DeepError, TorchDeep
from gpuhc.checks import allreduce_node as AR
from gpuhc.checks import gpu_bench as GB
from gpuhc.checks import gpu_stress as GS
from gpuhc.model import GpuRef, Severity
from gpuhc.profiles import Profile

from conftest import gpuhc

GPUS = [GpuRef(i, "GPU-%d" % i, "0000:%02x:00.0" % (0x18 + i)) for i in range(4)]
H100 = Profile(name="dgx-h100", gpus=4, model="H100", matmul_tflops=790, hbm_gbps=2900, pcie_gbps=52, p2p_gbps=380,
               busbw_gbps=460)

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (scripts/test installs the CPU build)")


def by_gpu(findings):
    return {f.gpu.index: f for f in findings if f.gpu is not None}


def stress(rates, mismatches=None, throttle=None):
    gpus = {i: {"tflops": r, "iterations": 100, "mismatches": (mismatches or {}).get(i, 0), "max_error": 0.0,
                "ref_ok": True, "reason": ""} for i, r in enumerate(rates)}
    return {"gpus": GPUS[:len(rates)], "duration": 60.0, "throttle": throttle or {},
            "result": {"ok": not mismatches, "faulty": sorted(mismatches or {}), "dtype": "bf16", "duration_s": 60.0,
                       "elapsed_s": 60.0, "notes": [], "gpus": gpus}}


# -- gpu_stress -----------------------------------------------------------------------------------

def test_stress_mismatch_is_isolate_naming_the_gpu():
    out = by_gpu(GS.evaluate(stress([760, 760, 760, 760], mismatches={2: 37}), None, None))
    assert out[2].severity is Severity.ISOLATE and "wrong results" in out[2].message
    assert out[2].metrics["stress_mismatches"] == 37
    assert {i: f.severity for i, f in out.items() if i != 2} == {0: Severity.PASS, 1: Severity.PASS, 3: Severity.PASS}


def test_stress_gpu_more_than_ten_percent_below_the_best_is_reset():
    out = by_gpu(GS.evaluate(stress([760, 690, 680, 760]), None, None))
    assert out[1].severity is Severity.PASS                 # 9.2% below: within the tolerance
    assert out[2].severity is Severity.RESET and "11% below the node's best" in out[2].message
    assert out[2].metrics["stress_tflops"] == 680


def test_stress_reports_hardware_slowdowns_seen_during_the_load():
    out = by_gpu(GS.evaluate(stress([760, 600, 760, 760], throttle={1: ["hw_thermal_slowdown"], 3: ["hw_slowdown"]}),
                             None, None))
    assert out[1].severity is Severity.RESET and "hw_thermal_slowdown" in out[1].message
    assert out[3].severity is Severity.MONITOR and "hw_slowdown" in out[3].message


def test_stress_that_hangs_is_reset_and_without_torch_is_a_checker_error():
    data = {"gpus": GPUS, "duration": 60.0, "error": {"code": HANG, "detail": "no result within 900 s"}}
    (hang,) = GS.evaluate(data, None, None)
    assert hang.severity is Severity.RESET and "did not finish" in hang.message
    data["error"] = {"code": UNAVAILABLE, "detail": "torch is not installed here"}
    (err,) = GS.evaluate(data, None, None)
    assert err.severity is Severity.ERROR and "pip install torch" in err.remediation


# -- gpu_bench ------------------------------------------------------------------------------------

def bench(matmul, hbm=2950.0, h2d=53.0, p2p=385.0, device="sim"):
    gpus = {i: {"matmul_tflops": {"bf16": m}, "hbm_gbps": hbm, "h2d_gbps": h2d, "d2h_gbps": h2d + 0.5}
            for i, m in enumerate(matmul)}
    pairs = [{"src": a, "dst": b, "gbps": p2p} for a in gpus for b in gpus if a != b]
    return {"gpus": GPUS[:len(matmul)], "dtypes": ["bf16"], "device": device,
            "result": {"gpus": gpus, "p2p": pairs, "skipped": {}}}


def test_bench_below_the_profile_floor_is_reset():
    out = by_gpu(GB.evaluate(bench([600, 610, 600, 605]), H100, None))     # all alike, all below 80% of 790
    assert all(f.severity is Severity.RESET and "below 80% of the profile's 790" in f.message for f in out.values())


def test_bench_slow_gpu_against_its_peers_is_reset_and_healthy_ones_pass():
    out = by_gpu(GB.evaluate(bench([790, 785, 680, 792]), H100, None))
    assert out[2].severity is Severity.RESET and "below the node's best GPU" in out[2].message
    assert [out[i].severity for i in (0, 1, 3)] == [Severity.PASS] * 3
    assert out[0].metrics["matmul_tflops"] == 790 and out[0].metrics["pcie_gbps"] == 53.0
    assert out[0].metrics["p2p_gbps"] == 385.0


def test_bench_on_the_cpu_reports_figures_only():
    """deep.device cpu: the 'GPUs' are one processor measured in turn (noisy on a shared machine):
    neither the GPU profile nor a peer comparison applies."""
    out = by_gpu(GB.evaluate(bench([0.2, 0.15, 0.2, 0.2], hbm=20, h2d=20, p2p=20, device="torch-cpu"), H100, None))
    assert all(f.severity is Severity.PASS for f in out.values())
    assert out[1].metrics["matmul_tflops"] == 0.15


def test_bench_thresholds_come_from_config():
    cfg = {"thresholds": {"bench_profile_floor": 0.7, "bench_peer_tolerance": 0.2}}
    out = by_gpu(GB.evaluate(bench([600, 610, 560, 605]), H100, cfg))          # 600 >= 0.7*790; 560 >= 0.8*610
    assert all(f.severity is Severity.PASS for f in out.values())


# -- allreduce_node -------------------------------------------------------------------------------

def allreduce(busbw, ok=True, wrong=0, expect=None, gpus=8, device="sim"):
    sizes = [{"size_bytes": 1 << 30, "count": 1 << 28, "dtype": "float32", "time_us": 5000.0, "algbw_gbps": busbw / 1.75,
              "busbw_gbps": busbw, "wrong": wrong}]
    return {"gpus": gpus, "device": device, "expect": expect,
            "result": {"ok": ok, "world": gpus, "backend": "nccl", "error": None if ok else "rank 3: timed out",
                       "sizes": sizes if ok else []}}


def test_allreduce_below_ninety_percent_of_the_profile_is_reset():
    (f,) = AR.evaluate(allreduce(400.0), H100, None)
    assert f.severity is Severity.RESET and "below 90% of the expected 460" in f.message
    (f,) = AR.evaluate(allreduce(420.0), H100, None)
    assert f.severity is Severity.PASS and f.metrics["busbw_gbps"] == 420.0
    assert f.metrics["busbw_gbps@%d" % (1 << 30)] == 420.0


def test_allreduce_expectation_from_config_overrides_the_profile():
    (f,) = AR.evaluate(allreduce(0.5, expect=1.0, device="torch-cpu"), H100, None)
    assert f.severity is Severity.RESET and "expected 1 GB/s" in f.message
    (f,) = AR.evaluate(allreduce(0.5, device="torch-cpu"), H100, None)       # CPU: the GPU profile does not apply
    assert f.severity is Severity.PASS and "no expected value" in f.message


def test_allreduce_failure_wrong_sums_and_single_gpu():
    (f,) = AR.evaluate(allreduce(0, ok=False), H100, None)
    assert f.severity is Severity.RESET and "rank 3: timed out" in f.message
    (f,) = AR.evaluate(allreduce(450.0, wrong=3), H100, None)
    assert f.severity is Severity.RESET and "3 wrong elements" in f.message
    (f,) = AR.evaluate({"gpus": 1, "device": "sim", "expect": None}, H100, None)
    assert f.severity is Severity.SKIP


# -- simulated nodes: the faults only load shows ---------------------------------------------------

@pytest.mark.parametrize("scenario,gpu,severity", [("h100-gpu-slow", 5, "RESET"), ("h100-gpu-miscompute", 2, "ISOLATE")])
def test_a_deep_only_fault_passes_the_prolog_and_fails_under_load(make_cfg, scenario, gpu, severity):
    cfg = make_cfg()
    prolog, _, _ = session.run(cfg, "prolog", node="gpu-001", simulate=scenario)
    assert prolog.overall is Severity.PASS
    deep, _, _ = session.run(cfg, "quarantine", suite="deep", node="gpu-001", simulate=scenario)
    bad = [f for f in deep.findings if f.severity.is_tier and f.severity.rank >= Severity.RESET.rank]
    assert bad and {f.gpu.index for f in bad} == {gpu} and deep.overall.value == severity


def test_healthy_scenarios_pass_the_deep_suite(make_cfg):
    for name in ("h100-healthy", "a100-healthy", "a30-healthy"):
        report, _, _ = session.run(make_cfg(), "bench", suite="bench", node="gpu-001", simulate=name)
        assert report.overall is Severity.PASS, (name, [f.to_dict() for f in report.findings if f.severity.unhealthy])


def test_deep_checks_never_run_in_the_prolog(make_cfg):
    report, _, _ = session.run(make_cfg(), "prolog", checks=["gpu_stress"], node="gpu-001", simulate="h100-gpu-slow")
    (f,) = [f for f in report.findings if f.check == "gpu_stress"]
    assert f.severity is Severity.SKIP and "not run in a prolog run" in f.message


def test_a_simulated_hang_is_a_reset_within_the_checks_timeout(make_cfg, tmp_path):
    sc = tmp_path / "hang.yaml"
    sc.write_text("extends: h100-healthy\ndeep: {hang: [allreduce]}\n")
    cfg = make_cfg(allreduce_node={"timeout": 1.0})
    t0 = time.monotonic()
    report, _, _ = session.run(cfg, "bench", checks=["allreduce_node"], node="gpu-001", simulate=str(sc))
    assert time.monotonic() - t0 < 5
    (f,) = [f for f in report.findings if f.check == "allreduce_node"]
    assert f.severity is Severity.RESET and "did not finish" in f.message


# -- the torch engine, for real on the CPU --------------------------------------------------------

def test_torch_engine_child_that_does_not_answer_is_killed_at_its_timeout():
    """TorchDeep's child is given 0.3 s, less than importing torch takes: a HANG, within the limit,
    and its process group is gone."""
    deep = TorchDeep("cpu")
    t0 = time.monotonic()
    with pytest.raises(DeepError) as err:
        deep.stress([0, 1], 5.0, "fp32", 0.3)
    assert err.value.code == HANG and time.monotonic() - t0 < 2.0


@needs_torch
def test_gpuhc_bench_runs_the_torch_code_on_the_cpu(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\ndetect: {cloud_metadata: false}\n"
                   "allreduce_node: {max_bytes: 262144}\n" % (tmp_path / "store", tmp_path / "state"))
    res = gpuhc("bench", "--simulate", "a30-healthy", "--device", "cpu", "--duration", "1", "--node", "gpu-001",
                "--json", env={"GPUHC_CONFIG": str(cfg)}, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["context"] == "bench" and report["overall"] == "PASS"
    figures = {(f["check"], (f["gpu"] or {}).get("index")): f["metrics"] for f in report["findings"]}
    assert figures[("gpu_stress", 0)]["stress_tflops"] > 0 and figures[("gpu_stress", 1)]["stress_iterations"] > 0
    assert figures[("gpu_bench", 0)]["matmul_tflops"] > 0 and figures[("gpu_bench", 1)]["hbm_gbps"] > 0
    curve = figures[("allreduce_node", None)]
    assert curve["busbw_gbps"] > 0 and curve["allreduce_bytes"] == 262144
    assert "allreduce" in res.stderr                           # progress lines on stderr
    assert os.path.exists(tmp_path / "store" / "nodes" / "gpu-001" / "latest.json")
