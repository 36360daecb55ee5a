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
