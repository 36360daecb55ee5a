#!/usr/bin/env python3
"""Blame on simulated fleets: bisection inside a failing allocation, and the pairwise quick mode.

A fleet of N nodes (default 16, 64, 256, 1024) has 0 to 4 bad nodes and maybe one bad link (a pair of
healthy nodes that fails only together). A group run fails when it holds a bad node or both ends of the
bad link, and any run fails by chance with probability p (default 0.02). Each trial starts from a failed
run of the whole fleet (for a healthy fleet, that failure was chance) and loops gpuhc.controller.blame's
Bisection until it stops: rounds are rounds of disjoint groups run in parallel, jobs are group runs.

Goals (DESIGN.md section 10, issue 16): one bad node among N found within log2(N) + 3 rounds; no innocent
node convicted over 1,000 random trials with 2% spurious failures.

The pairwise table runs the controller's quick mode (two circle-method rounds of disjoint pairs over the
fleet) and then a Bisection over the pair results (verify off: no whole-fleet run) until it stops.

Usage: python bench/blame.py [--trials 1000] [--p 0.02] [--sizes 16,64,256,1024] [--workers 2] [--seed 1]
                             [--pair-trials 200]
"""
import argparse
import math
import multiprocessing
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpuhc.controller.blame import Bisection, GroupResult, default_rounds, pair_rounds  # noqa: E402

# (label, bad nodes, bad link)
SCENARIOS = [
    ("healthy (first run failed by chance)", 0, False),
    ("1 bad node", 1, False),
    ("2 bad nodes", 2, False),
    ("3 bad nodes", 3, False),
    ("4 bad nodes", 4, False),
    ("bad link", 0, True),
    ("1 bad node + bad link", 1, True),
    ("4 bad nodes + bad link", 4, True),
]
PAIR_SCENARIOS = [("1 bad node", 1, False), ("4 bad nodes + bad link", 4, True)]


class Fleet:
    """Who is bad, and a test that runs one group: a bad node or both ends of the bad link fail it; chance
    fails any run with probability p. busbw in GB/s is only there to look like a real result."""

    def __init__(self, n, bad, link, p, rng):
        self.nodes = ["gpu-%04d" % (i + 1) for i in range(n)]
        self.bad = frozenset(rng.sample(self.nodes, bad))
        healthy = [x for x in self.nodes if x not in self.bad]
        self.link = frozenset(rng.sample(healthy, 2)) if link else None
        self.p, self.rng, self.job = p, rng, 0

    def run(self, group, force_fail=False):
        group = frozenset(group)
        self.job += 1
        if group & self.bad:
            busbw = 40.0
        elif self.link is not None and self.link <= group:
            busbw = 120.0
        elif force_fail or self.rng.random() < self.p:
            busbw = 300.0
        else:
            busbw = 400.0 + self.rng.random() * 20
        return GroupResult(group, busbw >= 360.0, busbw=busbw, size=1 << 30, job_id=str(self.job))


def score(fleet, verdict):
    convicted = set(verdict.convicted)
    links = {frozenset(link) for link in verdict.suspect_links}
    return dict(found=len(convicted & fleet.bad), innocent=len(convicted - fleet.bad),
                link_found=fleet.link in links if fleet.link is not None else None,
                false_links=len(links - {fleet.link}))


def bisection_trial(args):
    n, bad, link, p, seed, i = args
    rng = random.Random("%s-%d-%d-%d-%d" % (seed, n, bad, link, i))
    fleet = Fleet(n, bad, link, p, rng)
    plan = Bisection(fleet.nodes, [fleet.run(fleet.nodes, force_fail=True)])
    found_at, planning = {}, 0.0
    while True:
        t = time.perf_counter()
        groups = plan.next_groups()
        planning += time.perf_counter() - t
        if not groups:
            break
        for g in groups:
            plan.record(fleet.run(g))
        t = time.perf_counter()
        convicted = plan.verdict().convicted        # a verdict can be withdrawn (a link explains its runs)
        found_at = {x: found_at.get(x, plan.rounds) for x in convicted}
        planning += time.perf_counter() - t
    out = score(fleet, plan.verdict())
    out.update(rounds=plan.rounds, jobs=plan.jobs, plan_s=planning,
               found_round=max(found_at[x] for x in fleet.bad) if fleet.bad and fleet.bad <= set(found_at) else None,
               spent=plan.rounds >= plan.max_rounds)
    return out


