"""Xid/SXid parsing on real kernel-log line shapes, classification, and the per-boot event state."""
import json
import os
import time

import pytest

from gpuhc import xid as X
from gpuhc import xid_catalog as cat
from gpuhc.backends.host import LocalHost
from gpuhc.checks import xid as CX
from gpuhc.checks.base import Context

from conftest import gpuhc

DATA = os.path.join(os.path.dirname(__file__), "data")
MIXED = os.path.join(DATA, "kernel-xid-mixed.log")
SXID_FOLLOWUP = os.path.join(DATA, "kernel-sxid-followup.log")

# (line number, kind, xid, bus, time, pid, process, message start)
WANTED = [
    (2, "xid", 79, "0000:3b:00.0", "Mon Jun 12 09:33:41 2023", 0, None, "GPU has fallen off the bus."),
    (4, "xid", 31, "0000:b1:00.0", "Jun 12 09:35:02", 12345, "python", "Ch 00000008, intr"),
    (5, "xid", 94, "0000:07:00.0", "2024-01-15T10:22:33.123456+00:00", 2345, "pt_main_thread", "Contained: SM"),
    (6, "xid", 95, "0000:0f:00.0", "2345.678901", None, None, "Uncontained: FBHUB"),
    (7, "xid", 119, "0000:5d:00.0", "23456.789012", 3321, "nvidia-smi", "Timeout after 6s"),
    (8, "xid", 13, "0000:03:00.0", None, None, None, "0003 00000000"),
    (9, "xid", 48, "0000:ab:00.0", "8812.003311", 41234, "python3", "An uncorrectable double bit error"),
    (10, "sxid", 12028, "0000:88:00.0", "Mar  1 12:00:00", None, None, "Link 32 egress"),
    (11, "sxid", 24007, "0000:05:00.0", "Mar  1 12:00:01", None, None, "Link 08 sourcetrack"),
    (12, "xid", 154, "0000:5d:00.0", "9100.000001", None, None, "GPU recovery action changed"),
]


def test_every_prefix_style_parses_and_negatives_do_not():
    with open(MIXED) as fh:
        events = X.parse(fh.read().splitlines())
    got = [(e.line, e.kind, e.xid, e.pci_bus_id, e.time, e.pid, e.process) for e in events]
    assert got == [w[:7] for w in WANTED]
    for ev, w in zip(events, WANTED):
        assert ev.message.startswith(w[7]), (ev.message, w[7])
    assert events[1].monotonic == 1234567.891011           # syslog prefix then [sec.usec]
    assert events[4].seq == 1832                            # /dev/kmsg sequence number
    assert (events[7].fatal, events[8].fatal) == (False, True)


@pytest.mark.parametrize("prefix,when,mono,seq", [
    ("", None, None, None),
    ("[ 2345.678901] ", "2345.678901", 2345.678901, None),
    ("[Mon Jun 12 09:33:41 2023] ", "Mon Jun 12 09:33:41 2023", None, None),
    ("2024-01-15T10:22:33.123456+00:00 host kernel: ", "2024-01-15T10:22:33.123456+00:00", None, None),
    ("2024-01-15T10:22:33Z host kernel: [   12.500000] ", "2024-01-15T10:22:33Z", 12.5, None),
    ("Jun 12 09:35:02 host kernel: ", "Jun 12 09:35:02", None, None),
    ("Mar  1 12:00:00 dgx kernel: [1234567.891011] ", "Mar  1 12:00:00", 1234567.891011, None),
    ("[    5.214501] gpu-001 kernel: ", "5.214501", 5.214501, None),          # journalctl short-monotonic
])
@pytest.mark.parametrize("priority", ["", "<4>", "<12>"])
def test_every_prefix_style_with_and_without_a_priority(prefix, when, mono, seq, priority):
    line = priority + prefix + "NVRM: Xid (PCI:0000:18:00): 79, pid=1234, GPU has fallen off the bus."
    ev = X.parse_line(line, 1)
    assert (ev.xid, ev.pci_bus_id, ev.time, ev.monotonic, ev.pid) == (79, "0000:18:00.0", when, mono, 1234)
    assert ev.message == "GPU has fallen off the bus."
    assert [(e.time, e.monotonic) for e in X.scan(line + "\n")] == [(when, mono)]


