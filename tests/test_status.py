"""gpuhc status (sinfo style), show and history, against a store of real scenario reports, with and
without a Slurm view of the nodes."""
import copy
import json
import random
import time

import pytest
from ClusterShell.NodeSet import NodeSet

from conftest import gpuhc
from gpuhc import status as ST
from gpuhc.errors import GpuhcError
from gpuhc.hostlist import expand, fold
from gpuhc.model import Finding, Report, Severity
from gpuhc.store import Store, summarize
from test_store import STABLE_CHECKS, isolated

HEALTHY = ["gpu-%03d" % i for i in list(range(1, 13)) + [15]] + ["dgx-a01", "dgx-a02"]


@pytest.fixture
def fleet(run_scenario, make_cfg, tmp_path):
    """A store of 21 nodes built from real reports; returns (cfg, reports by node)."""
    base = {name: run_scenario(name, context="prolog", checks=STABLE_CHECKS, node=name)
            for name in ("h100-healthy", "h100-xid79", "h100-pcie-x8", "h100-thermal-slowdown")}
    now = time.time()
    plan = [(n, "h100-healthy", None) for n in HEALTHY] + [
        ("gpu-013", "h100-xid79", None), ("gpu-014", "h100-pcie-x8", None), ("gpu-016", "h100-thermal-slowdown", None),
        ("gpu-017", "h100-pcie-x8", None), ("gpu-018", "h100-pcie-x8", None), ("gpu-019", "h100-healthy", "error"),
        ("gpu-020", "h100-healthy", "stale"), ("gpu-021", "h100-pcie-x8", "would-drain")]
    cfg = make_cfg()
    store = Store.from_config(cfg)
    reports = {}
    for n, (node, scenario, twist) in enumerate(plan):
        rep = copy.deepcopy(base[scenario])
        rep.node, rep.job_id = node, str(1000 + n)
        rep.started, rep.ended = now - 600 + n, now - 600 + n + 0.05
        if twist == "error":
            rep.findings.append(Finding("fabric", Severity.ERROR, "systemctl did not answer within 10 s"))
        elif twist == "stale":
            rep.started, rep.ended = now - 3 * 86400, now - 3 * 86400 + 0.05
        elif twist == "would-drain":
            rep.action = "would-drain"
        assert store.record(rep) == "stored"
        reports[node] = rep
    return cfg, reports


def reason(rep):
    top = summarize(rep)["top"]
    return "%s: %s" % (top["check"], top["message"])


def table(text):
    rows = [line.split() for line in text.splitlines()]
    return rows[0], rows[1:]


SLURM = {
    **{"gpu-%03d" % i: {"state": "IDLE", "partitions": ["batch"]} for i in range(1, 13)},
    **{"gpu-%03d" % i: {"state": "MIXED", "partitions": ["batch", "debug"]} for i in range(13, 22)},
    "gpu-002": {"state": "IDLE+DRAIN", "reason": "fan noise, ticket 4711", "partitions": ["batch"]},
    "gpu-013": {"state": ["IDLE"], "flags": ["DRAIN"], "reason": "gpuhc: REBOOT xid: Xid 79 on GPU3",
                "partitions": ["batch", "debug"]},
    "gpu-099": {"state": "IDLE", "partitions": ["batch"]},
    "gpu-098": {"state": "DOWN+NOT_RESPONDING", "reason": "Not responding", "partitions": ["batch"]},
    "gpu-003": {"state": "MAINT+RESERVED", "reservation": "gpuhc-quarantine-gpu-003", "partitions": ["batch"]},
}


# ---- default grouping ------------------------------------------------------------------------------

