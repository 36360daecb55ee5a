#!/usr/bin/env python3
"""`gpuhc report` at fleet scale: a store of N nodes (default 10,000) with R records each (default 100),
then `gpuhc report` in text, html and json timed as whole processes (median of runs, peak RSS).

Budget (DESIGN.md section 10): under 10 s and 1 GB. The records are real reports of simulated 8x H100
nodes (bundled scenarios run once each, then written straight to the store's layout: the bench measures
reading): a prolog and an epilog every hour, a bench run (gpu_bench, gpu_stress, allreduce_node) every 24
records; 1% Xid 79 lemons (drained and resumed again and again), 1% slow nodes (one GPU 25% slow), 2%
thermal slowdown, 1.5% PCIe x8, 0.5% whose corrected ECC grows; 0.5% stale. In the metric series
(store/series.py, what the report reads) each record's per-GPU temperatures and powers differ, as a
real fleet's do (so the series carries per-GPU lists, not one number: the larger case). With
--no-history the full reports (history.jsonl) are left out: the report never reads them, and a 10,000 x
100 store holds about 17 GB of them.

Usage: python bench/report_scale.py [--nodes N] [--records R] [--runs K] [--no-history]
                                    [--keep DIR | --reuse DIR]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from prolog_latency import command  # noqa: E402  (the gpuhc executable to time)
from status_scale import render  # noqa: E402  (a history line from a template, as status's bench)

from gpuhc import config as C  # noqa: E402
from gpuhc import session  # noqa: E402
from gpuhc import store as S  # noqa: E402
from gpuhc.store import series  # noqa: E402

SHARES = {"lemon": 0.01, "slow": 0.01, "thermal": 0.02, "pcie": 0.015, "ecc": 0.005}
STALE_SHARE = 0.005
SPACING = 1800.0        # seconds between a node's records


class Kind:
    """One scenario in one context: its history line template, its series envelope and detail."""

    def __init__(self, cfg, scenario, context, action=None):
        report, _, _ = session.run(cfg, context, node="gpu-00000", simulate=scenario)
        report.action = action
        self.history = _template_of(report)
        env, detail = series.series_record(report)
        env.pop("t")
        self.env = json.dumps(env, separators=(",", ":"))[1:]        # after '{"t":...,'
        self.detail = detail
        self.summary = S.summarize(report)
        self.gpus = 8


def _template_of(report):
    """status_scale.template's text parts, from a report already run."""
    import status_scale

    d = report.to_dict()
    d.update(node=status_scale.NODE, started=status_scale.STARTED, ended=status_scale.ENDED,
             started_ts=status_scale.TS, job_id=status_scale.JOB)
    text = json.dumps(d, separators=(",", ":")).replace('"%s"' % status_scale.TS, status_scale.TS)
    parts, keys = [], []
    marks = (status_scale.NODE, status_scale.STARTED, status_scale.ENDED, status_scale.TS, status_scale.JOB)
    while True:
        at = [(text.find(k), k) for k in marks if text.find(k) >= 0]
        if not at:
            parts.append(text)
            break
        pos, key = min(at)
        parts.append(text[:pos])
        keys.append(key)
        text = text[pos + len(key):]
    return parts, keys, S.summarize(report), report.ended - report.started


def series_text(kind, started, rng, ecc=None):
    m = dict(kind.detail["m"])
    if "thermal_power.temperature_c" in m:
        base = m["thermal_power.temperature_c"]
        base = max(base) if isinstance(base, list) else base
        m["thermal_power.temperature_c"] = [base + rng.randint(-3, 6) for _ in range(kind.gpus)]
        m["thermal_power.power_w"] = [round(70 + rng.random() * 30, 1) for _ in range(kind.gpus)]
    if ecc is not None and "ecc.aggregate_corrected" in m:
        m["ecc.aggregate_corrected"] = [12, 12, ecc, 12, 12, 12, 12, 12]
    detail = json.dumps({"k": kind.detail["k"], "m": m}, separators=(",", ":"))
    return '{"t":%.3f,%s\t%s\n' % (started, kind.env, detail)


def build(root, nodes, records, history):
    cfg = C.validate({"store": root, "state_dir": root + "-state",
                      "detect": {"slurm_features": False, "cloud_metadata": False}}, "bench")
    kinds = {
        "prolog": Kind(cfg, "h100-healthy", "prolog"), "epilog": Kind(cfg, "h100-healthy", "epilog"),
        "bench": Kind(cfg, "h100-healthy", "bench"), "slow": Kind(cfg, "h100-gpu-slow", "bench"),
        "thermal": Kind(cfg, "h100-thermal-slowdown", "prolog"), "pcie": Kind(cfg, "h100-pcie-x8", "prolog"),
        "xid79": Kind(cfg, "h100-xid79", "prolog", action="drain"),
        "resume": Kind(cfg, "h100-healthy", "healthcheck", action="resume"),
    }
    rng = random.Random(17)
    plan = []
    for kind, share in SHARES.items():
        plan.extend([kind] * int(nodes * share))
    plan.extend(["healthy"] * (nodes - len(plan)))
    rng.shuffle(plan)
    stale_from = nodes - int(nodes * STALE_SHARE)
    now = time.time()
    os.makedirs(os.path.join(root, "nodes"), 0o755, exist_ok=True)
    for n, what in enumerate(plan):
        node = "gpu-%05d" % (n + 1)
        d = os.path.join(root, "nodes", node)
        os.mkdir(d, 0o755)
        newest = now - (3 * 86400 if n >= stale_from else 600) + n * 0.01
        hist, lines = [], []
        last = None
        for r in range(records):
            started = newest - (records - 1 - r) * SPACING
            if r % 24 == 23:
                kind = kinds["slow" if what == "slow" else "bench"]
            elif what == "lemon" and r % 30 == 10:
                kind = kinds["xid79"]
            elif what == "lemon" and r % 30 == 14:
                kind = kinds["resume"]
            elif what in ("thermal", "pcie") and r % 2 == 0:
                kind = kinds[what]
            else:
                kind = kinds["prolog" if r % 2 == 0 else "epilog"]
            ecc = int(12 + 150 * r) if what == "ecc" else None
            lines.append(series_text(kind, started, rng, ecc))
            if history:
                hist.append(render(kind.history, node, started, str(10 ** 6 + r)))
            last = (kind, started, r)
        with open(os.path.join(d, series.SERIES), "w") as fh:
            fh.write("".join(lines))
        kind, started, r = last
        if history:
            with open(os.path.join(d, S.HISTORY), "w") as fh:
                fh.write("".join(hist))
        with open(os.path.join(d, S.LATEST), "w") as fh:
            fh.write(hist[-1] if history else render(kind.history, node, started, str(10 ** 6 + r)))
        summary = dict(kind.summary, node=node, started_ts=round(started, 3), job_id=str(10 ** 6 + r),
                       history={"count": records, "oldest_ts": round(newest - (records - 1) * SPACING, 3)})
        with open(os.path.join(d, S.SUMMARY), "wb") as fh:
            fh.write(S.encode(summary))
        if n and n % 1000 == 0:
            print("  %d nodes written" % n, flush=True)
    return cfg