def test_kmsg_record_prefix():
    ev = X.parse_line("4,1832,23456789012,-;NVRM: Xid (PCI:0000:5d:00): 119, pid=3321, name=x, Timeout", 1)
    assert (ev.time, ev.monotonic, ev.seq) == ("23456.789012", 23456.789012, 1832)


def test_wall_time_of_dated_prefixes(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        now = 1718000000.0                                      # 2024-06-10
        assert X.wall_time("2024-01-15T10:22:33.5+00:00", now) == 1705314153.5
        assert X.wall_time("2024-01-15T12:22:33+02:00", now) == X.wall_time("2024-01-15T10:22:33Z", now) == 1705314153
        assert X.wall_time("Mon Jun 12 09:33:41 2023", now) == 1686562421
        assert X.wall_time("Jun  1 00:00:00", now) == 1717200000           # this year
        assert X.wall_time("Dec 31 23:00:00", now) == 1704063600           # not in the future: last year
        assert X.wall_time("2345.678901", now) is None and X.wall_time(None, now) is None
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_sxid_continuation_lines_fold_into_their_sxid():
    with open(SXID_FOLLOWUP) as fh:
        text = fh.read()
    for events in (X.parse(text.splitlines()), X.scan(text)):
        got = [(e.line, e.xid, e.pci_bus_id, e.fatal, len(e.details)) for e in events]
        assert got == [(1, 12028, "0000:05:00.0", False, 2), (4, 24007, "0000:07:00.0", True, 3),
                       (5, 12028, "0000:05:00.0", False, 2)]
        assert events[0].message.startswith("Link 46 NVLW") and events[0].details[0].startswith("Severity 1 Engine")
        assert events[1].details[1].startswith("Data {0x00000001")
    # a continuation line whose first line an earlier scan read is not a new event
    recs = X.merge([], X.parse(text.splitlines()[:1]))
    recs = X.merge(recs, X.scan("\n".join(text.splitlines()[1:3]) + "\n"))
    assert [(r["xid"], r["count"]) for r in recs] == [(12028, 1)]
    # ... while one with nothing before it is still recorded
    assert len(X.merge([], X.parse(text.splitlines()[1:2]))) == 1


def test_sxid_continuation_lines_in_json_and_findings(run_scenario, tmp_path):
    res = gpuhc("xid", SXID_FOLLOWUP, "--json")
    assert res.returncode == 0, res.stderr
    events = json.loads(res.stdout)
    assert [(e["kind"], e["xid"], e["line"], e["resolution"]) for e in events] == [
        ("sxid", 12028, 1, "IGNORE"), ("sxid", 24007, 4, "RESET_FABRIC"), ("sxid", 12028, 5, "IGNORE")]
    assert events[1]["details"][0] == "Severity 5 Engine instance 40 Sub-engine instance 00"
    sc = tmp_path / "nvs.yaml"
    with open(SXID_FOLLOWUP) as fh:
        sc.write_text("extends: h100-healthy\nkernel_log:\n" + "".join("  - '%s'\n" % ln for ln in fh.read().splitlines()))
    report = run_scenario(str(sc), checks=["xid"])
    got = sorted((f.metrics.get("xid"), f.metrics.get("count"), f.severity.value)
                 for f in report.findings if f.check == "xid")
    assert got == [(12028, 2, "MONITOR"), (24007, 1, "RESET")]


def test_file_source_keeps_its_place_across_reboots(tmp_path):
    """A kern.log outlives a reboot: the Xids of the previous boot, read or not, do not come back."""
    from gpuhc.backends.host import LocalHost
    from gpuhc.checks import xid as C
    from gpuhc.checks.base import Context

    rnd = tmp_path / "proc" / "sys" / "kernel" / "random"
    rnd.mkdir(parents=True)
    log = tmp_path / "kern.log"
    host = LocalHost(root=str(tmp_path), kernel_log=str(log))
    t0 = 1700000000
    state = {}

    def boot(boot_id, btime):
        (rnd / "boot_id").write_text(boot_id + "\n")
        (tmp_path / "proc" / "stat").write_text("cpu  1 2 3 4\nbtime %d\nprocesses 99\n" % btime)

    def write(*lines, mode="a"):
        with open(log, mode) as fh:
            for t, xid in lines:
                when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))
                fh.write("%s node kernel: NVRM: Xid (PCI:0000:18:00): %d, pid=1, name=p, x\n" % (when, xid))

    def scan():
        data = C.gather(Context(node="n", context="check", gpu=None, host=host, config={},
                                previous={"xid": state["s"]} if state else {}))
        state["s"] = data["_state"]
        return sorted(e["xid"] for e in data["events"])

    boot("b1", t0)
    write((t0 - 5000, 79), (t0 + 60, 48), mode="w")      # first run ever: an older boot's Xid 79
    assert scan() == [48]
    write((t0 + 100, 79))                               # logged after the last scan, then a reboot
    boot("b2", t0 + 1000)
    write((t0 + 1060, 31))
    assert scan() == [31]
    assert scan() == [31] and state["s"]["events"][0]["count"] == 1
    os.rename(log, str(log) + ".1")                     # rotated: the new file is read from its start
    write((t0 + 1100, 13), mode="w")
    assert scan() == [13, 31]


