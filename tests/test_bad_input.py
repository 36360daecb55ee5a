"""Bad input, as an attacker or a broken node writes it: a one-line error or a clean finding,
never a crash, never unbounded (issue 18, sections 1 and 2)."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, gpuhc

CRAFTED = "NVRM: Xid (PCI:0000:5d:00): 13, pid=1, name=" + " " * 100000


def test_a_crafted_xid_line_is_parsed_in_linear_time():
    """`name=` and thousands of spaces took 33 s at 4,000 spaces (backtracking, cubic in the
    length; a check's timeout cannot stop a regex that holds the GIL). Run apart, so a regression
    fails here instead of hanging the suite."""
    code = ("import json, time; from gpuhc import xid\n"
            "line = %r\n"
            "t = time.monotonic()\n"
            "events = xid.scan(line + 'x\\n' + line + '\\n' + '[ 1.0] ' + line[:60] + 'x' * 100000 + ', y\\n')\n"
            "print(json.dumps({'xids': [e.xid for e in events], 'took': time.monotonic() - t}))\n" % CRAFTED)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["xids"] == [13, 13, 13] and out["took"] < 0.2, out


def test_a_long_line_is_cut_before_parsing_and_an_xid_in_it_is_still_found():
    from gpuhc import xid
    from gpuhc.text import LINE_MAX

    ev = xid.parse_line("[ 12.5] NVRM: Xid (PCI:0000:5d:00): 79, pid=1, name= a b , GPU has fallen off the bus."
                        + "z" * (10 * LINE_MAX))
    assert ev is not None and ev.xid == 79 and ev.process == "a b" and ev.monotonic == 12.5
    assert len(ev.message) < LINE_MAX
    # an Xid past the first LINE_MAX characters of its line is not looked at
    assert xid.scan("x" * LINE_MAX + " NVRM: Xid (PCI:0000:5d:00): 79, gone\n") == []


def _scenario(tmp_path, line, extends="h100-xid79"):
    path = tmp_path / "scenario.yaml"
    path.write_text('description: crafted kernel log\nextends: %s\nkernel_log:\n  - "%s"\n' % (extends, line))
    return str(path)


def test_a_nul_byte_in_an_xid_message_is_a_finding_and_a_clean_drain(tmp_path):
    """A NUL in an Xid message made `gpuhc prolog` exit 3 (scontrol's argv: "embedded null byte"):
    no drain, no record. Control characters never reach Slurm (sinfo -R, scontrol) either."""
    from test_contexts_budget import calls_of, fake_slurm

    env, calls = fake_slurm(tmp_path)
    nasty = "GPU has\\0 fallen\\r off\\t the\\e[2J bus\\a\\x7f\\x9b\\u2028\\u2029 end"
    scenario = _scenario(tmp_path, "[ 3021.425634] NVRM: Xid (PCI:0000:5d:00): 79, pid=1, name=x, %s" % nasty)
    res = gpuhc("prolog", "--simulate", scenario, env=env)
    assert res.returncode == 1, res.stdout + res.stderr      # drained: Slurm requeues the job
    drain = [c for c in calls_of(calls) if c.startswith("scontrol update NodeName=gpu-001 State=DRAIN")]
    assert len(drain) == 1, calls_of(calls)
    reason = drain[0].split("Reason=", 1)[1]
    assert reason == "gpuhc: REBOOT xid: Xid 79 on GPU3 0000:5d:00.0: GPU has  fallen  off  the [2J bus      end" \
        " (+1 more)", reason
    assert all(" " <= ch < "\x7f" for ch in reason), reason
    assert "Traceback" not in res.stderr and "gpuhc prolog REBOOT xid GPU3" in res.stdout
    show = gpuhc("show", "gpu-001", "--json", env=env)          # recorded, the message as the log wrote it
    assert show.returncode == 0 and "fallen\\r off" in show.stdout


def test_one_sanitiser_for_slurm_syslog_tables_and_labels(monkeypatch):
    from gpuhc import output, policy, syslogging, text
    from gpuhc.export import _escape
    from gpuhc.model import Finding, Report, Severity

    bad = "a\0b\rc\td\x1b[31me\x07f\x7fg\x85h\x9bi\u2028j\u2029k\u202el\ud800m\nn"
    assert text.clean(bad) == "a b c d [31me f g h i j k l\ufffdm n"
    assert text.clean("x" * 5000) == "x" * (text.OUT_MAX - 3) + "..."
    assert text.clean("abcdef", 4) == "a..." and text.clean("ab", 4) == "ab"
    # policy: drain reason and node comment
    f = Finding("xid", Severity.REBOOT, bad * 20)
    report = Report(node="gpu-001", context="prolog", profile="p", started=0.0, ended=1.0, findings=[f])
    reason = policy.drain_reason(report)
    assert len(reason) <= policy.REASON_MAX and reason == text.clean(reason, None)
    f.severity = Severity.MONITOR
    assert policy._short(f) == text.clean(policy._short(f), None) and len(policy._short(f)) <= policy.REASON_MAX
    # syslog: every line sent is clean (a NUL made syslog() raise: the lines were lost)
    sent = []
    fake = type("syslog", (), {"openlog": staticmethod(lambda *a: None), "LOG_DAEMON": 3, "LOG_INFO": 6,
                               "syslog": staticmethod(lambda pri, line: sent.append(line))})
    monkeypatch.setitem(sys.modules, "syslog", fake)
    monkeypatch.setattr(syslogging, "_stuck", False)
    syslogging.send([bad])
    assert sent == [text.clean(bad)]
    # tables and Prometheus label values
    assert "\r" not in output.table([[bad, 1]], ["A", "B"]) and output.table([[bad]], ["A"]).count("\n") == 1
    assert _escape(bad) == text.clean(bad)
