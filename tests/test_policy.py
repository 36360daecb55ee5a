"""Policy decisions on plain inputs: ownership, hands-off states, breaker, resume evidence."""
import pytest

from gpuhc import config as C
from gpuhc import policy as P
from gpuhc.backends.slurm_cli import NodeView, parse_nodes
from gpuhc.model import Finding, GpuRef, Report, Severity


def report(sev, node="gpu-001", context="prolog", started=1000.0, boot="b1", suite="prolog", job=None, action=None):
    findings = [Finding("xid", sev, "Xid 79 on GPU3 0000:5d:00.0: GPU has fallen off the bus.", gpu=GpuRef(3))] \
        if sev is not Severity.PASS else [Finding("xid", Severity.PASS, "no active Xid"), Finding("ecc", Severity.PASS, "ok")]
    r = Report(node, context, "dgx-h100", started, started + 1, findings, job_id=job, boot_id=boot, suite=suite)
    r.action = action
    return r


def view(name="gpu-001", states=("IDLE",), reason="", parts=("gpu",), reason_time=None, comment=""):
    return NodeView(name, set(states), reason, reason_time, list(parts), comment)


@pytest.fixture
def cfg():
    return C.validate({"breaker": {"max_fraction": 0.5}})


def test_drain_reason_format_and_length():
    r = report(Severity.REBOOT, context="epilog", job="77")
    reason = P.drain_reason(r)
    assert reason.startswith("gpuhc: REBOOT xid: Xid 79 on GPU3") and reason.endswith("job 77")
    r.findings[0].message = "x" * 500
    assert len(P.drain_reason(r)) <= P.REASON_MAX
    assert P.reason_severity(reason) is Severity.REBOOT and P.reason_severity("admin: bad fan") is None


def test_unhealthy_idle_node_is_drained(cfg):
    a = P.decide(report(Severity.REBOOT), view(), cfg)
    assert a.kind == P.DRAIN and a.reason.startswith("gpuhc: REBOOT xid:")


@pytest.mark.parametrize("states,reason", [
    (("IDLE", "DRAIN"), "bad fan, ticket 123"), (("DOWN",), ""), (("IDLE", "MAINT"), ""),
    (("IDLE", "REBOOT_REQUESTED"), ""), (("FUTURE",), ""), (("IDLE", "NOT_RESPONDING"), ""),
    (("ALLOCATED", "DRAIN"), "admin drain"), (("IDLE", "BOOT"), ""), (("IDLE", "REBOOT_ISSUED"), ""),
])
def test_hands_off_states_and_other_owners(cfg, states, reason):
    for sev in (Severity.REBOOT, Severity.MONITOR):
        a = P.decide(report(sev), view(states=states, reason=reason), cfg)
        assert a.kind == P.SKIP, (states, reason, a)


def test_unknown_node_state_does_nothing(cfg):
    assert P.decide(report(Severity.ISOLATE), None, cfg).kind == P.SKIP


def test_error_only_and_healthy_change_nothing(cfg):
    err = Report("gpu-001", "prolog", "p", 0, 1, [Finding("nvml", Severity.ERROR, "boom")])
    assert P.decide(err, view(), cfg).kind == P.NONE
    assert P.decide(report(Severity.PASS), view(), cfg).kind == P.NONE


def test_monitor_sets_comment_once(cfg):
    a = P.decide(report(Severity.MONITOR), view(), cfg)
    assert a.kind == P.COMMENT and a.reason.startswith("gpuhc: MONITOR xid:")
    assert P.decide(report(Severity.MONITOR), view(comment=a.reason), cfg).kind == P.NONE


