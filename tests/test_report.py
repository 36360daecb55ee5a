"""`gpuhc report` end to end: a store built from simulated nodes over five days (tests/report_fleet.py:
healthy nodes, an Xid-prone lemon, a slow node, a quarantined node, a node whose corrected ECC grows),
reported as markdown, JSON, text and HTML; the HTML opened in a real headless Chromium (Debian's
`chromium`, installed here with apt-get when missing, as root), which must render it with its plots
and name every problem node."""
import json
import os
import re
import shutil
import struct
import subprocess
import time

import pytest
import report_fleet as F
from conftest import ROOT, gpuhc

from gpuhc import config as C
from gpuhc.store import MARKER, init_store

PROBLEMS = {F.LEMON, F.SLOW, F.QUARANTINED, F.ECC}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("report-fleet")
    store = base / "store"
    store.mkdir(mode=0o755)
    (store / MARKER).write_text('{"gpuhc_store": 1}\n')
    conf = base / "config.yaml"
    conf.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                    "slurm: {backend: none}\n" % (store, base / "state"))
    cfg = C.load(str(conf))
    now = time.time()
    nodes = F.build(cfg, now)
    return {"env": {"GPUHC_CONFIG": str(conf)}, "cfg": cfg, "nodes": nodes, "base": base, "now": now}


def run(fleet, *args):
    res = gpuhc("report", *args, env=fleet["env"], timeout=120)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def doc(fleet):
    return json.loads(run(fleet, "--format", "json").stdout)


def test_json_names_every_problem_and_leaves_the_healthy_alone(doc, fleet):
    assert doc["summary"]["nodes"] == 12 and doc["summary"]["health"] == {"healthy": 11, "drained": 1}
    assert set(doc["summary"]["problem_nodes"]) == PROBLEMS
    scores = {r["node"]: r for r in doc["scores"]["nodes"]}
    order = [r["node"] for r in doc["scores"]["nodes"]]
    assert set(order[:4]) == PROBLEMS                                    # lowest first
    assert all(scores[n]["overall"] == 100 for n in fleet["nodes"] if n not in PROBLEMS)
    assert scores[F.LEMON]["reliability"] == 0 and scores[F.SLOW]["compute"] < 50
    assert scores[F.QUARANTINED]["memory"] <= 10 and scores[F.ECC]["memory"] <= 40
    assert scores[F.ECC]["gpus"] == {"2": scores[F.ECC]["overall"]}      # only its GPU2 lost points
    assert any("ecc_rate: GPU2" in r for r in scores[F.ECC]["reasons"]["memory"])
    needs = doc["summary"]["needs_person"]
    assert [x["node"] for x in needs["replace"]] == [F.QUARANTINED] and not needs["reboot"] and not needs["reset"]
    assert "memory_remap GPU6" in needs["replace"][0]["evidence"]
    assert doc["summary"]["verdicts"] == {"REPLACE": 1} and doc["summary"]["incidents"] == 6
    an = doc["anomalies"]
    assert {(s["node"], s["metric"]) for s in an["stragglers"]} == {(F.SLOW, "matmul_tflops"), (F.SLOW, "stress_tflops")}
    assert {a["node"] for a in an["fleet"]} == {F.SLOW, F.ECC}
    assert [(x["node"], x["gpu"]) for x in an["ecc_growth"]] == [(F.ECC, 2)]
    assert an["ecc_growth"][0]["per_day"] == pytest.approx(3000, rel=0.05)
    assert [(x["node"], x["xid"], x["records"]) for x in an["recurring_xids"]] == [(F.LEMON, 79, 5)]
    rel = doc["reliability"]
    assert [(x["node"], x["incidents"]) for x in rel["lemons"]] == [(F.LEMON, 5)]
    assert rel["lemons"][0]["intervals_s"] == [86400.0] * 4
    assert rel["fleet"]["ttr_median_s"] == 6 * 3600 and rel["fleet"]["returned"] == 5
    assert [x["node"] for x in rel["nodes"]][:1] == [F.QUARANTINED]       # the most time drained
    hot = doc["health_over_time"]
    assert all(sum(hot["counts"][s][i] for s in hot["states"]) == 12 for i in range(len(hot["edges"])))
    assert hot["counts"]["ISOLATE"][-1] == 1 and max(hot["counts"]["REBOOT"]) >= 1
    pairs = doc["pairs"]["nodes"]          # every pair with the lemon failed; only the lemon is to blame
    assert pairs[F.LEMON] == {"runs": 10, "failed": 10, "blamed": True}
    assert {n for n, v in pairs.items() if v["blamed"]} == {F.LEMON} and len(pairs) == 7
    rows = {r["node"]: r["cells"] for r in doc["checks"]["rows"]}
    assert rows[F.LEMON]["xid"] == "REBOOT" and rows[F.QUARANTINED]["memory_remap"] == "ISOLATE"
    assert "dgx-h100" in doc["benchmarks"] and doc["benchmarks"]["dgx-h100"]["matmul_tflops"]["median"] == 790.0
    assert doc["allreduce"]["single_node"]["dgx-h100"]["median"]["8589934592"] > 400
    assert doc["allreduce"]["multi_node"]["runs"] == 35
    assert any(t["metric"] == "thermal_power.temperature_c" for t in doc["trends"])
    assert doc["without_series"] == []


