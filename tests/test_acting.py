"""Traps in the Slurm policy (DESIGN.md section 6) that a review found: newer sinfo JSON, backfill's
PLANNED nodes, prologs of one job failing together past the breaker, resume evidence from another
drain, dry_run, operators' comments, unknown boot ids, and time spent before the checks.

Tests of gpuhc/acting.py (and the policy decisions it carries out, and resume.py) with a fake
Slurm backend; no real Slurm, no subprocess. (Was test_policy_traps.py.)"""
import threading
import time

import pytest

from gpuhc import acting as A
from gpuhc import contexts
from gpuhc.contexts import pipeline
from gpuhc.resume import consider_resume
from gpuhc import config as C
from gpuhc import policy as P
from gpuhc.backends.slurm import JobView, NodeView, Slurm
from gpuhc.backends.slurm_cli import parse_nodes
from gpuhc.model import Finding, GpuRef, Report, Severity
from gpuhc.store import Store, encode


def report(sev, node="gpu-001", context="healthcheck", started=1000.0, boot="b1", suite="healthcheck",
           action=None, check="xid"):
    findings = [Finding(check, sev, "Xid 79 on GPU3: GPU has fallen off the bus.", gpu=GpuRef(3))] \
        if sev is not Severity.PASS else [Finding("ecc", Severity.PASS, "ok")]
    r = Report(node, context, "dgx-h100", started, started + 1, findings, boot_id=boot, suite=suite)
    r.action = action
    return r


def view(name="gpu-001", states=("IDLE",), reason="", parts=("gpu",), reason_time=None, comment=""):
    return NodeView(name, set(states), reason, reason_time, list(parts), comment)


class FakeSlurm(Slurm):
    """A Slurm backend over a dict of NodeViews; honours the run's deadline like the real ones."""

    kind = "fake"

    def __init__(self, views, deadline=None, before_nodes=None, comment_delay=0.0):
        super().__init__(timeout=5.0, deadline=deadline)
        self.views = views
        self.before_nodes = before_nodes
        self.comment_delay = comment_delay
        self.updates = []
        self.lock = threading.Lock()

    def available(self):
        return True

    def nodes(self, names=None):
        self.time_left("sinfo")
        with self.lock:
            snap = {n: NodeView(v.name, set(v.states), v.reason, v.reason_time, list(v.partitions), v.comment)
                    for n, v in self.views.items()}
        if self.before_nodes is not None and not names:
            self.before_nodes()      # every caller has read Slurm's answer before any acts on it
        return {n: v for n, v in snap.items() if not names or n in names}

    def update_node(self, name, **fields):
        self.time_left("scontrol update")
        with self.lock:
            self.updates.append((name, fields))
            v = self.views[name]
            if fields.get("State") == "DRAIN":
                v.states.add("DRAIN")
                v.reason, v.reason_time = fields["Reason"], int(time.time())
            elif fields.get("State") == "RESUME":
                v.states.discard("DRAIN")
                v.reason, v.reason_time = "", None
            if "Comment" in fields:
                v.comment = fields["Comment"]

    def job(self, job_id):
        time.sleep(min(self.comment_delay, self.time_left("scontrol show job")))
        return JobView(str(job_id))

    def reservation_list(self):
        return []


# 1. Slurm 23.11+ (data_parser v0.0.40+): `sinfo --json` prints {"sinfo": [...]} records (one per
#    node with -N, else one per group of like nodes), no longer {"nodes": [...]}. Trimmed from
#    Slurm 24.11.
SINFO_2411 = """{"errors": [], "warnings": [], "meta": {}, "sinfo": [
  {"port": 6818, "cluster": "c", "partition": {"name": "gpu"},
   "node": {"state": ["IDLE", "DRAIN"]},
   "nodes": {"allocated": 0, "idle": 0, "other": 1, "total": 1, "hostnames": [], "addresses": [],
             "nodes": ["gpu-001"]},
   "features": {"total": "dgx-h100", "active": "dgx-h100"},
   "reason": {"description": "gpuhc: REBOOT xid: Xid 79", "time": {"set": true, "infinite": false, "number": 1700000000}},
   "reservation": ""}]}"""


