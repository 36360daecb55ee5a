"""The result store: atomic latest, append-only history, spool on a failing or slow store, compaction,
corrupt records, symlinks, modes, and many writers at once."""
import json
import logging
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from conftest import gpuhc
from prometheus_client.parser import text_string_to_metric_families

from gpuhc import status as ST
from gpuhc import store as S
from gpuhc.export import export_prometheus, prometheus_text
from gpuhc.model import Finding, GpuRef, Report, Severity
from gpuhc.store import Store, StoreError

STABLE_CHECKS = ("gpu_count", "xid", "ecc", "memory_remap", "pcie", "nvlink", "clocks", "thermal_power",
                 "gpu_config", "fabric", "processes")


def report(node="gpu-001", started=None, job="1", sev=Severity.PASS, context="prolog"):
    started = time.time() if started is None else started
    findings = [Finding("ecc", Severity.PASS, "ECC on", gpu=GpuRef(0, "GPU-0", "0000:18:00.0"), metrics={"sram": 0}),
                Finding("xid", sev, "Xid 79 on GPU3" if sev is not Severity.PASS else "no Xid",
                        gpu=GpuRef(3) if sev is not Severity.PASS else None)]
    return Report(node=node, context=context, profile="dgx-h100", started=started, ended=started + 0.1,
                  findings=findings, job_id=job)


def lines(path):
    with open(path, "rb") as fh:
        return [json.loads(l) for l in fh.read().splitlines() if l.strip()]


def node_file(root, node, name):
    return os.path.join(str(root), "nodes", node, name)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)


def test_record_writes_latest_summary_and_history_with_modes(tmp_path, run_scenario):
    old = os.umask(0o077)      # the store's modes must not depend on the caller's umask
    try:
        rep = run_scenario("h100-xid79", context="prolog", checks=STABLE_CHECKS)
        rep.job_id = "4242"
        st = Store(str(tmp_path / "store"), str(tmp_path / "state"))
        assert st.record(rep) == "stored"
    finally:
        os.umask(old)
    root = tmp_path / "store"
    latest = json.loads((root / "nodes" / "gpu-001" / "latest.json").read_text())
    assert latest == rep.to_dict() and latest["schema_version"] == 1 and latest["action"] is None
    hist = lines(node_file(root, "gpu-001", "history.jsonl"))
    assert hist == [rep.to_dict()]
    summary = json.loads((root / "nodes" / "gpu-001" / "summary.json").read_text())
    assert summary["overall"] == "REBOOT" and summary["context"] == "prolog" and summary["job_id"] == "4242"
    assert summary["top"]["severity"] == "REBOOT" and summary["top"]["where"] == "GPU3"
    assert summary["history"] == {"count": 1, "oldest_ts": rep.started}
    for d in (root, root / "nodes", root / "nodes" / "gpu-001"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
    for name in ("latest.json", "summary.json", "history.jsonl"):
        assert stat.S_IMODE(os.stat(node_file(root, "gpu-001", name)).st_mode) == 0o644, name
    assert stat.S_IMODE(os.stat(node_file(root, "gpu-001", ".lock")).st_mode) == 0o600   # users could hold it
    back = st.latest("gpu-001")
    assert back.overall is Severity.REBOOT and back.job_id == "4242" and len(back.findings) == len(rep.findings)


def test_history_newest_first_and_latest_only_moves_forward(store):
    now = time.time()
    assert store.record(report(started=now - 10, job="b")) == "stored"
    assert store.record(report(started=now - 100, job="a")) == "stored"     # older, arrives late (a flush)
    assert store.record(report(started=now - 5, job="c", sev=Severity.REBOOT, context="epilog")) == "stored"
    assert [r.job_id for r in store.history("gpu-001")] == ["c", "b", "a"]
    assert [r.job_id for r in store.history("gpu-001", since=now - 50)] == ["c", "b"]
    assert store.latest("gpu-001").job_id == "c"
    assert store.summaries()["gpu-001"]["history"]["count"] == 3
    assert store.nodes() == ["gpu-001"]
    assert set(store.latest_all()) == {"gpu-001"}
    assert store.latest("gpu-999") is None


def test_history_by_check_keeps_reports_where_it_ran(store):
    rep = report(job="x")
    rep.findings = [f for f in rep.findings if f.check == "ecc"]
    store.record(rep)
    store.record(report(job="y"))
    assert [r.job_id for r in store.history("gpu-001", check="xid")] == ["y"]


@pytest.mark.parametrize("bad", ["", "..", "a/b", "../etc", "gpu..1", ".hidden", "a b"])
def test_node_names_are_validated(store, bad):
    with pytest.raises(StoreError, match="invalid node name"):
        store.latest(bad)
    with pytest.raises(StoreError, match="invalid node name"):
        store.record(report(node=bad))


# ---- many writers ----------------------------------------------------------------------------

def _writer(root, state, worker, per_worker):
    st = Store(root, state, timeout=30.0)
    outcomes = []
    for i in range(per_worker):
        node = "gpu-000" if i % 2 == 0 else "gpu-%03d" % (worker + 1)
        outcomes.append(st.record(report(node=node, started=time.time(), job="w%d-%d" % (worker, i))))
    return outcomes


def test_64_concurrent_writers_lose_and_tear_nothing(tmp_path):
    root, state = str(tmp_path / "store"), str(tmp_path / "state")
    per_worker = 6
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(64) as pool:
        results = [pool.apply_async(_writer, (root, state, w, per_worker)) for w in range(64)]
        outcomes = [o for r in results for o in r.get(timeout=120)]
    assert set(outcomes) <= {"stored", "spooled"}
    st = Store(root, state, timeout=30.0)
    st.flush_spool()          # under heavy load a slow write may have been spooled: it must land now
    assert st.spooled() == []
    seen = []
    for node in st.nodes():
        raw = open(node_file(root, node, "history.jsonl"), "rb").read()
        assert raw.endswith(b"\n")
        for line in raw.splitlines():
            record = json.loads(line)          # every line whole, valid JSON
            assert record["node"] == node
            seen.append(record["job_id"])
    expected = ["w%d-%d" % (w, i) for w in range(64) for i in range(per_worker)]
    assert sorted(seen) == sorted(expected)     # every record exactly once
    shared = [r for r in lines(node_file(root, "gpu-000", "history.jsonl"))]
    newest = max(shared, key=lambda r: r["started_ts"])
    assert json.loads(open(node_file(root, "gpu-000", "latest.json")).read())["job_id"] == newest["job_id"]
    assert st.summaries()["gpu-000"]["history"]["count"] == 64 * per_worker // 2


def _appender(root, state, worker, n):
    st = Store(root, state, timeout=30.0, max_age_days=1)
    for i in range(n):
        st.record(report(node="gpu-000", job="a%d-%d" % (worker, i)))


def test_compaction_racing_appends_loses_no_append(tmp_path):
    root, state = str(tmp_path / "store"), str(tmp_path / "state")
    st = Store(root, state, timeout=30.0, max_age_days=1)
    old = time.time() - 3 * 86400
    for i in range(50):          # old records: every compaction has something to drop and rewrites
        st.record(report(node="gpu-000", started=old + i, job="old%d" % i))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(root, state, w, 20)) for w in range(8)]
    for p in procs:
        p.start()
    rounds = 0
    while any(p.is_alive() for p in procs) or rounds < 3:
        st.compact("gpu-000")
        rounds += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    st.flush_spool()
    st.compact("gpu-000")
    jobs = [r["job_id"] for r in lines(node_file(root, "gpu-000", "history.jsonl"))]
    assert sorted(jobs) == sorted("a%d-%d" % (w, i) for w in range(8) for i in range(20))