def test_default_groups_without_slurm(fleet):
    cfg, _ = fleet
    head, rows = table(ST.status_text(cfg))
    assert head == ["PARTITION", "HEALTH", "SEVERITY", "NODES", "NODELIST"]
    assert rows == [
        ["-", "healthy", "PASS", "15", "dgx-a[01-02],gpu-[001-012,015]"],
        ["-", "monitor", "MONITOR", "1", "gpu-016"],
        ["-", "stale", "PASS", "1", "gpu-020"],
        ["-", "error", "ERROR", "1", "gpu-019"],
        ["-", "would-drain", "RESET", "1", "gpu-021"],
        ["-", "unhealthy", "REBOOT", "1", "gpu-013"],
        ["-", "unhealthy", "RESET", "3", "gpu-[014,017-018]"],
    ]


def test_default_groups_with_slurm_view(fleet):
    cfg, _ = fleet
    _, rows = table(ST.status_text(cfg, slurm=SLURM))
    assert rows == [
        ["batch", "healthy", "PASS", "11", "gpu-[001,004-012,015]"],
        ["batch", "monitor", "MONITOR", "1", "gpu-016"],
        ["batch", "stale", "PASS", "1", "gpu-020"],
        ["batch", "never-checked", "-", "1", "gpu-099"],
        ["batch", "error", "ERROR", "1", "gpu-019"],
        ["batch", "would-drain", "RESET", "1", "gpu-021"],
        ["batch", "unhealthy", "RESET", "3", "gpu-[014,017-018]"],
        ["batch", "drained", "REBOOT", "1", "gpu-013"],
        ["batch", "quarantine", "PASS", "1", "gpu-003"],
        ["batch", "drained-admin", "PASS", "1", "gpu-002"],
        ["batch", "down", "-", "1", "gpu-098"],
        ["debug", "healthy", "PASS", "1", "gpu-015"],
        ["debug", "monitor", "MONITOR", "1", "gpu-016"],
        ["debug", "stale", "PASS", "1", "gpu-020"],
        ["debug", "error", "ERROR", "1", "gpu-019"],
        ["debug", "would-drain", "RESET", "1", "gpu-021"],
        ["debug", "unhealthy", "RESET", "3", "gpu-[014,017-018]"],
        ["debug", "drained", "REBOOT", "1", "gpu-013"],
        ["-", "healthy", "PASS", "2", "dgx-a[01-02]"],     # in the store, not in Slurm
    ]


def test_partition_node_and_state_filters(fleet):
    cfg, _ = fleet
    _, rows = table(ST.status_text(cfg, slurm=SLURM, partitions="debug", states="unhealthy,drained"))
    assert rows == [["debug", "unhealthy", "RESET", "3", "gpu-[014,017-018]"],
                    ["debug", "drained", "REBOOT", "1", "gpu-013"]]
    _, rows = table(ST.status_text(cfg, nodelist="gpu-[010-014],dgx-a02"))
    assert rows == [["-", "healthy", "PASS", "4", "dgx-a02,gpu-[010-012]"],
                    ["-", "unhealthy", "REBOOT", "1", "gpu-013"], ["-", "unhealthy", "RESET", "1", "gpu-014"]]
    head, rows = table(ST.status_text(cfg, partitions="batch"))     # no Slurm: no partition but '-'
    assert rows == [] and head[0] == "PARTITION"
    with pytest.raises(GpuhcError, match=r"-t: unknown state 'sick' \(known: healthy, monitor"):
        ST.status_text(cfg, states="healthy,sick")
    with pytest.raises(GpuhcError, match=r"-n 'gpu-\[1-': not a valid hostlist"):
        ST.status_text(cfg, nodelist="gpu-[1-")


def test_unknown_nodes_and_partitions_are_errors_not_empty_tables(fleet):
    cfg, _ = fleet
    with pytest.raises(GpuhcError, match=r"^-n: gpu-\[404-405\]: not in the store$"):
        ST.status_text(cfg, nodelist="gpu-[013,404-405]")
    with pytest.raises(GpuhcError, match=r"^-n: gpu-404: not in the store nor in Slurm$"):
        ST.status_text(cfg, slurm=SLURM, nodelist="gpu-404")
    assert "gpu-099" in ST.status_text(cfg, slurm=SLURM, nodelist="gpu-099")      # in Slurm, never checked
    with pytest.raises(GpuhcError, match=r"^-p: no partition gpus \(Slurm has batch, debug\)$"):
        ST.status_text(cfg, slurm=SLURM, partitions="gpus")


