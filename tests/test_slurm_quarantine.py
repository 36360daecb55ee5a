"""gpuhc quarantine on the real test cluster (issue 14): a drained node runs its quarantine job in a
MAINT reservation (it does not pend), gets a verdict with evidence, and ends either returned to
service or drained with a gpuhc reason, with no reservation left behind, whatever ended the job."""
import json
import os
import time

import pytest

from test_slurm_integration import NODES, Site, wait_for

QUARANTINE = {"time_limit": 300, "deadline": 600, "grace": 60, "finish_wait": 90, "timeout": 60}


def shim(cluster):
    return os.path.join(os.path.dirname(cluster.prolog_dir), "bin", "gpuhc")


@pytest.fixture
def qsite(slurm, tmp_path):
    def make(**extra):
        conf = dict(QUARANTINE, output=slurm.path("jobs", "slurm-%j.out"))
        conf.update(extra.pop("quarantine", {}))
        return Site(slurm, tmp_path, quarantine=conf, **extra)
    return make


def gpuhc_q(s, *args):
    """gpuhc on the controller, with the job's gpuhc command (GPUHC) exported to the quarantine job."""
    os.environ["GPUHC"] = shim(s.cluster)
    try:
        return s.gpuhc(*args)
    finally:
        os.environ.pop("GPUHC", None)


def reservations(s):
    out = s.cluster.run(["scontrol", "show", "reservation", "--oneliner"], check=False).stdout
    return [line.split()[0].split("=", 1)[1] for line in out.splitlines() if line.startswith("ReservationName=")]


def quarantine_done(s, node, timeout=150):
    """Wait until the node's quarantine is over: no gpuhc reservation left on it."""
    wait_for(lambda: ("gpuhc-quarantine-%s" % node) not in reservations(s) or None, timeout,
             "the quarantine reservation of %s to go" % node)


def verdict_report(s, node):
    """The node's newest quarantine report (the job's epilog records after it)."""
    history = json.loads(s.gpuhc("history", node, "--json", check=True).stdout)
    return next(r for r in history if r["context"] == "quarantine")