# ---- failing and slow storage --------------------------------------------------------------------

@pytest.fixture
def readonly_store(tmp_path):
    """A store directory this process truly cannot write: a read-only bind mount as root, else mode 0555."""
    root = tmp_path / "ro-store"
    (root / "nodes").mkdir(parents=True)
    if os.geteuid() == 0:
        if not shutil.which("mount") or subprocess.run(["mount", "--bind", str(root), str(root)],
                                                       capture_output=True).returncode != 0:
            pytest.skip("running as root and cannot bind-mount a read-only directory here")
        subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True, capture_output=True)
        yield root
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
    else:
        root.chmod(0o555)
        yield root
        root.chmod(0o755)


def test_read_only_store_spools_then_next_write_flushes(tmp_path, readonly_store, caplog):
    state = str(tmp_path / "state")
    st = Store(str(readonly_store), state, timeout=2.0)
    first = report(started=time.time() - 60, job="spooled-1")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert st.record(first) == "spooled"
    assert time.monotonic() - t0 < 1.5             # a clean failure spools at once, no waiting
    assert "result spooled to" in caplog.text and ("Read-only" in caplog.text or "Permission" in caplog.text)
    [(node, path)] = st.spooled()
    assert node == "gpu-001" and json.loads(open(path).read())["job_id"] == "spooled-1"
    # the mount comes back writable (here: a writable store at the same place)
    if os.geteuid() == 0:
        subprocess.run(["umount", "-l", str(readonly_store)], check=True)
    else:
        readonly_store.chmod(0o755)
    assert st.record(report(job="after")) == "stored"
    assert st.spooled() == []
    assert [r.job_id for r in st.history("gpu-001")] == ["after", "spooled-1"]
    assert st.latest("gpu-001").job_id == "after"


def _hang_until(flag, line_holds, when="append"):
    """A Store._append_locked that, for a record whose line holds ``line_holds``, waits (in the
    writer's child, where the patch is inherited) until the file ``flag`` exists: a hung NFS write."""
    real = Store._append_locked

    def append(self, directory, line, report, *args):
        if line_holds in line and when == "append":
            while not os.path.exists(flag):
                time.sleep(0.01)
        return real(self, directory, line, report, *args)
    return append


def _wait_until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_slow_store_is_abandoned_at_the_timeout_then_flushed_once(tmp_path, monkeypatch):
    """The write hangs; the caller spools at its limit and goes on. When the store answers again,
    the abandoned writer finds the record spooled and leaves it to the flush: it lands once."""
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=0.3)
    release = tmp_path / "release"
    monkeypatch.setattr(Store, "_append_locked", _hang_until(str(release), b'"slow"'))
    t0 = time.monotonic()
    assert st.record(report(started=time.time() - 5, job="slow")) == "spooled"
    assert time.monotonic() - t0 < 1.0
    assert len(st.spooled()) == 1
    release.touch()                # the mount recovers: the abandoned writer goes on and flushes the spool
    assert _wait_until(lambda: st.spooled() == [])
    assert st.record(report(job="next")) == "stored"
    assert [r.job_id for r in st.history("gpu-001")] == ["next", "slow"]
    assert st.summaries()["gpu-001"]["history"]["count"] == 2
    assert st.spooled() == [] and st.latest("gpu-001").job_id == "next"


def test_a_write_that_lands_after_its_caller_spooled_is_counted_once(tmp_path, monkeypatch):
    """The other order: the writer appended the record, then hung before it could say so; the
    caller spooled it. The flush finds the line in the history: no second copy, and the count is
    the history's."""
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=0.3)
    release = tmp_path / "release"
    real_send = S.detach.Channel.send

    def send(self, *message):
        if message == ("written",) and not os.path.exists(str(release)):
            while not os.path.exists(str(release)):
                time.sleep(0.01)
        return real_send(self, *message)
    monkeypatch.setattr(S.detach.Channel, "send", send)
    assert st.record(report(started=time.time() - 5, job="late")) == "spooled"
    assert len(lines(node_file(st.root, "gpu-001", "history.jsonl"))) == 1     # it landed all the same
    release.touch()
    assert _wait_until(lambda: st.spooled() == [])
    assert [r.job_id for r in st.history("gpu-001")] == ["late"]
    assert st.summaries()["gpu-001"]["history"]["count"] == 1


def test_hung_mount_holds_no_caller_past_its_timeout(tmp_path, monkeypatch):
    root = str(tmp_path / "store")
    real_realpath = os.path.realpath

    def hung(path, *a, **k):      # the first thing any call does on a mount: resolve a path on it
        if str(path).startswith(root):
            time.sleep(3)
        return real_realpath(path, *a, **k)
    monkeypatch.setattr(os.path, "realpath", hung)
    t0 = time.monotonic()
    st = Store(root, str(tmp_path / "state"), timeout=0.3, read_timeout=0.3)
    assert st.record(report()) == "spooled"
    with pytest.raises(StoreError, match="no answer within 0.3 s"):
        st.summaries()
    with pytest.raises(StoreError, match="no answer within 0.3 s"):
        st.compact("gpu-001")
    assert time.monotonic() - t0 < 2.0