def test_markdown_has_the_same_content_as_tables(fleet, doc):
    md = run(fleet, "--format", "markdown").stdout
    assert md.startswith("# gpuhc report: 12 nodes")
    for title in ("## Summary", "## Needs a person", "## Scores (lowest first)", "## Trends and anomalies",
                  "## Lemons and reliability", "## Fleet over time", "## Benchmarks and all-reduce",
                  "## Multi-node all-reduce pairs", "## Node x check", "## How the scores are made"):
        assert title in md, title
    assert re.search(r"\| REPLACE +\| %s +\| quarantine verdict REPLACE" % F.QUARANTINED, md)
    for node in PROBLEMS:
        row = next(r for r in doc["scores"]["nodes"] if r["node"] == node)
        assert re.search(r"\| %s +\| dgx-h100 +\| %d +\|" % (node, row["overall"]), md), node
    assert re.search(r"\| %s +\| 79 +\| REBOOT +\| 5 " % F.LEMON, md)
    assert re.search(r"\| %s +\| 5 +\| 1\.0d, 1\.0d, 1\.0d, 1\.0d" % F.LEMON, md)
    assert re.search(r"\| %s +\| GPU2 +\| 3\d{3}" % F.ECC, md)
    assert sum(1 for line in md.splitlines() if re.match(r"\|[-:|]+\|$", line)) >= 15    # github tables
    text = run(fleet).stdout                                      # text: the same tables, plain
    assert "== Needs a person ==" in text and F.QUARANTINED in text
    assert not any(line.startswith("|") for line in text.splitlines())


def test_filters_window_output_and_errors(fleet, tmp_path):
    only = json.loads(run(fleet, "--json", "-n", "gpu-[009-010]").stdout)
    assert only["summary"]["nodes"] == 2 and {r["node"] for r in only["scores"]["nodes"]} == {F.LEMON, F.SLOW}
    assert only["filters"]["nodes"] == "gpu-[009-010]"
    day = json.loads(run(fleet, "--json", "--since", "1d").stdout)
    assert day["window"]["seconds"] == 86400 and day["summary"]["incidents"] == 1     # the lemon, yesterday
    # drained and given its verdict days before the window: still to be replaced, with its evidence
    hour = json.loads(run(fleet, "--json", "--since", "1h").stdout)
    assert hour["summary"]["incidents"] == 0
    assert [(x["node"], x["why"]) for x in hour["summary"]["needs_person"]["replace"]] == [
        (F.QUARANTINED, "quarantine verdict REPLACE")]
    out = tmp_path / "report.md"
    res = run(fleet, "--format", "markdown", "--output", str(out))
    assert res.stdout == "" and out.read_text().startswith("# gpuhc report")
    bad = gpuhc("report", "-n", "gpu-999", env=fleet["env"])
    assert bad.returncode == 2 and "gpu-999: not in the store" in bad.stderr
    bad = gpuhc("report", "-p", "gpu", env=fleet["env"])
    assert bad.returncode == 2 and "partitions come from Slurm" in bad.stderr
    bad = gpuhc("report", "--since", "soon", env=fleet["env"])
    assert bad.returncode == 2 and "--since" in bad.stderr
    bad = gpuhc("report", "--output", str(tmp_path), env=fleet["env"])
    assert bad.returncode == 2 and "a directory" in bad.stderr
    assert gpuhc("report", env=fleet["env"]).stderr == ""            # a small store: no progress lines


def test_a_large_store_shows_progress_and_its_readers_agree(tmp_path, monkeypatch):
    """600 nodes: progress lines on stderr; read by two detached readers (as a fleet of thousands is) or
    in this process, the report is the same."""
    import sys

    from gpuhc.fleet import digest as D
    from gpuhc.fleet import report as R
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import report_scale

    root = str(tmp_path / "big")
    report_scale.build(root, 600, 30, history=False)     # 1% lemons (an incident each), 1% slow nodes
    init_store(root)
    cfg = C.validate({"store": root, "state_dir": root + "-state", "slurm": {"backend": "none"},
                      "detect": {"slurm_features": False, "cloud_metadata": False}}, "test")
    lines = []
    now = time.time()
    one = R.build(cfg, now=now, progress=lines.append)
    assert lines[0] == "report: reading the metric series of 600 nodes"
    assert any(l.startswith("report: read 500 of 600 nodes") for l in lines)
    monkeypatch.setattr(D, "NODES_PER_WORKER", 100)
    monkeypatch.setattr(D.os, "cpu_count", lambda: 3)
    three = R.build(cfg, now=now)
    assert one["summary"] == three["summary"] and one["scores"] == three["scores"]
    assert one["health_over_time"] == three["health_over_time"] and one["trends"] == three["trends"]
    assert one["summary"]["nodes"] == 600 and one["summary"]["incidents"] == 6
    assert len({s["node"] for s in one["anomalies"]["stragglers"]}) == 6


