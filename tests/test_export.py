"""gpuhc export prometheus: a node_exporter textfile that the Prometheus text parser accepts."""
import copy
import json
import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import gpuhc
from gpuhc.errors import GpuhcError
from gpuhc.export import prometheus_text, export_prometheus
from gpuhc.model import Finding, GpuRef, Severity
from gpuhc.store import Store
from test_store import STABLE_CHECKS, as_nobody, isolated, shared_tmp  # noqa: F401 (shared_tmp: a fixture)



@pytest.fixture
def stored(run_scenario, make_cfg):
    cfg = make_cfg()
    store = Store.from_config(cfg)
    reports = {}
    for node, scenario in (("gpu-001", "h100-healthy"), ("gpu-002", "h100-xid79"), ("gpu-003", "h100-pcie-x8"),
                           ("gpu-004", "h100-thermal-slowdown")):
        rep = copy.deepcopy(run_scenario(scenario, context="epilog", checks=STABLE_CHECKS, node=node))
        rep.node = node
        store.record(rep)
        reports[node] = Store.from_config(cfg).latest(node)
    return cfg, reports


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams, name):
    return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}


def test_textfile_parses_with_help_type_and_values(stored):
    cfg, reports = stored
    text = export_prometheus(cfg)
    fams = families(text)
    for name in ("gpuhc_node_severity", "gpuhc_check_severity", "gpuhc_last_check_timestamp_seconds",
                 "gpuhc_last_check_duration_seconds", "gpuhc_findings"):
        assert fams[name].type == "gauge" and fams[name].documentation, name
    assert "PASS 0" in fams["gpuhc_node_severity"].documentation and "ERROR -1" in fams["gpuhc_node_severity"].documentation
    nodes = samples(fams, "gpuhc_node_severity")
    assert nodes == {(("node", n),): float(r.overall.rank) for n, r in reports.items()}
    assert nodes[(("node", "gpu-002"),)] == 3 and nodes[(("node", "gpu-003"),)] == 2
    checks = samples(fams, "gpuhc_check_severity")
    assert checks[(("check", "pcie"), ("node", "gpu-003"))] == 2
    assert checks[(("check", "pcie"), ("node", "gpu-001"))] == 0
    assert checks[(("check", "clocks"), ("node", "gpu-004"))] == 1
    stamps = samples(fams, "gpuhc_last_check_timestamp_seconds")
    assert stamps[(("context", "epilog"), ("node", "gpu-001"))] == pytest.approx(reports["gpu-001"].started)
    counts = samples(fams, "gpuhc_findings")
    for node, rep in reports.items():
        assert sum(v for k, v in counts.items() if ("node", node) in k) == len(rep.findings)
        reset = sum(1 for f in rep.findings if f.severity is Severity.RESET)
        assert counts[(("node", node), ("severity", "RESET"))] == reset
    # the numbers findings carry, per GPU
    temps = samples(fams, "gpuhc_metric_thermal_power_temperature_celsius")
    assert fams["gpuhc_metric_thermal_power_temperature_celsius"].documentation
    hot = next(f for f in reports["gpu-004"].findings if f.check == "thermal_power" and f.severity is Severity.MONITOR)
    assert temps[(("device", ""), ("gpu", str(hot.gpu.index)), ("node", "gpu-004"))] == hot.metrics["temperature_c"]
    assert len([k for k in temps if ("node", "gpu-001") in k]) == 8
    width = samples(fams, "gpuhc_metric_pcie_width_current")
    assert 8 in width.values() and 16 in width.values()
    # every series once
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert len(lines) == len({l.rsplit(" ", 1)[0] for l in lines})