def test_scan_of_whole_text_matches_line_parser():
    with open(MIXED) as fh:
        text = fh.read()
    assert [(e.line, e.xid) for e in X.scan(text)] == [(w[0], w[2]) for w in WANTED]
    # a chunk that starts later in the log keeps the log's own line numbers
    assert X.scan("x\n" + "NVRM: Xid (PCI:0000:05:00): 74, NVLink\n", first_line=101)[0].line == 102


@pytest.mark.parametrize("xid,gpu,cond,severity", [
    (79, "NVIDIA H100 80GB HBM3", {}, "REBOOT"),
    (54, "H100", {}, "ISOLATE"),
    (48, "H100", {}, "RESET"),
    (45, "H100", {}, "MONITOR"),
    (13, "H100", {}, "MONITOR"),
    (31, "H100", {}, "MONITOR"),
    (64, "NVIDIA H100 80GB HBM3", {}, "RESET"),
    (64, "NVIDIA A100-SXM4-80GB", {}, "REBOOT"),
    (95, "NVIDIA A100-SXM4-80GB", {"mig_enabled": False}, "REBOOT"),
    (95, "NVIDIA A100-SXM4-80GB", {"mig_enabled": True}, "RESET"),
    (95, "NVIDIA H100 80GB HBM3", {"mig_enabled": False}, "RESET"),
    (74, "H100", {}, "RESET"),
    (74, "H100", {"overrides": {74: "REBOOT"}}, "REBOOT"),
    (145, "H100", {}, "MONITOR"),
    (159, "H100", {"uvm_in_use": True}, "RESET"),
    (159, "H100", {"uvm_in_use": False}, "MONITOR"),
    (165, "H100", {}, "MONITOR"),
    (165, "H100", {"strict": True}, "ISOLATE"),
    (999, "H100", {}, "MONITOR"),
])
def test_catalog_severities_and_conditional_rules(xid, gpu, cond, severity):
    ev = X.parse_line("NVRM: Xid (PCI:0000:18:00): %d, pid=1, name=x, something" % xid, 1)
    assert X.classify(ev, X.Conditions(gpu_name=gpu, **cond))[0] == severity


