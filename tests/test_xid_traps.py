"""Kernel-log Xid/SXid and DCGM diagnostic traps a fleet operator hit (found by a review): each test
failed before its fix. MIG-attributed Xid lines, repeats that were not folded, line numbers of
`gpuhc xid` on console captures, RFC 5424 syslog dates, and a DCGM 4 test that failed only in its
summary."""
import json
import time

from gpuhc import xid as X
from gpuhc.backends.host import LocalHost
from gpuhc.checks import xid as CX
from gpuhc.checks.base import Context

from conftest import gpuhc
from test_dcgm import evaluate, verdicts


# -- 1. Xid lines the driver attributes to a MIG GPU instance ------------------------------------

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


# -- 2. repeats of one fault counted as many faults -----------------------------------------------

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


# -- 3. `gpuhc xid` line numbers on a serial-console capture --------------------------------------

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


# -- 4. RFC 5424 syslog dates --------------------------------------------------------------------

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


# -- 5. DCGM 4: a test that failed only in its summary -------------------------------------------

def test_dcgm4_failure_reported_only_in_test_summary_is_not_a_pass():
    """DCGM 4 writes an error that belongs to no GPU (entity NONE: the plugin could not run its
    test, a system-level fault) only in the test's `test_summary`, while every per-GPU result of
    that test says Pass. gpuhc read the summary only when a test had no per-GPU results, so the
    failed diagnostic came out as "tests passed" on every GPU."""
    doc = {"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [{
        "name": "memory",
        "results": [{"entity_group": "GPU", "entity_group_id": 1, "entity_id": i, "status": "Pass"} for i in range(8)],
        "test_summary": {"status": "Fail", "warnings": [{
            "warning": "Unable to create a CUDA context: CUDA_ERROR_OUT_OF_MEMORY", "error_id": 21,
            "error_category": 6, "error_severity": 4}]}}]}]},
        "metadata": {"version": "4.2.3", "Driver Version Detected": "570.148.08"}}
    out = evaluate(json.dumps(doc), rc=226)
    assert verdicts(out) == [("RESET", "dcgm")]
    bad = [f for f in out if f.severity.value == "RESET"][0]
    assert bad.message.startswith("memory failed: Unable to create a CUDA context") and bad.metrics["error_id"] == 21
    # a summary that only repeats a GPU's failure adds nothing of its own
    doc["DCGM Diagnostic"]["test_categories"][0]["tests"][0]["results"][3].update(
        status="Fail", warnings=[{"warning": "A memory mismatch was detected on GPU 3", "error_id": 58,
                                  "error_category": 10, "error_severity": 2}])
    doc["DCGM Diagnostic"]["test_categories"][0]["tests"][0]["test_summary"] = {"status": "Fail"}
    assert verdicts(evaluate(json.dumps(doc), rc=205)) == [("ISOLATE", 3)]



# -- 6. Xid 154 with a recovery action text the catalog does not list ----------------------------

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
