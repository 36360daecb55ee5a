"""The multi-node all-reduce on the real test cluster (CPU, gloo, one rank per node): sbatch/nccl-allreduce.sbatch
over four simulated nodes (healthy; one slow: bisected inside the job and drained; one hanging: the group
fails within its timeout), and `gpuhc nccl --pairs` from the controller. The figures are CPU figures, so
config sets the expected bus bandwidth (nccl.expect_busbw_gbps) between a healthy group's and a slowed one's.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_slurm_integration import NODES, Site

# 4 KiB..1 MiB: a healthy group of four CPU ranks reaches ~0.1-0.5 GB/s at 1 MiB; a node adding 50 ms to each
# collective (h100-nccl-slow) holds its group under 0.035 GB/s at every size
NCCL = {"expect_busbw_gbps": 0.06, "sizes": [4096, 65536, 1048576], "warmup": 1, "iters": 3, "timeout": 4.0,
        "device": "cpu", "time_limit": 600.0, "deadline": 1200.0, "pairs_wait": 240.0}
SLOW, HUNG = "gpu-003", "gpu-002"


def job_env(cluster):
    shim = os.path.join(os.path.dirname(cluster.prolog_dir), "bin", "gpuhc")
    return "ALL,GPUHC=%s,GPUHC_CONFIG=%s" % (shim, cluster.gpuhc_config)


def script(*args):
    with open(os.path.join(ROOT, "sbatch", "nccl-allreduce.sbatch")) as fh:
        text = fh.read()
    if args:
        text = text.replace('nccl --job-bisect "$@"', 'nccl --job-bisect %s "$@"' % " ".join(args))
    return text


def submit(s, *args):
    return s.cluster.sbatch(script(*args), nodes=4, ntasks_per_node=1, export=job_env(s.cluster))


def output(s, job):
    with open(s.cluster.path("jobs", "slurm-%d.out" % job)) as fh:
        return fh.read()


def pair_history(s):
    path = s.store / "pairs" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def nccl_report(s, node):
    return next((r for r in s.history(node) if r["context"] == "nccl"), None)


@pytest.fixture
def site(slurm, tmp_path):
    def make(**config):
        config.setdefault("nccl", dict(NCCL))
        return Site(slurm, tmp_path, **config)
    return make


def test_four_healthy_nodes_pass_and_are_recorded(site):
    s = site()
    t0 = time.monotonic()
    job = submit(s)
    assert s.cluster.wait_job(job, timeout=180) == "COMPLETED", (s.cluster.job(job), output(s, job))
    out = output(s, job)
    assert "PASS all-reduce over gpu-[001-004] (4 ranks)" in out, out
    # nccl-tests' table and a progress line per size
    assert "#       size         count      type   redop       time    algbw    busbw" in out, out
    assert out.count("gpuhc nccl: allreduce: 4 ranks") == 3, out
    records = pair_history(s)
    assert len(records) == 1, records
    rec = records[0]
    assert rec["nodes"] == NODES and rec["passed"] and rec["job_id"].startswith("%d." % job), rec
    assert [x["size_bytes"] for x in rec["sizes"]] == NCCL["sizes"] and rec["busbw_gbps"] > 0.054, rec
    assert rec["torch_version"] and rec["backend"] == "gloo" and "env" in rec, rec
    for node in NODES:
        report = nccl_report(s, node)
        assert report and report["overall"] == "PASS" and report["job_id"] == str(job), (node, report)
        assert "busbw_gbps@1048576" in report["findings"][0]["metrics"], report
        assert "DRAIN" not in s.state(node)[0]
    print("healthy job: %.1f s" % (time.monotonic() - t0))


def test_slow_node_is_bisected_inside_the_job_and_drained_alone(site):
    s = site()
    s.scenario(SLOW, "extends: h100-nccl-slow\n")
    t0 = time.monotonic()
    job = submit(s)
    assert s.cluster.wait_job(job, timeout=300) in ("COMPLETED", "FAILED"), (s.cluster.job(job), output(s, job))
    out = output(s, job)
    print(out)
    assert s.cluster.job(job)["ExitCode"].startswith("1:"), (s.cluster.job(job), out)
    assert "FAIL all-reduce over gpu-[001-004] (4 ranks)" in out, out
    assert "bisecting inside the job's allocation" in out, out
    verdict = out.split("== verdict ==", 1)[1]
    assert "convicted: %s:" % SLOW in verdict and verdict.count("convicted:") == 1, verdict
    # drained with the gpuhc reason; the three others untouched
    reason = s.wait_drained(SLOW, timeout=30)
    assert reason.startswith("gpuhc: RESET nccl: ") and " GB/s with gpu-" in reason, reason
    assert reason.endswith("(expected >= 0.054 GB/s)"), reason
    for node in NODES:
        if node != SLOW:
            flags, why = s.state(node)
            assert "DRAIN" not in flags, (node, flags, why)
            assert nccl_report(s, node)["overall"] == "PASS"
    report = nccl_report(s, SLOW)
    assert report["overall"] == "RESET" and report["action"] == "drain", report
    # every run of the job, in the pair history: the group, then the subsets the bisection ran
    records = [r for r in pair_history(s) if r["job_id"].split(".")[0] == str(job)]
    assert len(records) >= 4 and records[0]["nodes"] == NODES and not records[0]["passed"], records
    assert all(r["passed"] == (SLOW not in r["nodes"]) for r in records), [(r["nodes"], r["passed"]) for r in records]
    assert all(r["algo"] == "Ring" for r in records if len(r["nodes"]) == 2), records
    print("slow job: %.1f s, %d runs" % (time.monotonic() - t0, len(records)))


def test_hanging_rank_ends_the_job_within_its_timeout_as_a_failure_of_the_group(site):
    s = site()
    s.scenario(HUNG, "extends: h100-nccl-hang\n")
    t0 = time.monotonic()
    job = submit(s, "--no-bisect")
    assert s.cluster.wait_job(job, timeout=120) == "FAILED", (s.cluster.job(job), output(s, job))
    took = time.monotonic() - t0
    out = output(s, job)
    info = s.cluster.job(job)
    print(out)
    assert info["ExitCode"].startswith("1:") and info["JobState"] != "TIMEOUT", info
    # the group's peers time out after nccl.timeout (4 s); the hung rank's watchdog ends it 5 s later; the
    # rest is starting Python and torch: far inside the template's hour
    assert took < 60, (took, out)
    assert "FAIL all-reduce over gpu-[001-004] (4 ranks): failed:" in out, out
    assert "not bisected" in out, out
    rec = pair_history(s)[-1]
    assert rec["nodes"] == NODES and not rec["passed"] and rec["busbw_gbps"] is None, rec
    assert "imed out" in (rec["error"] or ""), rec
    # one failed run cannot say who is to blame: nobody drained, every node's result undecided (ERROR)
    for node in NODES:
        assert "DRAIN" not in s.state(node)[0], node
        report = nccl_report(s, node)
        assert report["overall"] == "ERROR" and "gpu-" in report["findings"][0]["message"], report
    print("hung job: %.1f s" % took)


def gpuhc_controller(s, *args, timeout=300):
    env = dict(s.cluster.client_env)
    env.update(GPUHC_CONFIG=s.cluster.gpuhc_config,
               GPUHC=os.path.join(os.path.dirname(s.cluster.prolog_dir), "bin", "gpuhc"))
    env.pop("SLURMD_NODENAME", None)
    return subprocess.run([sys.executable, "-m", "gpuhc"] + list(args), capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_pairs_from_the_controller_convict_only_the_slow_node(site):
    s = site()
    s.scenario(SLOW, "extends: h100-nccl-slow\n")
    t0 = time.monotonic()
    res = gpuhc_controller(s, "nccl", "--pairs", "gpu-[001-004]", "--ntasks-per-node", "1", "--json")
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads(res.stdout)
    # the circle method's three rounds of two pairs, then what blame's rule asks for to convict: the slow
    # node again beside partners that passed
    circle = [j for j in out["jobs"] if j["round"] <= 3]
    assert len(circle) == 6 and {j["round"] for j in circle} == {1, 2, 3}, out["jobs"]
    assert all(SLOW in j["nodes"] for j in out["jobs"] if j["round"] > 3), out["jobs"]
    assert all(j["state"] in ("COMPLETED", "FAILED") for j in out["jobs"]), out["jobs"]
    assert list(out["convicted"]) == [SLOW] and out["suspect_links"] == [], out
    assert sorted(out["convicted"][SLOW]["partners"]) == [n for n in NODES if n != SLOW], out
    assert out["innocent"] == [n for n in NODES if n != SLOW], out
    # the pair history holds the six pairs, each run with Ring; pass exactly when the slow node is not in it
    records = [r for r in pair_history(s) if r["purpose"] == "pair"]
    assert len(records) == len(out["jobs"]), records
    assert all(r["algo"] == "Ring" for r in records if len(r["nodes"]) == 2), records
    assert all(r["passed"] == (SLOW not in r["nodes"]) for r in records), records
    reason = s.wait_drained(SLOW, timeout=30)
    assert reason.startswith("gpuhc: RESET nccl: ") and "with gpu-[001-002,004]" in reason, reason
    for node in NODES:
        if node != SLOW:
            assert "DRAIN" not in s.state(node)[0], node
    print(res.stderr)
    print("pairs: %.1f s, %d jobs" % (took, len(out["jobs"])))
