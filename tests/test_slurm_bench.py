"""sbatch/benchmark.sbatch on the real test cluster: four simulated nodes run `gpuhc bench` at once
(one task per node, exclusive), and the job's closing table names the one slow node."""
import json
import os

from conftest import ROOT
from test_slurm_integration import NODES, Site


def job_env(cluster):
    shim = os.path.join(os.path.dirname(cluster.prolog_dir), "bin", "gpuhc")
    return "ALL,GPUHC=%s,GPUHC_CONFIG=%s" % (shim, cluster.gpuhc_config)


def test_benchmark_job_over_four_nodes_flags_the_slow_one(slurm, tmp_path):
    s = Site(slurm, tmp_path)
    s.scenario("gpu-003", "extends: h100-gpu-slow\n")
    with open(os.path.join(ROOT, "sbatch", "benchmark.sbatch")) as fh:
        script = fh.read()
    job = slurm.sbatch(script, nodes=4, export=job_env(slurm))
    assert slurm.wait_job(job, timeout=180) in ("COMPLETED", "FAILED"), slurm.job(job)
    with open(slurm.path("jobs", "slurm-%d.out" % job)) as fh:
        out = fh.read()
    assert "== the job's nodes side by side" in out, out
    table = out.split("== the job's nodes side by side", 1)[1]
    for node in NODES:
        assert node in table, table
    assert "slow: gpu-003 matmul_tflops 592" in table and "median" in table, table
    assert slurm.job(job)["ExitCode"].startswith("1:"), slurm.job(job)      # a slow node: exit 1
    # every node recorded its bench report with the job's id
    for node in NODES:
        records = json.loads(s.gpuhc("history", node, "--json", check=True).stdout)
        bench = [r for r in records if r["context"] == "bench"]
        assert bench and bench[0]["job_id"] == str(job), (node, records)
    # the job's aggregate is in the store's benchmark history
    from gpuhc import config
    from gpuhc.store import BenchmarkHistory
    (agg,) = BenchmarkHistory.from_config(config.load(slurm.gpuhc_config)).read(job_ids=[str(job)])
    assert agg["nodes"] == NODES and agg["passed"] is False and agg["slow"][0]["node"] == "gpu-003"
    # the nodes are untouched by a benchmark (it never drains)
    assert all("DRAIN" not in s.state(n)[0] for n in NODES)
