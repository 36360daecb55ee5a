"""Quarantine's pure parts: the plan (refusals, takeover, caps) and the verdict of a report."""
from gpuhc import config as C
from gpuhc.backends.slurm import NodeView, ReservationView
from gpuhc.contexts import quarantine as QC
from gpuhc.controller import quarantine as Q
from gpuhc.model import Finding, GpuRef, Report, Severity


def view(name, states=("IDLE",), reason="", parts=("gpu",)):
    return NodeView(name, set(states), reason, None, list(parts))


def cfg(**quarantine):
    return C.validate({"quarantine": quarantine} if quarantine else {})


def test_plan_drains_an_idle_node_first_and_keeps_a_gpuhc_drain():
    views = {"a": view("a"), "b": view("b", ("IDLE", "DRAIN"), "gpuhc: RESET nvlink: GPU1")}
    steps = {s.node: s for s in Q.plan(["a", "b"], views, [], cfg())}
    assert steps["a"].result == "go" and steps["a"].drain_first and steps["a"].was == Q.REQUESTED
    assert steps["b"].result == "go" and not steps["b"].drain_first and steps["b"].was.startswith("gpuhc: RESET")


def test_plan_refuses_an_operators_drain_without_force_and_takes_it_over_with_it():
    views = {"a": view("a", ("IDLE", "DRAIN"), "bios update")}
    (step,) = Q.plan(["a"], views, [], cfg())
    assert step.result == "refused" and "--force" in step.why and "bios update" in step.why
    (step,) = Q.plan(["a"], views, [], cfg(), force=True)
    assert step.result == "go" and step.takeover and step.was == "bios update"


def test_plan_refuses_down_unknown_reserved_and_skips_nodes_already_in_quarantine():
    views = {"a": view("a", ("DOWN", "DRAIN"), "gpuhc: REBOOT xid"), "b": view("b"), "c": view("c")}
    res = [ReservationView(Q.reservation_name("b"), ["b"], state="ACTIVE", flags={"MAINT"}),
           ReservationView("ops-window", ["c"], state="ACTIVE", flags={"MAINT"})]
    steps = {s.node: s for s in Q.plan(["a", "b", "c", "zz"], views, res, cfg())}
    assert steps["a"].result == "refused" and "down" in steps["a"].why
    assert steps["b"].result == "skipped" and "already in quarantine" in steps["b"].why
    assert steps["c"].result == "refused" and "another reservation" in steps["c"].why
    assert steps["zz"].result == "refused" and "not a Slurm node" in steps["zz"].why


def test_plan_caps_in_total_and_per_partition():
    views = {n: view(n, parts=("p1",) if n < "c" else ("p2",)) for n in ("a", "b", "c", "d")}
    res = [ReservationView(Q.reservation_name("x"), ["x"], state="ACTIVE")]
    views["x"] = view("x", parts=("p1",))
    steps = {s.node: s for s in Q.plan(["a", "b", "c", "d"], views, res, cfg(max_concurrent=3, max_per_partition=2))}
    assert steps["a"].result == "go"
    assert steps["b"].result == "refused" and "partition p1" in steps["b"].why
    assert steps["c"].result == "go"
    assert steps["d"].result == "refused" and "max_concurrent 3" in steps["d"].why


def report(*findings):
    return Report("n", "quarantine", "p", 0, 1, list(findings))


def test_verdicts():
    gpu = GpuRef(2, "GPU-2", "0000:3a:00.0")
    ok = Finding("ecc", Severity.PASS, "ok")
    assert QC.verdict(report(ok, Finding("clocks", Severity.MONITOR, "hw slowdown"))) == "RETURN_TO_SERVICE"
    assert QC.verdict(report(ok, Finding("gpu_bench", Severity.RESET, "slow", gpu=gpu))) == "RESET"
    assert QC.verdict(report(Finding("xid", Severity.REBOOT, "Xid 79"))) == "REBOOT"
    assert QC.verdict(report(Finding("gpu_stress", Severity.ISOLATE, "wrong", gpu=gpu),
                             Finding("dcgm", Severity.ERROR, "no dcgmi"))) == "REPLACE"
    assert QC.verdict(report(ok, Finding("gpu_stress", Severity.ERROR, "no torch"))) == "INCONCLUSIVE"


def test_verdict_actions_respect_what_brought_the_node():
    c = cfg()
    passed = report(Finding("ecc", Severity.PASS, "ok"))
    passed.verdict = "RETURN_TO_SERVICE"
    assert QC._action(c, passed, "gpuhc: RESET nvlink: GPU1").kind == "resume"
    kept = QC._action(c, passed, "gpuhc: ISOLATE dcgm: GPU2")
    assert kept.kind == "drain" and "ISOLATE: gpuhc resume --force" in kept.reason
    replace = report(Finding("gpu_stress", Severity.ISOLATE, "computed wrong results", gpu=GpuRef(2)))
    replace.verdict = "REPLACE"
    act = QC._action(c, replace, "gpuhc: RESET x")
    assert act.reason.startswith("gpuhc: ISOLATE quarantine gpu_stress") and act.reason.endswith("(replace)")
    unsure = report(Finding("gpu_stress", Severity.ERROR, "no torch"))
    unsure.verdict = "INCONCLUSIVE"
    act = QC._action(c, unsure, "gpuhc: RESET gpu_bench: GPU5 slow")
    assert act.reason == "gpuhc: RESET gpu_bench: GPU5 slow quarantine inconclusive: gpu_stress could not run"


def test_was_reason_unwraps_quarantine_reasons():
    assert Q.was_reason("gpuhc: quarantine job 12 running (was: gpuhc: RESET nvlink: x)") == "gpuhc: RESET nvlink: x"
    assert Q.was_reason("bios update") == "bios update"


def test_the_jobs_deadline_leaves_room_for_its_time_limit():
    """quarantine.deadline is how long the job may wait to start; Slurm's --deadline is when it must
    have ended, and Slurm cancels at once a job whose deadline is closer than its time limit (the
    defaults, 2 h limit and 1 h wait, did exactly that)."""
    import time

    c = cfg()
    spec = Q._spec(c, Q.Step("gpu-001", "go", was="gpuhc: RESET x", partition="gpu"))
    now = time.time()
    assert spec.deadline >= now + c["quarantine"]["time_limit"] + c["quarantine"]["deadline"] - 5
    assert spec.time_limit == int(c["quarantine"]["time_limit"] // 60) and spec.reservation == "gpuhc-quarantine-gpu-001"