def timed(cmd, env):
    """(wall seconds, peak RSS MB, output bytes) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit("%s exited %d: %s" % (" ".join(cmd), proc.returncode, err.decode()[-800:]))
    return wall, out, err


def peak_rss(cmd, env):
    """(peak RSS of the process alone, peak of the sum over the process and its readers) in MB. The
    readers are detached children (store/detach.py), no children of the process once detached: every
    process running the same command line is summed, sampled every 10 ms (an upper bound: pages a
    fork shares are counted in each)."""
    argv = "\0".join(cmd).encode() + b"\0"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    alone = total = 0
    while proc.poll() is None:
        mine, tree = 0, 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as fh:
                    if not fh.read().endswith(argv):      # a script: its interpreter comes first
                        continue
                with open("/proc/%s/status" % pid) as fh:
                    rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError):
                continue
            tree += rss
            if int(pid) == proc.pid:
                mine = rss
        alone, total = max(alone, mine), max(total, tree)
        time.sleep(0.01)
    return alone / 1024.0, total / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--records", type=int, default=100, help="records per node")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-history", action="store_true", help="leave out the full reports (history.jsonl)")
    ap.add_argument("--keep", metavar="DIR", help="build the store in DIR and leave it there")
    ap.add_argument("--reuse", metavar="DIR", help="time against a store built before with --keep")
    ap.add_argument("--formats", default="text,html,json")
    ap.add_argument("--gpuhc", help="gpuhc executable (default: the one beside this Python, else python -m gpuhc)")
    args = ap.parse_args()
    base = args.reuse or args.keep or tempfile.mkdtemp(prefix="gpuhc-report-bench-")
    root = os.path.join(base, "store")
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            build(root, args.nodes, args.records, not args.no_history)
            print("built %d nodes x %d records in %.1f s (%s)" % (args.nodes, args.records, time.perf_counter() - t0,
                                                                 "series only" if args.no_history else "with history"))
        S.init_store(root)
        conf = os.path.join(base, "config.yaml")
        with open(conf, "w") as fh:
            fh.write("store: %s\nstate_dir: %s-state\nslurm: {backend: none}\n" % (root, root))
        env = dict(os.environ, GPUHC_CONFIG=conf)
        size = sum(os.path.getsize(os.path.join(root, "nodes", n, series.SERIES))
                   for n in os.listdir(os.path.join(root, "nodes")))
        print("metric series: %.0f MB (%.0f bytes a record)" % (size / 1e6, size / (args.nodes * args.records)))
        results = []
        for fmt in args.formats.split(","):
            cmd = command(args.gpuhc) + ["report", "--format", fmt]
            _, out, err = timed(cmd, env)                        # warm the page cache
            walls = sorted(timed(cmd, env)[0] for _ in range(args.runs))
            alone, rss = peak_rss(cmd, env)
            results.append(("gpuhc report --format %s" % fmt, statistics.median(walls), walls[-1], alone, rss,
                            len(out)))
            if fmt == "json":
                rep = json.loads(out)
                print("json: %d nodes scored, %d lemons, %d stragglers, %d anomalies, needs a person: %s" % (
                    len(rep["scores"]["nodes"]), len(rep["reliability"]["lemons"]),
                    len(rep["anomalies"]["stragglers"]), len(rep["anomalies"]["fleet"]),
                    {k: len(v) for k, v in rep["summary"]["needs_person"].items()}))
            progress = [line for line in err.decode().splitlines() if "report: read" in line]
            print("%s: %d progress lines on stderr" % (fmt, len(progress)))
        print("%-30s %8s %8s %14s %16s %10s" % ("command", "median", "max", "peak RSS", "with readers", "output"))
        for name, median, worst, alone, rss, out_bytes in results:
            print("%-30s %7.2fs %7.2fs %11.0f MB %13.0f MB %7.1f MB" % (name, median, worst, alone, rss,
                                                                       out_bytes / 1e6))
        if any(median >= 10.0 or rss >= 1024 for _, median, _, _, rss, _ in results):
            sys.exit("over budget: report must take under 10 s and 1 GB")
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