def pairs_trial(args):
    n, bad, link, p, seed, i = args
    rng = random.Random("pairs-%s-%d-%d-%d-%d" % (seed, n, bad, link, i))
    fleet = Fleet(n, bad, link, p, rng)
    results = [fleet.run(pair) for rnd in pair_rounds(fleet.nodes, rounds=2) for pair in rnd]
    plan = Bisection(fleet.nodes, results, verify=False)
    while True:
        groups = plan.next_groups()
        if not groups:
            break
        for g in groups:
            plan.record(fleet.run(g))
    out = score(fleet, plan.verdict())
    out.update(rounds=2 + plan.rounds, jobs=len(results) + plan.jobs)
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q * len(values))) - 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--pair-trials", type=int, default=200)
    ap.add_argument("--p", type=float, default=0.02, help="chance that any run fails spuriously")
    ap.add_argument("--sizes", default="16,64,256,1024")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", default="1")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.time()
    pool = multiprocessing.Pool(args.workers) if args.workers > 1 else None
    mapper = (lambda f, it: pool.map(f, it, chunksize=20)) if pool else (lambda f, it: list(map(f, it)))

    print("Bisection inside a failing allocation: %d trials per row, spurious failure p = %g, seed %s"
          % (args.trials, args.p, args.seed))
    print()
    print("| N | scenario | rounds: median / p99 / max | all bad found by round: median / max | "
          "1 bad: found within log2(N)+3 | jobs: median / max | bad nodes found | innocents convicted | "
          "link found | false links | budget spent | plan ms/round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    goal_rounds, innocents_total, trials_total = [], 0, 0
    for n in sizes:
        limit = math.log2(n) + 3
        for label, bad, link in SCENARIOS:
            rows = mapper(bisection_trial, [(n, bad, link, args.p, args.seed, i) for i in range(args.trials)])
            rounds = [r["rounds"] for r in rows]
            jobs = [r["jobs"] for r in rows]
            found_rounds = [r["found_round"] for r in rows if r["found_round"] is not None]
            found = sum(r["found"] for r in rows)
            innocent = sum(r["innocent"] for r in rows)
            innocents_total += innocent
            trials_total += len(rows)
            within = "-"
            if bad == 1 and not link:
                ok = sum(1 for r in rows if r["found_round"] is not None and r["found_round"] <= limit)
                goal_rounds.append((n, ok, len(rows), max(r["found_round"] or 10 ** 6 for r in rows)))
                within = "%d / %d" % (ok, len(rows))
            per_round = sum(r["plan_s"] for r in rows) / max(1, sum(rounds)) * 1e3
            print("| %d | %s | %d / %d / %d | %s | %s | %d / %d | %s | %d | %s | %d | %d | %.1f |" % (
                n, label, statistics.median(rounds), pct(rounds, 0.99), max(rounds),
                "%d / %d" % (statistics.median(found_rounds), max(found_rounds)) if bad and found_rounds else "-",
                within, statistics.median(jobs), max(jobs),
                "%d / %d" % (found, bad * len(rows)) if bad else "-", innocent,
                "%d / %d" % (sum(1 for r in rows if r["link_found"]), len(rows)) if link else "-",
                sum(r["false_links"] for r in rows), sum(1 for r in rows if r["spent"]), per_round))
            sys.stdout.flush()
    print()
    print("Round budget (default_rounds): " + ", ".join("N=%d: %d" % (n, default_rounds(n)) for n in sizes))
    print()

    if args.pair_trials:
        print("Pairwise quick mode (2 circle rounds of N/2 pairs) then a Bisection over the pair results "
              "(verify off): %d trials per row" % args.pair_trials)
        print()
        print("| N | scenario | rounds: median / max | jobs: median | bad nodes found | innocents convicted | "
              "link found | false links |")
        print("|---|---|---|---|---|---|---|---|")
        for n in sizes:
            for label, bad, link in PAIR_SCENARIOS:
                rows = mapper(pairs_trial, [(n, bad, link, args.p, args.seed, i) for i in range(args.pair_trials)])
                innocents_total += sum(r["innocent"] for r in rows)
                trials_total += len(rows)
                rounds = [r["rounds"] for r in rows]
                print("| %d | %s | %d / %d | %d | %d / %d | %d | %s | %d |" % (
                    n, label, statistics.median(rounds), max(rounds), statistics.median(r["jobs"] for r in rows),
                    sum(r["found"] for r in rows), bad * len(rows), sum(r["innocent"] for r in rows),
                    "%d / %d" % (sum(1 for r in rows if r["link_found"]), len(rows)) if link else "-",
                    sum(r["false_links"] for r in rows)))
                sys.stdout.flush()
        print()

    if pool:
        pool.close()
    print("Goals:")
    for n, ok, total, worst in goal_rounds:
        print("  one bad node among %d found within log2(N)+3 = %g rounds: %d of %d trials (latest: round %s): %s"
              % (n, math.log2(n) + 3, ok, total, worst if worst < 10 ** 6 else "never",
                 "met" if ok == total else "NOT MET"))
    print("  innocent nodes convicted over all %d trials (p = %g): %d: %s"
          % (trials_total, args.p, innocents_total, "met" if innocents_total == 0 else "NOT MET"))
    print("elapsed %.0f s (%d workers)" % (time.time() - started, args.workers))


if __name__ == "__main__":
    main()
