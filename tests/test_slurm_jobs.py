"""The Slurm interface's jobs, reservations and reboots (backends/slurm.py, slurm_cli.py,
slurm_jobs.py): the parsers on real Slurm 22.05.8 output (tests/data/slurm, captured by its
capture.sh), the argument lists, the time limits, and the calls against the real test cluster
(tests/slurm_cluster.py; those tests are marked `slurm` by conftest and skipped without root or
Slurm): a MAINT reservation holds a drained-then-resumed node for the quarantine job alone, and
the node is plain IDLE once the reservation is deleted.
"""
import os
import time

import pytest

from gpuhc.backends import slurm_jobs as sj
from gpuhc.backends.slurm import JobSpec, NodeView, ReservationView, Slurm, SlurmBackend, SlurmError, maint_stale
from gpuhc.backends.slurm_cli import SlurmCli, one_line, parse_nodes
from gpuhc.backends.slurm_pyslurm import SlurmPyslurm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "slurm")


def data(name):
    with open(os.path.join(DATA, name)) as fh:
        return fh.read()


@pytest.fixture
def utc(monkeypatch):
    """Slurm prints local times; the captures were taken on a UTC machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- the interface ----------------------------------------------------------------------------------

PROTOCOL_CALLS = ["available", "nodes", "node", "update_node", "drain", "resume", "set_comment", "job",
                  "job_comment", "features", "reservations", "reservation_list", "submit", "jobs", "cancel",
                  "reboot", "create_reservation", "update_reservation", "delete_reservation"]


def test_both_backends_are_slurm_backends_and_the_protocol_names_every_call():
    for backend in (SlurmCli(), SlurmPyslurm()):
        assert isinstance(backend, SlurmBackend)
        for call in PROTOCOL_CALLS:
            assert callable(getattr(backend, call)), call
    declared = {n for n in vars(SlurmBackend) if not n.startswith("_")} - {"kind", "timeout", "deadline"}
    assert declared >= set(PROTOCOL_CALLS)


def test_base_class_says_what_a_backend_must_provide():
    with pytest.raises(NotImplementedError):
        Slurm().submit(JobSpec(wrap="true"))
    with pytest.raises(NotImplementedError):
        Slurm().reservations()          # built on reservation_list()


# -- jobs: squeue --json of 22.05 -------------------------------------------------------------------

def test_squeue_json_2205_every_state_read():
    jobs = {j.name: j for j in sj.parse_jobs(data("squeue-22.05-mixed.json"))}
    q = jobs["gpuhc-quarantine"]
    assert (q.job_id, q.state, q.nodes, q.reservation, q.time_limit, q.comment, q.reason, q.partition, q.user) == \
        ("1", "RUNNING", ["gpu-002"], "gpuhc-q-gpu-002", 5, "gpuhc quarantine of gpu-002", "", "gpu", "root")
    assert q.start_time and q.end_time - q.start_time == 300 and not q.finished
    failed = jobs["ex3"]
    assert (failed.state, failed.exit_code, failed.reason, failed.finished) == ("FAILED", "3:0", "NonZeroExitCode",
                                                                               True)
    dep = jobs["dep"]
    assert (dep.state, dep.reason, dep.dependency, dep.comment, dep.time_limit, dep.nodes) == \
        ("PENDING", "DependencyNeverSatisfied", "afterok:2(failed)", "a b=c; |x", 10, [])
    assert dep.deadline and dep.start_time is None and dep.end_time is None
    killed = jobs["killed"]
    assert (killed.state, killed.exit_code, killed.finished) == ("CANCELLED", "0:15", True)
    assert jobs["ordinary"].time_limit is None and jobs["ordinary"].reason == "ReqNodeNotAvail"
    assert jobs["two nodes"].nodes == ["gpu-001", "gpu-003"]          # gpu-[001,003] expanded
    assert sj.parse_jobs(data("squeue-22.05-empty.json")) == []


def test_squeue_filters_apply_here_since_2205_ignores_them():
    text = data("squeue-22.05-mixed.json")
    assert [j.job_id for j in sj.parse_jobs(text, ids=["2", 4])] == ["2", "4"]
    assert [j.job_id for j in sj.parse_jobs(text, name="dep")] == ["3"]
    assert [j.job_id for j in sj.parse_jobs(text, name="de")] == []                  # exact names only
    assert len(sj.parse_jobs(text, user="root")) == 6 and len(sj.parse_jobs(text, user="0")) == 6
    assert sj.parse_jobs(text, user="nobody") == []
    assert [j.job_id for j in sj.parse_jobs(text, states=["pending"])] == ["3", "5"]
    assert [j.job_id for j in sj.parse_jobs(text, ids=["3", "5"], states=["PENDING"], name="dep")] == ["3"]


def test_squeue_json_of_later_releases_read_too():
    """Not captured here (23.x is not installed): the shapes of its documented data_parser
    output: states as lists, numbers as {set, infinite, number}, exit codes as objects."""
    text = ('{"jobs": [{"job_id": 7, "name": "n", "job_state": ["COMPLETED"], "nodes": "gpu-[001-002]",'
            ' "state_reason": "None", "start_time": {"set": true, "infinite": false, "number": 100},'
            ' "end_time": {"set": true, "infinite": false, "number": 160},'
            ' "time_limit": {"set": false, "infinite": true, "number": 0}, "resv_name": "r",'
            ' "exit_code": {"status": ["SIGNALED"], "return_code": {"set": true, "number": 0},'
            ' "signal": {"id": {"set": true, "number": 9}, "name": "KILL"}},'
            ' "deadline": {"set": true, "number": 0}, "array_job_id": {"set": true, "number": 5},'
            ' "array_task_id": {"set": true, "number": 2}}], "errors": []}')
    (job,) = sj.parse_jobs(text, ids=["5_2"])
    assert (job.state, job.nodes, job.start_time, job.end_time, job.time_limit, job.exit_code, job.deadline) == \
        ("COMPLETED", ["gpu-001", "gpu-002"], 100, 160, None, "0:9", None)


def test_squeue_unreadable_output_is_a_one_line_error():
    for text in ("", "not json", '{"meta": {}}', '{"jobs": null}'):
        with pytest.raises(SlurmError, match="squeue --json"):
            sj.parse_jobs(text)
    with pytest.raises(SlurmError, match="Unable to contact"):
        sj.parse_jobs('{"jobs": [], "errors": [{"error": "Unable to contact slurm controller"}]}')


# -- reservations and nodes -------------------------------------------------------------------------

def test_reservations_2205_active_inactive_and_flags_with_values(utc):
    active, future = sj.parse_reservations(data("scontrol-show-reservation-22.05-active-inactive.txt"))
    assert active == ReservationView("gpuhc-q-gpu-002", ["gpu-002"], 1796526206, 1796526206 + 1800,
                                     {"MAINT", "IGNORE_JOBS", "SPEC_NODES"}, ["root"], "ACTIVE")   # 03:03:26 UTC
    assert active.active and not future.active
    assert (future.nodes, future.users, future.end - future.start) == (["gpu-003", "gpu-004"], ["root", "nobody"],
                                                                        86400)
    (purge,) = sj.parse_reservations(data("scontrol-show-reservation-22.05-purge-comp.txt"))
    assert purge.flags == {"MAINT", "IGNORE_JOBS", "SPEC_NODES", "PURGE_COMP"}       # PURGE_COMP=00:00:05
    assert sj.parse_reservations(data("scontrol-show-reservation-22.05-none.txt")) == []
    # no State= (not 22.05): told from the times
    line = "ReservationName=old StartTime=2020-01-01T00:00:00 EndTime=%s Nodes=gpu-001 Users=root\n"
    assert sj.parse_reservations(line % "2999-01-01T00:00:00")[0].state == "ACTIVE"
    assert sj.parse_reservations(line % "2020-01-02T00:00:00")[0].state == "INACTIVE"


class ListedReservations(Slurm):
    def __init__(self, text):
        super().__init__()
        self.text = text

    def reservation_list(self):
        return sj.parse_reservations(self.text)


def test_reservations_map_is_built_on_the_list_and_skips_inactive_ones():
    text = data("scontrol-show-reservation-22.05-active-inactive.txt")
    assert ListedReservations(text).reservations() == {"gpu-002": "gpuhc-q-gpu-002"}


def test_maint_flag_without_an_active_reservation_is_stale():
    """Slurm 22.05 after PURGE_COMP ended a reservation: gpu-004 still IDLE+MAINTENANCE (captured)."""
    after = parse_nodes(data("sinfo-22.05-maint-stale-after-purge-comp.json"))
    assert after["gpu-004"].states == {"IDLE", "MAINTENANCE"}
    assert [n for n, v in after.items() if maint_stale(v, [])] == ["gpu-004"]
    assert [n for n, v in after.items() if maint_stale(v, {})] == ["gpu-004"]
    # held by the active reservation: not stale, drained or not
    held = parse_nodes(data("sinfo-22.05-drain-maint-reserved.json"))["gpu-002"]
    assert held.states == {"IDLE", "DRAIN", "MAINTENANCE", "RESERVED"}
    resvs = sj.parse_reservations(data("scontrol-show-reservation-22.05-active-inactive.txt"))
    assert not maint_stale(held, resvs) and not maint_stale(held, {"gpu-002": "gpuhc-q-gpu-002"})
    # an inactive (future) reservation does not hold a node
    assert maint_stale(NodeView("gpu-003", {"IDLE", "MAINT"}), resvs)
    assert not maint_stale(NodeView("gpu-001", {"IDLE"}), [])


# -- argument lists ---------------------------------------------------------------------------------

def test_sbatch_argv_every_option():
    spec = JobSpec(script="/opt/gpuhc/quarantine.sbatch", args=["--suite", "deep"], name="gpuhc-quarantine",
                   nodelist=["gpu-002", "gpu-001"], nodes=2, ntasks_per_node=8, exclusive=True,
                   reservation="gpuhc-q", time_limit=30, deadline="now+1hour", partition="gpu", qos="high",
                   account="ops", nice=10, comment="gpuhc: quarantine, 2 nodes", dependency="afterok:12",
                   output="/var/log/gpuhc/%j.out", env={"GPUHC_RUN": "a,b=c", "X": 1}, chdir="/tmp")
    argv, env = sj.sbatch_argv(spec)
    assert argv == ["sbatch", "--parsable", "--job-name=gpuhc-quarantine", "--nodelist=gpu-[001-002]",
                    "--nodes=2", "--ntasks-per-node=8", "--exclusive", "--reservation=gpuhc-q", "--time=30",
                    "--deadline=now+1hour", "--partition=gpu", "--qos=high", "--account=ops", "--nice=10",
                    "--comment=gpuhc: quarantine, 2 nodes", "--dependency=afterok:12",
                    "--output=/var/log/gpuhc/%j.out", "--chdir=/tmp", "--export=ALL,GPUHC_RUN,X",
                    "/opt/gpuhc/quarantine.sbatch", "--suite", "deep"]
    assert env == {"GPUHC_RUN": "a,b=c", "X": "1"}           # values travel in sbatch's environment
    assert sj.sbatch_argv(JobSpec(wrap="hostname")) == (["sbatch", "--parsable", "--export=ALL",
                                                         "--wrap=hostname"], {})
    assert sj.sbatch_argv(JobSpec(wrap="x", export_all=False, env={"A": "1"}, nice=0))[0][2:] == \
        ["--nice=0", "--export=A", "--wrap=x"]
    assert sj.sbatch_argv(JobSpec(script="-x.sh"))[0][-1] == "./-x.sh"        # never read as an option


def test_sbatch_deadline_from_epoch_is_local_time(utc):
    assert "--deadline=2026-01-02T03:04:05" in sj.sbatch_argv(JobSpec(wrap="x", deadline=1767323045.7))[0]


@pytest.mark.parametrize("spec, why", [
    (JobSpec(), "neither"), (JobSpec(script="a", wrap="b"), "both"), (JobSpec(wrap="b", args=["x"]), "args"),
    (JobSpec(wrap="b", env={"A B": "1"}), "variable name"), (JobSpec(wrap="b", nodelist="ALL"), "never ALL"),
    (JobSpec(wrap="b", nodelist=[]), None),
])
def test_sbatch_argv_refuses_what_sbatch_would_misread(spec, why):
    if why is None:
        sj.sbatch_argv(spec)          # an empty list is no --nodelist at all
        return
    with pytest.raises(SlurmError, match=why):
        sj.sbatch_argv(spec)


def test_parsable_job_id():
    assert sj.parse_submit(data("sbatch-parsable-22.05.txt")) == "1"
    assert sj.parse_submit("1234;cluster2\n") == "1234"
    with pytest.raises(SlurmError, match="no job id"):
        sj.parse_submit("Submitted batch job 12")


def test_reboot_argv():
    assert sj.reboot_argv(["gpu-003", "gpu-004"], reason="gpuhc: REBOOT xid: Xid 79") == \
        ["scontrol", "reboot", "ASAP", "nextstate=RESUME", "reason=gpuhc: REBOOT xid: Xid 79", "gpu-[003-004]"]
    assert sj.reboot_argv("gpu-001", asap=False, nextstate="down") == \
        ["scontrol", "reboot", "nextstate=DOWN", "gpu-001"]
    for nodes in ("", [], "ALL", "all", "gpu-001 gpu-002"):
        with pytest.raises(SlurmError, match="never ALL"):
            sj.reboot_argv(nodes)
    with pytest.raises(SlurmError, match="RESUME or DOWN"):
        sj.reboot_argv("gpu-001", nextstate="IDLE")


def test_cancel_argv():
    assert sj.cancel_argv("12") == ["scancel", "12"]
    assert sj.cancel_argv(12, signal="USR1") == ["scancel", "--signal=USR1", "--full", "12"]
    assert sj.cancel_argv("12_3") == ["scancel", "12_3"]
    for bad in ("", "12 13", "-u root", "all"):
        with pytest.raises(SlurmError, match="not a job id"):
            sj.cancel_argv(bad)
    with pytest.raises(SlurmError, match="not a signal"):
        sj.cancel_argv("12", signal="KILL; rm")


def test_reservation_argvs(utc):
    assert sj.create_reservation_argv("gpuhc-q-gpu-002", ["gpu-002"]) == [
        "scontrol", "create", "reservation", "ReservationName=gpuhc-q-gpu-002", "Nodes=gpu-002", "StartTime=now",
        "Duration=60", "Flags=MAINT,IGNORE_JOBS", "Users=root"]
    assert sj.create_reservation_argv("r", "gpu-[001-002]", duration="2:00:00", start=1767323045,
                                      flags=(), users=["root", "slurm"])[4:] == [
        "Nodes=gpu-[001-002]", "StartTime=2026-01-02T03:04:05", "Duration=2:00:00", "Users=root,slurm"]
    assert sj.update_reservation_argv("r", Duration=120, Nodes=["gpu-001", "gpu-002"], Flags="-IGNORE_JOBS") == [
        "scontrol", "update", "ReservationName=r", "Duration=120", "Nodes=gpu-[001-002]", "Flags=-IGNORE_JOBS"]
    for bad in ("", "a b", "a=b"):
        with pytest.raises(SlurmError, match="reservation name"):
            sj.create_reservation_argv(bad, "gpu-001")
    with pytest.raises(SlurmError, match="nothing to update"):
        sj.update_reservation_argv("r")
    with pytest.raises(SlurmError, match="has spaces"):
        sj.update_reservation_argv("r", Users="root nobody")
    with pytest.raises(SlurmError, match="needs users"):
        sj.create_reservation_argv("r", "gpu-001", users=())


def test_tool_errors_are_one_line():
    assert one_line(data("scontrol-reboot-22.05-no-rebootprogram.txt")) == \
        "scontrol: error: RebootProgram isn't defined; scontrol_reboot_nodes error: Unspecified error"
    assert one_line("a\n\n a \nb\n") == "a; b" and len(one_line("x" * 1000)) == 300


# -- time limits, with fake tools on PATH -----------------------------------------------------------

def fake_tool(tmp_path, monkeypatch, name, body):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ.get("PATH", "")))
    return path


@pytest.mark.parametrize("call", [
    lambda s: s.reservation_list(), lambda s: s.submit(JobSpec(wrap="true")), lambda s: s.jobs(),
    lambda s: s.cancel("1"), lambda s: s.reboot("gpu-001"), lambda s: s.delete_reservation("r"),
    lambda s: s.create_reservation("r", "gpu-001"),
])
def test_a_hung_tool_ends_within_the_deadline(tmp_path, monkeypatch, call):
    for tool in ("scontrol", "sbatch", "squeue", "scancel"):
        fake_tool(tmp_path, monkeypatch, tool, "exec sleep 30\n")
    for backend in (SlurmCli, SlurmPyslurm):
        slurm = backend(timeout=20, deadline=time.monotonic() + 0.3)
        t0 = time.monotonic()
        with pytest.raises(SlurmError, match="timed out after") as exc:
            call(slurm)
        assert time.monotonic() - t0 < 1.5 and "\n" not in str(exc.value)
        with pytest.raises(SlurmError, match="time budget is used up"):      # the deadline has passed
            call(slurm)


def test_jobs_reads_squeue_and_a_failing_tool_is_one_line(tmp_path, monkeypatch):
    fake_tool(tmp_path, monkeypatch, "squeue", "cat %s\n" % os.path.join(DATA, "squeue-22.05-mixed.json"))
    fake_tool(tmp_path, monkeypatch, "scontrol", "echo 'scontrol: error: RebootProgram isn'\"'\"'t defined' >&2\n"
              "echo 'scontrol_reboot_nodes error: Unspecified error' >&2\nexit 1\n")
    for slurm in (SlurmCli(), SlurmPyslurm()):
        assert [j.name for j in slurm.jobs(states=["RUNNING"])] == ["gpuhc-quarantine", "two nodes"]
        assert slurm.jobs(ids=[]) == []
        with pytest.raises(SlurmError) as exc:
            slurm.reboot("gpu-004")
        assert str(exc.value) == ("scontrol reboot ASAP failed (rc 1): scontrol: error: RebootProgram isn't "
                                  "defined; scontrol_reboot_nodes error: Unspecified error")


def test_job_reads_scontrol_show_job_2205(tmp_path, monkeypatch):
    fake_tool(tmp_path, monkeypatch, "scontrol", "cat %s\n" % os.path.join(DATA, "scontrol-show-job-22.05-cancelled.txt"))
    view = SlurmCli().job("4")
    assert (view.comment, view.exit_code, view.derived_exit_code) == ("", "0:15", "")


def test_a_nul_byte_in_an_argument_is_a_slurm_error(tmp_path, monkeypatch):
    fake_tool(tmp_path, monkeypatch, "sbatch", "echo 1\n")
    with pytest.raises(SlurmError, match="null byte"):
        SlurmCli().submit(JobSpec(wrap="true", comment="a\0b"))


# -- the real test cluster --------------------------------------------------------------------------

@pytest.fixture
def cli(slurm, monkeypatch):
    """A SlurmCli talking to the test cluster."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", slurm.conf)
    return SlurmCli(timeout=15)