def test_labels_are_escaped_and_duplicates_keep_the_most_severe(stored):
    _, reports = stored
    rep = copy.deepcopy(reports["gpu-001"])
    rep.findings = [
        Finding("nvlink", Severity.PASS, "ok", gpu=GpuRef(0), metrics={"link": 1, "ratio": 0.5}),
        Finding("nvlink", Severity.RESET, "link 3 down", gpu=GpuRef(0), metrics={"link": 3}),
        Finding("fabric", Severity.SKIP, "no NVSwitch", device='nvswitch "0"\\a\nb', metrics={"up": True}),
        Finding("ecc", Severity.ERROR, "timed out"),
    ]
    fams = families(prometheus_text({'odd"node': rep}))
    links = samples(fams, "gpuhc_metric_nvlink_link")
    assert links == {(("device", ""), ("gpu", "0"), ("node", 'odd"node')): 3.0}
    assert samples(fams, "gpuhc_metric_nvlink_ratio")[(("device", ""), ("gpu", "0"), ("node", 'odd"node'))] == 0.5
    up = samples(fams, "gpuhc_metric_fabric_up")
    # a newline (any control character) in a label value is a space: text.clean, the one sanitiser
    assert list(up) == [(("device", 'nvswitch "0"\\a b'), ("gpu", ""), ("node", 'odd"node'))]
    checks = samples(fams, "gpuhc_check_severity")
    assert checks[(("check", "fabric"), ("node", 'odd"node'))] == -2      # SKIP
    assert checks[(("check", "ecc"), ("node", 'odd"node'))] == -1         # ERROR
    assert checks[(("check", "nvlink"), ("node", 'odd"node'))] == 2


def test_each_xid_on_a_gpu_is_its_own_series(stored):
    """Several Xids on one GPU (a 13 burst, then a 79): one sample each, by Xid number."""
    _, reports = stored
    rep = copy.deepcopy(reports["gpu-001"])
    rep.findings = [
        Finding("xid", Severity.MONITOR, "Xid 13 on GPU3", gpu=GpuRef(3), metrics={"xid": 13, "count": 40}),
        Finding("xid", Severity.REBOOT, "Xid 79 on GPU3", gpu=GpuRef(3), metrics={"xid": 79, "count": 1}),
        Finding("xid", Severity.MONITOR, "SXid 20034", device="nvswitch0", metrics={"xid": 20034, "count": 2}),
    ]
    fams = families(prometheus_text({"gpu-001": rep}))
    assert samples(fams, "gpuhc_xid_events") == {
        (("device", ""), ("gpu", "3"), ("node", "gpu-001"), ("severity", "MONITOR"), ("xid", "13")): 40.0,
        (("device", ""), ("gpu", "3"), ("node", "gpu-001"), ("severity", "REBOOT"), ("xid", "79")): 1.0,
        (("device", "nvswitch0"), ("gpu", ""), ("node", "gpu-001"), ("severity", "MONITOR"), ("xid", "20034")): 2.0,
    }
    assert not any(name.startswith("gpuhc_metric_xid") for name in fams)


def test_empty_store_exports_nothing(make_cfg):
    assert export_prometheus(make_cfg()) == ""


def test_cli_writes_the_file_atomically(stored, tmp_path):
    env = isolated(tmp_path)          # the store the fixture filled
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    out = out_dir / "gpuhc.prom"
    out.write_text("old content\n")
    res = gpuhc("export", "prometheus", "--output", str(out), env=env)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""
    assert os.listdir(str(out_dir)) == ["gpuhc.prom"]          # no temporary file left behind
    assert stat.S_IMODE(os.stat(str(out)).st_mode) == 0o644
    assert "gpuhc_node_severity" in families(out.read_text())
    res = gpuhc("export", "prometheus", env=env)
    assert res.returncode == 0 and families(res.stdout)["gpuhc_findings"].samples
    res = gpuhc("export", "prometheus", "--output", str(tmp_path / "missing" / "x.prom"), env=env)
    assert res.returncode == 2 and res.stderr.startswith("gpuhc: error: --output %s" % (tmp_path / "missing" / "x.prom"))


def test_nodes_option_exports_only_those(stored):
    cfg, _ = stored
    fams = families(export_prometheus(cfg, nodelist="gpu-[002-003],gpu-404"))
    assert {s.labels["node"] for s in fams["gpuhc_node_severity"].samples} == {"gpu-002", "gpu-003"}


