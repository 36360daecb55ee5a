"""The store's compact per-node metric series (gpuhc/store/series.py): one line per report, written with
the history under the node's lock, compacted with it, built from it where a store predates it, read
tolerantly; `gpuhc status` never reads it."""
import json
import logging
import os
import time

from test_store import STABLE_CHECKS, node_file, report

from gpuhc import status
from gpuhc.model import Finding, GpuRef, Report, Severity
from gpuhc.store import SERIES, Store, series


def series_lines(root, node="gpu-001"):
    with open(node_file(root, node, SERIES), "rb") as fh:
        out = []
        for line in fh.read().splitlines():
            head, _, body = line.partition(b"\t")
            out.append((json.loads(head), json.loads(body) if body else None))
        return out


def test_each_record_appends_its_series_line(tmp_path, run_scenario):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)
    healthy = run_scenario("h100-healthy", context="prolog", checks=STABLE_CHECKS)
    xid = run_scenario("h100-xid79", context="prolog", checks=STABLE_CHECKS)
    xid.action = "drain"
    xid.started = healthy.started + 60
    assert st.record(healthy) == "stored" and st.record(xid) == "stored"
    (env1, det1), (env2, det2) = series_lines(st.root)
    assert env1 == {"t": round(healthy.started, 3), "c": "prolog", "s": "custom", "p": healthy.profile, "o": "PASS"}
    assert set(det1["k"]) == set(STABLE_CHECKS) | {"nvml"} and set(det1["k"].values()) == {0}
    assert det1["m"]["ecc.volatile_corrected"] == 0                       # one number: every GPU's
    assert det1["m"]["pcie.width_current"] == 16
    assert env2["o"] == "REBOOT" and env2["a"] == "drain"
    assert env2["x"] == [[3, 79, 1, 3]]                                   # GPU3, Xid 79, once, REBOOT
    assert env2["w"]["xid"] == 3 and env2["e"].startswith("REBOOT xid: Xid 79 on GPU3")
    assert "xid.xid" not in det2["m"] and "b" not in env2
    size = os.path.getsize(node_file(st.root, "gpu-001", SERIES))
    history = os.path.getsize(node_file(st.root, "gpu-001", "history.jsonl"))
    assert size * 8 < history                                             # compact: a fraction of the reports


def test_per_gpu_values_that_differ_are_a_list_and_deep_figures_mark_the_envelope(run_scenario):
    rep = run_scenario("h100-gpu-slow", context="bench")
    env, detail = series.series_record(rep)
    stress = detail["m"]["gpu_stress.stress_tflops"]
    assert isinstance(stress, list) and len(stress) == 8 and min(stress) < max(stress)
    assert env["b"] == 1 and detail["m"]["allreduce_node.busbw_gbps@1048576"] > 0
    odd = Report("n1", "check", "p", 1.0, 2.0, [
        Finding("thermal_power", Severity.PASS, "ok", gpu=GpuRef(2), metrics={"temperature_c": 40}),
        Finding("thermal_power", Severity.MONITOR, "hot", gpu=GpuRef(0), metrics={"temperature_c": 88}),
        Finding("thermal_power", Severity.PASS, "ok", gpu=GpuRef(0), metrics={"temperature_c": 10, "x": float("nan")})])
    env, detail = series.series_record(odd)
    assert detail["m"] == {"thermal_power.temperature_c": [88, None, 40]}   # the most severe wins; NaN left out
    assert env["w"] == {"thermal_power": 1} and "e" not in env


def test_series_is_compacted_with_the_history(tmp_path):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), max_records=5, max_age_days=10)
    now = time.time()
    d = st._node_dir("gpu-001", create=True)
    for age in [30, 20, 11, 9, 8, 7, 6, 5, 4, 3, 2, 1]:
        r = report(started=now - age * 86400, job="d%d" % age)
        st._append_locked(d, json.dumps(r.to_dict()).encode() + b"\n", r)
    assert len(series_lines(st.root)) == 12
    assert st.compact("gpu-001") == (5, 7)
    kept = [env["t"] for env, _ in series_lines(st.root)]
    assert kept == [round(now - age * 86400, 3) for age in (5, 4, 3, 2, 1)]


def test_a_store_from_before_the_series_gets_it_from_its_history_at_compaction(tmp_path):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), max_records=3, max_age_days=0)
    now = time.time()
    d = st._node_dir("gpu-001", create=True)
    for n in range(6):
        r = report(started=now - (6 - n) * 60, job=str(n), sev=Severity.REBOOT if n == 4 else Severity.PASS)
        st._append_locked(d, json.dumps(r.to_dict()).encode() + b"\n", r)
    os.unlink(node_file(st.root, "gpu-001", SERIES))          # as an older gpuhc left the node
    assert st.compact("gpu-001") == (3, 3)
    envs = [env for env, _ in series_lines(st.root)]
    assert [env["o"] for env in envs] == ["PASS", "REBOOT", "PASS"]
    assert envs[1]["e"].startswith("REBOOT xid")