# ---- -N, -R, -o --------------------------------------------------------------------------------------

def test_per_node_rows(fleet):
    cfg, reports = fleet
    text = ST.status_text(cfg, per_node=True)
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "PARTITION", "HEALTH", "SEVERITY", "LAST_CHECK", "CONTEXT", "JOBID",
                                "WHERE", "REASON"]
    assert [l.split()[0] for l in lines[1:]] == ["dgx-a01", "dgx-a02"] + ["gpu-%03d" % i for i in range(1, 22)]
    row = next(l for l in lines if l.startswith("gpu-014 "))
    rep = reports["gpu-014"]
    checked = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(rep.started))
    assert row.split()[:8] == ["gpu-014", "-", "unhealthy", "RESET", checked, "prolog", rep.job_id,
                               summarize(rep)["top"]["where"]]
    assert row.endswith(reason(rep))
    assert next(l for l in lines if l.startswith("gpu-001 ")).split()[-2:] == ["-", "-"]     # no finding
    stale = next(l for l in lines if l.startswith("gpu-020 "))
    assert stale.endswith("no result for more than 1d")


def test_per_node_with_slurm_shows_slurm_reasons_and_never_checked(fleet):
    cfg, _ = fleet
    lines = ST.status_text(cfg, per_node=True, slurm=SLURM, nodelist="gpu-[002,013,099]").splitlines()[1:]
    assert [l.split()[:4] for l in lines] == [["gpu-002", "batch", "drained-admin", "PASS"],
                                              ["gpu-013", "batch", "drained", "REBOOT"],
                                              ["gpu-013", "debug", "drained", "REBOOT"],
                                              ["gpu-099", "batch", "never-checked", "-"]]
    assert lines[0].endswith("fan noise, ticket 4711") and lines[1].endswith("gpuhc: REBOOT xid: Xid 79 on GPU3")
    assert lines[3].endswith("never checked")


def test_reasons_group_nodes_like_sinfo_R(fleet):
    cfg, reports = fleet
    head, _ = table(ST.status_text(cfg, reasons=True))
    lines = ST.status_text(cfg, reasons=True).splitlines()[1:]
    assert head == ["REASON", "SEVERITY", "NODES", "NODELIST"]
    pcie = reason(reports["gpu-014"])
    assert reason(reports["gpu-017"]) == pcie
    row = next(l for l in lines if l.startswith(pcie))
    assert row.split()[-3:] == ["RESET", "4", "gpu-[014,017-018,021]"]
    assert len(lines) == 5          # pcie, xid79, thermal, the ERROR, stale; healthy nodes have no reason
    assert any(l.startswith("no result for more than 1d") and l.endswith("gpu-020") for l in lines)
    assert not any("dgx" in l for l in lines)
    with_slurm = ST.status_text(cfg, reasons=True, slurm=SLURM).splitlines()
    assert any(l.startswith("fan noise, ticket 4711") and l.split()[-2:] == ["1", "gpu-002"] for l in with_slurm)
    assert any(l.startswith("never checked") and l.endswith("gpu-099") for l in with_slurm)


