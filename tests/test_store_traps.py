"""Operator situations in which the result store or its readers (status, show, history, export)
gave a wrong answer, wrote where they must not, or let a user stall the writers (found by a
review): a clock that ran ahead pinning a node's newest result, several Xid 13 lines on one GPU
exported as duplicate series, a finding's newline splitting a status row, a symlinked ``nodes``
directory getting a directory outside the root, two runs flushing the same spooled record, age
compaction that never ran again once the summary lost the oldest time, a lock file any user
could hold, and an Xid count that is not a number stopping the whole export."""
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuhc import status as ST
from gpuhc import store as S
from gpuhc.export import export_prometheus, prometheus_text
from gpuhc.model import Finding, GpuRef, Severity
from gpuhc.store import Store
from test_store import node_file, report


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)


# -- 1. a clock that ran ahead ---------------------------------------------------------------------

def test_a_result_from_a_clock_that_ran_ahead_does_not_pin_the_newest_result(store):
    """A node boots with its RTC a year ahead (flat CMOS battery) and records a prolog result before
    NTP steps the clock back. Every later result of the node, a REBOOT-tier Xid included, must
    become its newest result (latest.json, summary.json: what status, show and export read), not
    stay behind the future-dated one until that date comes round."""
    now = time.time()
    assert store.record(report(started=now + 365 * 86400, job="clock-ahead")) == "stored"
    assert store.record(report(started=now, job="after-ntp", sev=Severity.REBOOT)) == "stored"
    assert store.latest("gpu-001").job_id == "after-ntp"
    summary = store.summaries()["gpu-001"]
    assert summary["job_id"] == "after-ntp" and summary["overall"] == "REBOOT"
    assert [r.job_id for r in store.history("gpu-001")] == ["clock-ahead", "after-ntp"]    # history keeps both


# -- 2. several Xid lines of one number on one GPU -------------------------------------------------

def test_xid_lines_of_one_number_on_one_gpu_are_one_series(store):
    """An Xid 13 burst logs lines with different texts on one GPU ("Graphics SM Warp Exception on
    (GPC 1, ...)", "Graphics Exception: ESR ..."): the xid check makes one finding per distinct
    text. The textfile must hold one gpuhc_xid_events sample per node, GPU, Xid and severity (their
    counts added): node_exporter refuses a metric collected twice with the same labels, and
    Prometheus rejects the duplicate sample."""
    rep = report()
    rep.findings = [
        Finding("xid", Severity.MONITOR, "Xid 13 on GPU3: Graphics SM Warp Exception on (GPC 1, TPC 0, SM 0)",
                gpu=GpuRef(3), metrics={"xid": 13, "count": 4}),
        Finding("xid", Severity.MONITOR, "Xid 13 on GPU3: Graphics Exception: ESR #=#", gpu=GpuRef(3),
                metrics={"xid": 13, "count": 2}),
        Finding("xid", Severity.REBOOT, "Xid 79 on GPU3: GPU has fallen off the bus", gpu=GpuRef(3),
                metrics={"xid": 79, "count": 1}),
    ]
    text = prometheus_text({"gpu-001": rep})
    lines = [l for l in text.splitlines() if l.startswith("gpuhc_xid_events{")]
    assert len(lines) == len({l.rsplit(" ", 1)[0] for l in lines}), lines
    fam = next(f for f in text_string_to_metric_families(text) if f.name == "gpuhc_xid_events")
    values = {(s.labels["xid"], s.labels["severity"]): s.value for s in fam.samples}
    assert values == {("13", "MONITOR"): 6.0, ("79", "REBOOT"): 1.0}


# -- 3. a newline in a finding's message -----------------------------------------------------------