def test_flush_does_not_double_a_record_that_landed_late(store):
    rep = report(job="landed")
    assert store.record(rep) == "stored"
    store._spool("gpu-001", S.encode(rep.to_dict()))    # the same record, also spooled by a timed-out caller
    assert store.flush_spool() == 0
    assert [r.job_id for r in store.history("gpu-001")] == ["landed"] and store.spooled() == []


def test_spool_itself_failing_is_an_error_naming_both(tmp_path, readonly_store):
    state = tmp_path / "state-file"
    state.write_text("not a directory")
    st = Store(str(readonly_store), str(state), timeout=1.0)
    with pytest.raises(StoreError, match="cannot spool the result of gpu-001"):
        st.record(report())
    cfg = {"store": str(readonly_store), "state_dir": str(state), "timeouts": {"store": 1.0, "store_read": 5.0},
           "history": {"max_records": 10, "max_age_days": 1}}
    assert "result not recorded: cannot spool" in S.record_safely(cfg, report())


def test_hung_read_is_an_error_within_the_read_timeout(tmp_path, monkeypatch):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), read_timeout=0.3)
    monkeypatch.setattr(Store, "_node_entries", lambda self: time.sleep(5))
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="no answer within 0.3 s"):
        st.summaries()
    assert time.monotonic() - t0 < 1.0


# ---- corrupt records ---------------------------------------------------------------------------

def test_corrupt_and_truncated_lines_are_skipped_with_file_and_line(store, caplog):
    now = time.time()
    store.record(report(started=now - 30, job="one"))
    path = node_file(store.root, "gpu-001", "history.jsonl")
    good = S.encode(report(started=now - 20, job="two").to_dict())
    no_time = json.dumps({"schema_version": 1, "node": "gpu-001", "context": "x"}).encode() + b"\n"
    with open(path, "ab") as fh:
        fh.write(b"{not json at all\n" + good + no_time + b"[1, 2]\n" + good[:50])      # last one torn by a crash
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert [r.job_id for r in store.history("gpu-001")] == ["two", "one"]
    assert "history.jsonl:2: skipped a corrupt record" in caplog.text
    assert "history.jsonl:4: skipped a record: missing field 'started_ts'" in caplog.text
    assert "history.jsonl:5: skipped a corrupt record: not a JSON object" in caplog.text
    assert "history.jsonl:6: skipped a truncated record" in caplog.text
    # the next append cuts the torn tail (its record is in a spool, or was never counted) and
    # starts on a line of its own
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        store.record(report(started=now, job="three"))
    assert "history.jsonl: cut a torn last line (50 bytes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert [r.job_id for r in store.history("gpu-001")] == ["three", "two", "one"]
    assert "skipped a truncated record" not in caplog.text and "history.jsonl:6: skipped" not in caplog.text


def test_corrupt_latest_and_summary_fall_back_to_history(store, caplog):
    store.record(report(job="only", sev=Severity.REBOOT))
    for name in ("latest.json", "summary.json"):
        with open(node_file(store.root, "gpu-001", name), "w") as fh:
            fh.write('{"schema_version": 1, "node": "gpu-0')
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert store.latest("gpu-001").job_id == "only"
        assert store.summaries()["gpu-001"]["overall"] == "REBOOT"
    assert "latest.json: skipped a corrupt record" in caplog.text
    assert "summary.json: skipped a corrupt record" in caplog.text


def test_unknown_schema_version_is_skipped(store, caplog):
    store.record(report(job="ok"))
    future = dict(report(job="future").to_dict(), schema_version=99)
    with open(node_file(store.root, "gpu-001", "history.jsonl"), "ab") as fh:
        fh.write(S.encode(future))
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert [r.job_id for r in store.history("gpu-001")] == ["ok"]
    assert "history.jsonl:2: skipped a record: unsupported schema_version 99" in caplog.text


# ---- compaction ----------------------------------------------------------------------------------

def test_compaction_keeps_the_newest_n_and_drops_the_too_old(tmp_path):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), max_records=5, max_age_days=10)
    now = time.time()
    ages = [30, 20, 11, 9, 8, 7, 6, 5, 4, 3, 2, 1]          # days
    for n, age in enumerate(ages):
        # appended directly, as an old store would hold them (record() would compact on the way)
        d = st._node_dir("gpu-001", create=True)
        st._append_locked(d, S.encode(report(started=now - age * 86400, job="d%d" % age).to_dict()),
                          report(started=now - age * 86400, job="d%d" % age))
    assert st.compact("gpu-001") == (5, 7)
    kept = lines(node_file(st.root, "gpu-001", "history.jsonl"))
    assert [r["job_id"] for r in kept] == ["d5", "d4", "d3", "d2", "d1"]      # oldest first in the file
    assert st.summaries()["gpu-001"]["history"]["count"] == 5
    st2 = Store(str(tmp_path / "store"), str(tmp_path / "state"), max_records=100, max_age_days=3.5)
    assert st2.compact("gpu-001") == (3, 2)
    assert [r.job_id for r in st2.history("gpu-001")] == ["d1", "d2", "d3"]


def test_record_compacts_when_the_count_runs_over(tmp_path):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), max_records=10, max_age_days=0)
    now = time.time()
    for i in range(25):
        assert st.record(report(started=now + i, job=str(i))) == "stored"
    count = len(lines(node_file(st.root, "gpu-001", "history.jsonl")))
    assert 10 <= count <= 11           # compacted back to 10 whenever it passed 10 + 10% slack
    assert st.history("gpu-001")[0].job_id == "24"
    assert st.summaries()["gpu-001"]["history"]["count"] == count


def test_compaction_removes_temporaries_of_killed_writers(store):
    store.record(report())
    d = os.path.dirname(node_file(store.root, "gpu-001", "x"))
    leftover = os.path.join(d, ".latest.json.999.0.tmp")
    open(leftover, "w").close()
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    store.compact("gpu-001")
    assert not os.path.exists(leftover)


# ---- symlinks ------------------------------------------------------------------------------------

def test_symlink_out_of_the_root_is_refused(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=2.0)
    st.record(report(node="gpu-001"))
    os.symlink(str(outside), node_file(st.root, "evil", "").rstrip("/"))
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert st.record(report(node="evil")) == "spooled"         # kept locally, never written outside
        assert st.nodes() == ["gpu-001"] and set(st.summaries()) == {"gpu-001"}
    assert os.listdir(str(outside)) == []
    assert "outside the store" in caplog.text and "refused" in caplog.text
    with pytest.raises(StoreError, match="outside the store"):
        st.latest("evil")
    # a spooled record of a refused node does not hold up the others
    assert st.record(report(node="gpu-002")) == "stored"
    assert [n for n, _ in st.spooled()] == ["evil"]