def test_format_fields_sinfo_style(fleet):
    cfg, reports = fleet
    text = ST.status_text(cfg, fmt="%10N|%t|%.4D|%s%%", states="unhealthy")
    assert text.splitlines() == ["NODELIST  |HEALTH|NODE|SEVERITY%",      # headers too, like sinfo,
                                 "gpu-013   |unhealthy|   1|REBOOT%",
                                 "gpu-[014,0|unhealthy|   3|RESET%"]         # truncated to its size, like sinfo
    text = ST.status_text(cfg, fmt="%N %c %j %p %T %A", per_node=True, header=False, nodelist="gpu-021")
    assert text == "gpu-021 prolog %s dgx-h100 - would-drain" % reports["gpu-021"].job_id
    # grouping follows the fields asked for: by context alone every node is in one group
    assert ST.status_text(cfg, fmt="%c %D", header=False) == "prolog 23"
    with pytest.raises(GpuhcError, match=r"-o '%N %Q': unknown field %Q at column 4"):
        ST.status_text(cfg, fmt="%N %Q")
    with pytest.raises(GpuhcError, match="needs a field letter"):
        ST.status_text(cfg, fmt="%N %")


def test_json_for_each_mode(fleet):
    cfg, reports = fleet
    groups = json.loads(ST.status_text(cfg, as_json=True, slurm=SLURM))
    assert groups["slurm"] is True and groups["schema_version"] == 1
    drained = next(g for g in groups["groups"] if g["health"] == "drained" and g["partition"] == "batch")
    assert drained == {"partition": "batch", "health": "drained", "severity": "REBOOT", "count": 1,
                       "nodelist": "gpu-013", "nodes": ["gpu-013"]}
    never = next(g for g in groups["groups"] if g["health"] == "never-checked")
    assert never["severity"] is None and never["nodes"] == ["gpu-099"]
    nodes = json.loads(ST.status_text(cfg, as_json=True, per_node=True, slurm=SLURM))["nodes"]
    n13 = next(n for n in nodes if n["node"] == "gpu-013")
    assert n13["partitions"] == ["batch", "debug"] and n13["slurm"] == {"state": "idle+drain",
                                                                         "reason": "gpuhc: REBOOT xid: Xid 79 on GPU3"}
    assert n13["last_check_ts"] == pytest.approx(reports["gpu-013"].started, abs=0.01)
    assert n13["context"] == "prolog" and n13["job_id"] == reports["gpu-013"].job_id
    assert len(nodes) == 25 and {n["node"] for n in nodes} >= {"gpu-099", "gpu-098", "dgx-a01"}
    plain = json.loads(ST.status_text(cfg, as_json=True, per_node=True))["nodes"]
    assert next(n for n in plain if n["node"] == "gpu-013")["slurm"] is None
    reasons = json.loads(ST.status_text(cfg, as_json=True, reasons=True))["reasons"]
    pcie = next(r for r in reasons if r["reason"] == reason(reports["gpu-014"]))
    assert pcie["count"] == 4 and pcie["severity"] == "RESET" and pcie["nodelist"] == "gpu-[014,017-018,021]"
    filtered = json.loads(ST.status_text(cfg, as_json=True, states="error"))["groups"]
    assert [g["nodes"] for g in filtered] == [["gpu-019"]]


# ---- health rules --------------------------------------------------------------------------------

def summary(overall="PASS", age=0.0, action=None, now=1_000_000.0):
    top = None if overall == "PASS" else {"check": "pcie", "severity": overall, "where": "GPU1", "message": "x8"}
    return {"overall": overall, "started_ts": now - age, "context": "prolog", "action": action, "top": top}


