"""The Slurm test harness itself (scripts/devcluster.py, tests/slurm_cluster.py) against a real Slurm.

The parsing tests run everywhere; the others need root and slurm-wlm + munge (skipped otherwise).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from slurm_cluster import ROOT, TestCluster, devcluster, skip_reason

_skip = pytest.mark.skipif(skip_reason() is not None and os.environ.get("GPUHC_REQUIRE_SLURM") != "1",
                           reason=skip_reason() or "")


def needs_slurm(test):
    """For tests that start their own cluster (those using the `slurm` fixtures are marked by conftest)."""
    return pytest.mark.slurm(_skip(test))

# A prolog that fails once: the first node to run it claims the marker, drains itself with its
# own reason and exits 1; it also records the environment Slurm gave it.
FAIL_ONCE = """#!/bin/sh
d=$(dirname "$GPUHC_CONFIG")
env > "$d/prolog-env-$SLURMD_NODENAME-$SLURM_JOB_ID"
if [ -e "$d/fail-once" ] && mkdir "$d/claimed" 2>/dev/null; then
    echo "$SLURMD_NODENAME" > "$d/claimed/node"
    scontrol update nodename="$SLURMD_NODENAME" state=drain reason="harness: bad node $SLURMD_NODENAME"
    exit 1
fi
exit 0
"""

EPILOG = """#!/bin/sh
d=$(dirname "$GPUHC_CONFIG")
echo "$SLURM_JOB_ID $SLURMD_NODENAME $SLURM_SCRIPT_CONTEXT $GPUHC_CONFIG" >> "$d/epilog.log"
"""


# ------------------------------------------------------------------ parsing (no Slurm needed)
def test_parse_node_22_05_shape():
    rec = {"name": "gpu-001", "state": "idle", "state_flags": ["DRAIN"], "reason": "gpuhc: REBOOT xid: 79"}
    assert devcluster.Cluster.parse_node(rec) == (["IDLE", "DRAIN"], "gpuhc: REBOOT xid: 79")
    assert devcluster.Cluster.parse_node({"state": "mixed", "state_flags": [], "reason": ""}) == (["MIXED"], None)


def test_parse_node_later_shape():
    # Slurm 23.02+ puts the base state and its flags in one list
    rec = {"name": "gpu-002", "state": ["DOWN", "NOT_RESPONDING"], "reason": "Not responding"}
    assert devcluster.Cluster.parse_node(rec) == (["DOWN", "NOT_RESPONDING"], "Not responding")


def test_parse_kv_keeps_spaces_in_values():
    kv = devcluster.parse_kv("JobId=7 JobName=a b JobState=COMPLETED Reason=None NodeList=gpu-00[1-2] "
                             "Command=/x/y z.sh ExitCode=0:0 AllocNode:Sid=localhost:42")
    assert kv["JobName"] == "a b" and kv["Command"] == "/x/y z.sh"
    assert kv["JobState"] == "COMPLETED" and kv["NodeList"] == "gpu-00[1-2]" and kv["AllocNode:Sid"] == "localhost:42"


def test_conf_has_what_the_suite_relies_on(tmp_path):
    c = devcluster.Cluster(str(tmp_path), nodes=3, prolog="/p.d/*", epilog="/e.d/*")
    c.ctld_port, c.node_ports = 7000, {"gpu-001": 7001, "gpu-002": 7002, "gpu-003": 7003}
    conf = c.slurm_conf()
    for line in ("SlurmctldPort=7000", "SchedulerParameters=nohold_on_prolog_fail", "PrologFlags=Alloc",
                 "ReturnToService=2", "JobRequeue=1", "Prolog=/p.d/*", "Epilog=/e.d/*",
                 "NodeName=gpu-002 NodeHostname=localhost NodeAddr=127.0.0.1 Port=7002",
                 "PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP"):
        assert line in conf
    assert "SlurmdSpoolDir=%s/spool/%%n" % tmp_path in conf
    # with an environment to pass, slurm.conf names the generated wrapper instead of the glob
    c = devcluster.Cluster(str(tmp_path), nodes=1, prolog="/p.d/*", env={"GPUHC_CONFIG": "/c.yaml"})
    c.ctld_port, c.node_ports = 7000, {"gpu-001": 7001}
    assert "Prolog=%s/etc/prolog" % tmp_path in c.slurm_conf()


def test_unavailable_reason_is_clear():
    why = skip_reason()
    assert why is None or "root" in why or "apt-get install slurm-wlm munge" in why or "Linux" in why


# ------------------------------------------------------------------ the session cluster
def test_jobs_run_and_complete_on_idle_nodes(slurm):
    slurm.add_epilog("10-record", EPILOG)
    jobs = {n: slurm.sbatch('echo "ran on $SLURMD_NODENAME"\n', nodelist=n, job_name="hello") for n in slurm.nodes}
    for node, job in jobs.items():
        assert slurm.wait_job(job, timeout=30) == "COMPLETED"
        assert slurm.job(job)["NodeList"] == node
        with open(slurm.path("jobs", "slurm-%d.out" % job)) as f:
            assert f.read().strip() == "ran on " + node
    slurm.wait_idle(timeout=15)         # epilogs done, nothing drained
    for n in slurm.nodes:
        assert slurm.node_state(n) == (["IDLE"], None)
    with open(os.path.join(os.path.dirname(slurm.gpuhc_config), "epilog.log")) as f:
        lines = f.read().splitlines()
    assert sorted(lines) == sorted("%d %s epilog_slurmd %s" % (j, n, slurm.gpuhc_config) for n, j in jobs.items())


def test_failing_prolog_drains_with_its_reason_and_job_finishes_elsewhere(slurm):
    d = os.path.dirname(slurm.gpuhc_config)
    for leftover in ("claimed/node", "claimed"):
        p = os.path.join(d, leftover)
        if os.path.isdir(p):
            os.rmdir(p)
        elif os.path.exists(p):
            os.unlink(p)
    open(os.path.join(d, "fail-once"), "w").close()
    slurm.add_prolog("50-fail-once", FAIL_ONCE)
    try:
        job = slurm.sbatch('echo "ran on $SLURMD_NODENAME"\n')
        assert slurm.wait_job(job, timeout=45) == "COMPLETED"
    finally:
        os.unlink(os.path.join(d, "fail-once"))
    with open(os.path.join(d, "claimed", "node")) as f:
        bad = f.read().strip()
    info = slurm.job(job)
    assert int(info["Restarts"]) >= 1, info
    assert info["NodeList"] != bad, info
    states, reason = slurm.node_state(bad)
    assert "DRAIN" in states
    assert reason == "harness: bad node " + bad     # the prolog's own reason, not Slurm's "Prolog error"
    # the prolog saw the variables the cluster passes, and Slurm's own
    env = dict(l.split("=", 1) for l in open(os.path.join(d, "prolog-env-%s-%d" % (bad, job))).read().splitlines()
               if "=" in l)
    assert env["GPUHC_CONFIG"] == slurm.gpuhc_config
    assert env["SLURM_CONF"] == slurm.conf
    assert env["SLURMD_NODENAME"] == bad and env["SLURM_JOB_ID"] == str(job)
    # the source-tree shim first, then this interpreter's bin directory
    assert env["PATH"].startswith(os.path.join(slurm.workdir, "bin") + ":" + os.path.dirname(sys.executable) + ":")


def test_admin_drain_shows_its_reason_and_takes_no_jobs(slurm):
    slurm.drain("gpu-003", "admin: reseat cable")
    states, reason = slurm.node_state("gpu-003")
    assert "DRAIN" in states and reason == "admin: reseat cable"
    job = slurm.sbatch("true\n", nodelist="gpu-003")
    time.sleep(3)                                    # the scheduler runs every 2 s
    assert slurm.job(job)["JobState"] == "PENDING"
    slurm.resume("gpu-003")
    assert slurm.wait_job(job, timeout=30) == "COMPLETED"
    assert slurm.node_state("gpu-003")[1] is None


# ------------------------------------------------------------------ lifecycle of other clusters
def _pids_alive(pids):
    return [p for p in pids if devcluster._pid_alive(p)]


@pytest.fixture
def short_tmp():
    """A short working directory (slurmstepd's unix socket paths live under it)."""
    d = tempfile.mkdtemp(prefix="gpuhc-t-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_slurm
def test_stop_ends_exactly_its_daemons_and_is_idempotent(short_tmp, slurm_cluster):
    c = devcluster.Cluster(short_tmp, nodes=2)
    c.start(timeout=30)
    pids = list(c.pids.values())
    assert set(c.pids) == {"munged", "slurmctld", "slurmd:gpu-001", "slurmd:gpu-002"}
    assert len(_pids_alive(pids)) == 4
    assert c.start_seconds < 30
    c.stop()
    assert _pids_alive(pids) == []
    c.stop()                                         # twice is fine
    assert not c.running()
    assert "UP" in slurm_cluster.scontrol("ping")    # the session cluster is untouched


@needs_slurm
def test_start_failure_reports_the_logs_and_leaves_nothing_running(short_tmp):
    c = devcluster.Cluster(short_tmp, nodes=1, extra_conf="NoSuchOption=1")
    with pytest.raises(devcluster.ClusterError) as e:
        c.start(timeout=20)
    assert "slurmctld" in str(e.value) and "NoSuchOption" in str(e.value)
    assert not c.running()


@needs_slurm
def test_command_line_up_status_down(short_tmp):
    d = short_tmp
    cli = [sys.executable, os.path.join(ROOT, "scripts", "devcluster.py")]
    r = subprocess.run(cli + ["up", "--dir", d, "--nodes", "2", "--env", "GPUHC_CONFIG=/x.yaml"],
                       capture_output=True, text=True, timeout=90)
    try:
        assert r.returncode == 0, r.stderr
        assert "export SLURM_CONF=%s/etc/slurm.conf" % d in r.stdout
        r = subprocess.run(cli + ["status", "--dir", d], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "gpu-002" in r.stdout and "idle" in r.stdout
    finally:
        r = subprocess.run(cli + ["down", "--dir", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not devcluster.load_state(d).running()
    r = subprocess.run(cli + ["down", "--dir", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "was not running" in r.stdout


def test_test_cluster_class_links_repository_scripts(tmp_path):
    # what the gpuhc tests do with slurm/prolog.d/50-gpuhc: link it into the cluster's prolog.d
    c = TestCluster(str(tmp_path / "t"), nodes=["gpu-001"])
    src = tmp_path / "50-x"
    src.write_text("#!/bin/sh\nexit 0\n")
    link = c.add_prolog("50-x", src=str(src))
    assert os.path.realpath(link) == str(src)
    c.clear_scripts()
    assert os.listdir(c.prolog_dir) == []
