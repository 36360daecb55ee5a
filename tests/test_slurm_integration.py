"""gpuhc in a real Slurm cluster (scripts/devcluster.py): four slurmd on 127.0.0.1, each node its
own simulated scenario through `simulate: DIR/%n.yaml`, the repository's prolog/epilog wrappers,
real jobs, and real node states and reasons asserted.

Needs root and Debian's slurm-wlm + munge (scripts/install-slurm); skipped otherwise, and an
error under GPUHC_REQUIRE_SLURM=1 (CI).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT

NODES = ["gpu-001", "gpu-002", "gpu-003", "gpu-004"]
JOB = "#!/bin/sh\nsleep 1\necho ran on $SLURMD_NODENAME\n"


class Site:
    """One test's gpuhc set-up on the shared cluster: config, scenarios, store, state."""

    def __init__(self, cluster, tmp_path, **config):
        self.cluster = cluster
        self.dir = tmp_path
        self.scenarios = tmp_path / "scenarios"
        self.scenarios.mkdir()
        self.store = tmp_path / "store"
        cfg = {
            "store": str(self.store), "state_dir": str(tmp_path / "state"),
            "simulate": str(self.scenarios / "%n.yaml"),
            "detect": {"cloud_metadata": False, "slurm_features": False},
            "timeouts": {"check": 3, "budget": {"prolog": 8, "epilog": 15, "healthcheck": 15}},
            "slurm": {"timeout": 10},
        }
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        with open(cluster.gpuhc_config, "w") as fh:
            json.dump(cfg, fh)          # JSON is YAML
        for node in NODES:
            self.scenario(node, "extends: h100-healthy\n")
        cluster.add_prolog("50-gpuhc", src=os.path.join(ROOT, "slurm", "prolog.d", "50-gpuhc"))
        cluster.add_epilog("50-gpuhc", src=os.path.join(ROOT, "slurm", "epilog.d", "50-gpuhc"))

    def scenario(self, node, text):
        (self.scenarios / ("%s.yaml" % node)).write_text(text)

    def gpuhc(self, *args, node=None, check=False):
        """gpuhc as it runs on a node (SLURMD_NODENAME) or on the controller."""
        env = dict(self.cluster.client_env)
        env["GPUHC_CONFIG"] = self.cluster.gpuhc_config
        env.pop("SLURMD_NODENAME", None)
        if node:
            env["SLURMD_NODENAME"] = node
        res = subprocess.run([sys.executable, "-m", "gpuhc"] + list(args), capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=60)
        if check:
            assert res.returncode == 0, res.stdout + res.stderr
        return res

    def state(self, node):
        return self.cluster.node_state(node)

    def comment(self, node):
        out = self.cluster.run(["scontrol", "show", "node", node]).stdout
        return out.split("Comment=", 1)[1].split("\n", 1)[0].strip() if "Comment=" in out else ""

    def history(self, node):
        res = self.gpuhc("history", node, "--json", check=True)
        return json.loads(res.stdout)

    def newest(self, node, context, timeout=20):
        """The newest record of ``context`` on ``node``, waiting for it: a drain shows in Slurm a
        moment before its record reaches the store (the breaker's recount comes in between)."""
        def found():
            res = self.gpuhc("history", node, "--json")
            records = json.loads(res.stdout) if res.returncode == 0 else []
            return next((r for r in records if r["context"] == context), None)
        return wait_for(found, timeout, "a %s record of %s in the store" % (context, node))

    def wait_drained(self, node, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flags, reason = self.state(node)
            if "DRAIN" in flags and reason:
                return reason
            time.sleep(0.25)
        raise AssertionError("%s not drained after %ds: %s" % (node, timeout, self.state(node)))

    def only(self, node):
        """Hold every other node with an admin drain, so the next job lands on `node`."""
        for other in NODES:
            if other != node:
                self.cluster.drain(other, "test: hold")

    def release(self, node):
        for other in NODES:
            if other != node:
                self.cluster.resume(other)


def drained(flags):
    return "DRAIN" in flags


@pytest.fixture
def site(slurm, tmp_path):
    def make(**config):
        return Site(slurm, tmp_path, **config)
    return make


def test_healthy_nodes_run_jobs_and_results_are_recorded(site):
    s = site()
    jobs = [s.cluster.sbatch(JOB, nodelist=n) for n in NODES]
    for job in jobs:
        assert s.cluster.wait_job(job, timeout=90) == "COMPLETED", s.cluster.job(job)
    for node in NODES:
        flags, reason = s.state(node)
        assert not drained(flags), (node, flags, reason)
        contexts = {(r["context"], r["job_id"]) for r in s.history(node)}
        assert any(c == "prolog" for c, _ in contexts) and any(c == "epilog" for c, _ in contexts), contexts
        assert all(r["overall"] == "PASS" for r in s.history(node))


def test_xid79_node_is_drained_and_the_job_finishes_elsewhere(site):
    s = site()
    s.scenario("gpu-002", "extends: h100-xid79\n")
    s.only("gpu-002")
    job = s.cluster.sbatch(JOB)
    reason = s.wait_drained("gpu-002")
    assert reason.startswith("gpuhc: REBOOT xid: Xid 79 on GPU3 0000:5d:00.0"), reason
    s.release("gpu-002")
    assert s.cluster.wait_job(job, timeout=120) == "COMPLETED", s.cluster.job(job)
    info = s.cluster.job(job)
    assert info["NodeList"] != "gpu-002" and int(info["Restarts"]) >= 1, info
    assert s.state("gpu-002")[1] == reason          # Slurm kept gpuhc's reason
    prolog = s.newest("gpu-002", "prolog")
    assert prolog["action"] == "drain" and prolog["job_id"] == str(job)


def test_admin_drain_is_never_touched(site):
    s = site()
    s.scenario("gpu-003", "extends: h100-xid79\n")
    s.cluster.drain("gpu-003", "fan replacement, ticket 42")
    for context in ("prolog", "epilog", "healthcheck"):
        res = s.gpuhc(context, node="gpu-003")
        assert res.returncode == 0, (context, res.stdout, res.stderr)
        assert "drained by someone else" in res.stdout
        assert s.state("gpu-003") == (["IDLE", "DRAIN"], "fan replacement, ticket 42")
    for force in ([], ["--force"]):
        res = s.gpuhc("resume", "gpu-003", *force)
        assert res.returncode == 1 and "refused" in res.stdout, res.stdout + res.stderr
        assert s.state("gpu-003")[1] == "fan replacement, ticket 42"


def test_monitor_only_node_keeps_running_jobs(site):
    s = site()
    s.scenario("gpu-004", "extends: h100-xid45-burst\n")
    job = s.cluster.sbatch(JOB, nodelist="gpu-004")
    assert s.cluster.wait_job(job, timeout=90) == "COMPLETED", s.cluster.job(job)
    assert not drained(s.state("gpu-004")[0])
    assert s.comment("gpu-004").startswith("gpuhc: MONITOR xid: Xid ")
    assert s.newest("gpu-004", "prolog")["overall"] == "MONITOR"
    # the burst was logged before the job began: the epilog does not pin it on this job
    assert s.newest("gpu-004", "epilog")["overall"] == "PASS"
    assert {r["overall"] for r in s.history("gpu-004")} <= {"MONITOR", "PASS"}


def test_xid_during_a_job_is_drained_by_the_epilog_and_tied_to_the_job(site):
    s = site()
    path = s.scenarios / "gpu-001.yaml"
    s.scenario("gpu-001", "extends: h100-healthy\nkernel_log:\n  - '[    5.2] NVRM: loading NVIDIA UNIX x86_64 Kernel Module'\n")
    xid = "  - '[ 4242.0] NVRM: Xid (PCI:0000:5d:00): 79, pid=777, name=python3, GPU has fallen off the bus.'"
    job = s.cluster.sbatch("#!/bin/sh\nsleep 1\necho \"%s\" >> %s\n" % (xid, path), nodelist="gpu-001")
    assert s.cluster.wait_job(job, timeout=90) == "COMPLETED", s.cluster.job(job)
    reason = s.wait_drained("gpu-001")
    assert reason.startswith("gpuhc: REBOOT xid: Xid 79 on GPU3") and reason.endswith("job %d" % job), reason
    epilog = s.newest("gpu-001", "epilog")
    assert epilog["job_id"] == str(job) and epilog["action"] == "drain"
    assert any(f["check"] == "xid" and f["severity"] == "REBOOT" and f["gpu"]["index"] == 3 for f in epilog["findings"])
    prolog = [r for r in s.history("gpu-001") if r["context"] == "prolog"][0]
    assert prolog["overall"] == "PASS" and prolog["job_id"] == str(job)


def test_resume_needs_evidence_or_force(site):
    s = site(resume={"passes": 2})
    # a REBOOT drain: passes on the same boot do not count, passes after a reboot do
    s.scenario("gpu-001", "extends: h100-xid79\nnode: {boot_id: boot-1}\n")
    assert s.gpuhc("healthcheck", node="gpu-001").returncode == 0
    assert s.state("gpu-001")[1].startswith("gpuhc: REBOOT")
    res = s.gpuhc("resume", "gpu-001")
    assert res.returncode == 1 and "kept" in res.stdout and "0 of 2 passes" in res.stdout, res.stdout
    s.scenario("gpu-001", "extends: h100-healthy\nnode: {boot_id: boot-2}\n")     # rebooted, healthy
    s.gpuhc("healthcheck", node="gpu-001", check=True)
    assert drained(s.state("gpu-001")[0])                                           # 1 of 2
    s.gpuhc("healthcheck", node="gpu-001", check=True)
    assert not drained(s.state("gpu-001")[0]), s.state("gpu-001")                   # resumed on evidence
    # a RESET drain resumed at once by --force
    s.scenario("gpu-002", "extends: h100-pcie-x8\n")
    s.gpuhc("healthcheck", node="gpu-002", check=True)
    assert s.state("gpu-002")[1].startswith("gpuhc: RESET pcie: GPU4 PCIe link x8")
    res = s.gpuhc("resume", "gpu-002", "--force")
    assert res.returncode == 0 and "resumed" in res.stdout, res.stdout + res.stderr
    assert not drained(s.state("gpu-002")[0])


def test_breaker_turns_a_second_drain_into_would_drain(site):
    s = site(breaker={"max_fraction": 0.25})
    s.scenario("gpu-002", "extends: h100-pcie-x8\n")
    s.scenario("gpu-003", "extends: h100-xid79\n")
    s.gpuhc("healthcheck", node="gpu-002", check=True)
    assert s.state("gpu-002")[1].startswith("gpuhc: RESET")
    res = s.gpuhc("healthcheck", node="gpu-003", check=True)
    assert "would-drain" in res.stdout and "breaker" in res.stdout, res.stdout
    assert not drained(s.state("gpu-003")[0])
    status = json.loads(s.gpuhc("status", "-N", "--json", check=True).stdout)
    health = {n["node"]: n["health"] for n in status["nodes"]}
    assert health["gpu-003"] == "would-drain" and health["gpu-002"] == "drained", health


def test_hung_nvml_prolog_returns_within_budget_and_drains_reboot(site):
    s = site(timeouts={"check": 2, "budget": {"prolog": 6}})
    s.scenario("gpu-004", "extends: h100-nvml-hang\n")
    s.only("gpu-004")
    job = s.cluster.sbatch(JOB)
    reason = s.wait_drained("gpu-004", timeout=60)
    assert reason.startswith("gpuhc: REBOOT nvml: GPU library call device_count did not return within 2s"), reason
    prolog = s.newest("gpu-004", "prolog")
    assert prolog["action"] == "drain" and prolog["duration_s"] < 6, prolog["duration_s"]
    s.release("gpu-004")
    assert s.cluster.wait_job(job, timeout=120) == "COMPLETED"


def test_status_against_the_cluster(site):
    s = site()
    s.scenario("gpu-002", "extends: h100-pcie-x8\n")
    s.cluster.drain("gpu-004", "rack maintenance")
    for node in ("gpu-001", "gpu-002"):
        s.gpuhc("healthcheck", node=node, check=True)
    out = s.gpuhc("status", check=True).stdout
    assert "gpu" in out.splitlines()[1]                      # partition from Slurm
    per_node = {n["node"]: n for n in json.loads(s.gpuhc("status", "-N", "--json", check=True).stdout)["nodes"]}
    assert per_node["gpu-001"]["health"] == "healthy"
    assert per_node["gpu-002"]["health"] == "drained"
    assert per_node["gpu-003"]["health"] == "never-checked"
    assert per_node["gpu-004"]["health"] == "drained-admin"
    reasons = s.gpuhc("status", "-R", check=True).stdout
    assert "rack maintenance" in reasons and "gpuhc: RESET pcie" in reasons
    # filters and formats, with Slurm's view merged in
    drained_only = s.gpuhc("status", "-N", "-t", "drained,drained-admin", "--noheader", "-o", "%N %t %T", check=True)
    rows = [line.split() for line in drained_only.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["gpu-002", "drained"], ["gpu-004", "drained-admin"]], rows
    assert all("DRAIN" in r[2].upper() for r in rows), rows
    picked = s.gpuhc("status", "-N", "-p", "gpu", "-n", "gpu-00[1-2]", "--noheader", "-o", "%N %P", check=True)
    assert [line.split() for line in picked.stdout.splitlines()] == [["gpu-001", "gpu"], ["gpu-002", "gpu"]]


def test_epilog_suite_follows_the_job_exit_and_the_allowed_opt_out(site):
    s = site(job_optout={"allowed": True}, epilog={"ask_slurm_exit_code": True})
    ok = s.cluster.sbatch(JOB, nodelist="gpu-001")
    failed = s.cluster.sbatch("#!/bin/sh\nexit 3\n", nodelist="gpu-002")
    opted = s.cluster.sbatch("#!/bin/sh\nexit 3\n", nodelist="gpu-003", comment="gpuhc:skip-slow")
    for job in (ok, failed, opted):
        s.cluster.wait_job(job, timeout=90)

    def epilog_suite(node, job):
        return [r["suite"] for r in s.history(node) if r["context"] == "epilog" and r["job_id"] == str(job)]

    assert epilog_suite("gpu-001", ok) == ["epilog"]
    assert epilog_suite("gpu-002", failed) == ["epilog_failure"]
    assert epilog_suite("gpu-003", opted) == ["epilog"]
    assert all(not drained(s.state(n)[0]) for n in ("gpu-001", "gpu-002", "gpu-003"))
    # a step that crashed under a script that went on and exited 0 (SLURM_JOB_DERIVED_EC), and a
    # job cancelled while it ran (killed by a signal; its epilog's environment says 0:0, Slurm is
    # asked): both failed jobs as far as the GPUs go
    step = s.cluster.sbatch("#!/bin/sh\nsrun sh -c 'exit 7'\nexit 0\n", nodelist="gpu-004")
    s.cluster.wait_job(step, timeout=90)
    assert epilog_suite("gpu-004", step) == ["epilog_failure"], s.cluster.job(step)
    long = s.cluster.sbatch("#!/bin/sh\nsleep 300\n", nodelist="gpu-001")
    s.cluster.wait_job(long, timeout=60, states=("RUNNING",))
    time.sleep(1)
    s.cluster.run(["scancel", str(long)])
    s.cluster.wait_job(long, timeout=90)
    assert epilog_suite("gpu-001", long) == ["epilog_failure"], s.cluster.job(long)


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("%s not reached after %ds" % (what, timeout))


def test_maintenance_fail_and_quarantine_states_are_left_alone_and_shown(site):
    """A MAINT reservation (how quarantine runs) and an administrator's state=fail: Slurm 22.05
    shows them as the flags MAINTENANCE and FAIL (no DRAIN), and gpuhc acts on neither (the
    reservation itself is what says maintenance: the flag shows seconds after it starts)."""
    s = site()
    for node in ("gpu-002", "gpu-003"):
        s.scenario(node, "extends: h100-xid79\n")
    s.cluster.run(["scontrol", "update", "NodeName=gpu-002", "State=FAIL", "Reason=psu swap, ticket 7"])
    s.cluster.run(["scontrol", "create", "reservation", "ReservationName=gpuhc-quarantine-gpu-003",
                   "Nodes=gpu-003", "StartTime=now", "Duration=60", "Flags=MAINT", "Users=root"])
    wait_for(lambda: "MAINTENANCE" in s.state("gpu-003")[0], what="MAINTENANCE flag on gpu-003")
    for node, word in (("gpu-002", "node is fail"), ("gpu-003", "in maintenance reservation gpuhc-quarantine-gpu-003")):
        before = s.state(node)
        res = s.gpuhc("healthcheck", node=node)
        assert res.returncode == 0 and word in res.stdout, res.stdout + res.stderr
        assert s.state(node) == before
    s.gpuhc("healthcheck", node="gpu-001", check=True)
    per_node = {n["node"]: n for n in json.loads(s.gpuhc("status", "-N", "--json", check=True).stdout)["nodes"]}
    assert per_node["gpu-003"]["health"] == "quarantine", per_node["gpu-003"]
    assert per_node["gpu-002"]["health"] == "drained-admin" and per_node["gpu-001"]["health"] == "healthy"
    # grouped rows and reasons as automation reads them
    rows = json.loads(s.gpuhc("status", "--json", check=True).stdout)["groups"]
    by_health = {r["health"]: r for r in rows}
    assert by_health["quarantine"]["nodelist"] == "gpu-003" and by_health["quarantine"]["count"] == 1, rows
    assert by_health["drained-admin"]["nodes"] == ["gpu-002"], rows
    assert by_health["never-checked"]["nodelist"] == "gpu-004" and by_health["healthy"]["nodelist"] == "gpu-001"
    rows = json.loads(s.gpuhc("status", "-R", "--json", check=True).stdout)["reasons"]
    assert any(r["reason"] == "psu swap, ticket 7" and r["nodelist"] == "gpu-002" for r in rows), rows


def test_a_healthcheck_pass_clears_the_monitor_comment(site):
    s = site()
    s.scenario("gpu-004", "extends: h100-xid45-burst\nnode: {boot_id: boot-1}\n")
    s.gpuhc("healthcheck", node="gpu-004", check=True)
    assert s.comment("gpu-004").startswith("gpuhc: MONITOR xid: Xid ")
    s.scenario("gpu-004", "extends: h100-healthy\nnode: {boot_id: boot-2}\n")
    res = s.gpuhc("healthcheck", node="gpu-004", check=True)
    assert "PASS" in res.stdout
    assert s.comment("gpu-004") in ("", "(null)"), s.comment("gpu-004")


def test_slurmd_runs_the_wrapper_as_health_check_program(slurm_cluster, tmp_path):
    """HealthCheckProgram is the wrapper under the name gpuhc-healthcheck, run by slurmd itself
    (at start and every interval) on every node: the faulty one is drained, the others not."""
    from slurm_cluster import TestCluster

    program = tmp_path / "gpuhc-healthcheck"
    program.symlink_to(os.path.join(ROOT, "slurm", "prolog.d", "50-gpuhc"))
    base = tempfile.mkdtemp(prefix="gpuhc-hc-")
    cluster = TestCluster(base, nodes=["hc-001", "hc-002"], health_check=(str(program), 5))
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "hc-001.yaml").write_text("extends: h100-healthy\n")
    (scenarios / "hc-002.yaml").write_text("extends: h100-pcie-x8\n")
    with open(cluster.gpuhc_config, "w") as fh:
        json.dump({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                   "simulate": str(scenarios / "%n.yaml"),
                   "detect": {"cloud_metadata": False, "slurm_features": False}}, fh)
    try:
        try:
            cluster.start()
        except Exception:
            pass            # a node drained by its first health check never reaches IDLE: checked below

        def drained_reason():
            flags, reason = cluster.node_state("hc-002")
            return reason if "DRAIN" in flags and reason else None

        reason = wait_for(drained_reason, timeout=60, what="hc-002 drained by the health check")
        assert reason.startswith("gpuhc: RESET pcie: GPU4 PCIe link x8"), reason
        assert "DRAIN" not in cluster.node_state("hc-001")[0]
        env = dict(cluster.client_env, GPUHC_CONFIG=cluster.gpuhc_config)
        out = subprocess.run([sys.executable, "-m", "gpuhc", "history", "hc-001", "--json"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert {r["context"] for r in json.loads(out.stdout)} == {"healthcheck"}, out.stdout + out.stderr
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_gpu_reset_refused_under_a_job_then_passes_return_the_node(site):
    """An Xid that a reset resolves appears during a job: `gpuhc reset` refuses while the job runs;
    the healthcheck drains; once the node is idle the reset goes ahead and the following healthy
    passes return the node to service."""
    s = site(resume={"passes": 2})
    s.only("gpu-003")
    job = s.cluster.sbatch("#!/bin/sh\necho started\nsleep 30\n", nodelist="gpu-003")
    out = s.cluster.path("jobs", "slurm-%d.out" % job)
    deadline = time.monotonic() + 60
    while not (os.path.exists(out) and "started" in open(out).read()):
        assert time.monotonic() < deadline, s.cluster.job(job)
        time.sleep(0.25)
    s.scenario("gpu-003", "extends: h100-healthy\nkernel_log:\n"
               "  - '[ 9000.1] NVRM: Xid (PCI:0000:ab:00): 48, pid=1, name=p, An uncorrectable double bit error (DBE)'\n")
    res = s.gpuhc("reset", node="gpu-003")
    assert res.returncode == 1 and "refused" in res.stdout and "MIXED" in res.stdout, res.stdout + res.stderr
    s.gpuhc("healthcheck", node="gpu-003", check=True)
    assert s.wait_drained("gpu-003").startswith("gpuhc: RESET xid: Xid 48 on GPU5 0000:ab:00.0")
    s.cluster.run(["scancel", str(job)])
    s.cluster.wait_job(job, timeout=60)
    deadline = time.monotonic() + 30
    while {"ALLOCATED", "MIXED", "COMPLETING"} & set(s.state("gpu-003")[0]):
        assert time.monotonic() < deadline, s.state("gpu-003")
        time.sleep(0.25)
    res = s.gpuhc("reset", node="gpu-003")
    assert res.returncode == 0 and "0000:ab:00.0" in res.stdout and " reset " in res.stdout, res.stdout + res.stderr
    s.gpuhc("healthcheck", node="gpu-003", check=True)
    assert drained(s.state("gpu-003")[0])                      # 1 of 2 passes
    s.gpuhc("healthcheck", node="gpu-003", check=True)
    assert not drained(s.state("gpu-003")[0]), s.state("gpu-003")
    s.release("gpu-003")
