"""The real kernel-log sources of LocalHost: /dev/kmsg (sequence-number cursor, records lost to
ring overwrite, EPIPE), journalctl and dmesg (stub executables on PATH), log files (rotation,
truncation) and the line cursor of sources without one of their own."""
import errno
import os
import stat

import pytest

from gpuhc import xid as X
from gpuhc.backends import host as H
from gpuhc.backends import kernel_log
from gpuhc.backends.host import LocalHost, since_line

XID48 = "NVRM: Xid (PCI:0000:ab:00): 48, pid=1, name=p, DBE"
XID79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus."


# -- /dev/kmsg ---------------------------------------------------------------------------------

class FakeKmsg:
    """The kernel's printk ring as /dev/kmsg shows it: one record per read, oldest first, at most
    ``size`` records kept; ``epipe_at`` makes a read fail with EPIPE once the reader reaches that
    sequence number (overwritten while reading), after which reading resumes further on."""

    def __init__(self, size=100):
        self.size, self.records, self.seq, self.epipe_at = size, [], 0, None

    def log(self, *messages):
        for msg in messages:
            self.records.append((self.seq, 1000000 * (self.seq + 1), msg))
            self.seq += 1
        del self.records[:-self.size]

    def drop(self, n):
        """Records overwritten in the ring without anyone reading them."""
        del self.records[:n]


class FakeOs:
    """`os` for host.py with reads of the kmsg path served by a FakeKmsg; all else is the real os."""

    def __init__(self, kmsg, path):
        self._kmsg, self._path, self._fds = kmsg, path, {}

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, *args):
        fd = os.open(path, flags, *args)
        if path == self._path:
            self._fds[fd] = 0                  # index into the ring's records
        return fd

    def read(self, fd, n):
        if fd not in self._fds:
            return os.read(fd, n)
        k = self._kmsg
        if k.epipe_at is not None:
            pending = [r for r in k.records[self._fds[fd]:] if r[0] >= k.epipe_at]
            if pending and pending[0][0] == k.records[self._fds[fd]][0]:
                k.epipe_at = None
                self._fds[fd] += 3             # the reader's next records were overwritten
                raise OSError(errno.EPIPE, "Broken pipe")
        if self._fds[fd] >= len(k.records):
            raise BlockingIOError(errno.EAGAIN, "no more records")
        seq, usec, msg = k.records[self._fds[fd]]
        self._fds[fd] += 1
        return ("4,%d,%d,-;%s\n SUBSYSTEM=pci\n" % (seq, usec, msg)).encode()

    def close(self, fd):
        self._fds.pop(fd, None)
        os.close(fd)


@pytest.fixture
def kmsg(tmp_path, monkeypatch):
    (tmp_path / "dev").mkdir()
    path = tmp_path / "dev" / "kmsg"
    path.write_text("")
    ring = FakeKmsg()
    monkeypatch.setattr(kernel_log, "os", FakeOs(ring, str(path)))
    return ring


def test_kmsg_reads_after_the_sequence_number(tmp_path, kmsg):
    kmsg.log("NVRM: loading NVIDIA", XID48)
    host = LocalHost(root=str(tmp_path), kernel_log="kmsg")
    chunk = host.kernel_log_since(None)
    events = X.scan(chunk.text, chunk.first_line)
    assert [(e.xid, e.seq, e.line) for e in events] == [(48, 1, 2)]
    assert chunk.lost == 0 and chunk.cursor["seq"] == 1 and chunk.text.count("\n") == 2
    assert "SUBSYSTEM" not in chunk.text                       # record dictionaries are not log lines
    kmsg.log("usb 1-1: new device", XID79)
    chunk = host.kernel_log_since(chunk.cursor)
    assert [(e.xid, e.seq, e.line) for e in X.scan(chunk.text, chunk.first_line)] == [(79, 3, 4)]
    again = host.kernel_log_since(chunk.cursor)
    assert again.text == "" and again.cursor["seq"] == 3 and again.lost == 0


def test_kmsg_records_overwritten_before_the_scan_are_counted(tmp_path, kmsg):
    kmsg.log("a", "b")
    host = LocalHost(root=str(tmp_path), kernel_log="kmsg")
    cursor = host.kernel_log_since(None).cursor
    kmsg.log(XID48, "c", "d", XID79)
    kmsg.drop(5)                                               # seq 0..4 gone, 5 (Xid 79) left
    chunk = host.kernel_log_since(cursor)
    assert chunk.lost == 3 and [e.xid for e in X.scan(chunk.text)] == [79]
    assert chunk.gaps == [(2.0, 6.0)]                         # after seq 1 (2 s), before seq 5 (6 s)


