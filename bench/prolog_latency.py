#!/usr/bin/env python3
"""Prolog latency: `gpuhc check --suite prolog` and `gpuhc prolog` (the Slurm context: checks, then
the result recorded in a local store) on the simulated healthy 8x H100 node, each as a whole
process, N times. Prints median and max wall time and peak RSS, and whether torch got imported.

Budget (DESIGN.md section 10): median wall under 0.3 s, peak RSS under 60 MB, no torch.
Usage: python bench/prolog_latency.py [--runs N] [--scenario NAME] [--gpuhc PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def command(gpuhc):
    if gpuhc:
        return [gpuhc]
    venv = os.path.join(os.path.dirname(sys.executable), "gpuhc")
    return [venv] if os.path.exists(venv) else [sys.executable, "-m", "gpuhc"]


def one(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--scenario", default="h100-healthy")
    ap.add_argument("--gpuhc", help="gpuhc executable (default: the one beside this Python, else python -m gpuhc)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gpuhc-bench-")
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as fh:
        fh.write("store: %s/store\nstate_dir: %s/state\n" % (tmp, tmp))
    env = dict(os.environ, GPUHC_CONFIG=cfg, SLURMD_NODENAME="gpu-001")
    env.pop("SLURM_JOB_ID", None)
    subprocess.run(command(args.gpuhc) + ["store", "init", tmp + "/store"], env=env, check=True,
                   stdout=subprocess.DEVNULL)      # as an operator does once: writers refuse a store without it
    results = []
    for sub in (["check", "--suite", "prolog", "--no-record"], ["prolog"]):
        cmd = command(args.gpuhc) + ["--simulate", args.scenario] + sub
        one(cmd, env)   # warm the page cache
        walls, rss = [], []
        for _ in range(args.runs):
            wall, maxrss, rc = one(cmd, env)
            if rc != 0:
                sys.exit("gpuhc exited %d on %s" % (rc, args.scenario))
            walls.append(wall)
            rss.append(maxrss)
        results.append((cmd, walls, rss))
    probe = ("import sys\nsys.argv=%r\nfrom gpuhc.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 'NOTORCH')"
             % (["gpuhc", "check", "--suite", "prolog", "--simulate", args.scenario, "--json"],))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout
    torch = "yes" if "TORCH" in out.split()[-1:] else "no"
    shutil.rmtree(tmp, ignore_errors=True)
    print("runs: %d  cpus: %d" % (args.runs, os.cpu_count() or 0))
    ok = torch == "no"
    for cmd, walls, rss in results:
        print("command: %s" % " ".join(cmd))
        print("  wall median: %.3f s  p90: %.3f s  max: %.3f s" % (
            statistics.median(walls), sorted(walls)[int(0.9 * (len(walls) - 1))], max(walls)))
        print("  peak RSS max: %.1f MB  median: %.1f MB" % (max(rss), statistics.median(rss)))
        ok = ok and statistics.median(walls) < 0.3 and max(rss) < 60
    print("torch imported: %s" % torch)
    print("budget (median < 0.3 s, RSS < 60 MB, no torch): %s" % ("met" if ok else "NOT MET"))


if __name__ == "__main__":
    main()