def test_a_newline_in_a_message_does_not_split_a_status_row(store, make_cfg, tmp_path):
    """A job leaves a process behind whose name (prctl PR_SET_NAME, /proc/PID/comm) holds a newline
    and a forged row. `gpuhc status -N` and `-R` are read by eye and by scripts (awk, grep) like sinfo:
    every node stays one line, and the forged text never reads as a node of its own."""
    cfg = make_cfg(store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))
    rep = report(node="gpu-007", sev=Severity.MONITOR)
    rep.findings[1] = Finding("processes", Severity.MONITOR,
                              "1 leftover compute process(es): x\ngpu-099 - healthy PASS\r\t[4242]", gpu=GpuRef(3))
    assert store.record(rep) == "stored"
    assert store.record(report(node="gpu-008")) == "stored"
    for per_node, reasons in ((True, False), (False, True), (False, False)):
        text = ST.status_text(cfg, per_node=per_node, reasons=reasons, header=False)
        rows = text.splitlines()
        assert not any(r.split()[0] == "gpu-099" for r in rows if r.split()), text
        assert len(rows) == (2 if per_node else 1 if reasons else 2), text
    text = ST.status_text(cfg, per_node=True, header=False, fmt="%N|%R")
    assert text.splitlines()[0] == "gpu-007|processes: 1 leftover compute process(es): x gpu-099 - healthy PASS  [4242]"
    doc = json.loads(ST.status_text(cfg, per_node=True, as_json=True))
    assert "\ngpu-099" in doc["nodes"][0]["reason"]          # JSON keeps the message as it is


# -- 4. a symlinked nodes directory ------------------------------------------------------------------

def test_a_symlinked_nodes_directory_gets_no_directory_outside_the_root(tmp_path, caplog):
    """Someone replaces <store>/nodes with a link to another directory. The store refuses it, so the
    result is spooled, but it must not create the node's directory over there first (a directory
    made outside the root on every run, through the link it refuses)."""
    root, outside = tmp_path / "store", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    os.symlink(str(outside), str(root / "nodes"))
    st = Store(str(root), str(tmp_path / "state"), timeout=5.0)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert st.record(report()) == "spooled"
    assert "outside the store" in caplog.text
    assert os.listdir(str(outside)) == []


# -- 5. two runs flushing the same spooled record ------------------------------------------------------

def test_two_runs_flushing_one_spooled_record_store_both_results(store):
    """After an NFS outage the spool holds a result; the prolog of the next job and the
    HealthCheckProgram then write at the same moment and both flush it. The one that finds it
    already written (and its spool file gone) must still store its own result, not spool it with
    "No such file or directory" and leave the node's newest result behind."""
    assert store.record(report(started=time.time() - 60, job="before")) == "stored"
    spooled = report(started=time.time() - 30, job="spooled")
    path = store._spool("gpu-001", S.encode(spooled.to_dict()))
    directory = os.path.dirname(node_file(store.root, "gpu-001", "latest.json"))
    outcome = {}
    lock = S._Flock(os.path.join(directory, S.LOCK))
    lock.__enter__()                     # the other run holds the node's lock, flushing the same file
    try:
        writer = threading.Thread(target=lambda: outcome.update(r=store.record(report(job="mine"))))
        writer.start()
        time.sleep(0.5)                  # this run has read the spooled file and waits for the lock
        store._append_locked(directory, S.encode(spooled.to_dict()), spooled)
        os.unlink(path)                  # the other run wrote it and removed it from the spool
    finally:
        lock.__exit__()
    writer.join(10)
    assert outcome["r"] == "stored" and store.spooled() == []
    assert [r.job_id for r in store.history("gpu-001")] == ["mine", "spooled", "before"]
    assert store.latest("gpu-001").job_id == "mine"


# -- 6. age compaction after the summary lost its oldest time ------------------------------------------

def test_age_compaction_still_runs_after_the_summary_lost_the_oldest_time(tmp_path):
    """history: {max_records: 0, max_age_days: 1}: keep by age alone. Once the summary is lost (a
    crash between the history append and the summary rename, or a bad summary the writer rebuilt),
    the summary no longer knows the oldest record: the records past the age must still be dropped,
    not kept forever while the history grows with every run."""
    root, state = str(tmp_path / "store"), str(tmp_path / "state")
    now = time.time()
    keep_all = Store(root, state, timeout=5.0, max_records=0, max_age_days=0)
    assert keep_all.record(report(started=now - 5 * 86400, job="old")) == "stored"
    os.unlink(node_file(root, "gpu-001", "summary.json"))
    by_age = Store(root, state, timeout=5.0, max_records=0, max_age_days=1)
    for job in ("a", "b"):
        assert by_age.record(report(started=time.time(), job=job)) == "stored"
    assert [r.job_id for r in by_age.history("gpu-001")] == ["b", "a"]
    assert by_age.summaries()["gpu-001"]["history"]["count"] == 2