def test_gpuhc_drain_only_escalates(cfg):
    held = view(states=("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79")
    assert P.decide(report(Severity.RESET), held, cfg).kind == P.HELD
    assert P.decide(report(Severity.REBOOT), held, cfg).kind == P.HELD
    assert P.decide(report(Severity.ISOLATE), held, cfg).kind == P.DRAIN


def test_dry_run_would_drain():
    cfg = C.validate({"slurm": {"dry_run": True}})
    assert P.decide(report(Severity.REBOOT), view(), cfg).kind == P.WOULD_DRAIN


def test_breaker_by_partition_fraction_and_count(cfg):
    nodes = {n: view(n) for n in ("gpu-001", "gpu-002", "gpu-003", "gpu-004")}
    assert P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg, nodes).kind == P.DRAIN   # 1/4
    nodes["gpu-002"] = view("gpu-002", ("IDLE", "DRAIN"), "gpuhc: RESET pcie: x8")
    assert P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg, nodes).kind == P.DRAIN   # 2/4
    nodes["gpu-003"] = view("gpu-003", ("IDLE", "DRAIN"), "gpuhc: RESET pcie: x8")
    a = P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg, nodes)
    assert a.kind == P.WOULD_DRAIN and "3 of 4 nodes in cluster" in a.why
    # an admin drain does not count; an old gpuhc drain outside the window does not either
    nodes["gpu-003"] = view("gpu-003", ("IDLE", "DRAIN"), "disk replaced")
    assert P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg, nodes).kind == P.DRAIN
    nodes["gpu-003"] = view("gpu-003", ("IDLE", "DRAIN"), "gpuhc: RESET pcie", reason_time=1)
    assert P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg, nodes).kind == P.DRAIN
    cfg2 = C.validate({"breaker": {"max_fraction": 1.0, "max_nodes": 1}})
    assert P.decide(report(Severity.REBOOT), nodes["gpu-001"], cfg2, nodes).kind == P.WOULD_DRAIN


def test_resume_needs_passes_of_a_deep_enough_suite(cfg):
    drained = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET pcie: x8")
    drain = report(Severity.RESET, started=100, action="drain")
    passes = [report(Severity.PASS, started=t) for t in (400, 300, 200)]
    assert P.may_resume(drained, passes[:2] + [drain], cfg, drain).kind == P.NONE
    assert P.may_resume(drained, passes + [drain], cfg, drain).kind == P.RESUME
    # a failure between the passes breaks the run
    mixed = [passes[0], report(Severity.RESET, started=350), passes[1], passes[2], drain]
    assert P.may_resume(drained, mixed, cfg, drain).kind == P.NONE
    # an intensive-suite drain is not undone by prolog passes
    deep = report(Severity.RESET, started=100, suite="intensive", action="drain")
    assert P.may_resume(drained, passes + [deep], cfg, deep).kind == P.NONE
    deep_passes = [report(Severity.PASS, started=t, suite="intensive") for t in (400, 300, 200)]
    assert P.may_resume(drained, deep_passes + [deep], cfg, deep).kind == P.RESUME