def test_drained_gauge_from_slurms_view(stored):
    """A node drained by gpuhc whose newest report is a quick suite's PASS still shows as drained."""
    cfg, _ = stored
    slurm = {"gpu-002": {"state": "IDLE+DRAIN", "reason": "gpuhc: RESET pcie: GPU5 PCIe link x8"},
             "gpu-003": {"state": "IDLE+DRAIN", "reason": "fan noise, ticket 4711"},
             "gpu-404": {"state": "IDLE"}}
    fams = families(export_prometheus(cfg, slurm=slurm))
    samples = {s.labels["node"]: (s.labels["severity"], s.value) for s in fams["gpuhc_node_drained"].samples}
    assert samples == {"gpu-002": ("RESET", 1.0), "gpu-003": ("", 0.0)}      # only nodes with results
    assert "gpuhc_node_drained" not in families(export_prometheus(cfg))       # no Slurm: no guess


def test_a_record_of_the_wrong_shape_is_skipped_not_the_export(stored, caplog):
    cfg, reports = stored
    for node, change in (("gpu-002", lambda d: d["findings"][0].update(check=5)),
                         ("gpu-003", lambda d: d.update(context=["epilog"]))):
        d = reports[node].to_dict()
        change(d)
        line = json.dumps(d) + "\n"
        for name, mode in (("latest.json", "w"), ("history.jsonl", "a")):
            with open(os.path.join(cfg["store"], "nodes", node, name), mode) as fh:
                fh.write(line)
    with caplog.at_level("WARNING", "gpuhc.store"):
        fams = families(export_prometheus(cfg))
    # gpu-002 and gpu-003 fall back to their readable history record; the others are untouched
    assert {s.labels["node"] for s in fams["gpuhc_node_severity"].samples} == {"gpu-001", "gpu-002", "gpu-003", "gpu-004"}
    assert "gpu-002/latest.json: skipped a record: field findings[0].check: expected a string, got 5" in caplog.text
    assert "gpu-003/history.jsonl:2: skipped a record: field context: expected a string, got ['epilog']" in caplog.text


def test_output_that_is_not_a_regular_file_is_refused(stored, tmp_path):
    cfg, _ = stored
    fifo = tmp_path / "textfile.fifo"
    os.mkfifo(str(fifo))
    directory = tmp_path / "adir"
    directory.mkdir()
    link_to_fifo = tmp_path / "link-to-fifo.prom"
    link_to_fifo.symlink_to(fifo)
    for target in (fifo, directory, link_to_fifo):
        with pytest.raises(GpuhcError, match="--output %s.*(not a regular file|a directory): refused" % target):
            export_prometheus(cfg, output=str(target))
    assert stat.S_ISFIFO(os.stat(str(fifo)).st_mode) and os.path.islink(str(link_to_fifo))
    assert os.listdir(str(directory)) == [] and not [n for n in os.listdir(str(tmp_path)) if n.startswith(".")]
    res = gpuhc("export", "prometheus", "--output", str(fifo), env=isolated(tmp_path))
    assert res.returncode == 2 and res.stdout == "" and stat.S_ISFIFO(os.stat(str(fifo)).st_mode)
    assert res.stderr == "gpuhc: error: --output %s: not a regular file: refused\n" % fifo


def test_output_through_a_symlink_replaces_its_target_and_keeps_the_link(stored, tmp_path):
    cfg, _ = stored
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "gpuhc.prom"
    real.write_text("old\n")
    link = tmp_path / "gpuhc.prom"
    link.symlink_to(real)
    assert export_prometheus(cfg, output=str(link)) == ""
    assert os.path.islink(str(link)) and os.readlink(str(link)) == str(real)
    assert "gpuhc_node_severity" in families(real.read_text())
    assert os.listdir(str(real_dir)) == ["gpuhc.prom"]
    dangling = tmp_path / "dangling.prom"           # a link to a file not there yet: the file is made
    dangling.symlink_to(real_dir / "new.prom")
    assert export_prometheus(cfg, output=str(dangling)) == "" and os.path.islink(str(dangling))
    assert "gpuhc_node_severity" in (real_dir / "new.prom").read_text()