def test_symlinked_file_is_not_followed(store, tmp_path, caplog):
    store.record(report(job="real"))
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(report(job="planted").to_dict()))
    latest = node_file(store.root, "gpu-001", "latest.json")
    os.unlink(latest)
    os.symlink(str(target), latest)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert store.latest("gpu-001").job_id == "real"       # read from history, not through the link
    assert "latest.json: cannot read" in caplog.text
    assert store.record(report(job="next")) == "stored"       # rename replaces the link itself
    assert not os.path.islink(latest) and json.loads(target.read_text())["job_id"] == "planted"


def test_symlink_inside_the_root_is_followed(store):
    store.record(report(node="gpu-001", job="x"))
    os.symlink(node_file(store.root, "gpu-001", "").rstrip("/"), node_file(store.root, "alias-1", "").rstrip("/"))
    assert store.latest("alias-1").job_id == "x"


# ---- the command line ----------------------------------------------------------------------------

def isolated(tmp_path, text=""):
    """A config file for `gpuhc` run as a process: store (initialised by conftest) and state in tmp."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false}\nsuites: {lightweight: [%s]}\n%s"
                   % (tmp_path / "store", tmp_path / "state", ", ".join(STABLE_CHECKS), text))
    return {"GPUHC_CONFIG": str(cfg)}


def test_check_records_with_context_and_job_id(tmp_path):
    env = dict(isolated(tmp_path), SLURM_JOB_ID="777")
    res = gpuhc("check", "--simulate", "h100-pcie-x8", "--node", "gpu-042", env=env)
    assert res.returncode == 1 and res.stderr == "", res.stderr
    [rec] = lines(node_file(tmp_path / "store", "gpu-042", "history.jsonl"))
    assert rec["context"] == "check" and rec["job_id"] == "777" and rec["overall"] == "RESET"
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-043", "--no-record", env=env)
    assert res.returncode == 0 and not os.path.exists(node_file(tmp_path / "store", "gpu-043", "latest.json"))


def test_check_with_broken_store_warns_spools_and_keeps_its_exit_code(tmp_path):
    """The store's marker is gone (the shared filesystem is not mounted there): the result is
    spooled with one warning naming the store; once the store is initialised, the next run flushes."""
    env = isolated(tmp_path)
    os.unlink(str(tmp_path / "store" / S.MARKER))
    res = gpuhc("check", "--simulate", "h100-pcie-x8", "--node", "gpu-042", env=env)
    assert res.returncode == 1, res.stderr
    [warning] = res.stderr.strip().splitlines()
    assert warning.startswith("gpuhc: warning: store %s: not initialised" % (tmp_path / "store")), warning
    assert "gpuhc store init %s" % (tmp_path / "store") in warning and "result spooled to" in warning
    assert not os.path.exists(str(tmp_path / "store" / "nodes"))
    res = gpuhc("store", "init", str(tmp_path / "store"))
    assert res.returncode == 0 and res.stdout == "store %s: initialised (.gpuhc-store written)\n" % (tmp_path / "store")
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-042", env=env)
    assert res.returncode == 0 and res.stderr == ""
    records = sorted(lines(node_file(tmp_path / "store", "gpu-042", "history.jsonl")), key=lambda r: r["started_ts"])
    assert [r["overall"] for r in records] == ["RESET", "PASS"]
    assert os.listdir(str(tmp_path / "state" / "spool" / "gpu-042")) == []


def test_check_when_nothing_can_be_written_still_exits_with_the_result(tmp_path):
    """No store (not initialised) and a state directory others could write (so no spool): the run
    still ends with its result, and one line says why nothing was kept."""
    os.unlink(str(tmp_path / "store" / S.MARKER))
    (tmp_path / "state").mkdir()
    os.chmod(str(tmp_path / "state"), 0o777)
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-042", env=isolated(tmp_path))
    assert res.returncode == 0
    state, spool = res.stderr.strip().splitlines()      # the check state is not used either
    assert state.startswith("gpuhc: warning: local state not used: %s: writable by" % (tmp_path / "state"))
    assert spool.startswith("gpuhc: warning: result not recorded: cannot spool"), res.stderr
    assert spool.endswith("(chmod go-w %s)" % (tmp_path / "state"))


def test_bulk_read_goes_parallel_when_reads_are_slow_and_keeps_order(tmp_path, caplog):
    paths = []
    for n in range(40):
        p = tmp_path / ("f%02d" % n)
        if n != 17:
            p.write_bytes(b"x" * n)
        paths.append(str(p))
    serial = S.read_many(paths, probe=1000)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        threaded = S.read_many(paths, probe=3, slow_s=-1.0, threads=4)     # as if every read were slow
    assert serial == threaded and threaded[17] is None and threaded[39] == b"x" * 39
    assert caplog.text == ""        # a missing file is no warning: the caller falls back


# ---- records and summaries of the wrong shape ----------------------------------------------------

def _bad_records(good):
    """(what, record) pairs a reader must skip: valid JSON, wrong type or out-of-range time."""
    def changed(**kw):
        return dict(good, **kw)

    def finding(**kw):
        return dict(good, findings=[dict(good["findings"][0], **kw)])
    return [("started_ts", changed(started_ts=1e20)), ("started_ts", changed(started_ts=float("nan"))),
            ("started_ts", changed(started_ts=-1e18)), ("started_ts", changed(started_ts="x")),
            ("started_ts", changed(started_ts=True)), ("started_ts", {"schema_version": 1, "started_ts": "x"}),
            ("duration_s", changed(duration_s=1e300)), ("schema_version", changed(schema_version=1e400)),
            ("context", changed(context=[1])), ("context", changed(context=5)), ("node", changed(node=5)),
            ("findings", changed(findings="x")), ("findings[0]", changed(findings=[5])),
            ("findings[0].check", finding(check=5)), ("findings[0].severity", finding(severity=["PASS"])),
            ("findings[0].message", finding(message={})), ("gpu.index", finding(gpu={"index": "3"})),
            ("findings[0].metrics", finding(metrics=[1])), ("job_id", changed(job_id=[1])),
            ("gpus", changed(gpus="abc"))]


def test_records_of_the_wrong_shape_are_skipped_by_every_reader(store, caplog):
    now = time.time()
    store.record(report(started=now - 30, job="good"))
    good = report(started=now - 10, job="bad").to_dict()
    bad = _bad_records(good)
    path = node_file(store.root, "gpu-001", "history.jsonl")
    with open(path, "ab") as fh:
        fh.write(b"".join(S.encode(record) for _, record in bad) + b"[" * 100000 + b"\n")
    with open(node_file(store.root, "gpu-001", "latest.json"), "wb") as fh:
        fh.write(S.encode(bad[0][1]))
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert [r.job_id for r in store.history("gpu-001")] == ["good"]
        assert [r.job_id for r in store.history("gpu-001", since=now - 1000 * 86400)] == ["good"]
        assert store.latest("gpu-001").job_id == "good"
        assert list(store.latest_all()) == ["gpu-001"]
    for n, (what, _) in enumerate(bad, 2):
        assert "history.jsonl:%d: skipped a " % n in caplog.text, (what, caplog.text)
    assert "history.jsonl:%d: skipped a corrupt record" % (len(bad) + 2) in caplog.text     # nested too deep
    assert "latest.json: skipped a record: field started_ts: 1e+20 is not a time" in caplog.text
    assert "history.jsonl:9: skipped a record: unsupported schema_version inf" in caplog.text
    assert "history.jsonl:11: skipped a record: field context: expected a string, got 5" in caplog.text
    assert "history.jsonl:15: skipped a record: field findings[0].check: expected a string, got 5" in caplog.text


@pytest.mark.parametrize("field, value", [("started_ts", "x"), ("started_ts", 1e20), ("top", "x"), ("overall", 5),
                                          ("history", [1])])
def test_a_bad_summary_does_not_stop_later_writes(store, caplog, field, value):
    now = time.time()
    store.record(report(started=now - 30, job="first"))
    path = node_file(store.root, "gpu-001", "summary.json")
    first = json.loads(open(path).read())
    with open(path, "w") as fh:
        fh.write(json.dumps(dict(first, **{field: value})))
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert store.record(report(started=now - 20, job="second", sev=Severity.REBOOT)) == "stored"
    assert "summary.json: skipped a bad summary: field %s" % field in caplog.text
    summary = json.loads(open(path).read())
    assert summary["overall"] == "REBOOT" and summary["started_ts"] == round(now - 20, 3)
    assert store.latest("gpu-001").job_id == "second" and store.spooled() == []
    # a bad summary and an older record (a flushed spool): latest.json keeps the newer one
    with open(path, "w") as fh:
        fh.write(json.dumps(dict(summary, **{field: value})))
    assert store.record(report(started=now - 25, job="older")) == "stored"
    assert store.latest("gpu-001").job_id == "second"
    assert json.loads(open(path).read())["job_id"] == "second"
    assert [r.job_id for r in store.history("gpu-001")] == ["second", "older", "first"]
    assert store.record(report(started=now, job="third")) == "stored"
    assert store.summaries()["gpu-001"]["job_id"] == "third"


def test_what_is_not_a_regular_file_in_the_spool_is_set_aside(store, caplog):
    spool = os.path.join(store.spool_dir, "gpu-001")
    os.makedirs(os.path.join(spool, "00000000000000000001-1-0.json"))       # a directory named like a record
    with open(os.path.join(spool, "00000000000000000001-1-0.json", "x"), "w") as fh:
        fh.write("x")
    store._spool("gpu-001", S.encode(report(started=time.time() - 60, job="spooled").to_dict()))
    os.symlink(str(store.root), os.path.join(spool, "00000000000000000002-1-0.json"))
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert store.record(report(job="now")) == "stored"
    for name in ("00000000000000000001-1-0.json", "00000000000000000002-1-0.json"):
        path = os.path.join(spool, name)
        assert "%s: not a regular file, set aside as %s.corrupt" % (path, path) in caplog.text
        assert os.path.lexists(path + ".corrupt") and not os.path.lexists(path)
    assert store.spooled() == [] and "result spooled" not in caplog.text
    assert [r.job_id for r in store.history("gpu-001")] == ["now", "spooled"]
    assert store.nodes() == ["gpu-001"]


# ---- traps a review found (was tests/test_store_traps.py) ------------------------------------------
#
# Operator situations in which the result store or its readers (status, show, history, export)
# gave a wrong answer, wrote where they must not, or let a user stall the writers (found by a
# review): a clock that ran ahead pinning a node's newest result, several Xid 13 lines on one GPU
# exported as duplicate series, a finding's newline splitting a status row, a symlinked ``nodes``
# directory getting a directory outside the root, two runs flushing the same spooled record, age
# compaction that never ran again once the summary lost the oldest time, a lock file any user
# could hold, and an Xid count that is not a number stopping the whole export.


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
    lock = S.Flock(os.path.join(directory, S.LOCK))
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


# ---- reliability and security (issue 18) ------------------------------------------------------------

HANGFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hangfs.py")
PROLOG_BUDGET = 4.0


class Mount:
    def __init__(self, tmp_path):
        self.source, self.mnt, self.flag = tmp_path / "fuse-source", tmp_path / "fuse-mnt", tmp_path / "hang"
        self.proc = None

    def hang(self):
        self.flag.touch()

    def answer(self):
        if self.flag.exists():
            self.flag.unlink()


@pytest.fixture
def hung_mount(tmp_path):
    """A directory on a FUSE mount (tests/hangfs.py) whose every operation waits while ``hang()``
    is in force, as on a hung NFS hard mount: a process calling into it sleeps in the kernel and
    cannot be interrupted; not even its exit completes while one of its threads is there."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse for a FUSE mount")
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError, EnvironmentError) as exc:
        pytest.skip("needs fusepy and libfuse2 (pip install fusepy; apt-get install libfuse2): %s" % exc)
    m = Mount(tmp_path)
    m.source.mkdir()
    m.mnt.mkdir()
    m.proc = subprocess.Popen([sys.executable, HANGFS, str(m.source), str(m.mnt), str(m.flag)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not _wait_until(lambda: os.path.ismount(str(m.mnt)) or m.proc.poll() is not None, 10):
        m.proc.kill()
        pytest.skip("the FUSE mount did not come up")
    if m.proc.poll() is not None:
        pytest.skip("FUSE cannot be mounted here: %s" % m.proc.stderr.read().decode(errors="replace")[-300:])
    try:
        yield m
    finally:
        m.answer()                       # whatever still waits on the mount returns
        time.sleep(0.5)
        subprocess.run(["umount", "-l", str(m.mnt)], capture_output=True)
        m.proc.terminate()
        try:
            m.proc.wait(10)
        except subprocess.TimeoutExpired:
            m.proc.kill()


def _prolog(cfg, mount, node="gpu-001", timeout=20):
    """`gpuhc prolog` as slurmd starts it (stdout and stderr on pipes it reads to the end): (result,
    seconds from exec to exit). Still running after ``timeout`` fails the test, as slurmd would
    kill it; SIGKILL alone does not end a process whose thread waits on the mount, so the mount
    is let go first."""
    env = dict(os.environ, GPUHC_CONFIG=str(cfg), SLURMD_NODENAME=node, SLURM_JOB_ID="42")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gpuhc", "prolog", "--simulate", "h100-healthy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        mount.answer()
        proc.communicate()
        pytest.fail("gpuhc prolog still running after %d s (budget %g s): slurmd kills it and drains the node"
                    % (timeout, PROLOG_BUDGET))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t0


def test_a_hung_shared_store_does_not_hold_the_prolog(tmp_path, hung_mount):
    """The shared store's mount stops answering (a FUSE daemon that hangs; a hard NFS mount whose
    server is gone). The prolog decided and spooled within its budget, but its process could not
    exit while a thread sat in an uninterruptible filesystem call: slurmd killed it at
    PrologEpilogTimeout, drained the node "Prolog error" and requeued the job. The whole process,
    exec to exit, must end inside timeouts.budget.prolog; a second prolog while the first one's
    writer still hangs too; and once the mount answers, each record lands exactly once."""
    store = hung_mount.mnt / "store"
    res = gpuhc("store", "init", str(store))
    assert res.returncode == 0, res.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                   "slurm: {backend: none}\ntimeouts: {budget: {prolog: %g}, act: 2, store: 1.5}\n"
                   % (store, tmp_path / "state", PROLOG_BUDGET))
    hung_mount.hang()
    for run in range(2):
        res, wall = _prolog(cfg, hung_mount)
        assert res.returncode == 0, res.stdout + res.stderr
        assert wall < PROLOG_BUDGET, (run, wall, res.stderr)
        assert "result spooled to" in res.stderr, res.stderr
    spool = tmp_path / "state" / "spool" / "gpu-001"
    assert len(os.listdir(str(spool))) == 2
    hung_mount.answer()                  # the writers the prologs left behind finish on their own
    assert _wait_until(lambda: os.listdir(str(spool)) == [], 20), os.listdir(str(spool))
    history = lines(node_file(store, "gpu-001", "history.jsonl"))
    assert len(history) == 2 and len({r["started_ts"] for r in history}) == 2
    summary = json.loads(open(node_file(store, "gpu-001", "summary.json")).read())
    assert summary["history"]["count"] == 2


NOBODY = 65534


def as_nobody(fn, *args):
    """fn(*args) in a forked child running as nobody (uid and gid 65534): another user on the node."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn(*args)
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the unprivileged step failed"


@pytest.fixture
def shared_tmp():
    """A directory like /tmp (root's, mode 1777: every user may add names, none may replace another's)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    base = tempfile.mkdtemp(prefix="gpuhc-trust-")
    os.chmod(base, 0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _marker(root):
    with open(os.path.join(root, S.MARKER), "w") as fh:
        fh.write("{}\n")


@pytest.mark.parametrize("how", ["owner", "mode", "parent", "nodes"])
def test_a_store_another_user_could_write_is_refused(shared_tmp, tmp_path, caplog, how):
    """A store directory created first by another user (under /tmp), or writable by group or
    others, or below a directory others can write, or whose nodes directory is another user's:
    whoever can write there can forge PASS records (what auto-resume counts), hold the writers'
    lock, or swap a node directory for a link between the check and the write. The writer refuses
    it (the result is spooled, with one line naming the path and the fix); readers stop with it."""
    root = os.path.join(shared_tmp, "store")
    if how == "owner":
        as_nobody(lambda: (os.mkdir(root, 0o755), _marker(root)))
        bad, fix = root, "owned by uid 65534, not by root"
    elif how == "mode":
        os.mkdir(root)
        os.chmod(root, 0o775)
        bad, fix = root, "writable by group (mode 0775)"
    elif how == "parent":
        parent = os.path.join(shared_tmp, "shared")
        os.mkdir(parent)
        os.chmod(parent, 0o777)
        root = os.path.join(parent, "store")
        os.mkdir(root)
        bad, fix = parent, "writable by group and others (mode 0777)"
    else:
        os.mkdir(root)
        os.mkdir(os.path.join(root, "nodes"))
        os.chown(os.path.join(root, "nodes"), NOBODY, NOBODY)       # handed to a user once, by mistake
        bad, fix = os.path.join(root, "nodes"), "owned by uid 65534"
    if how != "owner":
        _marker(root)
    st = Store(root, str(tmp_path / "state"), timeout=2.0, auto_init=False)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert st.record(report()) == "spooled"
    assert "%s: %s" % (bad, fix) in caplog.text, caplog.text
    assert ("chown root %s" % bad if how in ("owner", "nodes") else "chmod go-w %s" % bad) in caplog.text
    assert not os.path.exists(os.path.join(root, "nodes", "gpu-001"))
    for read in (st.summaries, lambda: st.latest("gpu-001")):
        with pytest.raises(StoreError, match="refused: %s: %s" % (bad, fix.replace("(", r"\(").replace(")", r"\)"))):
            read()
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\n" % (root, tmp_path / "state"))
    res = gpuhc("status", env={"GPUHC_CONFIG": str(cfg)})
    assert res.returncode == 2 and res.stdout == "", res
    [line] = res.stderr.splitlines()
    assert line.startswith("gpuhc: error: store %s refused: %s: %s" % (root, bad, fix)), line


def test_records_another_user_spooled_are_never_flushed(shared_tmp, tmp_path, caplog):
    """The state directory was made under /tmp by another user before gpuhc first ran (or is open
    to others): that user put three PASS records in the spool, and the next write flushed them
    into the shared store, where auto-resume counts passes. A spool another user can write is not
    used; and a spooled file that is not root's is set aside, never written."""
    state = os.path.join(shared_tmp, "state")
    now = time.time()

    def plant():
        spool = os.path.join(state, "spool", "gpu-001")
        os.makedirs(spool, 0o755)
        for n in range(3):
            with open(os.path.join(spool, "%020d-1-%d.json" % (n + 1, n)), "wb") as fh:
                fh.write(S.encode(report(started=now - 60 + n, job="forged-%d" % n).to_dict()))
    as_nobody(plant)
    st = Store(str(tmp_path / "store"), state, timeout=5.0)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert st.record(report(job="mine")) == "stored"
    assert [r.job_id for r in st.history("gpu-001")] == ["mine"]
    assert "spool not used: %s: owned by uid 65534" % state in caplog.text
    # a spool of root's holding a file another user owns (a copy chowned, a hard link): set aside
    good = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)
    path = good._spool("gpu-001", S.encode(report(started=now - 30, job="forged").to_dict()))
    os.chown(path, NOBODY, NOBODY)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert good.record(report(job="mine-2")) == "stored"
    assert "%s: not written by gpuhc (owned by uid 65534" % path in caplog.text
    assert os.path.exists(path + ".corrupt") and good.spooled() == []
    assert [r.job_id for r in good.history("gpu-001")] == ["mine-2", "mine"]


def test_a_check_state_another_user_replaced_is_not_believed(shared_tmp, tmp_path):
    """The node's check state (Xid events seen, acknowledged, reset) lives in the state directory.
    Created first by another user under /tmp, that user replaced it with one whose Xid 79 is
    acknowledged: the REBOOT turned into a PASS. A state directory or file another user could
    have written is not read (a warning names it), so the Xid is seen again."""
    def config(state):
        path = tmp_path / ("config-%s.yaml" % os.path.basename(state))
        path.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                        "slurm: {backend: none}\n" % (tmp_path / "store", state))
        return {"GPUHC_CONFIG": str(path)}
    def xid(env):
        res = gpuhc("check", "--simulate", "h100-xid79", "--node", "gpu-001", "--check", "xid", "--no-record",
                    "--json", env=env)
        return [f["severity"] for f in json.loads(res.stdout)["findings"] if f["check"] == "xid"], res.stderr
    good = str(tmp_path / "good")
    assert xid(config(good))[0] == ["REBOOT"]
    # the forged state: this node's own, its cursor past the Xid line and no event kept
    path = os.path.join(good, "checks-gpu-001.json")
    with open(path) as fh:
        doc = json.load(fh)
    doc["xid"]["events"] = []
    forged = json.dumps(doc).encode()
    with open(path, "wb") as fh:
        fh.write(forged)
    assert xid(config(good))[0] == ["PASS"]      # what the forged state says, when believed
    state = os.path.join(shared_tmp, "state")

    def plant():
        os.mkdir(state, 0o755)
        with open(os.path.join(state, "checks-gpu-001.json"), "wb") as fh:
            fh.write(forged)
    as_nobody(plant)
    severities, stderr = xid(config(state))
    assert severities == ["REBOOT"], stderr
    assert "gpuhc: warning: local state not used: %s: owned by uid 65534" % state in stderr
    # the same file in a directory of root's, but owned by that user: not read either
    from gpuhc import localstate
    os.chown(os.path.join(good, "checks-gpu-001.json"), NOBODY, NOBODY)
    assert localstate.read(good, "checks-gpu-001") is None