def test_kmsg_epipe_while_reading_resumes_and_counts_the_loss(tmp_path, kmsg):
    kmsg.log("a", "b")
    host = LocalHost(root=str(tmp_path), kernel_log="kmsg")
    cursor = host.kernel_log_since(None).cursor
    kmsg.log("c", XID48, "e", "f", XID79)                       # seq 2..6
    kmsg.epipe_at = 3                                          # 3, 4, 5 overwritten under the reader
    chunk = host.kernel_log_since(cursor)
    assert chunk.lost == 3 and [e.xid for e in X.scan(chunk.text)] == [79]
    assert chunk.cursor["seq"] == 6 and chunk.gaps == [(3.0, 7.0)]


def test_kmsg_loss_is_filled_from_the_journal_in_auto_mode(tmp_path, kmsg, monkeypatch):
    kmsg.log("a", "b")
    host = LocalHost(root=str(tmp_path), kernel_log="auto")
    cursor = host.kernel_log_since(None).cursor
    kmsg.log(XID48, "d", "e", XID79)                           # seq 2..5
    kmsg.drop(3)                                               # the Xid 48 (seq 2, 3 s) is lost
    _stub(tmp_path, monkeypatch, "journalctl", "[    2.000000] h kernel: b\n[    3.000000] h kernel: " + XID48
          + "\n[    5.000000] h kernel: e\n[    6.000000] h kernel: " + XID79 + "\n")
    chunk = host.kernel_log_since(cursor)
    assert chunk.lost == 0
    assert sorted(e.xid for e in X.scan(chunk.text)) == [48, 79]      # 48 from the journal, once each
    # a journal that cannot be read leaves the loss reported
    _stub(tmp_path, monkeypatch, "journalctl", "", rc=1)
    assert host.kernel_log_since(cursor).lost == 1


