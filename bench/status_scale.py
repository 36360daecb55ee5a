#!/usr/bin/env python3
"""Status at fleet scale: a store of N nodes (default 10,000) with R history records each (default 100),
then `gpuhc status`, `gpuhc status -N` and `gpuhc status -R` timed as whole processes (median of runs).

Budget (DESIGN.md section 10): under 1 s each. The records are real reports of simulated 8x H100 nodes
(mostly healthy; some Xid 79, PCIe x8, thermal slowdown; a few stale), written straight to the
store's layout so a million records take about a minute, not an hour: the bench measures reading.
The store takes about 17 KB a record (17 GB at the defaults) in a temporary directory, removed at
the end unless --keep.

Usage: python bench/status_scale.py [--nodes N] [--records R] [--runs K] [--keep DIR | --reuse DIR]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gpuhc import config as C          # noqa: E402
from gpuhc import session, store as S  # noqa: E402
from prolog_latency import command     # noqa: E402  (the gpuhc executable to time)

# (scenario, share of the fleet); the rest is healthy
MIX = [("h100-xid79", 0.015), ("h100-pcie-x8", 0.015), ("h100-thermal-slowdown", 0.02)]
STALE_SHARE = 0.005
NODE, STARTED, ENDED, TS, JOB = "@@node@@", "@@started@@", "@@ended@@", "@@ts@@", "@@job@@"


def template(cfg, scenario):
    """A real report of the scenario as text parts around the fields that change per record."""
    report, _, _ = session.run(cfg, "prolog", node="gpu-00000", simulate=scenario)
    d = report.to_dict()
    d.update(node=NODE, started=STARTED, ended=ENDED, started_ts=TS, job_id=JOB)
    text = json.dumps(d, separators=(",", ":"))
    text = text.replace('"%s"' % TS, TS)
    parts, keys = [], []
    while True:
        at = [(text.find(k), k) for k in (NODE, STARTED, ENDED, TS, JOB) if text.find(k) >= 0]
        if not at:
            parts.append(text)
            break
        pos, key = min(at)
        parts.append(text[:pos])
        keys.append(key)
        text = text[pos + len(key):]
    return parts, keys, S.summarize(report), report.ended - report.started


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


def render(tpl, node, started, job):
    parts, keys, _, duration = tpl
    values = {NODE: node, STARTED: iso(started), ENDED: iso(started + duration), TS: "%.3f" % started, JOB: job}
    out = [parts[0]]
    for key, part in zip(keys, parts[1:]):
        out.append(values[key])
        out.append(part)
    return "".join(out) + "\n"


def build(root, nodes, records):
    cfg = C.validate({"store": root, "state_dir": root + "-state",
                      "detect": {"slurm_features": False, "cloud_metadata": False}}, "bench")
    healthy = template(cfg, "h100-healthy")
    faulty = [(template(cfg, name), share) for name, share in MIX]
    now = time.time()
    os.makedirs(os.path.join(root, "nodes"), 0o755, exist_ok=True)
    plan = []
    start = 0
    for tpl, share in faulty:
        count = int(nodes * share)
        plan.extend([tpl] * count)
        start += count
    plan.extend([healthy] * (nodes - len(plan)))
    stale_from = nodes - int(nodes * STALE_SHARE)
    for n, tpl in enumerate(plan):
        node = "gpu-%05d" % (n + 1)
        d = os.path.join(root, "nodes", node)
        os.mkdir(d, 0o755)
        newest = now - (3 * 86400 if n >= stale_from else 600) + n * 0.01
        history = [render(healthy if r < records - 1 else tpl, node, newest - (records - 1 - r) * 1800, str(10 ** 6 + r))
                   for r in range(records)]
        with open(os.path.join(d, S.HISTORY), "w") as fh:
            fh.write("".join(history))
        with open(os.path.join(d, S.LATEST), "w") as fh:
            fh.write(history[-1])
        summary = dict(tpl[2], node=node, started_ts=round(newest, 3), job_id=str(10 ** 6 + records - 1),
                       history={"count": records, "oldest_ts": round(newest - (records - 1) * 1800, 3)})
        with open(os.path.join(d, S.SUMMARY), "wb") as fh:
            fh.write(S.encode(summary))
    return cfg


def timed(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit("%s exited %d: %s" % (" ".join(cmd), proc.returncode, proc.stderr.decode()[-500:]))
    return wall, proc.stdout.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--records", type=int, default=100, help="history records per node")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="build the store in DIR and leave it there")
    ap.add_argument("--reuse", metavar="DIR", help="time against a store built before with --keep")
    ap.add_argument("--gpuhc", help="gpuhc executable (default: the one beside this Python, else python -m gpuhc)")
    args = ap.parse_args()
    base = args.reuse or args.keep or tempfile.mkdtemp(prefix="gpuhc-status-bench-")
    root = os.path.join(base, "store")
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            build(root, args.nodes, args.records)
            print("built %d nodes x %d records in %.1f s" % (args.nodes, args.records, time.perf_counter() - t0))
        S.init_store(root)          # as an operator does once (readers warn about a store without its marker)
        conf = os.path.join(base, "config.yaml")
        with open(conf, "w") as fh:
            fh.write("store: %s\nstate_dir: %s-state\n" % (root, root))
        env = dict(os.environ, GPUHC_CONFIG=conf)
        results = []
        for extra in ([], ["-N"], ["-R"]):
            cmd = command(args.gpuhc) + ["status"] + extra
            _, out = timed(cmd, env)          # warm the page cache
            if extra == ["-N"] and len(out.splitlines()) != args.nodes + 1:
                sys.exit("status -N printed %d lines for %d nodes" % (len(out.splitlines()), args.nodes))
            walls = sorted(timed(cmd, env)[0] for _ in range(args.runs))
            results.append((" ".join(["gpuhc", "status"] + extra), statistics.median(walls), walls[-1],
                            len(out.splitlines())))
        print("%-20s %8s %8s %6s" % ("command", "median", "max", "lines"))
        for name, median, worst, lines in results:
            print("%-20s %7.3fs %7.3fs %6d" % (name, median, worst, lines))
        if any(median >= 1.0 for _, median, _, _ in results):
            sys.exit("over budget: status must take under 1 s")
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