@pytest.mark.parametrize("action,severity", [
    ("0x1 (GPU Reset Required)", "RESET"), ("0x2 (Node Reboot Required)", "REBOOT"),
    ("0x4 (Drain and Reset)", "RESET"), ("0x3 (Drain P2P)", "RESET"), ("0x0 (None)", "MONITOR")])
def test_xid154_recovery_action_decides(action, severity):
    ev = X.parse_line("NVRM: Xid (PCI:0000:18:00): 154, GPU recovery action changed from 0x0 (None) to %s" % action)
    assert X.classify(ev)[0] == severity


def test_sxid_fatal_word_decides_and_unknown_xid_is_named():
    fatal = X.parse_line("nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 24007, Fatal, Link 08 crumbstore ECC DBE Error")
    nonfatal = X.parse_line("nvidia-nvswitch3: SXid (PCI:0000:88:00.0): 12028, Non-fatal, Link 32 egress error")
    assert X.classify(fatal)[0] == "RESET" and X.classify(nonfatal)[0] == "MONITOR"
    sev, res, desc = X.classify(X.parse_line("NVRM: Xid (PCI:0000:18:00): 999, mystery"))
    assert (sev, res) == ("MONITOR", "UNKNOWN") and "999" in desc


def test_merge_folds_repeats_and_154_to_none_marks_the_gpu_reset():
    lines = ["NVRM: Xid (PCI:0000:18:00): 45, pid=1, name=p, Ch 00000008",
             "NVRM: Xid (PCI:0000:18:00): 45, pid=1, name=p, Ch 00000009",
             "NVRM: Xid (PCI:0000:2a:00): 48, pid=1, name=p, DBE"]
    recs = X.merge([], X.parse(lines))
    assert [(r["xid"], r["count"]) for r in recs] == [(45, 2), (48, 1)]
    recs = X.merge(recs, X.parse(["NVRM: Xid (PCI:0000:2a:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)"]))
    # the reset the 154 reports is marked on that GPU's events, as `gpuhc reset` marks them
    assert [bool(r.get("reset") is not None) for r in recs] == [False, True, False]
    # the same fault again after the reset counts again
    recs = X.merge(recs, X.parse(lines[2:]))
    assert X.active(recs[1]) and recs[1]["count"] == 2 and "reset" not in recs[1]
    assert X.acknowledge(recs, xid=48) == 1 and not X.active(recs[1]) and X.active(recs[0])


def test_xid_command_json(tmp_path):
    res = gpuhc("xid", MIXED, "--json")
    assert res.returncode == 0, res.stderr
    events = json.loads(res.stdout)
    assert [e["line"] for e in events] == [w[0] for w in WANTED]
    e79, e48 = events[0], events[6]
    assert {"kind", "xid", "pci_bus_id", "severity", "resolution", "message", "line"} <= set(e79)
    assert (e79["kind"], e79["xid"], e79["pci_bus_id"], e79["severity"]) == ("xid", 79, "0000:3b:00.0", "REBOOT")
    assert e79["resolution"] == cat.XID[79][1] == "RESTART_BM"
    assert (e48["xid"], e48["resolution"]) == (48, cat.XID[48][1])
    assert events[7]["kind"] == "sxid"
    with open(MIXED) as fh:
        res = gpuhc("xid", "-", input=fh.read())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["TIME", "PCI", "XID", "SEVERITY", "RESOLUTION", "MESSAGE"]
    row79 = [ln for ln in lines if "0000:3b:00.0" in ln]
    assert len(row79) == 1 and " 79 " in row79[0] and "REBOOT" in row79[0] and cat.XID[79][1] in row79[0]
    assert len(lines) == 1 + len(WANTED) and "0000:b1:00.0" in res.stdout
    res = gpuhc("xid", str(tmp_path / "missing.log"))
    assert res.returncode == 2 and "cannot read" in res.stderr


