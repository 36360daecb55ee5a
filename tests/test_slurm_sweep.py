"""`gpuhc sweep` on the real test cluster (four simulated nodes): it picks only idle nodes, the
never-checked one first, then the next, then nothing within the interval; the busy node and the
operator's drain are left alone; the job records a `sweep` report and drains a node whose fault
only the deep checks see; --dry-run changes nothing; two sweeps started together submit each
node at most once."""
import json
import os
import subprocess
import sys

from conftest import ROOT
from test_slurm_integration import NODES, Site, wait_for


def sweep_site(cluster, tmp_path, **sweep):
    conf = {"output": cluster.path("jobs", "sweep-%j.out")}
    conf.update(sweep)
    return Site(cluster, tmp_path, sweep=conf)


def sweep_env(s):
    env = dict(s.cluster.client_env)
    env.pop("SLURMD_NODENAME", None)
    env["GPUHC_CONFIG"] = s.cluster.gpuhc_config
    # what the job runs as `gpuhc` (sbatch exports this environment): this source tree
    env["GPUHC"] = os.path.join(os.path.dirname(s.cluster.prolog_dir), "bin", "gpuhc")
    return env


def sweep_argv(*args):
    return [sys.executable, "-m", "gpuhc", "sweep"] + list(args)


def run_sweep(s, *args):
    """`gpuhc sweep ARGS --json` on the controller: (exit code, parsed output, stderr)."""
    res = subprocess.run(sweep_argv(*args, "--json"), capture_output=True, text=True, env=sweep_env(s), cwd=ROOT,
                         timeout=120)
    return res.returncode, json.loads(res.stdout) if res.stdout.strip() else None, res.stderr


def sweep_jobs(s):
    """name -> [job ids] of the gpuhc sweep jobs slurmctld holds (any state)."""
    out = {}
    res = s.cluster.run(["squeue", "-h", "-t", "all", "-o", "%j %i"])
    for line in res.stdout.splitlines():
        if line.startswith("gpuhc-sweep-"):
            name, job = line.split()
            out.setdefault(name, []).append(job)
    return out


def sweep_records(s, node):
    if not (s.store / "nodes" / node).exists():
        return []                                   # no result at all
    return [r for r in s.history(node) if r["context"] == "sweep"]


def record_old_sweep(s, node, age):
    """A sweep report of ``node`` from ``age`` seconds ago in the store (as if swept then)."""
    from gpuhc import config as C
    from gpuhc import session
    from gpuhc.store import Store

    cfg = C.load(s.cluster.gpuhc_config)
    report, _, _ = session.run(cfg, "sweep", suite="sweep", node=node, simulate=str(s.scenarios / ("%s.yaml" % node)))
    report.started -= age
    report.ended -= age
    Store.from_config(cfg).record(report)


def wait_done(s, job, timeout=120):
    return s.cluster.wait_job(int(job), timeout=timeout)