@pytest.mark.parametrize("summ,view,health,severity", [
    (summary(), None, "healthy", "PASS"),
    (summary("MONITOR"), None, "monitor", "MONITOR"),
    (summary("ISOLATE"), None, "unhealthy", "ISOLATE"),
    (summary("ISOLATE", action="drain"), None, "drained", "ISOLATE"),
    (summary("RESET", action="held"), None, "drained", "RESET"),      # already drained by gpuhc when it ran
    (summary("ISOLATE", action="drain"), {"state": "IDLE"}, "unhealthy", "ISOLATE"),   # Slurm says it was resumed
    (summary("RESET", action="quarantine"), None, "quarantine", "RESET"),
    (summary("RESET", action="would-drain"), {"state": "IDLE"}, "would-drain", "RESET"),
    (summary("ERROR"), None, "error", "ERROR"),
    (summary(age=2 * 86400), None, "stale", "PASS"),
    (summary(age=-86400), None, "stale", "PASS"),          # dated a day ahead: the node's clock is wrong
    (summary(age=-60), None, "healthy", "PASS"),           # a minute ahead: clock skew between hosts
    (summary("REBOOT", age=2 * 86400), {"state": "DRAIN", "reason": "gpuhc: REBOOT xid"}, "drained", "REBOOT"),
    (summary("PASS"), {"state": "IDLE+DRAIN", "reason": "gpuhc: ISOLATE ecc: 3 uncorrectable"}, "drained", "ISOLATE"),
    (summary("PASS"), {"state": "IDLE", "flags": ["FAIL"], "reason": "RMA"}, "drained-admin", "PASS"),
    (summary("PASS"), {"state": "IDLE", "reason": "gpuhc: quarantine ecc"}, "quarantine", "PASS"),
    (None, {"state": "IDLE"}, "never-checked", "-"),
    (None, {"state": "DOWN"}, "down", "-"),
])
def test_health_rules(summ, view, health, severity):
    st = ST.node_status("gpu-1", summ, view, now=1_000_000.0, stale_after=86400)
    assert (st.health, st.severity) == (health, severity)


def test_status_reads_summaries_not_history(fleet, monkeypatch):
    cfg, _ = fleet
    monkeypatch.setattr(Store, "history", lambda *a, **k: pytest.fail("status read the history"))
    monkeypatch.setattr(Store, "latest_all", lambda *a, **k: pytest.fail("status parsed every full report"))
    assert "gpu-[014,017-018]" in ST.status_text(cfg)


# ---- hostlists -----------------------------------------------------------------------------------

def test_fold_gives_a_hostlist_nodeset_expands_to_the_same_names():
    assert fold(["gpu-001", "gpu-002", "gpu-003", "gpu-015", "login"]) == "gpu-[001-003,015],login"
    assert fold(["n9", "n10", "n11"]) == "n[9-11]"
    assert fold(["gpu-098", "gpu-099", "gpu-100"]) == "gpu-[098-100]"
    assert fold(["r1-gpu2", "r1-gpu3", "gpu7-ib"]) == "gpu7-ib,r1-gpu[2-3]"
    rnd = random.Random(5)
    for _ in range(200):
        names = {rnd.choice(["gpu-", "n", "rack1-gpu", "x"]) + str(rnd.randint(0, 130)).zfill(rnd.choice([0, 2, 3]))
                 + rnd.choice(["", "", "-ib"]) for _ in range(rnd.randint(1, 40))}
        assert set(NodeSet(fold(names))) == names
    assert expand("gpu-[001-003],login") == ["gpu-001", "gpu-002", "gpu-003", "login"]


# ---- show and history --------------------------------------------------------------------------------

def test_show_prints_every_finding(fleet):
    cfg, reports = fleet
    rep = reports["gpu-014"]
    text = ST.show_text(cfg, "gpu-014")
    assert text.splitlines()[0].startswith("gpu-014  checked ") and "context prolog  job %s" % rep.job_id in text
    assert sum(1 for l in text.splitlines() if l.startswith(("PASS", "RESET", "MONITOR", "SKIP"))) == len(rep.findings)
    assert json.loads(ST.show_text(cfg, "gpu-014", as_json=True)) == Report.from_dict(rep.to_dict()).to_dict()
    with pytest.raises(GpuhcError, match="no result for node 'gpu-404' in the store"):
        ST.show_text(cfg, "gpu-404")
    with pytest.raises(GpuhcError, match="invalid node name"):
        ST.show_text(cfg, "../etc")


