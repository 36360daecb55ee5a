#!/usr/bin/env python3
"""Xid scan speed: a 1,000,000-line kernel log scanned whole, then 1,000 new lines scanned
incrementally from the cursor, as the xid check reads a log file source. Checks that every
Xid written is found exactly once across the incremental scans.

Budget (DESIGN.md section 10): full scan under 1 s; incremental 1,000 lines under 10 ms.
Usage: python bench/xid_scan.py [--lines N] [--runs N]
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpuhc import xid as X  # noqa: E402
from gpuhc.backends.kernel_log import _read_file_since  # noqa: E402

NOISE = [
    "[{t:12.6f}] audit: type=1400 audit({t:.3f}:{n}): apparmor=\"ALLOWED\" operation=\"open\" profile=\"snap.lxd\" name=\"/proc/{n}/\"",
    "[{t:12.6f}] mlx5_core 0000:{b:02x}:00.0: mlx5_fw_tracer_handle_traces:{n}:(pid 0): FW tracer event",
    "[{t:12.6f}] NVRM: GPU at PCI:0000:{b:02x}:00: GPU-4f6b2a41-6c7e-2b8d-1f3a-{n:012x}",
    "[{t:12.6f}] EXT4-fs (nvme0n1p{n}): mounted filesystem with ordered data mode. Quota mode: none.",
    "[{t:12.6f}] IPv4: martian source 10.0.{b}.1 from 10.0.0.{n}, on dev eth0",
]
XID = "[{t:12.6f}] NVRM: Xid (PCI:0000:{b:02x}:00): {x}, pid={n}, name=python3, Ch {n:08x}"


def lines(count, start, rng, every=10000):
    out, xids = [], 0
    for i in range(count):
        t = (start + i) * 0.001
        if rng.randrange(every) == 0:
            out.append(XID.format(t=t, b=rng.choice([0x18, 0x2a, 0x3a, 0x5d]), x=rng.choice([13, 31, 45, 48, 79]), n=i))
            xids += 1
        else:
            out.append(rng.choice(NOISE).format(t=t, b=rng.randrange(256), n=i))
    return "\n".join(out) + "\n", xids


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1000000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(7)
    tmp = tempfile.mkdtemp(prefix="gpuhc-xid-")
    path = os.path.join(tmp, "kern.log")
    text, written = lines(args.lines, 0, rng)
    with open(path, "w") as fh:
        fh.write(text)
    size = os.path.getsize(path)
    full = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        chunk = _read_file_since(path, None)
        events = X.scan(chunk.text, chunk.first_line)
        full.append(time.perf_counter() - t0)
    assert len(events) == written, (len(events), written)
    cursor, found, total = chunk.cursor, len(events), written
    inc = []
    for i in range(50):
        new, n = lines(1000, args.lines + i * 1000, rng, every=200)
        with open(path, "a") as fh:
            fh.write(new)
        total += n
        t0 = time.perf_counter()
        chunk = _read_file_since(path, cursor)
        events = X.scan(chunk.text, chunk.first_line)
        inc.append(time.perf_counter() - t0)
        found += len(events)
        cursor = chunk.cursor
    os.remove(path)
    os.rmdir(tmp)
    print("log: %d lines, %.1f MB, %d Xid lines" % (args.lines, size / 1e6, written))
    print("full scan: median %.3f s  max %.3f s  (%d runs)" % (statistics.median(full), max(full), len(full)))
    print("incremental 1,000 lines: median %.2f ms  max %.2f ms  (50 scans)" % (1e3 * statistics.median(inc), 1e3 * max(inc)))
    print("Xids written %d, found %d: %s" % (total, found, "none missed" if total == found else "MISMATCH"))
    ok = statistics.median(full) < 1.0 and statistics.median(inc) < 0.010 and total == found
    print("budget (full < 1 s, incremental < 10 ms, none missed): %s" % ("met" if ok else "NOT MET"))


if __name__ == "__main__":
    main()
