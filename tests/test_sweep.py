"""`gpuhc sweep` without Slurm: the planning (controller/sweep.plan, a pure function) over small
fleets and a 10,000-node one (rotation, caps, states), the command around it with a fake Slurm
(lock, submissions, dry run, a Slurm that does not answer), and the job's step on a simulated
node (contexts/sweep.py). The real cluster's tests are in test_slurm_sweep.py."""
import json
import os
import stat
import sys
import time

import pytest
from conftest import gpuhc

from gpuhc import config as C
from gpuhc import contexts
from gpuhc.backends.slurm import JobInfo, NodeView, ReservationView, Slurm, SlurmError
from gpuhc.controller import sweep as S

NOW = 1_800_000_000.0
DAY = 86400.0


def view(name, states=("IDLE",), parts=("gpu",), reason="", reason_time=None, boot_time=None):
    return NodeView(name=name, states=set(states), reason=reason, reason_time=reason_time, partitions=list(parts),
                    boot_time=boot_time)


def fleet(*views):
    return {v.name: v for v in views}


def plan(nodes, reservations=(), jobs=(), checked=None, now=NOW, interval=DAY, max_nodes=4, fraction=1.0,
         partitions=None, attempted=None):
    return S.plan(nodes, reservations, jobs, checked or {}, now, interval, max_nodes, fraction, partitions, attempted)


def names(p):
    return [c.node for c in p.chosen]


# -- which nodes are free --------------------------------------------------------------------------

@pytest.mark.parametrize("states", [
    ("ALLOCATED",), ("MIXED",), ("IDLE", "COMPLETING"), ("IDLE", "DRAIN"), ("DRAINED",), ("IDLE", "DRAINING"),
    ("DOWN",), ("DOWN", "DRAIN"), ("IDLE", "NOT_RESPONDING"), ("RESERVED",), ("IDLE", "RESERVED"),
    ("IDLE", "POWERED_DOWN"), ("IDLE", "POWERING_UP"), ("IDLE", "POWERING_DOWN"), ("IDLE", "POWER_DOWN"),
    ("IDLE", "PLANNED"), ("IDLE", "REBOOT_REQUESTED"), ("IDLE", "REBOOT_ISSUED"), ("FUTURE",), ("UNKNOWN",),
    ("IDLE", "FAIL"), ("IDLE", "MAINTENANCE"), (),
])
def test_only_idle_nodes_are_chosen(states):
    """ALLOCATED/MIXED (a user's job), COMPLETING, drained, down, reserved, powered down or
    powering, PLANNED (backfill holds it for a pending job), rebooting: never. MAINTENANCE held
    by an active reservation: never either."""
    nodes = fleet(view("gpu-001", states))
    res = [ReservationView("maint", ["gpu-001"], flags={"MAINT"}, state="ACTIVE")]
    p = plan(nodes, reservations=res if "MAINTENANCE" in states else ())
    assert names(p) == [], (states, p)
    assert sum(p.skipped.values()) == 1 and p.idle == {}


def test_a_stale_maintenance_flag_and_harmless_flags_do_not_keep_a_node_out():
    """Slurm 22.05 leaves IDLE+MAINTENANCE for minutes after a reservation ends by PURGE_COMP
    (backends.slurm.maint_stale): with no active reservation holding the node, it is idle."""
    nodes = fleet(view("gpu-001", ("IDLE", "MAINTENANCE")), view("gpu-002", ("IDLE", "CLOUD")), view("gpu-003"))
    ended = [ReservationView("gone", ["gpu-001"], flags={"MAINT"}, state="INACTIVE")]
    assert names(plan(nodes, reservations=ended)) == ["gpu-001", "gpu-002", "gpu-003"]


def test_a_node_in_an_active_reservation_is_not_chosen_even_without_the_flag():
    nodes = fleet(view("gpu-001"), view("gpu-002"))
    res = [ReservationView("users-training", ["gpu-001"], state="ACTIVE"),
           ReservationView("later", ["gpu-002"], state="INACTIVE")]
    p = plan(nodes, reservations=res)
    assert names(p) == ["gpu-002"] and p.skipped == {"in reservation users-training": 1}


