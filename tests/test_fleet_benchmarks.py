"""Benchmark figures across nodes (gpuhc/fleet/benchmarks.py): the closing table of a benchmark job,
`gpuhc stragglers` over a store of simulated nodes, a node drifting below its own best."""
import json
import random

from gpuhc import session
from gpuhc.fleet import benchmarks as FB
from gpuhc.model import Severity
from gpuhc.store import Store

from conftest import gpuhc


def record_bench(cfg, tmp_path, node, matmul=790.0, stress=760.0, job=None, scenario="h100-healthy"):
    """A bench run of a simulated node with these figures, recorded in the store."""
    sc = tmp_path / ("%s-%s.yaml" % (node, job))
    sc.write_text("extends: %s\ndeep: {gpu: {matmul_tflops: %s, stress_tflops: %s}}\n" % (scenario, matmul, stress))
    report, _, _ = session.run(cfg, "bench", suite="bench", node=node, simulate=str(sc), job_id=job)
    Store.from_config(cfg).record(report)
    return report


def test_a_slow_node_among_fifty_is_the_only_straggler(make_cfg, tmp_path):
    cfg = make_cfg()
    rng = random.Random(7)
    for n in range(50):
        node = "gpu-%03d" % n
        if n == 17:
            record_bench(cfg, tmp_path, node, matmul=600.0, stress=575.0)          # 25% slow, every GPU
        else:
            jitter = 1 + rng.uniform(-0.03, 0.03)                                   # healthy spread of +-3%
            record_bench(cfg, tmp_path, node, matmul=790 * jitter, stress=760 * jitter)
    result = FB.stragglers(Store.from_config(cfg), ["gpu-%03d" % n for n in range(50)])
    assert result["groups"] == {"dgx-h100": 50}
    flagged = {(s["node"], s["metric"]) for s in result["stragglers"]}
    assert flagged == {("gpu-017", "matmul_tflops"), ("gpu-017", "stress_tflops")}
    slow = next(s for s in result["stragglers"] if s["metric"] == "matmul_tflops")
    assert slow["ratio"] < 0.8 and slow["z"] < -3 and slow["peers"] == 50
    assert result["drift"] == []


def test_a_node_below_its_own_best_drifts_though_its_peers_match(make_cfg, tmp_path):
    cfg = make_cfg()
    record_bench(cfg, tmp_path, "gpu-001", matmul=790.0, job="1")
    record_bench(cfg, tmp_path, "gpu-001", matmul=690.0, job="2")           # the whole fleet drifts alike
    record_bench(cfg, tmp_path, "gpu-002", matmul=690.0, job="2")
    result = FB.stragglers(Store.from_config(cfg), ["gpu-001", "gpu-002"], metric="matmul_tflops")
    assert result["stragglers"] == []
    assert [(d["node"], d["metric"], d["best"]) for d in result["drift"]] == [("gpu-001", "matmul_tflops", 790.0)]


def test_job_table_names_the_node_below_the_jobs_median(make_cfg, tmp_path):
    cfg = make_cfg()
    reports = {n: record_bench(cfg, tmp_path, n, job="77") for n in ("gpu-001", "gpu-002", "gpu-004")}
    reports["gpu-003"] = record_bench(cfg, tmp_path, "gpu-003", job="77", scenario="h100-gpu-slow",
                                      matmul=790, stress=760)
    table = FB.job_table(reports)
    assert table["median"]["matmul_tflops"] == 790.0
    assert {s["node"] for s in table["slow"]} == {"gpu-003"}
    assert table["overall"]["gpu-003"] == "RESET" and table["nodes"]["gpu-003"]["matmul_tflops"] == 592.0
    rows, headers = FB.job_rows(table)
    assert rows[-1][0] == "median" and "592 *" in rows[2] and headers[0] == "NODE"


def test_gpuhc_bench_collect_and_stragglers_on_the_command_line(make_cfg, tmp_path):
    cfg = make_cfg()
    for n in ("gpu-001", "gpu-002", "gpu-003"):
        record_bench(cfg, tmp_path, n, job="9")
    record_bench(cfg, tmp_path, "gpu-004", job="9", matmul=500, stress=480)
    path = tmp_path / "config.yaml"
    path.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\n" % (tmp_path / "store", tmp_path / "state"))
    env = {"GPUHC_CONFIG": str(path)}
    res = gpuhc("bench", "--collect", "gpu-[001-004]", "--job", "9", env=env)
    assert res.returncode == 1, res.stderr
    assert "slow: gpu-004 matmul_tflops 500" in res.stdout and "median" in res.stdout
    res = gpuhc("bench", "--collect", "gpu-[001-004,009]", "--job", "9", "--json", env=env)
    out = json.loads(res.stdout)
    assert out["missing"] == ["gpu-009"] and out["median"]["matmul_tflops"] == 790.0
    # each collection is kept in the store's benchmark history, one record a job
    from gpuhc.store import BenchmarkHistory
    (first, second) = BenchmarkHistory.from_config(cfg).read(job_ids=["9"])[:2]
    assert {r["passed"] for r in (first, second)} == {False} and first["job_id"] == "9"
    assert first["nodes"] == ["gpu-001", "gpu-002", "gpu-003", "gpu-004"]
    assert first["figures"]["gpu-004"]["matmul_tflops"] == 500 and first["slow"][0]["node"] == "gpu-004"
    res = gpuhc("stragglers", "--json", env=env)
    assert res.returncode == 1
    assert {s["node"] for s in json.loads(res.stdout)["stragglers"]} == {"gpu-004"}
    res = gpuhc("stragglers", "-n", "gpu-[001-003]", env=env)
    assert res.returncode == 0 and "no stragglers among 3 nodes" in res.stdout


def test_node_figures_are_the_slowest_gpus():
    from gpuhc.model import Finding, GpuRef, Report
    r = Report("n", "bench", "p", 0, 1, [Finding("gpu_bench", Severity.PASS, "", gpu=GpuRef(0), metrics={"matmul_tflops": 790}),
                                         Finding("gpu_bench", Severity.RESET, "", gpu=GpuRef(1), metrics={"matmul_tflops": 500}),
                                         Finding("allreduce_node", Severity.PASS, "", metrics={"busbw_gbps": 460})])
    assert FB.node_figures(r) == {"matmul_tflops": 500, "busbw_gbps": 460}