def wait_for(what, fn, timeout=30.0, step=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("no %s after %gs" % (what, timeout))
        time.sleep(step)


def job(cli, job_id):
    (info,) = cli.jobs(ids=[job_id])
    return info


def spec(tmp_path, **kw):
    """A job whose output and working directory are under tmp_path (not the test's cwd)."""
    kw.setdefault("output", str(tmp_path / "slurm-%j.out"))
    kw.setdefault("chdir", str(tmp_path))
    return JobSpec(**kw)


def test_quarantine_through_a_maint_reservation(cli, tmp_path):
    """The acceptance test of issue 12: a MAINT reservation on a drained node, the node resumed
    inside it, a job submitted into it runs there alone, then the node is plain IDLE again."""
    node = "gpu-002"
    name = cli.create_reservation("gpuhc-q-" + node, [node], duration=30)
    assert name == "gpuhc-q-gpu-002"
    (res,) = cli.reservation_list()
    assert (res.name, res.nodes, res.state, res.users) == (name, [node], "ACTIVE", ["root"])
    assert {"MAINT", "IGNORE_JOBS"} <= res.flags and res.end - res.start == 1800
    assert cli.reservations() == {node: name}
    # slurmctld sets the MAINTENANCE flag on its next pass (~5 s on 22.05), not at once
    wait_for("MAINTENANCE on %s" % node, lambda: "MAINTENANCE" in cli.node(node).states, timeout=20)
    cli.drain(node, "gpuhc: ISOLATE test: quarantine")
    assert {"DRAIN", "MAINTENANCE"} <= cli.node(node).states
    cli.resume(node)
    view = cli.node(node)
    assert not view.drained and "MAINTENANCE" in view.states and not maint_stale(view, cli.reservation_list())

    # ordinary jobs: one asking for the node pends, exclusive ones fill the three others only
    pinned = cli.submit(spec(tmp_path, wrap="sleep 30", name="ordinary-pinned", nodelist=node))
    ordinary = [cli.submit(spec(tmp_path, wrap="sleep 30", name="ordinary", exclusive=True)) for _ in range(4)]
    quarantine = cli.submit(spec(tmp_path, wrap="sleep 3; echo ran on $SLURMD_NODENAME", name="gpuhc-quarantine",
                                 nodelist=[node], exclusive=True, reservation=name, time_limit=5,
                                 comment="gpuhc quarantine of " + node))
    running = wait_for("quarantine job running", lambda: [j for j in cli.jobs(ids=[quarantine])
                                                          if j.state == "RUNNING"])[0]
    assert (running.nodes, running.reservation, running.name) == ([node], name, "gpuhc-quarantine")
    placed = wait_for("three ordinary jobs running",
                      lambda: (lambda js: js if len([j for j in js if j.state == "RUNNING"]) == 3 else None)(
                          cli.jobs(ids=ordinary)))
    assert sorted(n for j in placed for n in j.nodes) == ["gpu-001", "gpu-003", "gpu-004"]
    assert [j.state for j in placed if j.state != "RUNNING"] == ["PENDING"]
    done = wait_for("quarantine job done", lambda: [j for j in cli.jobs(ids=[quarantine]) if j.finished])[0]
    assert (done.state, done.exit_code, done.nodes) == ("COMPLETED", "0:0", [node])
    assert (tmp_path / ("slurm-%s.out" % quarantine)).read_text().strip() == "ran on " + node
    # the pinned ordinary job never ran there meanwhile
    pinned_job = job(cli, pinned)
    assert pinned_job.state == "PENDING" and pinned_job.nodes == [], pinned_job
    for job_id in ordinary + [pinned]:
        cli.cancel(job_id)
    wait_for("ordinary jobs gone", lambda: all(j.finished for j in cli.jobs(ids=ordinary + [pinned])))

    cli.delete_reservation(name)
    assert cli.reservation_list() == [] and cli.reservations() == {}
    wait_for("%s plain IDLE" % node, lambda: cli.node(node).states == {"IDLE"}, timeout=15)
    cli.delete_reservation(name, missing_ok=True)
    with pytest.raises(SlurmError, match="Requested reservation is invalid"):
        cli.delete_reservation(name)


def test_submit_options_read_back_and_dependency(cli, tmp_path):
    first = cli.submit(spec(tmp_path, wrap="sleep 60", name="gpuhc-first"))
    deadline = time.time() + 3600
    second = cli.submit(spec(tmp_path, wrap='echo "$GPUHC_X|$(pwd)"', name="gpuhc-second", time_limit=10,
                             deadline=deadline, comment="gpuhc: sweep, a=b c", dependency="afterany:" + first,
                             nice=5, env={"GPUHC_X": "a,b=c"}))
    info = job(cli, second)
    assert (info.name, info.comment, info.time_limit, info.state) == ("gpuhc-second", "gpuhc: sweep, a=b c", 10,
                                                                      "PENDING")
    assert info.dependency.startswith("afterany:%s" % first) and abs(info.deadline - deadline) <= 1
    wait_for("dependency reason", lambda: job(cli, second).reason == "Dependency")
    assert [j.job_id for j in cli.jobs(name="gpuhc-second")] == [second]
    assert [j.job_id for j in cli.jobs(name="gpuhc-first", states=["PENDING", "RUNNING"])] == [first]
    cli.cancel(first)
    done = wait_for("second job done", lambda: [j for j in cli.jobs(ids=[second]) if j.finished], timeout=40)[0]
    assert done.state == "COMPLETED" and job(cli, first).state == "CANCELLED"
    assert (tmp_path / ("slurm-%s.out" % second)).read_text().strip() == "a,b=c|%s" % tmp_path


def test_cancel_a_running_job_and_signal_one(cli, tmp_path):
    victim = cli.submit(spec(tmp_path, wrap="sleep 60", name="gpuhc-victim"))
    trapper = cli.submit(spec(tmp_path, name="gpuhc-trap", wrap="trap 'echo got USR1; exit 0' USR1; "
                              "while :; do sleep 0.2; done"))
    wait_for("both running", lambda: all(j.state == "RUNNING" for j in cli.jobs(ids=[victim, trapper])))
    cli.cancel(victim)
    cli.cancel(trapper, signal="USR1")
    assert wait_for("victim cancelled", lambda: job(cli, victim).state == "CANCELLED")
    assert wait_for("trapper done", lambda: job(cli, trapper).state == "COMPLETED")
    # --full: every process of the batch step got it (the shell and its sleep, which dies of it)
    assert (tmp_path / ("slurm-%s.out" % trapper)).read_text().strip().splitlines()[-1] == "got USR1"
    assert [j.job_id for j in cli.jobs(states=["CANCELLED"], name="gpuhc-victim")] == [victim]
    cli.cancel(victim)                  # already over: no error


def test_reservation_update_future_and_errors(cli, tmp_path):
    later = time.time() + 7200
    cli.create_reservation("gpuhc-later", ["gpu-003", "gpu-004"], duration=60, start=later, flags=["maint"])
    (res,) = cli.reservation_list()
    assert res.state == "INACTIVE" and abs(res.start - later) <= 1 and cli.reservations() == {}
    cli.update_reservation("gpuhc-later", Duration=120, Nodes=["gpu-004"])
    (res,) = cli.reservation_list()
    assert (res.nodes, res.end - res.start) == (["gpu-004"], 7200)
    with pytest.raises(SlurmError, match="Duplicate reservation name") as exc:
        cli.create_reservation("gpuhc-later", ["gpu-001"])
    assert "\n" not in str(exc.value)
    with pytest.raises(SlurmError, match="Requested reservation is invalid"):
        cli.submit(spec(tmp_path, wrap="true", reservation="gpuhc-none"))
    with pytest.raises(SlurmError, match="Requested reservation is invalid"):
        cli.update_reservation("gpuhc-none", Duration=5)


def test_reboot_without_a_reboot_program_fails_harmlessly(cli):
    """The test cluster has no RebootProgram: scontrol refuses, the node is untouched."""
    with pytest.raises(SlurmError, match="RebootProgram isn't defined"):
        cli.reboot(["gpu-004"], reason="gpuhc: test")
    assert cli.node("gpu-004").states == {"IDLE"}
