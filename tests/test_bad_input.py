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


# -- every file read is bounded, and only a regular file is read where one is meant ----------

def _config(tmp_path, text=""):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false}\n%s"
                   % (tmp_path / "store", tmp_path / "state", text))
    return {"GPUHC_CONFIG": str(cfg)}


def _one_line_error(res, *words):
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


def test_a_device_as_config_profiles_or_scenario_is_a_one_line_error(tmp_path):
    """/dev/zero as config, profiles or kernel log ended in MemoryError (exit 3)."""
    started = time.monotonic()
    _one_line_error(gpuhc("check", "--simulate", "h100-healthy", env={"GPUHC_CONFIG": "/dev/zero"}),
                    "/dev/zero", "not a regular file")
    _one_line_error(gpuhc("check", "--simulate", "h100-healthy", env=_config(tmp_path, "profiles: /dev/zero\n")),
                    "profiles", "not a regular file")
    _one_line_error(gpuhc("check", "--simulate", "h100-healthy", env=_config(tmp_path, "kernel_log: /dev/zero\n")),
                    "kernel_log", "not a regular file")
    _one_line_error(gpuhc("check", "--simulate", "/dev/zero", env=_config(tmp_path)), "/dev/zero")
    assert time.monotonic() - started < 20


def test_a_fifo_is_not_waited_on_and_a_large_file_is_refused_before_it_is_parsed(tmp_path):
    from gpuhc.errors import ConfigError, ProfileError, ScenarioError
    from gpuhc.yamlio import read_bytes, size_max

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ProfileError, match="not a regular file"):
        read_bytes(str(fifo), ProfileError)
    assert size_max(ConfigError) == size_max(ProfileError) == 64 << 10 and size_max(ScenarioError) == 16 << 20
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (1 << 20))                 # 10 MiB: took 10 s and 871 MB
    started = time.monotonic()
    _one_line_error(gpuhc("check", "--simulate", "h100-healthy", env={"GPUHC_CONFIG": str(big)}),
                    "larger than 64 KiB", "config file")
    assert time.monotonic() - started < 5
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(b"#" * (64 << 10))
    assert len(read_bytes(str(exact), ConfigError)) == 64 << 10
    exact.write_bytes(b"#" * ((64 << 10) + 1))
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        read_bytes(str(exact), ConfigError)


def test_a_long_profile_line_is_an_error_naming_the_line(tmp_path):
    """A 1 MB profile line took 14 s (shlex is microseconds a character): lines are bounded."""
    from gpuhc import profiles
    from gpuhc.errors import ProfileError
    from gpuhc.text import LINE_MAX

    text = "p1 gpus=8\np2 description=\"%s\"\n" % ("a " * LINE_MAX)
    started = time.monotonic()
    with pytest.raises(ProfileError, match=r"<string>:2: line longer than %d characters" % LINE_MAX):
        profiles.parse(text)
    assert time.monotonic() - started < 0.1
    path = tmp_path / "profiles.conf"
    path.write_text("p1 gpus=8\n" * 10000)
    with pytest.raises(ProfileError, match="larger than 64 KiB"):
        profiles.load(str(path))


def test_a_kernel_log_file_is_read_only_when_regular_and_in_bounded_steps(tmp_path, monkeypatch):
    from gpuhc import xid
    from gpuhc.backends import host as H
    from gpuhc.backends import kernel_log

    with pytest.raises(OSError, match="not a regular file"):
        H.LocalHost(kernel_log="/dev/zero").kernel_log_since(None)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        H.LocalHost(kernel_log=str(fifo)).kernel_log_since(None)
    # more than a scan reads: the rest is read by the next scans, nothing is skipped
    monkeypatch.setattr(kernel_log, "LOG_READ_MAX", 1000)     # the scan limit lives with the log readers
    log = tmp_path / "kern.log"
    lines = ["[ %d.0] NVRM: Xid (PCI:0000:5d:00): %d, pid=1, name=x, event %d" % (i, 13 + i % 2, i)
             for i in range(100)]
    log.write_text("\n".join(lines) + "\n" + "z" * 2500 + "\n")     # and a last line longer than a scan
    host, cursor, seen, scans = H.LocalHost(kernel_log=str(log)), None, [], 0
    while True:
        chunk = host.kernel_log_since(cursor)
        scans += 1
        assert len(chunk.text) <= 1000
        seen += xid.scan(chunk.text, chunk.first_line)
        if chunk.cursor == cursor:
            break
        cursor = chunk.cursor
    assert [e.message for e in seen] == ["event %d" % i for i in range(100)]
    assert [e.line for e in seen] == list(range(1, 101)) and scans > 6
    assert cursor["offset"] == log.stat().st_size


def test_proc_and_sysfs_reads_are_bounded_and_regular_only(tmp_path, monkeypatch):
    from gpuhc.backends import host as H
    from gpuhc.backends import kernel_log

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "modules").write_text("nvidia 1 0 - Live\n")
    os.mkfifo(tmp_path / "proc" / "fifo")
    os.symlink("/dev/zero", tmp_path / "proc" / "zero")
    host = H.LocalHost(root=str(tmp_path))
    assert host.read_text("/proc/modules") == "nvidia 1 0 - Live\n"
    assert host.read_text("/proc/fifo") is None and host.read_text("/proc/zero") is None
    monkeypatch.setattr(H, "READ_MAX", 10)
    assert host.read_text("/proc/modules") is None


