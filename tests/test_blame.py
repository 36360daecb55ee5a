"""Blame for multi-node all-reduce (gpuhc.controller.blame): pairwise rounds, bisection, conviction.

Pure logic on plain data: no Slurm, no GPU. Fleets are simulated: a run fails when it holds a bad node or both
ends of a bad link, or by chance (a seeded generator, or a list of runs told to fail once).
"""
import itertools
import math
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from gpuhc.controller import blame
from gpuhc.controller.blame import Bisection, Evidence, GroupResult, Verdict, convict, pair_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def names(n):
    return ["gpu-%02d" % (i + 1) for i in range(n)]


class Fleet:
    """A simulated fleet: ``bad`` nodes fail every run they are in, the ``link`` pair fails every run holding
    both; any run fails by chance with probability ``p`` (seeded), and the groups in ``flaky`` fail once."""

    def __init__(self, nodes, bad=(), link=None, p=0.0, seed=0, flaky=()):
        self.nodes, self.bad = list(nodes), frozenset(bad)
        self.link = frozenset(link) if link else None
        self.p, self.rng = p, random.Random(seed)
        self.flaky = [frozenset(g) for g in flaky]
        self.runs = []

    def run(self, group, fail=False):
        group = frozenset(group)
        if group in self.flaky:
            self.flaky.remove(group)
            fail = True
        if group & self.bad:
            busbw = 40.0
        elif self.link is not None and self.link <= group:
            busbw = 100.0
        elif fail or self.rng.random() < self.p:
            busbw = 300.0
        else:
            busbw = 400.0
        result = GroupResult(group, busbw >= 360, busbw=busbw, size=1 << 30, job_id=str(len(self.runs) + 1))
        self.runs.append(result)
        return result


def bisect(fleet, **kw):
    """Run a Bisection to its end from a failed run of the whole fleet; (plan, {node: round convicted})."""
    plan = Bisection(fleet.nodes, [fleet.run(fleet.nodes, fail=True)], **kw)
    found = {}
    while True:
        groups = plan.next_groups()
        if not groups:
            break
        flat = [n for g in groups for n in g]
        assert len(flat) == len(set(flat)), "groups of one round must be disjoint: %s" % (groups,)
        assert all(len(g) >= 2 for g in groups)
        assert set(flat) <= set(fleet.nodes)
        for g in groups:
            plan.record(fleet.run(g))
        found = {x: found.get(x, plan.rounds) for x in plan.verdict().convicted}
    return plan, found


def fails(nodes, busbw=50.0, job=None):
    return GroupResult(frozenset(nodes), False, busbw=busbw, size=1 << 30, job_id=job)


def passes(nodes):
    return GroupResult(frozenset(nodes), True, busbw=400.0, size=1 << 30)


# -- data ---------------------------------------------------------------------------------------------------
def test_group_result_keeps_nodes_as_a_frozenset_and_refuses_nonsense():
    r = GroupResult(["a", "b", "a"], False, busbw=12.5, size=1 << 30, job_id="42.3", time=1.0)
    assert r.nodes == frozenset({"a", "b"}) and isinstance(r.nodes, frozenset)
    with pytest.raises(TypeError):
        GroupResult("gpu-01", True)            # one string is not a node list
    with pytest.raises(ValueError):
        GroupResult([], True)
    with pytest.raises(TypeError):
        GroupResult(["a", "b"], 1)