# -- 7. the lock file ------------------------------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
os.setgid(65534); os.setuid(65534)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_an_unprivileged_user_cannot_hold_the_writers_lock():
    """The writers of a node serialize on <node>/.lock. Any user who can open it can flock it (a
    shared lock needs only read access, on NFS too) and hold it: every result of the node then
    waits out the store timeout inside the prolog's budget and goes to the spool, for as long as
    the user likes. Only the writer (root) may open the lock file."""
    base = tempfile.mkdtemp(prefix="gpuhc-lock-")
    os.chmod(base, 0o755)                # users reach the store, as on a shared mount
    holder = None
    try:
        st = Store(os.path.join(base, "store"), os.path.join(base, "state"), timeout=0.5)
        assert st.record(report(job="first")) == "stored"
        lock = node_file(st.root, "gpu-001", ".lock")
        assert stat.S_IMODE(os.stat(lock).st_mode) & 0o077 == 0
        os.chmod(lock, 0o644)            # a lock file an earlier version left readable is tightened
        assert st.record(report(job="second")) == "stored"
        assert stat.S_IMODE(os.stat(lock).st_mode) & 0o077 == 0
        holder = subprocess.Popen([sys.executable, "-c", HOLD, lock], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            holder.wait(5)
        except subprocess.TimeoutExpired:
            pass                         # still running: it holds the lock
        assert st.record(report(job="third")) == "stored"
        assert holder.poll() is not None and "Permission denied" in holder.stderr.read()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        shutil.rmtree(base, ignore_errors=True)


# -- 8. an Xid finding whose count is not a number ---------------------------------------------------

def test_an_xid_count_that_is_not_a_number_does_not_stop_the_export(store, make_cfg, tmp_path):
    """A history or latest record whose Xid finding carries "count": "3" (hand-edited, or written by
    a tool that is not gpuhc) is valid JSON of the right shape everywhere else. `gpuhc export
    prometheus` for the whole fleet must still write the file (the event counts once), not stop
    with an internal error so that every node's metrics go stale."""
    cfg = make_cfg(store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))
    rep = report(node="gpu-001", sev=Severity.REBOOT)
    rep.findings[1].metrics = {"xid": 79, "count": "3"}
    assert store.record(rep) == "stored"
    assert store.record(report(node="gpu-002")) == "stored"
    fams = {f.name: f for f in text_string_to_metric_families(export_prometheus(cfg))}
    assert {s.labels["node"] for s in fams["gpuhc_node_severity"].samples} == {"gpu-001", "gpu-002"}
    assert [s.value for s in fams["gpuhc_xid_events"].samples] == [1.0]


def test_the_local_state_lock_is_for_the_writer_only(tmp_path):
    """The same trap in the node's local state (the xid check's cursor and events): a user who can
    open .xid.lock can flock it, and every prolog then waits LOCK_WAIT for it."""
    from gpuhc import localstate

    state = str(tmp_path / "state")
    localstate.update(state, "xid", lambda old: {"n": 1})
    lock = os.path.join(state, ".xid.lock")
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
    os.chmod(lock, 0o644)                # left by an earlier version: tightened on the next change
    localstate.update(state, "xid", lambda old: {"n": (old or {}).get("n", 0) + 1})
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
    assert localstate.read(state, "xid") == {"n": 2}


def test_a_node_group_is_refused_not_resolved():
    """`gpuhc status -n @gpu` or `gpuhc resume @gpu`: ClusterShell would resolve the group through
    its group source (shell commands, no time limit; with its example config a made-up list).
    A Slurm hostlist has no groups: a one-line error instead."""
    from gpuhc.errors import GpuhcError
    from gpuhc.hostlist import expand

    assert expand("gpu-[001-003],login1") == ["gpu-001", "gpu-002", "gpu-003", "login1"]
    for bad in ("@gpu", "gpu-001,@all"):
        with pytest.raises(GpuhcError, match="node groups are not taken"):
            expand(bad, "--nodes")