def test_a_node_with_a_pending_or_running_sweep_job_is_skipped_and_a_finished_one_is_not():
    nodes = fleet(view("gpu-001"), view("gpu-002", ("ALLOCATED",)), view("gpu-003"), view("gpu-004"))
    jobs = [JobInfo("11", name="gpuhc-sweep-gpu-001", state="PENDING"),
            JobInfo("12", name="gpuhc-sweep-gpu-002", state="RUNNING", nodes=["gpu-002"]),
            JobInfo("13", name="gpuhc-sweep-gpu-003", state="COMPLETED", nodes=["gpu-003"]),
            JobInfo("14", name="training", state="PENDING")]
    p = plan(nodes, jobs=jobs)
    assert names(p) == ["gpu-003", "gpu-004"]
    assert p.in_flight == {"gpu-001": "11", "gpu-002": "12"}
    assert p.skipped == {"sweep job pending or running": 2}


# -- order and the interval ------------------------------------------------------------------------

def test_never_checked_first_then_stalest_and_recent_ones_dropped():
    nodes = fleet(*[view("gpu-%03d" % i) for i in range(1, 6)])
    checked = {"gpu-001": (NOW - 2 * DAY, "sweep"), "gpu-002": (NOW - 9 * DAY, "bench"),
               "gpu-003": (NOW - 3600, "quarantine"), "gpu-005": (NOW - 1.5 * DAY, "sweep")}
    p = plan(nodes, checked=checked)
    assert names(p) == ["gpu-004", "gpu-002", "gpu-001", "gpu-005"]
    assert p.skipped == {"checked within the interval": 1}
    assert [(c.last_checked, c.last_context) for c in p.chosen][:2] == [(None, ""), (NOW - 9 * DAY, "bench")]
    assert names(plan(nodes, checked=checked, interval=3 * DAY)) == ["gpu-004", "gpu-002"]
    assert names(plan(nodes, checked=checked, interval=0)) == ["gpu-004", "gpu-002", "gpu-001", "gpu-005"]


def test_a_record_from_a_clock_ahead_counts_as_recent():
    nodes = fleet(view("gpu-001"), view("gpu-002"))
    p = plan(nodes, checked={"gpu-001": (NOW + 3600, "sweep")})
    assert names(p) == ["gpu-002"]


def test_a_submission_that_never_recorded_puts_the_node_behind_the_others():
    """gpu-001's job last run was dropped at its deadline (or failed before recording): it is
    not checked, but it waits behind the nodes not tried since, instead of taking a slot every run."""
    nodes = fleet(view("gpu-001"), view("gpu-002"), view("gpu-003"))
    checked = {"gpu-003": (NOW - 5 * DAY, "sweep")}
    p = plan(nodes, checked=checked, attempted={"gpu-001": NOW - 1800}, max_nodes=3)
    assert names(p) == ["gpu-002", "gpu-003", "gpu-001"]


def test_last_checked_reads_the_summaries_last_and_ignores_the_lightweight_contexts():
    summaries = {
        "gpu-001": {"context": "epilog", "started_ts": NOW, "last": {"sweep": NOW - DAY, "prolog": NOW - 10,
                                                                     "bench": NOW - 2 * DAY}},
        "gpu-002": {"context": "quarantine", "started_ts": NOW - 5},             # a summary of before `last`
        "gpu-003": {"context": "prolog", "started_ts": NOW},
        "gpu-004": {"context": "sweep", "started_ts": NOW - 7, "last": {"sweep": NOW - 99}},
    }
    assert S.last_checked(summaries) == {"gpu-001": (NOW - DAY, "sweep"), "gpu-002": (NOW - 5, "quarantine"),
                                         "gpu-004": (NOW - 7, "sweep")}


