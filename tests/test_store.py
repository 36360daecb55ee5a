"""The result store: atomic latest, append-only history, spool on a failing or slow store, compaction,
corrupt records, symlinks, modes, and many writers at once."""
import json
import logging
import multiprocessing
import os
import shutil
import stat
import subprocess
import threading
import time

import pytest

from conftest import gpuhc
from gpuhc import store as S
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


def test_slow_store_is_abandoned_at_the_timeout_then_flushed_once(tmp_path, monkeypatch):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=0.3)
    real_append = Store._append
    released = threading.Event()
    finished = threading.Event()

    def hung_append(self, *args):
        released.wait(10)          # a hung NFS write
        try:
            return real_append(self, *args)
        finally:
            finished.set()
    monkeypatch.setattr(Store, "_append", hung_append)
    t0 = time.monotonic()
    assert st.record(report(started=time.time() - 5, job="slow")) == "spooled"
    assert time.monotonic() - t0 < 1.0
    assert len(st.spooled()) == 1
    monkeypatch.setattr(Store, "_append", real_append)     # the mount recovers
    assert st.record(report(job="next")) == "stored"
    released.set()                 # the abandoned write finally returns, and must not write twice
    assert finished.wait(10)
    assert [r.job_id for r in st.history("gpu-001")] == ["next", "slow"]
    assert st.spooled() == [] and st.latest("gpu-001").job_id == "next"


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
    # the next append starts on a line of its own: the torn tail does not swallow it
    store.record(report(started=now, job="three"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        assert [r.job_id for r in store.history("gpu-001")] == ["three", "two", "one"]
    assert "history.jsonl:6: skipped a corrupt record" in caplog.text


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
    env = isolated(tmp_path)
    (tmp_path / "store").write_text("a file where the store directory should be")
    res = gpuhc("check", "--simulate", "h100-pcie-x8", "--node", "gpu-042", env=env)
    assert res.returncode == 1, res.stderr
    [warning] = res.stderr.strip().splitlines()
    assert warning.startswith("gpuhc: warning: store ") and "result spooled to" in warning
    (tmp_path / "store").unlink()
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-042", env=env)
    assert res.returncode == 0 and res.stderr == ""
    overall = [r["overall"] for r in lines(node_file(tmp_path / "store", "gpu-042", "history.jsonl"))]
    assert overall == ["RESET", "PASS"] and os.listdir(str(tmp_path / "state" / "spool" / "gpu-042")) == []


def test_check_when_nothing_can_be_written_still_exits_with_the_result(tmp_path):
    (tmp_path / "store").write_text("not a directory")
    (tmp_path / "state").write_text("not a directory either")
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-042", env=isolated(tmp_path))
    assert res.returncode == 0
    assert res.stderr.startswith("gpuhc: warning: result not recorded: cannot spool")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_bulk_read_goes_parallel_when_reads_are_slow_and_keeps_order(tmp_path, caplog):
    paths = []
    for n in range(40):
        p = tmp_path / ("f%02d" % n)
        if n != 17:
            p.write_bytes(b"x" * n)
        paths.append(str(p))
    serial = S._read_many(paths, probe=1000)
    with caplog.at_level(logging.WARNING, "gpuhc.store"):
        threaded = S._read_many(paths, probe=3, slow_s=-1.0, threads=4)     # as if every read were slow
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