# -- pairwise rounds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(2, 13))
def test_circle_rounds_cover_every_pair_exactly_once(n):
    nodes = names(n)
    rounds = pair_rounds(nodes)
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    seen = Counter(frozenset(p) for r in rounds for p in r)
    assert set(seen) == {frozenset(p) for p in itertools.combinations(nodes, 2)}
    assert set(seen.values()) == {1}
    for r in rounds:
        flat = [x for p in r for x in p]
        assert len(flat) == len(set(flat)) == 2 * (n // 2)      # disjoint; an odd n leaves one node out
        assert all(nodes.index(a) < nodes.index(b) for a, b in r)
    if n % 2:                                                     # each node sits out exactly one round
        byes = [next(x for x in nodes if all(x not in p for p in r)) for r in rounds]
        assert sorted(byes) == nodes


def test_quick_mode_and_determinism():
    nodes = names(10)
    full = pair_rounds(nodes)
    assert pair_rounds(nodes, rounds=1) == full[:1]
    assert pair_rounds(nodes, rounds=2) == full[:2]
    partners = {x: set() for x in nodes}
    for r in full[:2]:
        for a, b in r:
            partners[a].add(b)
            partners[b].add(a)
    assert all(len(p) == 2 for p in partners.values())           # two rounds: two different partners each
    assert pair_rounds(nodes) == full                              # deterministic
    assert pair_rounds(nodes + nodes[:3]) == full                  # duplicates dropped
    assert pair_rounds(nodes, rounds=99) == full
    assert pair_rounds(nodes, rounds=0) == [] and pair_rounds(["a"]) == [] and pair_rounds([]) == []
    with pytest.raises(ValueError):
        pair_rounds(nodes, rounds=-1)


# -- the conviction rule ------------------------------------------------------------------------------------
def pair_history(bad="x", partners=("a", "b", "c", "d", "e"), spare=("p", "q", "r", "s", "t")):
    """x failed with each partner; every partner passed with a spare node."""
    return [fails({bad, p}, busbw=40.0 + i, job=str(i)) for i, p in enumerate(partners)] + \
        [passes({p, s}) for p, s in zip(partners, spare)]


def test_a_node_failing_with_five_partners_that_pass_elsewhere_is_convicted_with_its_evidence():
    v = convict(pair_history())
    assert isinstance(v, Verdict) and set(v.convicted) == {"x"}
    ev = v.convicted["x"]
    assert isinstance(ev, Evidence)
    assert ev.partners == ("a", "b", "c", "d", "e")
    assert ev.busbw == 40.0 and ev.size == 1 << 30 and len(ev.runs) == 5
    assert not v.suspect_links and "x" not in v.innocent
    assert v.innocent == frozenset("abcdepqrst") and v.unexplained == ()


def test_too_little_evidence_convicts_nobody():
    # four partners: five runs are needed (a bad link x-a plus chance must not be enough)
    v = convict(pair_history(partners="abcd"))
    assert not v.convicted and v.undecided == {"x"} and len(v.unexplained) == 4
    # five failures with one partner: x or the link x-a, cannot tell
    v = convict([fails({"x", "a"})] * 5 + [passes({"a", "b"})])
    assert not v.convicted and not v.suspect_links
    # five failures, but one partner in all but two of them: a bad link x-a and two chance failures
    v = convict([fails({"x", "a", "b"}), fails({"x", "a", "c"}), fails({"x", "a", "d"}),
                 fails({"x", "e"}), fails({"x", "f"}), passes(set("abcdef"))])
    assert not v.convicted


def test_runs_that_do_not_single_the_node_out_do_not_convict_it():
    # x fails in five groups whose other nodes passed, but never together: a link between two of them could
    # explain every failure, so only the runs that single x out (there are none) would convict
    groups = [{"x", "a%d" % i, "b%d" % i} for i in range(5)]
    results = [fails(g) for g in groups] + [passes({"a%d" % i, "z%d" % i}) for i in range(5)] + \
        [passes({"b%d" % i, "y%d" % i}) for i in range(5)]
    assert not convict(results).convicted
    # the same with each pair passing together: convicted
    results += [passes({"a%d" % i, "b%d" % i}) for i in range(5)]
    assert set(convict(results).convicted) == {"x"}


def test_leaving_the_node_out_makes_its_group_pass():
    g = {"x", "a", "b", "c"}
    results = [fails(g), fails({"x", "d"}), fails({"x", "e"}), fails({"x", "f"}), fails({"x", "h"}),
               passes({"a", "b", "c", "p"}), passes(set("defh") | {"q"})]
    v = convict(results)
    assert set(v.convicted) == {"x"}
    assert v.convicted["x"].partners == ("a", "b", "c", "d", "e", "f", "h")


def test_a_pair_that_fails_while_both_pass_elsewhere_is_a_suspect_link_not_a_node_verdict():
    results = [fails({"a", "b"}, busbw=90.0)] * 5 + [passes({"a", "c"}), passes({"b", "d"})]
    v = convict(results)
    assert not v.convicted
    assert list(v.suspect_links) == [("a", "b")]
    assert v.suspect_links[("a", "b")].busbw == 90.0 and v.suspect_links[("a", "b")].partners == ()
    assert {"a", "b"} <= v.innocent and v.unexplained == ()
    # once: not yet a verdict, the pair is left unexplained
    v = convict(results[4:])
    assert not v.suspect_links and not v.convicted and v.unexplained == (frozenset({"a", "b"}),)


def test_one_spurious_failure_convicts_nobody():
    fleet = names(8)
    results = [passes(fleet[:4]), passes(fleet[4:]), fails({fleet[0], fleet[4]}), passes({fleet[0], fleet[5]})]
    v = convict(results)
    assert not v.convicted and not v.suspect_links and v.innocent == set(fleet)
    # a failure of a group that also passed is chance
    assert convict([fails(fleet[:2]), passes(fleet[:2])]).unexplained == ()


def test_a_node_that_ever_passed_is_not_convicted():
    # an intermittent node: many failures, one pass; its failures stay unexplained
    results = pair_history() + [passes({"x", "z"})]
    v = convict(results)
    assert not v.convicted and "x" in v.innocent and len(v.unexplained) == 5


def test_one_node_runs_are_no_evidence_and_a_healthy_fleet_convicts_nobody():
    v = convict([fails({"x"})] * 10)
    assert not v.convicted and not v.undecided and not v.innocent
    fleet = names(16)
    v = convict([passes(p) for r in pair_rounds(fleet) for p in r])
    assert not v.convicted and not v.suspect_links and v.innocent == set(fleet) and not v.undecided


def test_parameters_are_checked():
    with pytest.raises(ValueError):
        convict([], tolerate=-1)
    with pytest.raises(ValueError):
        convict([], min_runs=0)
    with pytest.raises(ValueError):
        Bisection(["a"])
    with pytest.raises(ValueError):
        Bisection(["a", "b"], small=1)
    with pytest.raises(TypeError):
        Bisection(["a", "b"]).record(({"a", "b"}, False))


@pytest.mark.parametrize("tolerate", [0, 1, 2, 3])
def test_discarding_runs_is_computed_like_the_brute_force(tolerate):
    """Rule 4c, both ways it is computed, against trying every set of runs to discard."""
    rng = random.Random(tolerate)
    others = ["n%d" % i for i in range(7)]
    for _ in range(300):
        runs = [fails({"x"} | set(rng.sample(others, rng.randint(1, 3)))) for _ in range(rng.randint(1, 7))]
        k = blame._Knowledge(runs + [passes(others)], tolerate=tolerate, min_runs=1)
        brute = len(runs) >= tolerate + 2 and all(
            frozenset.intersection(*[r.nodes for i, r in enumerate(runs) if i not in drop]) == {"x"}
            for drop in itertools.combinations(range(len(runs)), tolerate))
        assert k._pins_node("x", runs) == brute, runs


# -- bisection ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,seeds", [(8, range(40)), (16, range(40)), (64, range(25))])
def test_bisection_finds_one_bad_node_within_log2n_plus_3_rounds(n, seeds):
    for seed in seeds:
        rng = random.Random(seed)
        nodes = names(n)
        bad = rng.choice(nodes)
        plan, found = bisect(Fleet(nodes, bad=[bad], p=0.02, seed=seed))
        v = plan.verdict()
        assert set(v.convicted) == {bad}, (seed, v.convicted)
        assert found[bad] <= math.log2(n) + 3, (seed, found)
        assert not v.suspect_links and v.innocent == set(nodes) - {bad} and not v.undecided
        assert plan.done and plan.rounds <= plan.max_rounds


def test_bisection_every_position_of_the_bad_node_without_chance():
    nodes = names(8)
    for bad in nodes:
        plan, found = bisect(Fleet(nodes, bad=[bad]))
        assert set(plan.verdict().convicted) == {bad} and found[bad] <= 6


@pytest.mark.parametrize("n", [16, 64])
def test_bisection_finds_two_bad_nodes(n):
    for seed in range(12):
        rng = random.Random(100 + seed)
        nodes = names(n)
        bad = rng.sample(nodes, 2)
        plan, _ = bisect(Fleet(nodes, bad=bad, p=0.02, seed=seed))
        assert set(plan.verdict().convicted) == set(bad), seed


def test_two_bad_nodes_in_one_small_group_are_both_found():
    nodes = names(16)
    plan, _ = bisect(Fleet(nodes, bad=[nodes[0], nodes[1]]))
    assert set(plan.verdict().convicted) == set(nodes[:2])


@pytest.mark.parametrize("n", [8, 16, 64])
def test_a_bad_link_convicts_no_node_and_is_reported(n):
    for seed in range(8):
        rng = random.Random(200 + seed)
        nodes = names(n)
        link = sorted(rng.sample(nodes, 2))
        plan, _ = bisect(Fleet(nodes, link=link, p=0.02, seed=seed))
        v = plan.verdict()
        assert not v.convicted, seed
        assert list(v.suspect_links) == [tuple(link)], (seed, v.suspect_links)
        assert v.innocent == set(nodes)


def test_a_bad_node_and_a_bad_link_are_told_apart():
    nodes = names(16)
    plan, _ = bisect(Fleet(nodes, bad=[nodes[3]], link=(nodes[8], nodes[12]), p=0.02, seed=5))
    v = plan.verdict()
    assert set(v.convicted) == {nodes[3]} and list(v.suspect_links) == [(nodes[8], nodes[12])]


@pytest.mark.parametrize("n", [8, 16, 64])
def test_a_healthy_fleet_convicts_nobody(n):
    for seed in range(10):
        plan, _ = bisect(Fleet(names(n), p=0.02, seed=seed))    # the first run failed by chance
        v = plan.verdict()
        assert not v.convicted and not v.suspect_links and v.unexplained == ()
        assert plan.rounds <= 4


def test_a_single_spurious_failure_in_a_bisection_convicts_nobody():
    nodes = names(16)
    bad = nodes[5]
    first, _ = bisect(Fleet(nodes, bad=[bad]))
    # every run of the chance-free bisection that passed, made to fail once by chance in turn
    for r in [r for r in first.results if r.passed]:
        plan, _ = bisect(Fleet(nodes, bad=[bad], flaky=[r.nodes]))
        v = plan.verdict()
        assert set(v.convicted) == {bad}, r.nodes
        assert v.innocent == set(nodes) - {bad}


def test_chance_failures_never_convict_an_innocent_node():
    # many trials at a spurious rate five times the bench's, so chance gets plenty of tries
    for seed in range(150):
        rng = random.Random(300 + seed)
        nodes = names(16)
        bad = rng.sample(nodes, rng.randint(0, 2))
        plan, _ = bisect(Fleet(nodes, bad=bad, p=0.1, seed=seed))
        assert set(plan.verdict().convicted) <= set(bad), seed


def test_next_groups_is_stable_until_results_are_recorded_and_the_budget_stops_it():
    nodes = names(16)
    fleet = Fleet(nodes, bad=[nodes[9]])
    plan = Bisection(nodes, [fleet.run(nodes, fail=True)], max_rounds=2)
    first = plan.next_groups()
    assert plan.next_groups() == first and plan.rounds == 1 and plan.jobs == len(first)
    assert first == [tuple(nodes[:8]), tuple(nodes[8:])]            # halves, in the order given
    for g in first:
        plan.record(fleet.run(g))
    for g in plan.next_groups():
        plan.record(fleet.run(g))
    assert plan.rounds == 2 and plan.next_groups() == [] and plan.done
    v = plan.verdict()
    assert not v.convicted and nodes[9] in v.undecided and set(nodes[:8]) <= v.innocent


def test_without_results_the_whole_group_runs_first_and_a_pass_ends_it():
    nodes = names(6)
    plan = Bisection(nodes)
    assert plan.next_groups() == [tuple(nodes)]
    plan.record(passes(nodes))
    assert plan.next_groups() == [] and plan.done
    assert not plan.verdict().convicted and plan.verdict().innocent == set(nodes)


def test_results_already_measured_are_reused():
    nodes = names(16)
    bad = nodes[2]
    first, _ = bisect(Fleet(nodes, bad=[bad]))
    again = Bisection(nodes, first.results)
    assert again.next_groups() == [] and set(again.verdict().convicted) == {bad}


def test_two_nodes_cannot_be_told_apart_and_small_groups_still_work():
    plan, _ = bisect(Fleet(["a", "b"], bad=["a"]))
    assert not plan.verdict().convicted and plan.verdict().undecided == {"a", "b"}
    for n in (3, 4, 5):
        nodes = names(n)
        for bad in nodes:
            plan, _ = bisect(Fleet(nodes, bad=[bad]))
            assert set(plan.verdict().convicted) == {bad}, (n, bad)


def test_pairwise_quick_mode_then_bisection_over_the_pair_results():
    nodes = names(16)
    fleet = Fleet(nodes, bad=[nodes[6]], p=0.02, seed=3)
    results = [fleet.run(p) for r in pair_rounds(nodes, rounds=2) for p in r]
    plan = Bisection(nodes, results, verify=False)
    while True:
        groups = plan.next_groups()
        if not groups:
            break
        assert all(len(g) == 2 for g in groups)                     # pairs stay pairs
        for g in groups:
            plan.record(fleet.run(g))
    assert set(plan.verdict().convicted) == {nodes[6]} and plan.rounds <= 4


def test_the_plan_is_the_same_whatever_the_hash_seed():
    code = ("import random; from gpuhc.controller.blame import Bisection, GroupResult\n"
            "nodes = ['gpu-%02d' % i for i in range(24)]; bad = {'gpu-07', 'gpu-19'}; link = {'gpu-02', 'gpu-13'}\n"
            "rng = random.Random(4); out = []\n"
            "def run(g):\n"
            "    g = frozenset(g); ok = not (g & bad) and not link <= g and rng.random() > 0.05\n"
            "    return GroupResult(g, ok)\n"
            "plan = Bisection(nodes, [GroupResult(nodes, False)])\n"
            "while True:\n"
            "    gs = plan.next_groups()\n"
            "    if not gs: break\n"
            "    out.append(gs); [plan.record(run(g)) for g in gs]\n"
            "v = plan.verdict(); print(out, sorted(v.convicted), list(v.suspect_links))\n")
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_blame_imports_no_torch_slurm_or_store():
    code = ("import sys, gpuhc.controller.blame\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('gpuhc') or m == 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) <= {"gpuhc", "gpuhc.controller", "gpuhc.controller.blame",
                                        "gpuhc.controller.conviction", "gpuhc.controller.bisection",
                                        "gpuhc.hostlist", "gpuhc.errors"}


def test_history_of_other_nodes_is_evidence_but_never_run():
    nodes = names(16)
    mine, others = nodes[:8], nodes[8:]
    # the pair history: an outsider failed with three of mine, which passed with other outsiders
    history = [fails({others[0], m}) for m in mine[:3]] + [passes({m, o}) for m, o in zip(mine[:3], others[1:4])]
    fleet = Fleet(mine, bad=[mine[4]])
    plan = Bisection(mine, history + [fleet.run(mine, fail=True)])
    while True:
        groups = plan.next_groups()
        if not groups:
            break
        assert all(set(g) <= set(mine) for g in groups), groups
        for g in groups:
            plan.record(fleet.run(g))
    v = plan.verdict()
    assert set(v.convicted) == {mine[4]}
    assert frozenset({others[0], mine[0]}) in v.unexplained and others[0] in v.undecided

    # a pass of the whole allocation from before the node broke clears it: the results must be of one state
    stale = Bisection(mine, [passes(mine), fleet.run(mine, fail=True)])
    assert stale.next_groups() == [] and not stale.verdict().convicted