def test_the_store_summary_keeps_each_contexts_newest_time_across_later_reports(make_cfg):
    """A sweep followed by a job's prolog and epilog: the summary's newest report is the epilog's,
    and its ``last`` still says when the node was swept (what the planning reads)."""
    from gpuhc import session
    from gpuhc.store import Store

    cfg = make_cfg(detect={"slurm_features": False, "cloud_metadata": False})
    store = Store.from_config(cfg)
    started = {}
    for context in ("sweep", "prolog", "epilog"):
        report, _, _ = session.run(cfg, context, suite="lightweight", node="gpu-001", simulate="h100-healthy")
        store.record(report)
        started[context] = report.started
    summary = store.summaries()["gpu-001"]
    assert summary["context"] == "epilog"
    assert summary["last"] == {c: pytest.approx(t, abs=1e-3) for c, t in started.items()}
    assert S.last_checked({"gpu-001": summary}) == {"gpu-001": (pytest.approx(started["sweep"], abs=1e-3), "sweep")}


# -- caps -------------------------------------------------------------------------------------------

def test_max_nodes_and_the_idle_fraction_of_each_partition():
    nodes = fleet(*[view("a-%02d" % i, parts=("a",)) for i in range(30)],
                  *[view("b-%02d" % i, parts=("b",)) for i in range(5)],
                  *[view("c-%02d" % i, ("ALLOCATED",), parts=("c",)) for i in range(20)], view("c-99", parts=("c",)))
    p = plan(nodes, max_nodes=100, fraction=0.1)
    chosen = names(p)
    assert sum(n.startswith("a-") for n in chosen) == 3            # 10% of 30 idle
    assert sum(n.startswith("b-") for n in chosen) == 1            # 10% of 5, but at least one
    assert sum(n.startswith("c-") for n in chosen) == 1            # the one idle node of a busy partition
    assert p.idle == {"a": 30, "b": 5, "c": 1}
    assert names(plan(nodes, max_nodes=2, fraction=0.1)) == ["a-00", "a-01"]
    assert names(plan(nodes, max_nodes=0)) == []


def test_sweep_jobs_in_flight_count_against_their_partitions_share():
    nodes = fleet(*[view("a-%02d" % i, parts=("a",)) for i in range(18)],
                  view("a-18", ("ALLOCATED",), parts=("a",)), view("a-19", parts=("a",)))
    jobs = [JobInfo("1", name="gpuhc-sweep-a-18", state="RUNNING", nodes=["a-18"]),
            JobInfo("2", name="gpuhc-sweep-a-19", state="PENDING")]
    assert names(plan(nodes, jobs=jobs, fraction=0.1, max_nodes=10)) == []      # 10% of 20 = 2, both taken
    assert names(plan(nodes, jobs=jobs[:1], fraction=0.1, max_nodes=10)) == ["a-00"]


def test_a_node_in_two_partitions_needs_room_in_both_and_p_filters():
    nodes = fleet(view("x-1", parts=("a", "b")), view("x-2", parts=("a",)), view("x-3", parts=("b",)))
    p = plan(nodes, fraction=0.1)
    assert names(p) == ["x-1"]                                     # then a and b are both full
    p = plan(nodes, fraction=0.1, partitions=["b"])
    assert names(p) == ["x-1"] and p.chosen[0].partitions == ["b"]
    assert names(plan(nodes, fraction=1.0, partitions=["a"])) == ["x-1", "x-2"]


# -- 10,000 nodes -----------------------------------------------------------------------------------

def big_fleet(n=10_000, partitions=10):
    """n nodes in `partitions` partitions: every 10th allocated, every 50th drained, every 97th
    in a reservation, the rest idle."""
    nodes, res = {}, []
    for i in range(n):
        name = "gpu-%05d" % i
        states = ("ALLOCATED",) if i % 10 == 3 else ("IDLE", "DRAIN") if i % 50 == 7 else ("IDLE",)
        nodes[name] = NodeView(name, set(states), partitions=["p%d" % (i % partitions)])
        if i % 97 == 5:
            res.append(name)
    return nodes, [ReservationView("big", res, state="ACTIVE")]