@pytest.mark.parametrize("key,value,words", [
    ("store", '"/tmp/a\\0b"', ["store:", "NUL"]),
    ("state_dir", "/etc/passwd", ["state_dir:", "is not a directory"]),
    ("store", "/etc/passwd", ["store:", "is not a directory"]),
    ("store", "/proc/self", ["store:", "/proc"]),
    ("state_dir", "/sys/kernel", ["state_dir:", "/sys"]),
    ("store", "/tmp/" + "x" * 5000, ["store:", "shorter than 4096 bytes"]),
    ("store", "/tmp/" + "x" * 300, ["store:", "at most 255 bytes"]),
    ("store", "/etc/passwd/x", ["store:", "'/etc/passwd' is not a directory"]),
    ("kernel_log", "/dev/zero", ["kernel_log:", "not a regular file"]),
    ("profiles", "/etc", ["profiles:", "not a regular file"]),
    ("kernel_log", '"/var/log/kern\\0.log"', ["kernel_log:", "NUL"]),
])
def test_config_refuses_paths_that_cannot_work_naming_the_key(tmp_path, key, value, words):
    from gpuhc import config as C
    from gpuhc.errors import ConfigError
    from gpuhc.yamlio import parse_yaml

    data = parse_yaml("%s: %s\n" % (key, value), "c", ConfigError)
    with pytest.raises(ConfigError) as err:
        C.validate(dict({"store": str(tmp_path / "s"), "state_dir": str(tmp_path / "t")}, **data), "c")
    for word in words:
        assert word in str(err.value), str(err.value)


def test_config_accepts_paths_that_can_work(tmp_path):
    from gpuhc import config as C

    (tmp_path / "kern.log").write_text("")
    cfg = C.validate({"store": str(tmp_path / "new" / "store"), "state_dir": str(tmp_path),
                      "kernel_log": str(tmp_path / "kern.log"), "profiles": str(tmp_path / "later.conf")}, "c")
    assert cfg["state_dir"] == str(tmp_path)
    os.symlink(str(tmp_path), str(tmp_path / "link"))          # where a link leads is not looked at
    assert C.validate({"store": str(tmp_path / "link"), "state_dir": str(tmp_path / "link" / "x")}, "c")


def test_config_paths_on_network_or_fuse_mounts_are_never_looked_at(monkeypatch):
    """A stat on a hung NFS or FUSE mount blocks for ever: only lexical checks there."""
    from gpuhc import config as C

    def no_stat(*args):
        raise AssertionError("looked at a path on a network mount")

    monkeypatch.setattr(C, "_mounts", lambda: {"/": "ext4", "/etc": "nfs4", "/tmp": "fuse.sshfs"})
    monkeypatch.setattr(C.os, "lstat", no_stat)
    C.validate({"store": "/etc/passwd", "state_dir": "/tmp/x/y", "kernel_log": "/etc/kern.log"}, "c")


def test_a_malformed_slurmd_nodename_is_a_one_line_error_never_passed_to_slurm(tmp_path):
    """5 of 5 malformed $SLURMD_NODENAME values were passed to scontrol as the node to drain."""
    from test_contexts_budget import calls_of, fake_slurm

    env, calls = fake_slurm(tmp_path)
    for bad in ("../x", "a b", "-x", "gpu-001;rm", "x" * 300):
        env["SLURMD_NODENAME"] = bad
        res = gpuhc("prolog", "--simulate", "h100-xid79", env=env)
        _one_line_error(res, "SLURMD_NODENAME")
    assert calls_of(calls) == []
    env["SLURMD_NODENAME"] = "gpu-001"
    assert gpuhc("prolog", "--simulate", "h100-xid79", env=env).returncode == 1


def test_a_journal_cut_at_the_output_limit_is_not_read_as_if_whole(tmp_path, monkeypatch):
    """journalctl's cursor is its last line: an output cut at OUTPUT_MAX has none, and reading it
    would rescan the same start for ever. It counts as unreadable (auto goes on to dmesg)."""
    from gpuhc.backends import host as H

    def run(self, argv, timeout):
        if argv[0] == "journalctl":
            return H.CommandResult(0, "[ 1.0] NVRM: Xid (PCI:0000:5d:00): 79, x\n" * 3, truncated=True)
        return H.CommandResult(0, "[ 2.0] NVRM: Xid (PCI:0000:5d:00): 48, from dmesg\n")

    monkeypatch.setattr(H.LocalHost, "run", run)
    with pytest.raises(OSError, match="journalctl"):
        H.LocalHost(root=str(tmp_path), kernel_log="journal").kernel_log_since(None)
    chunk = H.LocalHost(root=str(tmp_path), kernel_log="auto").kernel_log_since(None)   # no /dev/kmsg there
    assert chunk.cursor["source"] == "dmesg" and "from dmesg" in chunk.text