def test_xid_state_across_runs(run_scenario, tmp_path, make_cfg):
    """Events persist until cleared; new lines are read from the cursor; a reboot starts over."""
    from gpuhc import session
    sc = tmp_path / "n.yaml"
    base = "extends: h100-healthy\nnode: {boot_id: %s}\nkernel_log:\n%s"
    line48 = "  - '[ 10.0] NVRM: Xid (PCI:0000:ab:00): 48, pid=1, name=p, DBE'\n"
    cfg = make_cfg(simulate=str(sc))

    def xid_findings():
        report, _, _ = session.run(cfg, "check", checks=["xid"], node="gpu-009")
        return [(f.severity.value, f.metrics.get("xid"), f.metrics.get("count")) for f in report.findings if f.check == "xid"]

    sc.write_text(base % ("boot-1", "  - '[ 1.0] NVRM: loading NVIDIA'\n"))
    assert xid_findings() == [("PASS", None, None)]
    sc.write_text(base % ("boot-1", "  - '[ 1.0] NVRM: loading NVIDIA'\n" + line48))
    assert xid_findings() == [("RESET", 48, 1)]
    assert xid_findings() == [("RESET", 48, 1)]           # still active, not counted twice
    sc.write_text(base % ("boot-1", "  - '[ 1.0] NVRM: loading NVIDIA'\n" + line48 + line48))
    assert xid_findings() == [("RESET", 48, 2)]           # the new line only
    res = gpuhc("ack", "--node", "gpu-009", "--xid", "48",
                env={"GPUHC_CONFIG": _cfg_file(tmp_path, cfg)})
    assert res.returncode == 0 and "acknowledged 1" in res.stdout
    assert xid_findings() == [("PASS", None, None)]
    sc.write_text(base % ("boot-2", line48))                # reboot: a new log, a new state
    assert xid_findings() == [("RESET", 48, 1)]