def test_a_confirmed_fault_is_replace_and_the_node_stays_drained(qsite):
    """Drained by the prolog (Xid 79), and the deep checks find GPU 2 miscomputing: the quarantine
    job runs on the drained node (it does not pend), the verdict is REPLACE, the node is drained
    ISOLATE, no reservation is left, and the store has the report with its verdict."""
    s = qsite()
    s.scenario("gpu-002", "extends: h100-xid79\ndeep: {gpus: {2: {mismatches: 12}}}\n")
    s.only("gpu-002")
    job = s.cluster.sbatch("#!/bin/sh\nsleep 1\n")
    assert s.wait_drained("gpu-002").startswith("gpuhc: REBOOT xid")
    s.release("gpu-002")
    s.cluster.wait_job(job, timeout=120)
    res = gpuhc_q(s, "quarantine", "gpu-002", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = json.loads(res.stdout)
    assert row["result"] == "started" and row["reservation"] == "gpuhc-quarantine-gpu-002" and row["job_id"]
    state = s.cluster.wait_job(int(row["job_id"]), timeout=120)
    assert state in ("COMPLETED", "FAILED"), s.cluster.job(row["job_id"])
    quarantine_done(s, "gpu-002")
    flags, reason = s.state("gpu-002")
    assert "DRAIN" in flags and reason.startswith("gpuhc: ISOLATE quarantine gpu_stress"), (flags, reason)
    assert reason.endswith("(replace)") and "MAINT" not in flags
    show = verdict_report(s, "gpu-002")
    assert show["context"] == "quarantine" and show["verdict"] == "REPLACE" and show["job_id"] == row["job_id"]
    assert any("came to quarantine with: gpuhc: REBOOT xid" in f["message"] for f in show["findings"])


def test_a_repaired_node_returns_to_service_and_runs_jobs(qsite):
    s = qsite()
    s.cluster.drain("gpu-003", "gpuhc: RESET nvlink: GPU1 0000:2a:00.0: 17 of 18 NVLinks active")
    res = gpuhc_q(s, "quarantine", "gpu-003", "--json")
    (row,) = json.loads(res.stdout)
    assert row["result"] == "started", row
    # while it is in quarantine: no ordinary job lands there, and status says so
    other = s.cluster.sbatch("#!/bin/sh\nsleep 1\n", nodelist="gpu-003")
    status = json.loads(s.gpuhc("status", "-N", "--json", check=True).stdout)
    node = next(n for n in status["nodes"] if n["node"] == "gpu-003")
    assert node["health"] == "quarantine", json.dumps(node)
    s.cluster.wait_job(int(row["job_id"]), timeout=120)
    quarantine_done(s, "gpu-003")
    assert verdict_report(s, "gpu-003")["verdict"] == "RETURN_TO_SERVICE"
    flags, reason = s.state("gpu-003")
    assert "DRAIN" not in flags and "MAINT" not in flags and "MAINTENANCE" not in flags, (flags, reason)
    assert s.cluster.wait_job(other, timeout=90) == "COMPLETED"
    ran = s.cluster.job(other)
    assert ran["NodeList"] == "gpu-003"
    # held off while the quarantine ran: it started once the quarantine job had ended
    assert ran["StartTime"] >= s.cluster.job(int(row["job_id"]))["EndTime"], (ran, s.cluster.job(int(row["job_id"])))


def test_a_cancelled_quarantine_leaves_the_node_drained_saying_so(qsite):
    s = qsite(gpu_stress={"timeout": 120})
    s.scenario("gpu-004", "extends: h100-healthy\ndeep: {hang: [stress]}\n")
    s.cluster.drain("gpu-004", "gpuhc: RESET gpu_stress: GPU5 25% below the node's best")
    (row,) = json.loads(gpuhc_q(s, "quarantine", "gpu-004", "--json").stdout)
    job = int(row["job_id"])
    s.cluster.wait_job(job, timeout=60, states=("RUNNING",))
    wait_for(lambda: "quarantine job" in (s.state("gpu-004")[1] or "") or None, 30, "the job's own drain")
    s.cluster.run(["scancel", str(job)])
    quarantine_done(s, "gpu-004")
    flags, reason = s.state("gpu-004")
    assert "DRAIN" in flags and "quarantine ended without a verdict" in reason and "CANCELLED" in reason, reason
    assert reason.startswith("gpuhc: RESET")
    report = verdict_report(s, "gpu-004")
    assert report["verdict"] == "INCONCLUSIVE" and report["overall"] == "ERROR"


def test_operator_drain_needs_force_and_dry_run_and_cap_change_nothing(qsite):
    s = qsite(quarantine={"max_concurrent": 1})
    s.cluster.drain("gpu-001", "bios update (ops-123)")
    res = gpuhc_q(s, "quarantine", "gpu-001", "--json")
    (row,) = json.loads(res.stdout)
    assert res.returncode == 1 and row["result"] == "refused" and "--force" in row["why"]
    res = gpuhc_q(s, "quarantine", "gpu-[001-002]", "--force", "--dry-run", "--json")
    rows = {r["node"]: r for r in json.loads(res.stdout)}
    assert rows["gpu-001"]["result"] == "planned" and rows["gpu-001"]["takeover"]
    assert rows["gpu-002"]["result"] == "refused" and "cap" in rows["gpu-002"]["why"]
    assert reservations(s) == [] and s.state("gpu-001")[1] == "bios update (ops-123)"
    assert "DRAIN" not in s.state("gpu-002")[0]
    (row,) = json.loads(gpuhc_q(s, "quarantine", "gpu-001", "--force", "--json").stdout)
    assert row["result"] == "started"
    s.cluster.wait_job(int(row["job_id"]), timeout=120)
    quarantine_done(s, "gpu-001")
    show = verdict_report(s, "gpu-001")
    assert any("came to quarantine with: bios update (ops-123)" in f["message"] for f in show["findings"])
    assert show["verdict"] == "RETURN_TO_SERVICE"


def test_a_quarantine_past_its_time_limit_leaves_the_node_drained_saying_so(qsite):
    """The deep checks hang past the job's time limit (1 minute): Slurm ends the job, its epilog
    starts the finisher, and the node ends drained with a reason naming the quarantine's end."""
    s = qsite(gpu_stress={"timeout": 600}, quarantine={"time_limit": 60})
    s.scenario("gpu-001", "extends: h100-healthy\ndeep: {hang: [stress]}\n")
    s.cluster.drain("gpu-001", "gpuhc: REBOOT xid: Xid 79 on GPU3 0000:5d:00.0: GPU has fallen off the bus.")
    (row,) = json.loads(gpuhc_q(s, "quarantine", "gpu-001", "--json").stdout)
    assert s.cluster.wait_job(int(row["job_id"]), timeout=240) == "TIMEOUT"
    quarantine_done(s, "gpu-001")
    flags, reason = s.state("gpu-001")
    assert "DRAIN" in flags and reason.startswith("gpuhc: REBOOT quarantine ended without a verdict"), reason
    assert "TIMEOUT" in reason and "MAINT" not in flags


def test_the_prolog_leaves_a_node_in_a_fresh_maint_reservation_alone(qsite):
    """Issue 18: a flags=maint reservation created at once and a job in it on an unhealthy node. The
    node's MAINTENANCE flag shows 1-5 s after the reservation starts, so judging by the flag the
    prolog drained the node (3 of 3 times) and the reservation's job was requeued; the reservation
    itself now says hands-off. `gpuhc resume --force` refuses a node in such a reservation."""
    s = qsite()
    s.scenario("gpu-004", "extends: h100-xid79\n")
    s.cluster.run(["scontrol", "create", "reservation", "ReservationName=ops-maint", "Nodes=gpu-004",
                   "StartTime=now", "Duration=30", "Flags=MAINT", "Users=root"])
    try:
        job = s.cluster.sbatch("#!/bin/sh\nsleep 1\n", nodelist="gpu-004", reservation="ops-maint")
        assert s.cluster.wait_job(job, timeout=90) == "COMPLETED", s.cluster.job(job)
        flags, reason = s.state("gpu-004")
        assert "DRAIN" not in flags, (flags, reason)
        prolog = next(r for r in json.loads(s.gpuhc("history", "gpu-004", "--json", check=True).stdout)
                      if r["context"] == "prolog")
        assert prolog["overall"] == "REBOOT" and prolog["action"] == "skip"
        s.cluster.drain("gpu-004", "gpuhc: REBOOT xid: Xid 79 on GPU3")
        res = s.gpuhc("resume", "gpu-004", "--force", "--json")
        (row,) = json.loads(res.stdout)
        assert res.returncode == 1 and row["result"] == "refused" and "maintenance reservation ops-maint" in row["why"]
    finally:
        s.cluster.run(["scontrol", "delete", "ReservationName=ops-maint"], check=False)