def test_sweep_rotates_over_the_idle_nodes_and_leaves_busy_and_drained_ones_alone(slurm, tmp_path):
    s = sweep_site(slurm, tmp_path)
    busy = slurm.sbatch("#!/bin/sh\nsleep 600\n", nodelist="gpu-001", job_name="users-training",
                         exclusive=True)
    wait_for(lambda: slurm.job(busy).get("JobState") == "RUNNING", 60, "the user's job running")
    slurm.drain("gpu-002", "operator: fan replacement, ticket 42")
    record_old_sweep(s, "gpu-004", 2 * 86400)        # checked two days ago; gpu-003 never

    code, out, err = run_sweep(s, "--max-nodes", "1")
    assert code == 0, err
    assert [c["node"] for c in out["chosen"]] == ["gpu-003"], out
    first = out["chosen"][0]
    assert first["last_checked"] is None and first["result"] == "submitted" and first["job_id"], out
    assert out["skipped"] == {"allocated": 1, "idle+drain": 1, "over --max-nodes (next run)": 1}, out
    assert wait_done(s, first["job_id"]) == "COMPLETED", slurm.job(first["job_id"])
    info = slurm.job(first["job_id"])
    assert info["JobName"] == "gpuhc-sweep-gpu-003" and info["NodeList"] == "gpu-003", info
    assert info["OverSubscribe"] == "NO", info             # --exclusive
    record = sweep_records(s, "gpu-003")[0]
    assert record["job_id"] == first["job_id"] and record["suite"] == "sweep" and record["overall"] == "PASS"
    assert {f["check"] for f in record["findings"]} >= {"gpu_stress", "xid", "nvlink"}

    code, out, err = run_sweep(s, "--max-nodes", "1")
    assert code == 0 and [c["node"] for c in out["chosen"]] == ["gpu-004"], (out, err)
    assert out["chosen"][0]["last_context"] == "sweep"
    assert wait_done(s, out["chosen"][0]["job_id"]) == "COMPLETED"
    wait_for(lambda: len(sweep_records(s, "gpu-004")) == 2, 20, "gpu-004's new sweep record")

    code, out, err = run_sweep(s, "--max-nodes", "1")
    assert code == 0 and out["chosen"] == [], out
    assert out["skipped"]["checked within the interval"] == 2, out
    assert set(sweep_jobs(s)) == {"gpuhc-sweep-gpu-003", "gpuhc-sweep-gpu-004"}
    assert slurm.job(busy)["JobState"] == "RUNNING"
    assert s.state("gpu-002") == (["IDLE", "DRAIN"], "operator: fan replacement, ticket 42")
    assert not sweep_records(s, "gpu-001") and not sweep_records(s, "gpu-002")


def test_the_sweep_drains_a_fault_only_the_deep_checks_see(slurm, tmp_path):
    """h100-gpu-slow passes every lightweight check (the prolog lets jobs run there) and fails
    gpu_stress: the sweep job drains it with gpuhc's reason and exits 1; the others pass."""
    s = sweep_site(slurm, tmp_path, max_idle_fraction=1.0)
    s.scenario("gpu-003", "extends: h100-gpu-slow\n")
    code, out, err = run_sweep(s, "--max-nodes", "4")
    assert code == 0 and sorted(c["node"] for c in out["chosen"]) == NODES, (out, err)
    jobs = {c["node"]: c["job_id"] for c in out["chosen"]}
    for node, job in jobs.items():
        assert wait_done(s, job) == ("FAILED" if node == "gpu-003" else "COMPLETED"), (node, slurm.job(job))
    reason = s.wait_drained("gpu-003")
    assert reason.startswith("gpuhc: RESET gpu_stress: GPU5 25% below"), reason
    assert slurm.job(jobs["gpu-003"])["ExitCode"] == "1:0"
    record = s.newest("gpu-003", "sweep")
    assert record["overall"] == "RESET" and record["action"] == "drain" and record["job_id"] == jobs["gpu-003"]
    prolog = s.newest("gpu-003", "prolog")
    assert prolog["overall"] == "PASS" and prolog["job_id"] == jobs["gpu-003"]
    for node in ("gpu-001", "gpu-002", "gpu-004"):
        assert "DRAIN" not in s.state(node)[0]
        assert s.newest(node, "sweep")["overall"] == "PASS"
    with open(slurm.path("jobs", "sweep-%s.out" % jobs["gpu-003"])) as fh:
        out = fh.read()
    assert "gpuhc sweep RESET gpu_stress GPU5" in out and "gpuhc sweep RESET on gpu-003" in out, out