def test_reboot_drain_needs_a_new_boot_and_isolate_never(cfg):
    drain = report(Severity.REBOOT, started=100, boot="b1", action="drain")
    rebooted = view(states=("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79")
    same_boot = [report(Severity.PASS, started=t, boot="b1") for t in (400, 300, 200)]
    assert P.may_resume(rebooted, same_boot + [drain], cfg, drain).kind == P.NONE
    new_boot = [report(Severity.PASS, started=t, boot="b2") for t in (400, 300, 200)]
    assert P.may_resume(rebooted, new_boot + [drain], cfg, drain).kind == P.RESUME
    isolated = view(states=("IDLE", "DRAIN"), reason="gpuhc: ISOLATE memory_remap: row remap failed")
    assert P.may_resume(isolated, new_boot + [drain], cfg, drain).kind == P.NONE
    admin = view(states=("IDLE", "DRAIN"), reason="fan")
    assert P.may_resume(admin, new_boot, cfg, drain).kind == P.NONE


SINFO_2205 = """{"meta": {"Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}}}, "errors": [],
 "nodes": [
  {"name": "gpu-001", "hostname": "localhost", "state": "idle", "state_flags": ["DRAIN"], "reason": "gpuhc: REBOOT xid: x",
   "reason_changed_at": 1700000000, "partitions": ["gpu"], "comment": "", "features": "dgx-h100,rack1",
   "active_features": "dgx-h100,rack1", "boot_time": 1690000000},
  {"name": "gpu-002", "state": "allocated", "state_flags": [], "reason": "", "partitions": ["gpu", "debug"]},
  {"name": "gpu-003", "state": "down", "state_flags": ["NOT_RESPONDING"], "reason": "Not responding", "partitions": ["gpu"]}
 ]}"""

SINFO_2302 = """{"nodes": [{"name": "gpu-001", "state": ["IDLE", "DRAIN"], "reason": "bad fan",
  "reason_changed_at": {"set": true, "infinite": false, "number": 1700000001}, "partitions": ["gpu"]}]}"""


def test_sinfo_json_both_shapes():
    nodes = parse_nodes(SINFO_2205)
    assert nodes["gpu-001"].states == {"IDLE", "DRAIN"} and nodes["gpu-001"].drained and nodes["gpu-001"].owned_by_gpuhc
    assert nodes["gpu-001"].features == ["dgx-h100", "rack1"] and nodes["gpu-001"].reason_time == 1700000000
    assert not nodes["gpu-002"].drained and nodes["gpu-002"].partitions == ["gpu", "debug"]
    assert P.hands_off(nodes["gpu-003"]) == "node is down,not_responding"
    newer = parse_nodes(SINFO_2302)["gpu-001"]
    assert newer.drained and not newer.owned_by_gpuhc and newer.reason_time == 1700000001


# What Slurm 22.05.8 printed (sinfo --json, trimmed) for a node in a MAINT reservation, a node an
# administrator set to state=fail, and a node drained by an administrator.
SINFO_2205_FLAGS = """{"nodes": [
  {"name": "gpu-001", "state": "idle", "state_flags": ["MAINTENANCE", "RESERVED"], "reason": "", "partitions": ["gpu"]},
  {"name": "gpu-002", "state": "idle", "state_flags": ["FAIL"], "reason": "admin fail", "reason_set_by_user": "root",
   "partitions": ["gpu"]},
  {"name": "gpu-003", "state": "idle", "state_flags": ["FAIL"], "reason": "gpuhc: RESET pcie: x8", "partitions": ["gpu"]},
  {"name": "gpu-004", "state": "idle", "state_flags": ["DRAIN"], "reason": "x", "partitions": ["gpu"]}
 ]}"""


def test_real_slurm_flags_maintenance_and_fail_are_hands_off(cfg):
    nodes = parse_nodes(SINFO_2205_FLAGS)
    assert P.hands_off(nodes["gpu-001"]) == "node is maintenance"
    assert P.hands_off(nodes["gpu-002"]) == "node is fail"
    assert P.hands_off(nodes["gpu-004"]).startswith("drained by someone else")
    for name in ("gpu-001", "gpu-002", "gpu-004"):
        for sev in (Severity.REBOOT, Severity.MONITOR):
            assert P.decide(report(sev, node=name), nodes[name], cfg).kind == P.SKIP, name
    # a failing node keeps its state even when the reason is gpuhc's: resume waits for the operator
    drain = report(Severity.RESET, started=100, action="drain")
    passes = [report(Severity.PASS, started=t) for t in (400, 300, 200)]
    failing = nodes["gpu-003"]
    failing.states.add("DRAIN")
    assert P.may_resume(failing, passes + [drain], cfg, drain).why == "node is fail"


@pytest.mark.parametrize("flag", ["REBOOT_REQUESTED", "MAINTENANCE", "DOWN", "NOT_RESPONDING"])
def test_resume_waits_while_the_node_is_hands_off(cfg, flag):
    drain = report(Severity.RESET, started=100, action="drain")
    passes = [report(Severity.PASS, started=t) for t in (400, 300, 200)]
    ok = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET pcie: x8")
    assert P.may_resume(ok, passes + [drain], cfg, drain).kind == P.RESUME
    busy = view(states=("IDLE", "DRAIN", flag), reason="gpuhc: RESET pcie: x8")
    a = P.may_resume(busy, passes + [drain], cfg, drain)
    assert a.kind == P.NONE and flag.lower() in a.why


def test_no_resume_without_the_drains_own_record(cfg):
    """The drain record compacted away: neither the suite depth nor (for REBOOT) the boot can be
    weighed, so passes alone do not resume."""
    for reason in ("gpuhc: RESET pcie: x8", "gpuhc: REBOOT xid: Xid 79"):
        drained = view(states=("IDLE", "DRAIN"), reason=reason)
        passes = [report(Severity.PASS, started=t, boot="b1") for t in (400, 300, 200)]
        a = P.may_resume(drained, passes, cfg, None)
        assert a.kind == P.NONE and "no record of the drain" in a.why


def test_manual_resume_asks_for_evidence_even_with_automatic_resume_off():
    cfg = C.validate({"resume": {"auto": False}})
    drain = report(Severity.RESET, started=100, action="drain")
    passes = [report(Severity.PASS, started=t) for t in (400, 300, 200)]
    drained = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET pcie: x8")
    assert P.may_resume(drained, passes + [drain], cfg, drain).why == "automatic resume disabled"
    assert P.may_resume(drained, passes + [drain], cfg, drain, manual=True).kind == P.RESUME
    assert P.may_resume(drained, passes[:1] + [drain], cfg, drain, manual=True).kind == P.NONE
