#!/usr/bin/env python3
"""Sweep planning at fleet scale (DESIGN.md section 10: over 10,000 nodes, under 1 s).

Three figures, each the median of --runs:

1. ``plan``: controller.sweep.plan alone over N node views (every 10th allocated, every 50th
   drained, every 97th in a reservation, 10 partitions, two thirds with a sweep record of up to
   three weeks ago, 200 sweep jobs in flight);
2. ``last_checked``: reading each node's newest deep record from N store summaries (parsed);
3. ``gpuhc sweep --dry-run --json`` as a whole process against a store of N nodes (one
   summary.json each, written straight to the store's layout) and Slurm tools that print the
   same N nodes as Slurm 22.05's `sinfo --json` would (a stand-in `sinfo`/`squeue`/`scontrol` on
   PATH that cat prepared files): config, Slurm's answers parsed, the store read, the plan.

Usage: python bench/sweep_plan.py [--nodes N] [--runs K] [--keep DIR]
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gpuhc.backends.slurm import JobInfo, NodeView, ReservationView  # noqa: E402
from gpuhc.controller import sweep as S  # noqa: E402

NOW = time.time()


def fleet(n):
    nodes, reserved, summaries, jobs = {}, [], {}, []
    for i in range(n):
        name = "gpu-%05d" % i
        state = "allocated" if i % 10 == 3 else "idle"
        flags = ["DRAIN"] if i % 50 == 7 else []
        nodes[name] = {"name": name, "state": state, "state_flags": flags, "partitions": ["p%d" % (i % 10)],
                       "reason": "gpuhc: RESET xid: Xid 48" if flags else ""}
        if i % 97 == 5:
            reserved.append(name)
        if i % 3:
            ts = NOW - (i % 500) * 3600.0
            summaries[name] = {"schema_version": 1, "node": name, "started_ts": ts + 60, "context": "epilog",
                               "job_id": None, "profile": "dgx-h100", "overall": "PASS", "action": None, "top": None,
                               "history": {"count": 1, "oldest_ts": ts}, "last": {"sweep": ts, "epilog": ts + 60}}
        if i % 50 == 11:
            jobs.append({"job_id": 1000 + i, "name": "gpuhc-sweep-" + name, "job_state": "PENDING", "nodes": ""})
    return nodes, reserved, summaries, jobs


def views_of(nodes):
    return {n: NodeView(n, {r["state"].upper()} | set(r["state_flags"]), reason=r["reason"],
                        partitions=r["partitions"]) for n, r in nodes.items()}


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def build_site(base, nodes, reserved, summaries, jobs):
    """The store (summaries only), stand-in Slurm tools and a config under ``base``."""
    from gpuhc.store import MARKER

    store = os.path.join(base, "store")
    os.makedirs(os.path.join(store, "nodes"), mode=0o755)
    with open(os.path.join(store, MARKER), "w") as fh:
        fh.write('{"gpuhc_store": 1, "by": "bench/sweep_plan.py"}\n')
    for name, summary in summaries.items():
        d = os.path.join(store, "nodes", name)
        os.mkdir(d, 0o755)
        with open(os.path.join(d, "summary.json"), "w") as fh:
            json.dump(summary, fh, separators=(",", ":"))
    bin_dir = os.path.join(base, "bin")
    os.mkdir(bin_dir)
    outputs = {
        "sinfo": {"nodes": list(nodes.values())},
        "squeue": {"jobs": jobs},
    }
    for tool, data in outputs.items():
        path = os.path.join(base, tool + ".json")
        with open(path, "w") as fh:
            json.dump(data, fh)
        with open(os.path.join(bin_dir, tool), "w") as fh:
            fh.write("#!/bin/sh\nexec cat %s\n" % path)
    res_line = ("ReservationName=users StartTime=2026-01-01T00:00:00 EndTime=2036-01-01T00:00:00 "
                "Duration=3653-00:00:00 Nodes=%s NodeCnt=%d CoreCnt=1 Features=(null) PartitionName=(null) "
                "Flags=SPEC_NODES TRES=cpu=1 Users=root Groups=(null) Accounts=(null) Licenses=(null) "
                "State=ACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n" % (",".join(reserved), len(reserved)))
    with open(os.path.join(base, "reservations.txt"), "w") as fh:
        fh.write(res_line)
    with open(os.path.join(bin_dir, "scontrol"), "w") as fh:
        fh.write("#!/bin/sh\nexec cat %s\n" % os.path.join(base, "reservations.txt"))
    for tool in ("sinfo", "squeue", "scontrol"):
        os.chmod(os.path.join(bin_dir, tool), 0o755)
    with open(os.path.join(base, "slurm.conf"), "w") as fh:
        fh.write("ClusterName=bench\n")
    with open(os.path.join(base, "config.yaml"), "w") as fh:
        fh.write("store: %s\nstate_dir: %s\nslurm: {timeout: 30}\ntimeouts: {store_read: 60}\n"
                 % (store, os.path.join(base, "state")))
    env = dict(os.environ, PATH=bin_dir + ":" + os.environ["PATH"], SLURM_CONF=os.path.join(base, "slurm.conf"),
               GPUHC_CONFIG=os.path.join(base, "config.yaml"))
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--keep", metavar="DIR", help="Build the site in DIR and leave it there.")
    args = ap.parse_args()
    nodes, reserved, summaries, jobs = fleet(args.nodes)
    views = views_of(nodes)
    res = [ReservationView("users", reserved, state="ACTIVE")]
    infos = [JobInfo(str(j["job_id"]), name=j["name"], state=j["job_state"]) for j in jobs]
    checked = S.last_checked(summaries)

    def plan():
        return S.plan(views, res, infos, checked, NOW, 86400.0, 4, 0.1, None, {})
    p = plan()
    print("fleet: %d nodes, %d free for a sweep, %d checked within 24 h, %d sweep jobs in flight; chosen: %s"
          % (len(views), sum(p.idle.values()), p.skipped.get("checked within the interval", 0), len(p.in_flight),
             ", ".join(c.node for c in p.chosen)))
    med, worst = median_time(plan, args.runs)
    print("plan (pure)                      median %.4f s  max %.4f s" % (med, worst))
    med, worst = median_time(lambda: S.last_checked(summaries), args.runs)
    print("last_checked over the summaries  median %.4f s  max %.4f s" % (med, worst))

    base = args.keep or tempfile.mkdtemp(prefix="gpuhc-sweep-bench-")
    if args.keep:
        os.makedirs(base, exist_ok=True)
    try:
        env = build_site(base, nodes, reserved, summaries, jobs)
        argv = [sys.executable, "-m", "gpuhc", "sweep", "--dry-run", "--json"]
        first = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        if first.returncode != 0:
            sys.exit("gpuhc sweep failed: %s" % first.stderr)
        out = json.loads(first.stdout)
        assert [c["node"] for c in out["chosen"]] == [c.node for c in p.chosen], (out["chosen"], p.chosen)

        def whole():
            subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=120, check=True)
        med, worst = median_time(whole, args.runs)
        print("gpuhc sweep --dry-run (process)  median %.4f s  max %.4f s" % (med, worst))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