def test_kmsg_loss_becomes_a_finding(tmp_path, kmsg):
    from gpuhc.checks import xid as C
    kmsg.log("a")
    host = LocalHost(root=str(tmp_path), kernel_log="kmsg")
    (tmp_path / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text("b1\n")
    data = C.gather(_ctx(host))
    kmsg.log("b", "c")
    kmsg.drop(2)
    data = C.gather(_ctx(host, data["_state"]))
    findings = C.evaluate(data, None, {})
    assert data["lost"] == 1 and [f.severity.value for f in findings] == ["MONITOR"]
    assert "1 kernel log records were overwritten" in findings[0].message


def test_kmsg_missing(tmp_path):
    assert H._read_kmsg_since(str(tmp_path / "no-kmsg"), None) is None
    with pytest.raises(OSError):
        LocalHost(root=str(tmp_path), kernel_log="kmsg").kernel_log_since(None)


# -- journalctl --------------------------------------------------------------------------------

JOURNAL = """#!/bin/sh
# journalctl -k: entries of $ENTRIES ("cursor<TAB>line"), those after --after-cursor, then
# "-- cursor: C" after the last one shown when --show-cursor is given
echo "$@" >> "$ARGS_LOG"
after=""; show=""
for a in "$@"; do
  case "$a" in --after-cursor=*) after="${a#--after-cursor=}";; --show-cursor) show=1;; esac
done
awk -F '\\t' -v after="$after" -v show="$show" '
  after == "" || found { print $2; last = $1; shown = 1; next }
  $1 == after { found = 1 }
  END { if (show && shown) print "-- cursor: " last }' "$ENTRIES"
"""


@pytest.fixture
def journal(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "journalctl"
    script.write_text(JOURNAL)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("ENTRIES", str(tmp_path / "entries"))
    monkeypatch.setenv("ARGS_LOG", str(tmp_path / "args"))
    entries = tmp_path / "entries"
    entries.write_text("")

    def add(*lines):
        n = len(entries.read_text().splitlines())
        with open(entries, "a") as fh:
            for i, line in enumerate(lines, n):
                fh.write("s=abc;i=%x\t[%12.6f] node kernel: %s\n" % (i, i + 1.0, line))
    return add


def test_journal_cursor(tmp_path, journal):
    journal("NVRM: loading NVIDIA", XID48)
    host = LocalHost(root=str(tmp_path), kernel_log="journal")
    chunk = host.kernel_log_since(None)
    assert [(e.xid, e.line, e.monotonic) for e in X.scan(chunk.text, chunk.first_line)] == [(48, 2, 2.0)]
    assert chunk.cursor == {"source": "journal", "cursor": "s=abc;i=1", "line": 2}
    journal("usb: x", XID79)
    chunk = host.kernel_log_since(chunk.cursor)
    assert [(e.xid, e.line) for e in X.scan(chunk.text, chunk.first_line)] == [(79, 4)]
    nothing = host.kernel_log_since(chunk.cursor)             # no new entry: no cursor line printed
    assert nothing.text == "" and nothing.cursor == {"source": "journal", "cursor": "s=abc;i=3", "line": 4}
    args = (tmp_path / "args").read_text().splitlines()
    assert "--after-cursor" not in args[0] and args[1].endswith("--after-cursor=s=abc;i=1")
    assert all(a.startswith("-k -b ") and "--show-cursor" in a for a in args)


def test_journal_unreadable(tmp_path, monkeypatch):
    _stub(tmp_path, monkeypatch, "journalctl", "", rc=1)
    with pytest.raises(OSError):
        LocalHost(root=str(tmp_path), kernel_log="journal").kernel_log_since(None)
    # auto: no /dev/kmsg, no journal: dmesg
    _stub(tmp_path, monkeypatch, "dmesg", "[    1.000000] " + XID79 + "\n")
    chunk = LocalHost(root=str(tmp_path), kernel_log="auto").kernel_log_since(None)
    assert chunk.cursor["source"] == "dmesg" and [e.xid for e in X.scan(chunk.text)] == [79]


# -- dmesg: a ring that rotates ------------------------------------------------------------------

def _ring(first, count):
    return "".join("[%12.6f] %s\n" % (i, XID48 if i % 7 == 0 else "line %d" % i) for i in range(first, first + count))


def test_dmesg_full_ring_keeps_finding_new_lines(tmp_path, monkeypatch):
    host = LocalHost(root=str(tmp_path), kernel_log="dmesg")
    _stub(tmp_path, monkeypatch, "dmesg", _ring(1, 50))
    chunk = host.kernel_log_since(None)
    assert len(X.scan(chunk.text)) == 7                       # 7, 14, ..., 49
    _stub(tmp_path, monkeypatch, "dmesg", _ring(11, 50))      # full: 10 new lines, 10 old gone
    chunk = host.kernel_log_since(chunk.cursor)
    assert chunk.text == _ring(51, 10) and [e.monotonic for e in X.scan(chunk.text)] == [56.0]
    _stub(tmp_path, monkeypatch, "dmesg", _ring(200, 50))     # rotated past the last line seen
    chunk2 = host.kernel_log_since(chunk.cursor)
    assert chunk2.text == _ring(200, 50)
    _stub(tmp_path, monkeypatch, "dmesg", _ring(250, 3))      # `dmesg -C`, then 3 lines
    assert host.kernel_log_since(chunk2.cursor).text == _ring(250, 3)
    _stub(tmp_path, monkeypatch, "dmesg", "", rc=1)
    with pytest.raises(OSError):
        host.kernel_log_since(None)


def test_since_line_cursor():
    c1 = since_line("a\nb\n", None, "sim:x")
    assert (c1.text, c1.first_line, c1.cursor["line"]) == ("a\nb\n", 1, 2)
    c2 = since_line("a\nb\nb\n", c1.cursor, "sim:x")          # a repeated line is new
    assert (c2.text, c2.first_line) == ("b\n", 3)
    assert since_line("a\nb\nb\n", c2.cursor, "sim:x").text == ""
    assert since_line("a\nb\nb\n", c2.cursor, "sim:other").text == "a\nb\nb\n"   # another source
    assert since_line("x\ny\n", c2.cursor, "sim:x").text == "x\ny\n"              # no timestamps: all new
    assert since_line("", c2.cursor, "sim:x").cursor["line"] == 0
    dated = since_line("[ 5.0] a\n[ 11.8] b\n", None, "sim:x").cursor
    assert since_line("x\ny\n", dated, "sim:x").text == "x\ny\n"     # the old lines had dates, these none
    assert since_line("[ 3.0] x\n[ 12.0] y\nz\n", dated, "sim:x").text == "[ 12.0] y\nz\n"
    legacy = {"source": "dmesg", "line": 1}                   # a cursor of an older gpuhc: by count
    assert since_line("a\nb\n", legacy, "dmesg").text == "b\n"


# -- log files -----------------------------------------------------------------------------------

def test_file_cursor_rotation_and_truncation(tmp_path):
    log = tmp_path / "kern.log"
    log.write_text("[1.0] " + XID48 + "\n[2.0] partial")
    chunk = H._read_file_since(str(log), None)
    assert chunk.text.count("\n") == 1                        # the partial line waits
    with open(log, "a") as fh:
        fh.write(" line\n[3.0] " + XID79 + "\n")
    chunk = H._read_file_since(str(log), chunk.cursor)
    assert chunk.text.startswith("[2.0] partial line\n") and chunk.first_line == 2
    assert [(e.xid, e.line) for e in X.scan(chunk.text, chunk.first_line)] == [(79, 3)]
    cursor = chunk.cursor
    # rotated: a new file under the name (new inode)
    os.rename(log, tmp_path / "kern.log.1")
    log.write_text("[4.0] " + XID79 + "\n")
    chunk = H._read_file_since(str(log), cursor)
    assert (chunk.first_line, [e.xid for e in X.scan(chunk.text)]) == (1, [79])
    # rotated after more lines were written to the old file: those are read first, then the new file
    with open(log, "a") as fh:
        fh.write("[4.5] " + XID79)                          # its last line, never finished
    os.rename(tmp_path / "kern.log.1", tmp_path / "kern.log.2")
    os.rename(log, tmp_path / "kern.log.1")
    log.write_text("[5.0] " + XID48 + "\n[5.5] " + XID79 + "\n")
    (tmp_path / "kern.log.2.gz").write_bytes(b"\x1f\x8b")
    rotated = H._read_file_since(str(log), chunk.cursor)
    assert [e.xid for e in X.scan(rotated.text)] == [79, 48, 79]    # .1's last line, then the new file
    assert rotated.text.startswith("[4.5] ")
    assert rotated.first_line == 2 and rotated.cursor["line"] == 2
    assert H._read_file_since(str(log), rotated.cursor).text == ""
    (tmp_path / "kern.log.1").write_text("[9.0] rewritten\n")      # the old file is gone: nothing to add
    log.unlink()
    log.write_text("[10.0] " + XID48 + "\n")
    assert [e.xid for e in X.scan(H._read_file_since(str(log), rotated.cursor).text)] == [48]
    log.write_text("[4.0] " + XID79 + "\n")
    chunk = H._read_file_since(str(log), None)
    # truncated (copytruncate): smaller than the cursor
    with open(log, "r+") as fh:
        fh.truncate(0)
    assert H._read_file_since(str(log), chunk.cursor).cursor["offset"] == 0
    log.write_text("[4.0] " + XID79 + "\n")
    cursor = H._read_file_since(str(log), None).cursor
    # truncated and grown past the old offset before the next scan: the bytes before it changed
    with open(log, "r+") as fh:
        fh.truncate(0)
        fh.write("[5.0] " + XID48 + " and more text\n[6.0] x\n")
    chunk = H._read_file_since(str(log), cursor)
    assert chunk.first_line == 1 and [e.xid for e in X.scan(chunk.text)] == [48]


# -- helpers -------------------------------------------------------------------------------------

def _stub(tmp_path, monkeypatch, name, output, rc=0):
    """An executable `name` on PATH that prints ``output`` and exits with ``rc``."""
    bindir = tmp_path / "stubs"
    bindir.mkdir(exist_ok=True)
    (bindir / (name + ".out")).write_text(output)
    script = bindir / name
    script.write_text("#!/bin/sh\ncat '%s'\nexit %d\n" % (bindir / (name + ".out"), rc))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    if not os.environ["PATH"].startswith(str(bindir)):
        monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])