def test_dry_run_changes_nothing_and_two_sweeps_at_once_submit_each_node_once(slurm, tmp_path):
    s = sweep_site(slurm, tmp_path, max_idle_fraction=1.0)
    before = [s.state(n) for n in NODES]
    earlier = sweep_jobs(s)                  # finished jobs of other tests stay for MinJobAge
    res = subprocess.run(sweep_argv("--dry-run", "--max-nodes", "4"), capture_output=True, text=True,
                         env=sweep_env(s), cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "PARTITION"] and len(lines) >= 5, res.stdout
    assert all(line.split()[1:4] == ["gpu", "never", "-"] for line in lines[1:5]), res.stdout
    assert "dry run: nothing submitted, nothing changed" in res.stdout
    assert sweep_jobs(s) == earlier and slurm.jobs() == []
    assert [s.state(n) for n in NODES] == before
    assert not (tmp_path / "state").exists()
    assert not [n for n in NODES if (s.store / "nodes" / n).exists()]

    procs = [subprocess.Popen(sweep_argv("--max-nodes", "4", "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=sweep_env(s), cwd=ROOT) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    submitted = [c["node"] for out, _ in results for c in json.loads(out)["chosen"] if c["job_id"]]
    assert sorted(submitted) == NODES, results
    jobs = {name: [j for j in ids if j not in earlier.get(name, [])] for name, ids in sweep_jobs(s).items()}
    jobs = {name: ids for name, ids in jobs.items() if ids}
    assert sorted(jobs) == ["gpuhc-sweep-%s" % n for n in NODES] and all(len(j) == 1 for j in jobs.values()), jobs
    for ids in jobs.values():
        wait_done(s, ids[0])
    # and once they are done, within the interval: nothing more
    code, out, err = run_sweep(s)
    assert code == 0 and out["chosen"] == [], out


def test_with_auto_quarantine_a_node_gpuhc_drained_for_reset_goes_to_quarantine(slurm, tmp_path):
    """The first sweep drains h100-gpu-slow at RESET (gpu_stress); the next one, with nothing left
    to sweep within the interval, sends that node to quarantine: a gpuhc reservation, the
    quarantine job run there, a quarantine report in the store, and no reservation left after."""
    s = Site(slurm, tmp_path, sweep={"output": slurm.path("jobs", "sweep-%j.out"), "max_idle_fraction": 1.0,
                                     "auto_quarantine": True},
             quarantine={"time_limit": 300, "deadline": 600, "grace": 60, "finish_wait": 90, "timeout": 60,
                         "output": slurm.path("jobs", "quarantine-%j.out")})
    s.scenario("gpu-003", "extends: h100-gpu-slow\n")
    code, out, err = run_sweep(s, "--max-nodes", "4")
    assert code == 0 and len(out["chosen"]) == 4, (out, err)
    assert out["quarantine"] == {"reconciled": [], "started": []}, out        # nothing drained yet
    for c in out["chosen"]:
        wait_done(s, c["job_id"])
    assert s.wait_drained("gpu-003").startswith("gpuhc: RESET gpu_stress")
    s.newest("gpu-003", "sweep")

    code, out, err = run_sweep(s)
    assert code == 0 and out["chosen"] == [], (out, err)
    (row,) = out["quarantine"]["started"]
    assert row["node"] == "gpu-003" and row["result"] == "started", out
    assert row["reservation"] == "gpuhc-quarantine-gpu-003" and row["job_id"], row
    info = slurm.job(row["job_id"])
    assert info["Reservation"] == "gpuhc-quarantine-gpu-003", info
    assert slurm.wait_job(int(row["job_id"]), timeout=150) in ("COMPLETED", "FAILED"), slurm.job(row["job_id"])
    assert slurm.job(row["job_id"])["NodeList"] == "gpu-003"
    wait_for(lambda: "gpuhc-quarantine-gpu-003" not in (slurm.reservations() or []) or None, 150,
             "the quarantine reservation of gpu-003 to go")
    report = s.newest("gpu-003", "quarantine", timeout=60)
    assert report["job_id"] == row["job_id"] and report.get("verdict"), report
    assert "DRAIN" in s.state("gpu-003")[0] or report["verdict"] == "RETURN_TO_SERVICE"
    # the other nodes were never sent anywhere
    assert all("DRAIN" not in s.state(n)[0] for n in NODES if n != "gpu-003")