def _cfg_file(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text("store: %s\nstate_dir: %s\n" % (cfg["store"], cfg["state_dir"]))
    return str(path)


def test_xid_conditions_gathered_from_the_node(run_scenario, tmp_path):
    """Xid 95 on A100 is REBOOT only with MIG off (asked of NVML); Xid 159 is RESET only with UVM in use."""
    def run(extra):
        sc = tmp_path / "a100.yaml"
        sc.write_text("extends: a100-healthy\n" + extra)
        report = run_scenario(str(sc), checks=["xid"], state_dir=str(tmp_path / ("s%d" % len(extra))))
        return [(f.metrics.get("xid"), f.severity.value) for f in report.findings if f.check == "xid"]

    log95 = "kernel_log: ['NVRM: Xid (PCI:0000:47:00): 95, pid=1, name=p, Uncontained: FBHUB. RST: Yes']\n"
    assert run(log95) == [(95, "REBOOT")]
    assert run(log95 + "gpus: {2: {modes: {mig_current: true, mig_pending: true}}}\n") == [(95, "RESET")]
    log159 = "kernel_log: ['NVRM: Xid (PCI:0000:47:00): 159, pid=1, name=p, CHI non-data error']\n"
    assert run(log159 + "files: {/proc/modules: 'nvidia_uvm 1900544 4 - Live 0x0\\n'}\n") == [(159, "RESET")]
    assert run(log159 + "files: {/proc/modules: 'nvidia_uvm 1900544 0 - Live 0x0\\n'}\n ") == [(159, "MONITOR")]


def test_sxid_beside_xid74_names_the_nvswitch(run_scenario, tmp_path):
    sc = tmp_path / "nvl.yaml"
    sc.write_text("extends: h100-healthy\nkernel_log:\n"
                  "  - 'NVRM: Xid (PCI:0000:18:00): 74, pid=1, name=p, NVLink: fatal error detected on link 4'\n"
                  "  - 'nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 24007, Fatal, Link 40 sourcetrack TCEN0 crumbstore ECC DBE Error'\n")
    report = run_scenario(str(sc), checks=["xid"])
    x74 = [f for f in report.findings if f.metrics.get("xid") == 74][0]
    assert x74.severity.value == "RESET" and x74.gpu.index == 0
    assert "SXid 24007 on NVSwitch 0000:07:00.0" in x74.message and "NVSwitch" in x74.remediation


def test_operator_acknowledgement_in_the_store_clears_older_events(tmp_path, make_cfg):
    """`gpuhc resume --force` writes an acknowledgement to the store; the node's next run stops
    counting the events it saw before it, and a recurrence after it counts again."""
    from gpuhc import session
    from gpuhc.store import Store
    sc = tmp_path / "n.yaml"
    line = "  - 'NVRM: Xid (PCI:0000:ab:00): 48, pid=1, name=p, DBE'\n"
    sc.write_text("extends: h100-healthy\nkernel_log:\n" + line)
    cfg = make_cfg(simulate=str(sc))

    def sev():
        report, _, _ = session.run(cfg, "check", checks=["xid"], node="gpu-010")
        return [f.severity.value for f in report.findings if f.check == "xid"]

    assert sev() == ["RESET"]
    Store.from_config(cfg).acknowledge("gpu-010", by="test")
    assert sev() == ["PASS"]
    sc.write_text("extends: h100-healthy\nkernel_log:\n" + line + line)
    assert sev() == ["RESET"]


def test_switching_scenarios_on_one_node_reads_the_new_log(tmp_path, make_cfg):
    from gpuhc import session
    cfg = make_cfg()
    for name, want in (("h100-xid45-burst", "MONITOR"), ("h100-xid79", "REBOOT"), ("h100-healthy", "PASS")):
        report, _, _ = session.run(cfg, "check", checks=["xid"], node="same-node", simulate=name)
        assert {f.severity.value for f in report.findings if f.check == "xid"} == {want}, name


# == Traps a fleet operator hit =====================================================================
# Kernel-log Xid traps (found by a review), each test failed before its fix: MIG-attributed Xid
# lines, repeats that were not folded, line numbers of `gpuhc xid` on console captures, RFC 5424
# syslog dates, a new Xid 154 recovery-action text, and the words of "What to do".

# -- Xid lines the driver attributes to a MIG GPU instance ------------------------------------

def test_mig_attributed_xid_is_an_event_on_its_gpu(run_scenario, tmp_path):
    """An A100 in MIG mode: since R470 the driver writes the GPU instance (and compute instance)
    inside the parenthesis, `NVRM: Xid (PCI:0000:47:00 GPU-I:01 GPU-CI:00): 95, ...`
    (kernel_rc.c, krcReportXid). Those lines were not events at all: an uncontained ECC error on
    a MIG GPU left the node healthy and `gpuhc xid` listed nothing."""
    line = ("NVRM: Xid (PCI:0000:47:00 GPU-I:01 GPU-CI:00): 95, pid=4242, name=pt_main_thread, "
            "Uncontained: FBHUB. RST: Yes, D-RST: No")
    ev = X.parse_line(line, 7)
    assert ev is not None
    assert (ev.kind, ev.xid, ev.pci_bus_id, ev.pid, ev.process) == ("xid", 95, "0000:47:00.0", 4242, "pt_main_thread")
    assert ev.message.startswith("Uncontained: FBHUB") and ev.instance == "GPU-I:01 GPU-CI:00"
    gi_only = X.parse_line("NVRM: Xid (PCI:0000:47:00 GPU-I:02): 43, pid='<unknown>', name=<unknown>, Ch 00000008")
    assert (gi_only.xid, gi_only.pci_bus_id, gi_only.instance) == (43, "0000:47:00.0", "GPU-I:02")
    sc = tmp_path / "mig.yaml"
    sc.write_text("extends: a100-healthy\ngpus: {2: {modes: {mig_current: true, mig_pending: true}}}\n"
                  "kernel_log: ['%s']\n" % line)
    report = run_scenario(str(sc), checks=["xid"])
    got = [(f.metrics.get("xid"), f.severity.value, f.gpu.index if f.gpu else None)
           for f in report.findings if f.check == "xid"]
    assert got == [(95, "RESET", 2)]


# -- repeats of one fault counted as many faults -----------------------------------------------

def test_repeats_differing_only_in_hex_ids_fold_into_one_event():
    """A user's job with a bad pointer: a storm of Xid 31 MMU faults on one GPU, each on another
    channel (`Ch 0000000a`, hex) at another address (`faulted @ 0x7f12_3456a000`). Each line
    became its own event, so one job crash gave hundreds of findings in every report (and in the
    store's history) instead of one Xid 31 with a count. Channels 0-9 already folded; a-f and
    the `0x..._....` addresses the driver prints did not."""
    lines = ["NVRM: Xid (PCI:0000:b1:00): 31, pid=%d, name=python, Ch 000000%02x, intr 00000000. MMU Fault: "
             "ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_%08x. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ"
             % (1000 + i, 8 + i, 0x3456a000 + i * 4096) for i in range(40)]
    recs = X.merge([], X.parse(lines))
    assert [(r["xid"], r["count"]) for r in recs] == [(31, 40)]
    # messages that say different things stay apart
    other = X.merge([], X.parse([
        "NVRM: Xid (PCI:0000:b1:00): 13, pid=1, name=p, Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address",
        "NVRM: Xid (PCI:0000:b1:00): 13, pid=1, name=p, Graphics SM Global Exception on (GPC 1, TPC 2, SM 0): Multiple Warp Errors",
        "NVRM: Xid (PCI:0000:b1:00): 13, pid=1, name=p, Graphics SM Warp Exception on (GPC 3, TPC 0, SM 1): Out Of Range Address"]))
    assert [r["count"] for r in other] == [2, 1]


# -- `gpuhc xid` line numbers on a serial-console capture --------------------------------------

def test_xid_command_line_numbers_match_the_file(tmp_path):
    """A BMC serial-over-LAN capture (conserver, ipmitool sol) ends its lines with `\\r\\r\\n` and
    can hold a form feed: `gpuhc xid console.log --json` said line 6 for what `grep -n` and
    `sed -n 3p` show at line 3 (the file was split on every \\r and on \\f), on stdin as well."""
    log = tmp_path / "console.log"
    log.write_bytes(b"boot\x0c ok\r\r\nsecond \xff line\r\r\n"
                    b"[  812.5] NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, "
                    b"GPU has fallen off the bus.\r\r\n")
    assert [n for n, x in enumerate(log.read_bytes().split(b"\n"), 1) if b"Xid" in x] == [3]     # grep -n
    for args, stdin in (((str(log),), None), (("-",), log.read_bytes().decode("utf-8", "replace"))):
        res = gpuhc("xid", *args, "--json", input=stdin)
        assert res.returncode == 0, res.stderr
        events = json.loads(res.stdout)
        assert [(e["xid"], e["line"], e["message"]) for e in events] == [(79, 3, "GPU has fallen off the bus.")]


# -- RFC 5424 syslog dates --------------------------------------------------------------------

def test_rfc5424_kern_log_places_the_previous_boots_xid_before_the_reboot(tmp_path):
    """rsyslog writing kern.log with RSYSLOG_SyslogProtocol23Format (`<4>1 2024-...T...Z host
    kernel - - - NVRM: Xid ...`): the date was not read, so the Xid 79 logged just before the
    node was rebooted (and not yet scanned) counted again on the first scan after the reboot,
    and the freshly rebooted node was drained for REBOOT again."""
    rnd = tmp_path / "proc" / "sys" / "kernel" / "random"
    rnd.mkdir(parents=True)
    log = tmp_path / "kern.log"
    host = LocalHost(root=str(tmp_path), kernel_log=str(log))
    t0 = int(time.time()) - 10000
    state = {}

    def boot(boot_id, btime):
        (rnd / "boot_id").write_text(boot_id + "\n")
        (tmp_path / "proc" / "stat").write_text("cpu  1 2 3 4\nbtime %d\n" % btime)

    def write(t, xid):
        when = time.strftime("%Y-%m-%dT%H:%M:%S.123456+00:00", time.gmtime(t))
        with open(log, "a") as fh:
            fh.write("<4>1 %s gpu-017 kernel - - - NVRM: Xid (PCI:0000:18:00): %d, pid='<unknown>', "
                     "name=<unknown>, x\n" % (when, xid))

    def scan():
        data = CX.gather(Context(node="n", context="check", gpu=None, host=host, config={},
                                 previous={"xid": state["s"]} if state else {}))
        state["s"] = data["_state"]
        return sorted(e["xid"] for e in data["events"])

    boot("b1", t0)
    write(t0 + 60, 48)
    assert scan() == [48]
    write(t0 + 100, 79)                     # logged, then the node was rebooted before a scan
    boot("b2", t0 + 1000)
    write(t0 + 1060, 31)
    assert scan() == [31]
    ev = X.parse_line("<4>1 2024-01-15T10:22:33.123456+00:00 gpu-017 kernel - - - NVRM: Xid (PCI:0000:18:00): 79, x")
    assert ev.time == "2024-01-15T10:22:33.123456+00:00"


# -- Xid 154 with a recovery action text the catalog does not list ----------------------------

def test_xid154_recovery_action_is_read_from_its_code_when_the_text_is_new():
    """Newer drivers name the action 0x1 differently: `NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery
    action changed from 0x0 (None) to 0x1 (PF FLR)` (a function-level reset; the driver then
    refuses every new context). The text is not one of the catalog's five, so the event fell back
    to MONITOR and jobs kept landing on a GPU that needed a reset. The action code is NVML's
    nvmlDeviceGpuRecoveryAction_t (0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset)."""
    def severity(action):
        return X.classify(X.parse_line("NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery action changed from "
                                       "0x0 (None) to %s" % action))[0]

    assert severity("0x1 (PF FLR)") == "RESET"
    assert severity("0x2 (OS Reboot)") == "REBOOT"
    assert severity("0x1 (GPU Reset Required)") == "RESET"          # the catalog's own text still decides
    assert severity("0x0 (None)") == "MONITOR"
    recs = X.merge([], X.parse(["NVRM: Xid (PCI:0000:0d:00): 51, BAD_TSG encountered on runlist: 0",
                                "NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)"]))
    assert not any(r.get("reset") for r in recs)                    # a reset asked for is not a reset done


def test_what_to_do_for_an_xid_is_in_plain_words():
    """The 'What to do' line of an Xid finding said 'GPU has fallen off the bus (RESTART_BM)': the
    on-call engineer needs the action gpuhc's tier asks for and NVIDIA's bucket in words, and what
    the Xid means where the log line does not say it."""
    from gpuhc import xid_catalog as cat
    from gpuhc.checks.xid import remediation

    assert remediation("REBOOT", "RESTART_BM", "GPU has fallen off the bus", "GPU has fallen off the bus.") == \
        "drain and reboot the node; NVIDIA: reboot the node (RESTART_BM)"
    assert remediation("MONITOR", "RESTART_APP", "Graphics Engine Exception", "Graphics Exception: ESR 0x4041b0=0x3f") \
        .startswith("Graphics Engine Exception: recorded only")
    assert remediation("RESET", "RESET_GPU, check the NVSwitch and fabric manager first", "NVLink error", "") == \
        "drain, reset the GPU (gpuhc reset); passes return the node; NVIDIA: reset the GPU (RESET_GPU); " \
        "check the NVSwitch and fabric manager first"
    # every bucket the catalog uses has words, but the catalog's "no bucket"
    assert {v[1] for v in cat.XID.values()} - set(cat.RESOLUTION_WORDS) == {"UNSPECIFIED"}