def test_output_through_a_link_another_user_planted_is_refused(stored, tmp_path, shared_tmp):
    """--output in a directory others can write (/tmp, a textfile directory opened to a group):
    another user plants a symlink under the output's name pointing at a file of root's, and the
    export (as root, from cron) replaced that file. A link is followed only where no other user
    could have planted it; else the export is refused and nothing is written."""
    cfg, _ = stored
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = os.path.join(shared_tmp, "gpuhc.prom")
    as_nobody(os.symlink, str(victim), planted)
    with pytest.raises(GpuhcError, match="--output %s: refused: %s: owned by uid 65534" % (planted, planted)):
        export_prometheus(cfg, output=planted)
    res = gpuhc("export", "prometheus", "--output", planted, env=isolated(tmp_path))
    assert res.returncode == 2 and res.stderr.startswith("gpuhc: error: --output %s: refused" % planted), res.stderr
    open_dir = os.path.join(shared_tmp, "textfiles")     # world-writable, no sticky bit: even root's own link
    os.mkdir(open_dir)                                   # there can be swapped for another one
    os.chmod(open_dir, 0o777)
    os.symlink(str(victim), os.path.join(open_dir, "gpuhc.prom"))
    with pytest.raises(GpuhcError, match="refused: %s: writable by group and others" % open_dir):
        export_prometheus(cfg, output=os.path.join(open_dir, "gpuhc.prom"))
    assert victim.read_text() == "precious\n" and os.listdir(shared_tmp) == ["gpuhc.prom", "textfiles"]
    # no link under the name: written there, by a rename that replaces the name and follows nothing
    fresh = os.path.join(shared_tmp, "fresh.prom")
    assert export_prometheus(cfg, output=fresh) == ""
    st = os.lstat(fresh)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and "gpuhc_node_severity" in open(fresh).read()


def test_metric_names_follow_prometheus_conventions(run_scenario, make_cfg):
    """Units spelled out in base units at the end of a name (values scaled), _total on counters (typed
    counter), a message size as the label size_bytes: what the Grafana dashboard (grafana/) queries."""
    from gpuhc.export import metric_name

    assert metric_name("thermal_power", "temperature_c")[:3] == ("gpuhc_metric_thermal_power_temperature_celsius", 1,
                                                                 "gauge")
    assert metric_name("gpu_bench", "matmul_tflops_bf16")[:2] == ("gpuhc_metric_gpu_bench_matmul_bf16_flops", 1e12)
    assert metric_name("allreduce_node", "busbw_gbps@1048576") == (
        "gpuhc_metric_allreduce_node_busbw_bytes_per_second", 1e9, "gauge", "1048576")
    assert metric_name("ecc", "aggregate_corrected")[::2] == ("gpuhc_metric_ecc_aggregate_corrected_total", "counter")
    assert metric_name("pcie", "replay_counter")[0] == "gpuhc_metric_pcie_replays_total"
    cfg = make_cfg()
    rep = run_scenario("h100-healthy", context="bench", node="gpu-001")
    Store.from_config(cfg).record(rep)
    prolog = run_scenario("h100-healthy", context="prolog", node="gpu-002")
    Store.from_config(cfg).record(prolog)
    text = export_prometheus(cfg)
    fams = families(text)          # the parser accepts counters and the size label
    ecc = fams["gpuhc_metric_ecc_aggregate_corrected"]      # the parser names a counter family without _total
    assert ecc.type == "counter" and all(s.name.endswith("_total") for s in ecc.samples)
    busbw = samples(fams, "gpuhc_metric_allreduce_node_busbw_bytes_per_second")
    sized = {dict(k).get("size_bytes"): v for k, v in busbw.items()}
    assert sized["8589934592"] == pytest.approx(468.171e9) and sized[None] == pytest.approx(468.171e9)
    matmul = samples(fams, "gpuhc_metric_gpu_bench_matmul_flops")
    assert set(matmul.values()) == {790e12}
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert not any(n.endswith(("_c", "_w", "_gbps", "_us")) or "tflops" in n for n in names), names