HOLD_FD = """
import fcntl, os, sys, time
os.setgroups([]); os.setgid(65534); os.setuid(65534)
fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_file_of_another_user_stalls_no_writer(shared_tmp, tmp_path):
    """A node's lock file (and the check state's) left by another user, who holds it: every write
    waited out its timeout and went to the spool, and every prolog waited LOCK_WAIT for the check
    state. A lock gpuhc did not make is replaced (its directory is root's alone), not waited for."""
    from gpuhc import localstate

    root, state = os.path.join(shared_tmp, "store"), os.path.join(shared_tmp, "state")
    st = Store(root, state, timeout=1.0)
    assert st.record(report(job="first")) == "stored"
    localstate.update(state, "checks-gpu-001", lambda old: {"n": 1})
    holders = []
    try:
        for lock in (node_file(root, "gpu-001", ".lock"), os.path.join(state, ".checks-gpu-001.lock")):
            os.chown(lock, NOBODY, NOBODY)
            fd = os.open(lock, os.O_RDWR)
            holder = subprocess.Popen([sys.executable, "-c", HOLD_FD, str(fd)], pass_fds=(fd,),
                                      stdout=subprocess.PIPE, text=True)
            os.close(fd)
            holders.append(holder)
            assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        assert st.record(report(job="second")) == "stored"
        assert localstate.update(state, "checks-gpu-001", lambda old: {"n": (old or {}).get("n", 0) + 1})
        assert time.monotonic() - t0 < 1.0
        assert os.stat(node_file(root, "gpu-001", ".lock")).st_uid == 0
        assert localstate.read(state, "checks-gpu-001") == {"n": 2}
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def _mount(*args):
    return subprocess.run(["mount"] + list(args), capture_output=True, text=True)


def test_an_empty_mount_point_is_not_written(tmp_path, caplog):
    """The shared store's filesystem is not mounted (a boot where the NFS mount failed, an autofs
    timeout): the mount point is an empty local directory. The records landed there and were hidden
    once the filesystem was mounted over them (3 of 5 missing, no warning). A configured store must
    carry the marker of `gpuhc store init`; without it the writer spools with a warning naming the
    store, and the next write after the mount comes back flushes: every record lands in the store."""
    if os.geteuid() != 0 or _mount("--bind", "/nonexistent-gpuhc", "/nonexistent-gpuhc").returncode == 32 and \
            "permission" in _mount("--bind", "/nonexistent-gpuhc", "/nonexistent-gpuhc").stderr.lower():
        pytest.skip("needs root and bind mounts")
    shared = tmp_path / "nfs-server-export"
    assert S.init_store(str(shared)).endswith("initialised (.gpuhc-store written)")
    point = tmp_path / "mnt" / "gpuhc"
    point.mkdir(parents=True)
    if _mount("--bind", str(shared), str(point)).returncode != 0:
        pytest.skip("cannot bind-mount here")
    mounted = True
    try:
        st = Store(str(point), str(tmp_path / "state"), timeout=2.0, auto_init=False)
        now = time.time()
        assert st.record(report(started=now - 30, job="a")) == "stored"
        assert subprocess.run(["umount", str(point)]).returncode == 0
        mounted = False
        with caplog.at_level(logging.WARNING, "gpuhc.store"):
            assert st.record(report(started=now - 20, job="b")) == "spooled"
        assert "store %s: not initialised (no .gpuhc-store marker): is the shared filesystem mounted there?" \
            % point in caplog.text and "gpuhc store init %s" % point in caplog.text
        assert os.listdir(str(point)) == []               # nothing hides under the mount point
        assert _mount("--bind", str(shared), str(point)).returncode == 0
        mounted = True
        assert st.record(report(started=now - 10, job="c")) == "stored"
        assert st.spooled() == []
        assert [r.job_id for r in st.history("gpu-001")] == ["c", "b", "a"]
        assert st.summaries()["gpu-001"]["history"]["count"] == 3
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(point)])
    assert sorted(r["job_id"] for r in lines(node_file(shared, "gpu-001", "history.jsonl"))) == ["a", "b", "c"]