def _ctx(host, state=None):
    from gpuhc.checks.base import Context
    return Context(node="n", context="check", gpu=None, host=host, config={},
                   previous={"xid": state} if state else {})


def test_copytruncate_and_odd_siblings(tmp_path):
    """copytruncate: the lines written after the last scan are in the copy (kern.log.1, a new inode
    whose bytes up to the cursor match); a FIFO or a compressed file beside the log is never opened."""
    import shutil
    log = tmp_path / "kern.log"
    log.write_text("[1.0] " + XID48 + "\n")
    cursor = H._read_file_since(str(log), None).cursor
    with open(log, "a") as fh:
        fh.write("[2.0] " + XID79 + "\n")                  # written after the scan
    os.mkfifo(str(tmp_path / "kern.log.fifo"))            # would block an open()
    (tmp_path / "kern.log.2.gz").write_bytes(b"\x1f\x8b" + b"\0" * 500)
    shutil.copyfile(log, tmp_path / "kern.log.1")         # logrotate copytruncate
    with open(log, "r+") as fh:
        fh.truncate(0)
        fh.write("[3.0] " + XID48 + "\n")
    chunk = H._read_file_since(str(log), cursor)
    assert [e.xid for e in X.scan(chunk.text)] == [79, 48]
    assert H._read_file_since(str(log), chunk.cursor).text == ""
    # a sibling as large but with other bytes before the offset is not taken for the copy
    other = tmp_path / "kern.log.old"
    other.write_text("[0.5] " + XID79 + "\n" * 200)
    with open(log, "a") as fh:
        fh.write("[4.0] " + XID79 + "\n")
    cursor = H._read_file_since(str(log), chunk.cursor).cursor
    os.unlink(tmp_path / "kern.log.1")
    with open(log, "r+") as fh:
        fh.truncate(0)
    assert H._read_file_since(str(log), cursor).text == ""