def test_sinfo_json_of_slurm_23_11_and_later_is_read():
    nodes = parse_nodes(SINFO_2411)
    # parse_nodes reads only "nodes": {} here, so Slurm.node() is None, policy.hands_off says "node state
    # could not be read" and gpuhc never drains, comments or resumes on Slurm 23.11 and later
    assert "gpu-001" in nodes, "sinfo --json of Slurm >= 23.11 gives no node: gpuhc never sees a node state"
    assert nodes["gpu-001"].drained and nodes["gpu-001"].partitions == ["gpu"]


# 2. PLANNED is the normal state of an idle node the backfill scheduler has planned for a pending
#    job (Slurm 23.02+: "planned" instead of "idle"); it is not boot/reboot/maint/future/down.
def test_idle_node_planned_by_backfill_is_still_drained():
    cfg = C.validate({})
    a = P.decide(report(Severity.REBOOT), view(states=("IDLE", "PLANNED")), cfg)
    assert a.kind == P.DRAIN, a


# 3. The breaker is read-then-drain with no serialisation: prologs of one multi-node job start at
#    the same moment (PrologFlags=Alloc), each counts the drains before any of them has drained,
#    and every one drains. A bad driver rollout drains the whole job's nodes past the limit.
def test_breaker_holds_when_many_prologs_fail_at_once(tmp_path):
    n = 10
    names = ["gpu-%03d" % i for i in range(1, n + 1)]
    views = {name: view(name) for name in names}
    barrier = threading.Barrier(n, timeout=10)
    slurm = FakeSlurm(views, before_nodes=barrier.wait)
    cfg = C.validate({"store": str(tmp_path / "s"), "state_dir": str(tmp_path / "st"),
                      "breaker": {"max_fraction": 0.1}})
    kinds = {}

    def prolog(name):
        kinds[name] = A.decide_and_act(cfg, report(Severity.REBOOT, node=name, context="prolog"), slurm).kind

    threads = [threading.Thread(target=prolog, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    drained = sorted(k for k, v in kinds.items() if v == P.DRAIN)
    # 10% of 10 nodes: one drain is allowed, the other nine must be would-drain
    assert len(drained) <= 1, "breaker let %d of %d nodes drain at once" % (len(drained), n)
    assert drained == ["gpu-001"], kinds          # the first in (reason time, name) order keeps it
    assert sorted(v for k, v in kinds.items() if k != "gpu-001") == [P.WOULD_DRAIN] * (n - 1)
    # and in Slurm: one node drained, the others resumed with their reason gone
    assert [v.name for v in views.values() if v.drained] == ["gpu-001"]
    assert all(not v.reason for name, v in views.items() if name != "gpu-001")


def test_breaker_recount_keeps_a_drain_an_operator_has_since_changed(tmp_path):
    """Past the limit after draining (another node's drain came first), but an operator has set
    their own reason on the node meanwhile: gpuhc leaves it alone."""
    views = {"gpu-001": view("gpu-001"), "gpu-002": view("gpu-002")}

    def other_drain_shows():        # after the first count: gpu-001 was drained a minute ago
        views["gpu-001"].states.add("DRAIN")
        views["gpu-001"].reason, views["gpu-001"].reason_time = "gpuhc: RESET pcie: x8", int(time.time()) - 60

    slurm = FakeSlurm(views, before_nodes=other_drain_shows)
    drain = slurm.update_node

    def operator_steps_in(name, **fields):
        drain(name, **fields)
        views[name].reason = "admin: reseating GPU3"

    slurm.update_node = operator_steps_in
    cfg = C.validate({"breaker": {"max_fraction": 0.1, "settle": 0}})
    a = A.decide_and_act(cfg, report(Severity.RESET, node="gpu-002", context="prolog"), slurm)
    assert a.kind == P.DRAIN and views["gpu-002"].reason == "admin: reseating GPU3"
    assert [f.get("State") for _, f in slurm.updates] == ["DRAIN"]
    # without the operator, the same recount undoes the drain
    views = {"gpu-001": view("gpu-001"), "gpu-002": view("gpu-002")}
    slurm = FakeSlurm(views, before_nodes=other_drain_shows)
    a = A.decide_and_act(cfg, report(Severity.RESET, node="gpu-002", context="prolog"), slurm)
    assert a.kind == P.WOULD_DRAIN and "undone" in a.why and not views["gpu-002"].drained
    assert [f.get("State") for _, f in slurm.updates] == ["DRAIN", "RESUME"]


# 4. Resume evidence is taken from an earlier drain episode when the current drain's record is
#    not in the shared store yet (spooled: the store was slow at drain time; the spool is flushed
#    only by the next write, after consider_resume read the history). Passes that are older than
#    the current drain (Slurm's reason_time says when it was set) then count.
def test_passes_from_before_the_current_drain_do_not_resume_it(tmp_path):
    cfg = C.validate({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state")})
    store = Store.from_config(cfg)
    t0 = time.time() - 86400      # recent enough to survive compaction by age
    # episode 1: RESET drain on boot b1, node rebooted, three passes on b2, resumed
    store.record(report(Severity.RESET, started=t0 + 100, boot="b1", action="drain"))
    for t in (200, 300, 400):
        store.record(report(Severity.PASS, started=t0 + t, boot="b2"))
    # episode 2 (boot b2, no reboot since): REBOOT drain at t0+1000; its record was spooled
    failing = report(Severity.REBOOT, started=t0 + 1000, boot="b2", action="drain")
    store._spool("gpu-001", encode(failing.to_dict()))
    slurm = FakeSlurm({"gpu-001": view(states=("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79",
                                       reason_time=int(t0) + 1001)})
    latest = report(Severity.PASS, started=t0 + 1100, boot="b2")      # one pass, same boot as the drain
    a = consider_resume(cfg, "gpu-001", slurm, latest=latest)
    assert a.kind != P.RESUME, "REBOOT drain resumed without a reboot, on one pass: %s" % a.why


def test_may_resume_ignores_passes_older_than_the_slurm_reason():
    cfg = C.validate({})
    old_drain = report(Severity.RESET, started=100, action="drain")
    history = [report(Severity.PASS, started=t) for t in (1100, 400, 300, 200)] + [old_drain]
    drained = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET xid: Xid 79", reason_time=1001)
    assert P.may_resume(drained, history, cfg, old_drain).kind != P.RESUME


# 5. Suite depth is looked up by suite name, default 1: a drain by the epilog's failure suite with
#    DCGM in it (as slurm/README.md recommends) is resumed by lightweight passes that never run DCGM.
def test_dcgm_failure_in_epilog_failure_suite_needs_dcgm_passes():
    cfg = C.validate({"suites": {"epilog_failure": list(C.LIGHTWEIGHT) + ["dcgm"]}})
    drain = report(Severity.RESET, started=100, context="epilog", suite="epilog_failure", action="drain",
                   check="dcgm")
    passes = [report(Severity.PASS, started=t, suite="healthcheck") for t in (400, 300, 200)]
    drained = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET dcgm: diag memory test failed")
    a = P.may_resume(drained, passes + [drain], cfg, drain)
    assert a.kind != P.RESUME, "DCGM-found failure resumed by passes without DCGM: %s" % a.why
    assert "ran dcgm" in a.why
    # passes of a suite that runs DCGM again do resume it
    for rep in passes:
        rep.suite = "intensive"
        rep.findings.append(Finding("dcgm", Severity.PASS, "DCGM 3.3 level 1: 5 tests passed"))
    assert P.may_resume(drained, passes + [drain], cfg, drain).kind == P.RESUME


# 6. Time spent before the checks (the epilog's job-comment query, pyslurm's import and version
#    probe) is not taken off the checks' share: the checks still get budget - act, so the run
#    overruns its budget and the act phase finds the deadline gone: the bad node is not drained.
def test_slow_slurm_before_the_checks_does_not_cost_the_drain(tmp_path, monkeypatch):
    cfg = C.validate({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                      "detect": {"slurm_features": False, "cloud_metadata": False},
                      "timeouts": {"budget": {"epilog": 4.0}, "act": 1.5, "check": 5.0},
                      "job_optout": {"allowed": True}})
    holder = {}

    def backend(cfg_, deadline=None):
        holder["slurm"] = FakeSlurm({"gpu-001": view()}, deadline=deadline, comment_delay=1.5)
        return holder["slurm"]

    monkeypatch.setattr(pipeline, "slurm_backend", backend)
    env = {"SLURMD_NODENAME": "gpu-001", "SLURM_JOB_ID": "42", "SLURM_JOB_EXIT_CODE2": "1:0"}
    t0 = time.monotonic()
    out = contexts.run(cfg, "epilog", node="gpu-001", simulate="h100-nvml-hang", env=env)
    wall = time.monotonic() - t0
    assert out.report.overall.unhealthy
    assert out.action.kind == P.DRAIN, "not drained: %s" % out.action.why
    assert wall < 4.0 + 0.5, wall


# 7. dry_run ("records what it would drain without draining anything") still drains: a node
#    already drained by gpuhc gets its reason rewritten (scontrol update State=DRAIN) on escalation.
def test_dry_run_does_not_escalate_a_drain():
    cfg = C.validate({"slurm": {"dry_run": True}})
    held = view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET pcie: x8")
    a = P.decide(report(Severity.ISOLATE), held, cfg)
    assert a.kind == P.HELD and a.reason == held.reason and "dry_run" in a.why


# 8. A MONITOR finding overwrites whatever node comment an operator set (and a resume clears it).
def test_monitor_does_not_overwrite_an_operators_comment():
    cfg = C.validate({})
    v = view(comment="RMA ticket 4411 open, do not reuse GPU3")
    a = P.decide(report(Severity.MONITOR), v, cfg)
    assert a.kind != P.COMMENT, "operator comment replaced by %r" % a.reason
    # gpuhc's own comment, or none, is set as before
    assert P.decide(report(Severity.MONITOR), view(comment="gpuhc: MONITOR ecc: old"), cfg).kind == P.COMMENT
    assert P.decide(report(Severity.MONITOR), view(), cfg).kind == P.COMMENT


@pytest.mark.parametrize("comment,kept", [("RMA ticket 4411", True), ("gpuhc: MONITOR clocks: HW slowdown", False)])
def test_resume_clears_only_gpuhcs_comment(comment, kept):
    views = {"gpu-001": view(states=("IDLE", "DRAIN"), reason="gpuhc: RESET pcie: x8", comment=comment)}
    slurm = FakeSlurm(views)
    a = A.carry_out(slurm, "gpu-001", P.Action(P.RESUME), views["gpu-001"])
    assert a.kind == P.RESUME and not views["gpu-001"].drained
    assert (views["gpu-001"].comment == comment) is kept


# 9. After a REBOOT drain, a pass whose boot id is unknown (None) counts as "a new boot".
def test_unknown_boot_id_is_not_a_new_boot():
    cfg = C.validate({})
    drain = report(Severity.REBOOT, started=100, boot="b1", action="drain")
    passes = [report(Severity.PASS, started=t, boot=None) for t in (400, 300, 200)]
    rebooted = view(states=("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79")
    assert P.may_resume(rebooted, passes + [drain], cfg, drain).kind != P.RESUME