def test_the_default_local_store_initialises_itself(tmp_path, make_cfg, monkeypatch):
    """With no `store:` configured the store is a local directory: it makes its own marker, so a
    single node works out of the box. Any other store must be initialised."""
    from gpuhc.store import reading

    local = tmp_path / "default-store"
    monkeypatch.setattr(reading, "default_root", lambda: str(local))
    st = Store.from_config(make_cfg(store=str(local)))
    assert st.auto_init and st.record(report()) == "stored"
    assert os.path.isfile(str(local / S.MARKER))
    other = Store.from_config(make_cfg(store=str(tmp_path / "elsewhere")))
    assert not other.auto_init and other.record(report()) == "spooled"


# -- a full disk, a read-only store, what is not a regular file ----------------------------------------

def test_a_full_disk_leaves_no_torn_line_and_a_true_count(tmp_path):
    """The store's filesystem fills up. Writes failed at every step (history append cut short,
    latest.json, summary.json): the summary's count drifted from the records (6 against 7) and a
    torn line stayed in the history. At every fill level tried here, once space is back and the
    spool flushed: every record once, no torn line, and the count is the number of records."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if _mount("-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs", str(small)).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = small / "store"
        st = Store(str(root), str(tmp_path / "state"), timeout=5.0)
        now = time.time()
        jobs = ["j%02d" % n for n in range(40)]
        assert st.record(report(started=now - 100, job=jobs[0])) == "stored"
        filler = small / "filler"
        fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT)      # the rest of the disk, taken
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        outcomes = []
        for n, job in enumerate(jobs[1:], 1):
            size = os.path.getsize(str(filler))
            os.truncate(str(filler), max(0, size - 700))     # a little room each time: writes fail at every step
            outcomes.append(st.record(report(started=now - 100 + n, job=job)))
        assert "spooled" in outcomes and "stored" in outcomes, outcomes
        filler.unlink()
        assert st.record(report(started=now, job="last")) == "stored"
        assert st.spooled() == []
        raw = open(node_file(root, "gpu-001", "history.jsonl"), "rb").read()
        assert raw.endswith(b"\n")
        recorded = [json.loads(line)["job_id"] for line in raw.splitlines()]      # every line whole
        assert sorted(recorded) == sorted(jobs + ["last"])                          # every record once
        assert st.summaries()["gpu-001"]["history"]["count"] == len(recorded)
        assert st.latest("gpu-001").job_id == "last"
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_a_read_only_store_warning_names_this_nodes_files(tmp_path, caplog):
    """The store went read-only while another node's record waited in this node's spool (written
    with --node elsewhere): the warning named the other node's lock file, as if that were what
    failed. It names what this write could not do."""
    root = tmp_path / "store"
    st = Store(str(root), str(tmp_path / "state"), timeout=2.0)
    assert st.record(report(node="gpu-002", job="other")) == "stored"
    st._spool("gpu-002", S.encode(report(node="gpu-002", started=time.time() - 50, job="waiting").to_dict()))
    if _mount("--bind", str(root), str(root)).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True, capture_output=True)
        with caplog.at_level(logging.WARNING, "gpuhc.store"):
            assert st.record(report(node="gpu-001")) == "spooled"
        [line] = [r.getMessage() for r in caplog.records if "result spooled" in r.getMessage()]
        assert "Read-only file system" in line and "gpu-001" in line and "gpu-002" not in line, line
    finally:
        subprocess.run(["umount", "-l", str(root)])


def test_a_fifo_or_a_device_in_one_node_never_takes_the_fleet_view_down(tmp_path, make_cfg, caplog):
    """One node's latest.json (and summary, history) is a FIFO: status, show and export opened it
    and waited for a writer until the read timeout, then failed for the whole fleet. A character
    device as history.jsonl made every reader exit 3 and a prolog reach 2 GB. Only regular files
    are opened (never waiting on a FIFO), and a bad node is skipped with a warning."""
    cfg = make_cfg()
    st = Store.from_config(cfg)
    for node in ("gpu-001", "gpu-002", "gpu-003"):
        assert st.record(report(node=node, job=node)) == "stored"
    for name in ("latest.json", "summary.json", "history.jsonl"):
        path = node_file(st.root, "gpu-002", name)
        os.unlink(path)
        os.mkfifo(path)
    for name in ("latest.json", "summary.json", "history.jsonl"):
        os.unlink(node_file(st.root, "gpu-003", name))
    os.mknod(node_file(st.root, "gpu-003", "history.jsonl"), stat.S_IFCHR | 0o644, os.makedev(1, 5))   # /dev/zero
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert set(st.summaries()) == {"gpu-001"}
        text = ST.status_text(cfg, per_node=True, header=False)
        assert [row.split()[0] for row in text.splitlines()] == ["gpu-001"]
        assert "gpu-001" in export_prometheus(cfg) and "gpu-002" not in export_prometheus(cfg)
        assert st.history("gpu-003") == [] and st.latest("gpu-002") is None
        with pytest.raises(StoreError, match="no readable result for node 'gpu-002'"):
            ST.show_text(cfg, "gpu-002")
        assert st.record(report(node="gpu-003", job="after")) == "spooled"      # not appended to a device
    assert time.monotonic() - t0 < 10
    assert "gpu-002/latest.json: cannot read: not a regular file" in caplog.text
    assert "gpu-003/history.jsonl: cannot read: not a regular file" in caplog.text
    res = gpuhc("status", "-N", env=isolated(tmp_path))
    assert res.returncode == 0 and res.stdout.split()[res.stdout.split().index("gpu-001")] == "gpu-001"
    assert "gpu-002" not in res.stdout and "Traceback" not in res.stderr