@pytest.mark.parametrize("records_land", [True, False])
def test_rotation_over_10000_nodes_checks_every_idle_node_before_any_twice(records_land):
    """Runs an hour apart, 500 jobs a run (50 per partition of ~790 idle: within 10%). With the
    interval at 0 only the order can spread the checks; with records landing (each job records
    a sweep report) or never landing (the jobs are dropped at their deadline: only the
    submissions, kept locally, order the nodes) every idle node is chosen once before any
    twice, and the caps hold every run."""
    nodes, res = big_fleet()
    checked, attempted, seen = {}, {}, {}
    idle = [n for n, v in nodes.items() if S.not_free(v, S.active_reservations(res)) is None]
    runs = -(-len(idle) // 500)
    for run in range(runs + 3):
        now = NOW + run * 3600
        p = S.plan(nodes, res, [], checked, now, 0, 500, 0.1, None, attempted)
        assert 0 < len(p.chosen) <= 500
        per = {}
        for c in p.chosen:
            per[c.partitions[0]] = per.get(c.partitions[0], 0) + 1
        assert all(count <= max(1, int(0.1 * p.idle[part])) for part, count in per.items()), per
        for c in p.chosen:
            assert nodes[c.node].states == {"IDLE"}
            seen[c.node] = seen.get(c.node, 0) + 1
            attempted[c.node] = now
            if records_land:
                checked[c.node] = (now + 60, "sweep")
        if len(seen) < len(idle):
            assert set(seen.values()) == {1}, "a node chosen twice before every idle node was chosen once"
    assert set(seen) == set(idle)
    assert max(seen.values()) == 2          # the next cycle started, in the same order


def test_rotation_with_the_default_interval_and_max_nodes_over_days():
    """The cron line's figures (every 30 minutes, --max-nodes 4, 24 h interval) on a small
    partition: after a day every idle node has been checked once, nobody twice."""
    nodes = fleet(*[view("gpu-%03d" % i) for i in range(40)])
    checked, count = {}, {}
    for run in range(48):
        now = NOW + run * 1800
        for c in plan(nodes, checked=checked, now=now, fraction=0.1).chosen:
            count[c.node] = count.get(c.node, 0) + 1
            checked[c.node] = (now + 600, "sweep")
    assert set(count) == set(nodes) and set(count.values()) == {1}


def test_planning_10000_nodes_takes_well_under_a_second():
    nodes, res = big_fleet()
    checked = {n: (NOW - (i % 500) * 3600, "sweep") for i, n in enumerate(nodes) if i % 3}
    start = time.perf_counter()
    p = S.plan(nodes, res, [], checked, NOW, DAY, 4, 0.1, None, {})
    took = time.perf_counter() - start
    assert len(p.chosen) == 4 and all(n not in checked for n in names(p))
    assert took < 1.0, took


# -- quarantine candidates --------------------------------------------------------------------------

def test_quarantine_candidates_are_gpuhc_reset_drains_and_reboot_drains_after_a_reboot():
    t = NOW
    nodes = fleet(
        view("reset", ("IDLE", "DRAIN"), reason="gpuhc: RESET gpu_stress GPU5: slow", reason_time=t),
        view("rebooted", ("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79", reason_time=t, boot_time=t + 60),
        view("not-rebooted", ("IDLE", "DRAIN"), reason="gpuhc: REBOOT xid: Xid 79", reason_time=t, boot_time=t - 60),
        view("isolate", ("IDLE", "DRAIN"), reason="gpuhc: ISOLATE gpu_stress GPU2: wrong results", reason_time=t),
        view("operator", ("IDLE", "DRAIN"), reason="RMA ticket 42", reason_time=t),
        view("inconclusive", ("IDLE", "DRAIN"), reason="gpuhc: RESET xid: Xid 48; quarantine inconclusive: timeout"),
        view("in-quarantine", ("IDLE", "MAINTENANCE", "RESERVED"), reason="", reason_time=t),
        view("reserved", ("IDLE", "DRAIN"), reason="gpuhc: RESET gpu_stress GPU5: slow", reason_time=t),
        view("down", ("DOWN", "DRAIN"), reason="gpuhc: RESET gpu_stress GPU5: slow", reason_time=t),
        view("busy", ("ALLOCATED",)))
    res = [ReservationView("gpuhc-quarantine-reserved", ["reserved"], state="ACTIVE")]
    assert S.quarantine_candidates(nodes, res) == ["rebooted", "reset"]


# -- the command, with a fake Slurm -----------------------------------------------------------------

class FakeSlurm(Slurm):
    kind = "fake"

    def __init__(self, views, jobs=(), fail_on=None, fail_submit_after=None):
        super().__init__(timeout=1.0)
        self.views = dict(views)
        self.job_list = list(jobs)
        self.submitted = []
        self.fail_on = fail_on
        self.fail_submit_after = fail_submit_after

    def available(self):
        return True

    def _call(self, name):
        if self.fail_on == name:
            raise SlurmError("%s timed out after 1 s" % name)

    def nodes(self, names=None):
        self._call("nodes")
        return {n: v for n, v in self.views.items() if not names or n in names}

    def reservation_list(self):
        self._call("reservations")
        return []

    def jobs(self, ids=None, name=None, user=None, states=None):
        self._call("jobs")
        return list(self.job_list)

    def submit(self, spec):
        if self.fail_submit_after is not None and len(self.submitted) >= self.fail_submit_after:
            raise SlurmError("sbatch: timed out after 1 s")
        self.submitted.append(spec)
        job_id = str(100 + len(self.submitted))
        self.job_list.append(JobInfo(job_id, name=spec.name, state="PENDING"))
        return job_id


@pytest.fixture
def cfg(make_cfg, tmp_path):
    def make(**sweep):
        conf = {"qos": "low", "nice": 500}
        conf.update(sweep)
        return make_cfg(sweep=conf)
    return make


def idle_views(n=4, part="gpu"):
    return {("gpu-%03d" % i): view("gpu-%03d" % i, parts=(part,)) for i in range(1, n + 1)}


def test_a_sweep_submits_exclusive_jobs_with_the_configured_limits_and_the_next_run_moves_on(cfg, tmp_path):
    c = cfg(max_idle_fraction=1.0)
    slurm = FakeSlurm(idle_views())
    before = time.time()
    result = S.sweep(c, max_nodes=2, slurm=slurm)
    assert result.exit_code == 0 and result.error == "", result
    assert [s.nodelist for s in slurm.submitted] == [["gpu-001"], ["gpu-002"]]
    spec = slurm.submitted[0]
    assert spec.name == "gpuhc-sweep-gpu-001" and spec.exclusive and spec.time_limit == 30
    assert spec.script.endswith(os.path.join("sbatch", "sweep.sbatch")) and os.path.isfile(spec.script)
    assert spec.partition == "gpu" and spec.qos == "low" and spec.nice == 500 and spec.args == []
    assert before + 3600 <= spec.deadline <= time.time() + 3600
    assert [(p.node, p.job_id, p.result) for p in result.plan.chosen] == [("gpu-001", "101", "submitted"),
                                                                         ("gpu-002", "102", "submitted")]
    # the jobs are still pending: those nodes are skipped, the next two taken
    result = S.sweep(c, max_nodes=2, slurm=slurm, suite="intensive")
    assert [s.nodelist for s in slurm.submitted[2:]] == [["gpu-003"], ["gpu-004"]]
    assert slurm.submitted[2].args == ["--suite", "intensive"]
    # all four ended without a record (dropped at their deadline): the next run starts over in order
    for job in slurm.job_list:
        job.state = "DEADLINE"
    result = S.sweep(c, max_nodes=1, slurm=slurm)
    assert [p.node for p in result.plan.chosen] == ["gpu-001"]
    assert json.loads((tmp_path / "state" / "sweep-attempts.json").read_text()).keys() == set(idle_views())


def test_dry_run_submits_nothing_and_writes_nothing(cfg, tmp_path):
    slurm = FakeSlurm(idle_views())
    result = S.sweep(cfg(), dry_run=True, slurm=slurm)
    assert result.exit_code == 0 and result.dry_run and [p.node for p in result.plan.chosen] == ["gpu-001"]
    assert slurm.submitted == [] and not (tmp_path / "state").exists()
    assert "dry run: nothing submitted" in S.text(result)


@pytest.mark.parametrize("call", ["nodes", "reservations", "jobs"])
def test_a_slurm_that_does_not_answer_ends_the_run_with_exit_3_and_nothing_submitted(cfg, call):
    slurm = FakeSlurm(idle_views(), fail_on=call)
    result = S.sweep(cfg(), slurm=slurm)
    assert result.exit_code == 3 and slurm.submitted == []
    assert result.error.startswith("Slurm did not answer, nothing submitted: ") and "\n" not in result.error


def test_a_submission_failing_midway_stops_the_rest_and_keeps_what_was_done(cfg, tmp_path):
    slurm = FakeSlurm(idle_views(), fail_submit_after=1)
    result = S.sweep(cfg(max_idle_fraction=1.0), slurm=slurm)
    assert result.exit_code == 3 and len(slurm.submitted) == 1
    assert [(p.node, p.result) for p in result.plan.chosen] == [("gpu-001", "submitted"), ("gpu-002", "error"),
                                                                ("gpu-003", "planned"), ("gpu-004", "planned")]
    assert "sbatch for gpu-002 failed" in result.error
    assert list(json.loads((tmp_path / "state" / "sweep-attempts.json").read_text())) == ["gpu-001"]


def test_a_second_sweep_while_one_runs_exits_0_saying_so(cfg, tmp_path):
    c = cfg()
    slurm = FakeSlurm(idle_views())
    with S.SweepLock(c["state_dir"]):
        result = S.sweep(c, slurm=slurm)
    assert result.exit_code == 0 and not result.ran and slurm.submitted == []
    assert "another gpuhc sweep is running" in result.why and str(tmp_path / "state" / "sweep.lock") in result.why
    assert S.sweep(c, slurm=slurm).ran and len(slurm.submitted) == 1


def test_an_unknown_suite_or_partition_is_a_usage_error(cfg):
    from gpuhc.errors import GpuhcError

    with pytest.raises(GpuhcError, match="--suite nope: no such suite"):
        S.sweep(cfg(), suite="nope", slurm=FakeSlurm(idle_views()))
    with pytest.raises(GpuhcError, match="-p nope: no such partition"):
        S.sweep(cfg(), partitions=["nope"], slurm=FakeSlurm(idle_views()))


def test_the_sweep_config_is_validated():
    for bad, path in [({"max_idle_fraction": 1.5}, "sweep.max_idle_fraction"), ({"deadline": 600}, "sweep.deadline"),
                      ({"time_limit": 900}, "sweep.time_limit"), ({"script": "sweep.sbatch"}, "sweep.script"),
                      ({"max_nodes": -1}, "sweep.max_nodes"), ({"nice": "low"}, "sweep.nice"),
                      ({"qos": "a b"}, "sweep.qos"), ({"extra": 1}, "sweep")]:
        with pytest.raises(C.ConfigError, match=path.replace(".", r"\.")):
            C.validate({"sweep": bad})


class FakeQuarantine:
    """gpuhc.controller.quarantine's two calls the sweep makes (issue 14's interface)."""

    def __init__(self):
        self.calls = []

    def reconcile(self, cfg, slurm):
        self.calls.append(("reconcile",))
        return [{"node": "gpu-009", "result": "finished", "why": "reservation without a job", "reservation":
                 "gpuhc-quarantine-gpu-009", "job_id": ""}]

    def start(self, cfg, slurm, nodes, force=False, dry_run=False):
        self.calls.append(("start", list(nodes), force, dry_run))
        return [{"node": n, "result": "planned" if dry_run else "started", "why": "RESET drain",
                 "reservation": "gpuhc-quarantine-" + n, "job_id": "" if dry_run else "77"} for n in nodes]


@pytest.fixture
def fake_quarantine(monkeypatch):
    import gpuhc.controller

    fake = FakeQuarantine()
    monkeypatch.setitem(sys.modules, "gpuhc.controller.quarantine", fake)
    monkeypatch.setattr(gpuhc.controller, "quarantine", fake, raising=False)
    return fake


def quarantine_views():
    views = idle_views(2)
    views["gpu-003"] = view("gpu-003", ("IDLE", "DRAIN"), reason="gpuhc: RESET gpu_stress: GPU5 25% below", reason_time=1)
    views["gpu-004"] = view("gpu-004", ("IDLE", "DRAIN"), reason="RMA", reason_time=1)
    return views


def test_after_submitting_the_sweep_reconciles_quarantine_and_with_auto_quarantine_starts_it(cfg, fake_quarantine):
    slurm = FakeSlurm(quarantine_views())
    result = S.sweep(cfg(auto_quarantine=True, max_idle_fraction=1.0), slurm=slurm)
    assert result.exit_code == 0 and len(slurm.submitted) == 2
    assert fake_quarantine.calls == [("reconcile",), ("start", ["gpu-003"], False, False)]
    assert [r["node"] for r in result.quarantine["reconciled"]] == ["gpu-009"]
    assert result.quarantine["started"][0]["job_id"] == "77"
    assert "quarantine started: gpu-003 started (RESET drain)" in S.text(result)
    assert json.loads(json.dumps(result.to_dict()))["quarantine"]["started"][0]["node"] == "gpu-003"


def test_without_auto_quarantine_only_leftovers_are_reconciled_and_a_dry_run_does_neither(cfg, fake_quarantine):
    slurm = FakeSlurm(quarantine_views())
    S.sweep(cfg(), slurm=slurm)
    assert fake_quarantine.calls == [("reconcile",)]
    fake_quarantine.calls.clear()
    result = S.sweep(cfg(), slurm=slurm, dry_run=True)
    assert fake_quarantine.calls == [] and result.quarantine == {}
    result = S.sweep(cfg(auto_quarantine=True), slurm=slurm, dry_run=True)
    assert fake_quarantine.calls == [("start", ["gpu-003"], False, True)]           # its plan only
    assert result.quarantine["started"][0]["result"] == "planned"


def test_without_the_quarantine_module_the_sweep_still_submits_and_says_so(cfg, monkeypatch):
    import gpuhc.controller

    monkeypatch.setitem(sys.modules, "gpuhc.controller.quarantine", None)        # import fails
    monkeypatch.delattr(gpuhc.controller, "quarantine", raising=False)
    slurm = FakeSlurm(quarantine_views())
    result = S.sweep(cfg(auto_quarantine=True), slurm=slurm)
    assert result.exit_code == 0 and len(slurm.submitted) == 1
    assert result.notes == ["quarantine step skipped: gpuhc.controller.quarantine is not available "
                            "(import of gpuhc.controller.quarantine halted; None in sys.modules)"]


def test_a_failing_quarantine_step_keeps_the_table_and_exits_3(cfg, fake_quarantine, monkeypatch):
    def broken(cfg_, slurm_):
        raise SlurmError("scontrol show reservation: timed out after 1 s")
    monkeypatch.setattr(fake_quarantine, "reconcile", broken)
    slurm = FakeSlurm(quarantine_views())
    result = S.sweep(cfg(), slurm=slurm)
    assert result.exit_code == 3 and [p.result for p in result.plan.chosen] == ["submitted"]
    assert result.error == "quarantine step stopped, Slurm did not answer: scontrol show reservation: timed out after 1 s"


# -- the command line ------------------------------------------------------------------------------

def fake_slurm_tools(tmp_path, sinfo_body):
    """sinfo/scontrol/squeue/sbatch stand-ins on PATH, and a slurm.conf for them to be 'configured'."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("sinfo", sinfo_body), ("scontrol", "exit 0"), ("squeue", 'echo \'{"jobs": []}\''),
                       ("sbatch", "echo 999")):
        path = bin_dir / tool
        path.write_text("#!/bin/sh\n%s\n" % body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=fake\n")
    return {"PATH": "%s:%s" % (bin_dir, os.environ["PATH"]), "SLURM_CONF": str(conf)}


def cli_env(tmp_path, slurm="{timeout: 1}"):
    path = tmp_path / "config.yaml"
    path.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                    "slurm: %s\n" % (tmp_path / "store", tmp_path / "state", slurm))
    return {"GPUHC_CONFIG": str(path)}


def test_cli_a_slurm_that_hangs_is_exit_3_and_one_line(tmp_path):
    env = dict(cli_env(tmp_path), **fake_slurm_tools(tmp_path, "sleep 30"))
    start = time.monotonic()
    res = gpuhc("sweep", env=env)
    assert res.returncode == 3, res.stderr
    assert time.monotonic() - start < 15
    assert res.stdout.strip() == "nothing to sweep"
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        "gpuhc sweep: error: Slurm did not answer, nothing submitted: "), res.stderr


def test_cli_without_slurm_is_a_usage_error_and_the_table_and_json(tmp_path):
    res = gpuhc("sweep", env=cli_env(tmp_path, "{backend: none}"))
    assert res.returncode == 2 and res.stderr.startswith("gpuhc: error: no Slurm to submit through"), res.stderr
    sinfo = json.dumps({"nodes": [{"name": "gpu-001", "state": "idle", "state_flags": [], "partitions": ["gpu"]},
                                  {"name": "gpu-002", "state": "allocated", "state_flags": [], "partitions": ["gpu"]}]})
    env = dict(cli_env(tmp_path), **fake_slurm_tools(tmp_path, "echo '%s'" % sinfo))
    res = gpuhc("sweep", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["NODE", "PARTITION", "LAST", "CHECKED", "JOB"]
    assert res.stdout.splitlines()[1].split() == ["gpu-001", "gpu", "never", "-"]
    assert "not chosen: 1 allocated" in res.stdout and "dry run: nothing submitted" in res.stdout
    res = gpuhc("sweep", "--json", "--max-nodes", "3", "--interval", "2h", env=env)
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["chosen"] == [{"node": "gpu-001", "partition": "gpu", "last_checked": None,
                                                      "last_context": None, "job_id": "999", "result": "submitted"}]
    assert out["skipped"] == {"allocated": 1} and out["idle"] == {"gpu": 1}
    res = gpuhc("sweep", "--interval", "soon", env=env)
    assert res.returncode == 2 and "--interval 'soon'" in res.stderr
    res = gpuhc("sweep", "--run-here", "--max-nodes", "2", env=env)
    assert res.returncode == 2 and "--max-nodes is the controller's" in res.stderr


# -- the job's step on its node ---------------------------------------------------------------------

def test_the_sweep_context_is_registered_and_acts_like_the_healthcheck():
    from gpuhc.contexts.healthcheck import HealthCheck

    ctx = contexts.get("sweep")
    assert isinstance(ctx, HealthCheck) and ctx.name == "sweep" and ctx.acts


def test_run_here_runs_the_sweep_suite_records_a_sweep_report_and_exits_1_on_a_deep_fault(tmp_path):
    env = cli_env(tmp_path, "{backend: none}")
    res = gpuhc("sweep", "--run-here", "--simulate", "h100-gpu-slow", "--node", "gpu-003", "--json", env=env)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["context"] == "sweep" and out["suite"] == "sweep" and out["overall"] == "RESET"
    ran = {f["check"] for f in out["findings"]}
    assert {"gpu_stress", "xid", "ecc", "nvlink"} <= ran
    assert any(f["check"] == "gpu_stress" and f["severity"] == "RESET" for f in out["findings"])
    assert out["action"]["kind"] == "skip"            # no Slurm to drain through here
    summary = json.loads((tmp_path / "store" / "nodes" / "gpu-003" / "summary.json").read_text())
    assert set(summary["last"]) == {"sweep"}
    res = gpuhc("sweep", "--run-here", "--simulate", "h100-healthy", "--node", "gpu-004", env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("gpuhc sweep PASS on gpu-004"), res.stdout