def test_show_says_why_a_node_is_drained_when_a_later_run_passed(fleet):
    """gpu-014 was drained for PCIe x8 by its prolog; an epilog's quick suite (no pcie) passed
    since. show names the drain and the report behind it, not only the newest PASS."""
    cfg, reports = fleet
    store = Store.from_config(cfg)
    drain = copy.deepcopy(reports["gpu-014"])
    drain.started, drain.ended, drain.action = time.time() - 120, time.time() - 119, "drain"
    store.record(drain)
    later = copy.deepcopy(drain)
    later.started, later.ended, later.action, later.context, later.job_id = time.time() - 60, time.time() - 59, None, "epilog", "77"
    later.findings = [f for f in later.findings if f.check != "pcie"]
    store.record(later)
    view = {"state": "IDLE+DRAIN", "reason": "gpuhc: RESET pcie: GPU5 PCIe link x8, expected x16", "partitions": ["batch"]}
    text = ST.show_text(cfg, "gpu-014", slurm=view)
    lines = text.splitlines()
    assert lines[1] == "Slurm: idle+drain  reason: gpuhc: RESET pcie: GPU5 PCIe link x8, expected x16"
    assert lines[2].startswith("drained by the prolog run of ") and "RESET pcie" in lines[2]
    doc = json.loads(ST.show_text(cfg, "gpu-014", as_json=True, slurm=view))
    assert doc["context"] == "epilog" and doc["slurm"]["state"] == "idle+drain"
    assert doc["drained_by"]["context"] == "prolog" and doc["drained_by"]["action"] == "drain"
    # resumed in Slurm: nothing about a drain
    text = ST.show_text(cfg, "gpu-014", slurm={"state": "IDLE", "partitions": ["batch"]})
    assert "drained by" not in text and text.splitlines()[1] == "Slurm: idle"


def test_history_timeline_since_and_check(fleet):
    cfg, reports = fleet
    store = Store.from_config(cfg)
    base = reports["gpu-014"]
    now = time.time()
    for hours, twist in ((30, "old"), (3, "mid")):
        rep = copy.deepcopy(base)
        rep.started, rep.ended, rep.job_id, rep.context = now - hours * 3600, now - hours * 3600 + 1, twist, "epilog"
        rep.findings = [f for f in rep.findings if f.check != "pcie"]
        store.record(rep)
    head, rows = table(ST.history_text(cfg, "gpu-014", now=now))
    assert head == ["TIME", "CONTEXT", "JOBID", "OVERALL", "FINDINGS"]
    assert [(r[1], r[2], r[3]) for r in rows] == [("prolog", base.job_id, "RESET"), ("epilog", "mid", "PASS"),
                                                  ("epilog", "old", "PASS")]
    assert " ".join(rows[0][4:]).startswith("RESET pcie ") and rows[1][4:] == ["-"]
    _, rows = table(ST.history_text(cfg, "gpu-014", since="1d", now=now))
    assert [r[2] for r in rows] == [base.job_id, "mid"]
    _, rows = table(ST.history_text(cfg, "gpu-014", check="pcie", now=now))
    assert [r[2] for r in rows] == [base.job_id]
    _, rows = table(ST.history_text(cfg, "gpu-001", check="ecc", now=now))
    assert rows[0][4:] == ["PASS", "ecc"]
    hist = json.loads(ST.history_text(cfg, "gpu-014", as_json=True, now=now))
    assert [h["job_id"] for h in hist] == [base.job_id, "mid", "old"]
    only = json.loads(ST.history_text(cfg, "gpu-014", check="pcie", as_json=True, now=now))
    assert [h["job_id"] for h in only] == [base.job_id] and {f["check"] for f in only[0]["findings"]} == {"pcie"}
    assert ST.history_text(cfg, "gpu-014", since="5m", check="nvlink", now=now) == \
        "no results for gpu-014 since 5m with check nvlink"
    with pytest.raises(GpuhcError, match=r"--since '2 days': expected a duration such as 30m"):
        ST.history_text(cfg, "gpu-014", since="2 days")
    with pytest.raises(GpuhcError, match="--check: unknown check 'bogus'"):
        ST.history_text(cfg, "gpu-014", check="bogus")