# ---- HTML in a real browser ---------------------------------------------------------------------------------

def chromium():
    """Debian's chromium; installed with apt-get when missing (as root); None when it cannot be had."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"],
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"]):
        try:
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if shutil.which("chromium"):
            return shutil.which("chromium")
    return None


def headless(browser, *args):
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=%s" % args[0]] + list(args[1:]),
                          capture_output=True, text=True, timeout=120)


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_html_renders_in_headless_chromium_with_its_plots(fleet, tmp_path):
    out = tmp_path / "report.html"
    run(fleet, "--format", "html", "--output", str(out))
    html = out.read_text()
    assert "<script" not in html.lower()                               # readable without JavaScript
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)   # nothing fetched: self-contained
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed and cannot be installed here (apt-get as root)")
    profile = str(tmp_path / "chromium-profile")
    dom = headless(browser, profile, "--virtual-time-budget=5000", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>gpuhc fleet report" in page
    plots = re.findall(r'<svg[^>]*class="plot"[^>]*aria-label="([^"]*)"', page)
    for name in ("Health over time", "Score: overall", "dgx-h100: matmul_tflops (stragglers in red)",
                 "All-reduce bus bandwidth against message size", "Pair history of multi-node all-reduce runs",
                 "Node x check"):
        assert any(p.startswith(name) for p in plots), (name, plots)
    assert len(plots) >= 12
    for node in PROBLEMS:
        assert '<span class="problem">%s</span>' % node in page, node
    straggler = re.search(r'aria-label="dgx-h100: matmul_tflops[^"]*".*?</svg>', page, re.S).group(0)
    assert ">%s</text>" % F.SLOW in straggler                        # the straggler is named on its plot
    pairs = re.search(r'aria-label="Pair history[^"]*".*?</svg>', page, re.S).group(0)
    assert "%s + gpu-001: 1 of 1 runs failed" % F.LEMON in pairs or "gpu-001 + %s" % F.LEMON in pairs
    shot = tmp_path / "report.png"
    res = headless(browser, profile, "--window-size=1240,2200", "--screenshot=%s" % shot, out.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    assert png_size(shot) == (1240, 2200)
    assert shot.stat().st_size > 60000           # a rendered page, not a blank one (a blank PNG is a few KB)


def test_grafana_dashboard_queries_only_metrics_the_export_writes(run_scenario, make_cfg):
    """grafana/gpuhc-dashboard.json: valid JSON, and every metric it queries is one `gpuhc export
    prometheus` writes (for a store with deep, prolog and Xid results, and Slurm's view)."""
    from gpuhc.export import export_prometheus
    from gpuhc.store import Store

    with open(os.path.join(ROOT, "grafana", "gpuhc-dashboard.json")) as fh:
        dash = json.load(fh)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert dash["uid"] == "gpuhc-fleet" and len(exprs) >= 15
    cfg = make_cfg()
    st = Store.from_config(cfg)
    for node, scenario, context in (("gpu-001", "h100-healthy", "bench"), ("gpu-002", "h100-healthy", "prolog"),
                                    ("gpu-003", "h100-xid79", "prolog"), ("gpu-004", "h100-healthy", "quarantine")):
        st.record(run_scenario(scenario, context=context, node=node))
    text = export_prometheus(cfg, slurm={"gpu-003": {"state": "IDLE+DRAIN", "reason": "gpuhc: REBOOT xid: Xid 79"}})
    written = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for expr in exprs:
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
            assert any(re.fullmatch(pattern, n) for n in written), pattern
        for name in re.findall(r"\bgpuhc_[a-z0-9_]+", re.sub(r'__name__=~"[^"]+"', "", expr)):
            assert name in written, (name, expr)


@pytest.mark.parametrize("readers", [1, 2])
def test_a_slow_store_ends_within_report_timeout(tmp_path, monkeypatch, readers):
    """A series read that does not answer (a hung mount) ends the report after report.timeout with one
    line, in this process or with detached readers (left behind, they end on their own)."""
    from gpuhc.errors import GpuhcError
    from gpuhc.fleet import digest as D
    from gpuhc.fleet import report as R
    from gpuhc.store import Store, series

    cfg = C.validate({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                      "slurm": {"backend": "none"}, "report": {"timeout": 1}}, "test")
    st = Store.from_config(cfg)
    for n in range(4):
        st.record(_report("gpu-%03d" % n))
    real = series.read_node
    monkeypatch.setattr(series, "read_node", lambda *a, **k: (time.sleep(30), real(*a, **k))[1])
    monkeypatch.setattr(D, "NODES_PER_WORKER", 2 if readers > 1 else 10 ** 9)
    monkeypatch.setattr(D.os, "cpu_count", lambda: readers)
    started = time.monotonic()
    with pytest.raises(GpuhcError, match=r"no answer within 1 s"):
        R.build(cfg)
    assert time.monotonic() - started < 5


def _report(node):
    from gpuhc.model import Finding, Report, Severity

    now = time.time()
    return Report(node, "prolog", "dgx-h100", now - 60, now - 59, [Finding("ecc", Severity.PASS, "ok")])