def test_bad_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path, caplog):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)
    now = time.time()
    for n in range(3):
        st.record(report(started=now - 300 + n * 100, job=str(n)))
    path = node_file(st.root, "gpu-001", SERIES)
    with open(path, "rb") as fh:
        good = fh.read().splitlines()
    bad_detail = good[2].partition(b"\t")[0] + b"\t{not json"
    with open(path, "wb") as fh:
        fh.write(b"\n".join([good[0], b"{garbage", b'{"t":"soon","c":"x","o":"PASS"}', good[1], bad_detail])
                 + b"\n" + good[0][:20])               # and a torn last line
    caplog.set_level(logging.WARNING, logger="gpuhc.store")
    records, prior = series.read_node(os.path.dirname(path))
    assert [r.env["t"] for r in records] == [round(now - 300 + n * 100, 3) for n in range(3)] and prior is None
    assert records[2].metrics == {} and records[0].metrics
    text = caplog.text
    assert "%s:2: skipped a corrupt series record" % path in text
    assert "%s:3: skipped a series record: field t" % path in text
    assert "%s:5: skipped the metrics of a record" % path in text
    assert "%s:6: skipped a truncated series record" % path in text


def test_since_keeps_the_newest_record_before_it_as_the_prior(tmp_path):
    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)
    now = time.time()
    for n in range(10):
        st.record(report(started=now - 1000 + n * 100, job=str(n)))
    records, prior = series.read_node(os.path.join(st.root, "nodes", "gpu-001"), since=now - 450)
    assert [r.env["t"] for r in records] == [round(now - 1000 + n * 100, 3) for n in range(6, 10)]
    assert prior.env["t"] == round(now - 500, 3)
    assert series.read_node(os.path.join(st.root, "nodes", "gpu-002")) is None      # no series at all
    # a node held drained at the window's start: the record that drained it comes with the prior
    drained = report(node="gpu-003", started=now - 900, sev=Severity.REBOOT)
    drained.action = "drain"
    st.record(drained)
    for n in range(5):
        held = report(node="gpu-003", started=now - 800 + n * 100)
        held.action = "held"
        st.record(held)
    records, prior = series.read_node(os.path.join(st.root, "nodes", "gpu-003"), since=now - 550)
    assert len(records) == 2 and prior.env["a"] == "held" and prior.cause.env["t"] == round(now - 900, 3)
    assert prior.cause.env["o"] == "REBOOT" and records[0].cause is None


def test_status_reads_summaries_only(tmp_path, make_cfg, monkeypatch):
    """`gpuhc status` keeps its budget: it never opens a series (nor a history)."""
    cfg = make_cfg()
    st = Store.from_config(cfg)
    st.record(report(started=time.time()))
    opened = []
    real_open = os.open

    def spy(path, *a, **k):
        opened.append(os.path.basename(str(path)))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", spy)
    text = status.status_text(cfg, per_node=True)
    assert "gpu-001" in text
    assert SERIES not in opened and "history.jsonl" not in opened and "summary.json" in opened


def test_a_record_of_an_unexpected_shape_leaves_its_node_out_not_the_report(tmp_path, caplog):
    """Valid JSON of another shape (an Xid list that is a number, checks that are a list): the node's
    series is skipped with a warning naming it; the other nodes are reported."""
    from gpuhc.fleet.digest import Fleet, Window

    st = Store(str(tmp_path / "store"), str(tmp_path / "state"), timeout=5.0)
    now = time.time()
    for node in ("gpu-001", "gpu-002"):
        st.record(report(node=node, started=now - 100))
    with open(node_file(st.root, "gpu-002", SERIES), "ab") as fh:
        fh.write(b'{"t":%.3f,"c":"prolog","o":"REBOOT","x":5,"w":[1]}\n' % (now - 50))
    caplog.set_level(logging.WARNING, logger="gpuhc.report")
    fleet = Fleet(Window(now, 86400.0))
    for node in ("gpu-001", "gpu-002"):
        fleet.add(node, series.read_node(os.path.join(st.root, "nodes", node), now - 86400.0), 86400.0)
    assert fleet.digests["gpu-001"].timeline.records == 1 and fleet.digests["gpu-002"].timeline.records == 0
    assert "gpu-002: metric series skipped: a record of an unexpected shape" in caplog.text