@pytest.mark.parametrize("text,seconds", [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("7d", 604800),
                                          ("1w", 604800), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert ST.parse_duration(text) == seconds


# ---- the command line ------------------------------------------------------------------------------

def test_cli_status_modes(fleet, tmp_path):
    env = isolated(tmp_path)
    res = gpuhc("status", env=env)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.splitlines()[1].split() == ["-", "healthy", "PASS", "15", "dgx-a[01-02],gpu-[001-012,015]"]
    res = gpuhc("status", "-N", "-n", "gpu-[013-014]", "-t", "unhealthy", env=env)
    assert [l.split()[0] for l in res.stdout.splitlines()[1:]] == ["gpu-013", "gpu-014"]
    res = gpuhc("status", "-R", "--noheader", "-o", "%R|%D|%N", env=env)
    assert any(l.endswith("|4|gpu-[014,017-018,021]") for l in res.stdout.splitlines())
    res = gpuhc("status", "-R", "--noheader", "-o", "%D %N", env=env)       # grouped by no field: one row
    assert res.stdout == "8 gpu-[013-014,016-021]\n"
    res = gpuhc("status", "--json", "-t", "stale", env=env)
    assert [g["nodelist"] for g in json.loads(res.stdout)["groups"]] == ["gpu-020"]
    res = gpuhc("status", "-t", "broken", env=env)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("gpuhc: error: -t: unknown state 'broken'")


def test_cli_show_history_and_unknown_node(fleet, tmp_path):
    env = isolated(tmp_path)
    res = gpuhc("show", "gpu-013", env=env)
    assert res.returncode == 0 and "REBOOT" in res.stdout and res.stdout.startswith("gpu-013  checked")
    res = gpuhc("history", "gpu-013", "--since", "2h", "--json", env=env)
    assert res.returncode == 0 and [r["node"] for r in json.loads(res.stdout)] == ["gpu-013"]
    for args in (("show", "gpu-404"), ("history", "gpu-404"), ("history", "gpu-013", "--since", "soon")):
        res = gpuhc(*args, env=env)
        assert res.returncode == 2 and res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, args
        assert "Traceback" not in res.stderr


def test_cli_status_of_an_empty_store(tmp_path):
    res = gpuhc("status", env=isolated(tmp_path))
    assert res.returncode == 0 and res.stdout.strip() == "no results in the store %s" % (tmp_path / "store")


def test_a_store_path_that_is_a_file_is_a_configuration_error(tmp_path, make_cfg):
    """`store:` names a file (a typo, a path that became a file after the config was read): status
    said "no results" and exited 0, as for a new cluster. Every reader stops with one line (exit 2)."""
    from gpuhc.export import export_prometheus
    from gpuhc.store import StoreError

    path = tmp_path / "afile"
    cfg = make_cfg(store=str(path))
    path.write_text("not a directory\n")
    for read in (lambda: ST.status_text(cfg), lambda: ST.show_text(cfg, "gpu-001"),
                 lambda: ST.history_text(cfg, "gpu-001"), lambda: export_prometheus(cfg)):
        with pytest.raises(StoreError, match="store %s: not a directory" % path):
            read()
    config = tmp_path / "config.yaml"
    config.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\n" % (path, tmp_path / "state"))
    res = gpuhc("status", env={"GPUHC_CONFIG": str(config)})
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1, res
    assert res.stderr.startswith("gpuhc: error: ") and "not a directory" in res.stderr


# ---- bad records in the store ----------------------------------------------------------------------

BAD_SUMMARY_FIELDS = [("started_ts", "x"), ("top", "x"), ("overall", ["x"]), ("overall", 5), ("overall", "BAD"),
                      ("context", 5), ("top.where", 5), ("top.check", ["x"]), ("started_ts", 1e20),
                      ("started_ts", float("nan")), ("started_ts", -1e18), ("started_ts", True),
                      ("job_id", {"a": 1}), ("history", 5), ("history.count", "x")]


def _set(record, dotted, value):
    keys = dotted.split(".")
    for key in keys[:-1]:
        record = record[key]
    record[keys[-1]] = value


def test_a_bad_summary_is_skipped_with_a_warning_not_the_whole_fleet(fleet, caplog):
    cfg, reports = fleet
    path = "%s/nodes/gpu-013/summary.json" % cfg["store"]
    good = json.loads(open(path).read())
    for key, value in BAD_SUMMARY_FIELDS:
        bad = copy.deepcopy(good)
        _set(bad, key, value)
        with open(path, "w") as fh:
            fh.write(json.dumps(bad))
        caplog.clear()
        with caplog.at_level("WARNING", "gpuhc.store"):
            for kwargs in ({}, {"per_node": True}, {"reasons": True}, {"per_node": True, "as_json": True},
                           {"as_json": True}, {"reasons": True, "as_json": True}, {"fmt": "%N %L %a %c %W %R"}):
                ST.status_text(cfg, **kwargs)
            [row] = json.loads(ST.status_text(cfg, per_node=True, as_json=True, nodelist="gpu-013"))["nodes"]
        # read as when the file is truncated: from latest.json, the newest readable report
        assert (row["health"], row["severity"], row["job_id"]) == ("unhealthy", "REBOOT", reports["gpu-013"].job_id), key
        assert "gpu-013/summary.json: skipped a bad summary: field %s" % key in caplog.text, (key, caplog.text)


def test_cli_status_with_a_bad_summary_warns_and_exits_0(fleet, tmp_path):
    cfg, _ = fleet
    path = "%s/nodes/gpu-014/summary.json" % cfg["store"]
    bad = dict(json.loads(open(path).read()), started_ts=1e20)
    with open(path, "w") as fh:
        fh.write(json.dumps(bad))
    for args in (("status",), ("status", "-N"), ("status", "-R"), ("status", "--json")):
        res = gpuhc(*args, env=isolated(tmp_path))
        assert res.returncode == 0 and "014" in res.stdout, (args, res.stderr)
        assert res.stderr.strip() == "gpuhc: warning: %s: skipped a bad summary: field started_ts: 1e+20 is not a " \
                                     "time" % path, (args, res.stderr)


@pytest.mark.parametrize("bad_ts", [1e20, float("nan"), -1e18, "x"])
def test_cli_show_and_history_skip_a_record_with_a_bad_time(fleet, tmp_path, bad_ts):
    cfg, reports = fleet
    directory = "%s/nodes/gpu-013" % cfg["store"]
    good = reports["gpu-013"].to_dict()
    bad = dict(good, started_ts=bad_ts, job_id="bad")
    with open(directory + "/latest.json", "w") as fh:
        fh.write(json.dumps(bad) + "\n")
    with open(directory + "/history.jsonl", "a") as fh:
        fh.write(json.dumps(bad) + "\n" + json.dumps({"schema_version": 1, "started_ts": bad_ts}) + "\n")
    env = isolated(tmp_path)
    for args in (("show", "gpu-013"), ("show", "gpu-013", "--json"), ("history", "gpu-013"),
                 ("history", "gpu-013", "--since", "1000d"), ("history", "gpu-013", "--since", "1000d", "--json")):
        res = gpuhc(*args, env=env)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr and "internal error" not in res.stderr
        assert "REBOOT" in res.stdout and '"bad"' not in res.stdout and " bad " not in res.stdout, args
        warnings = res.stderr.strip().splitlines()
        assert warnings and all(w.startswith("gpuhc: warning: %s/" % directory) for w in warnings), warnings
        if args[0] == "history":
            assert "history.jsonl:2: skipped a record: field started_ts" in res.stderr
            assert "history.jsonl:3: skipped a record: field started_ts" in res.stderr
