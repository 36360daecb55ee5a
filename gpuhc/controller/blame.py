"""Who is to blame when a multi-node all-reduce fails: pairwise rounds, bisection, conviction.

Pure functions over plain data (no torch, no Slurm, no store), so the nccl command can call them inside a job
(bisection over the job's own nodes with ``srun -w``) and on the controller (pairwise rounds and the pair
history), and the tests and ``bench/blame.py`` call them on simulated fleets.

A *run* is one all-reduce over a group of nodes: a :class:`GroupResult`. Runs over one node judge that node's
own bandwidth against the one-node threshold and are no evidence about partners: blame ignores them.

The rule (:func:`convict`), with its defaults ``tolerate`` = 2 and ``min_runs`` = 5:

1. A pass is believed; a failure may be chance. A failure of a node set that also passed is put down to chance.
2. A node is *cleared* (innocent) when it is in a passing run; a pair of nodes is cleared when both are in one
   passing run.
3. A failing run *counts against* node X when X is its only node that is not cleared (every partner passed
   elsewhere) and it holds no suspect link (rule 5). It *singles X out* when, moreover, every two of its other
   nodes passed together: then only X, a bad link from X, or chance can explain it.
4. X is *convicted* when the runs that count against it
   a. number at least ``min_runs`` (5),
   b. single X out at least ``tolerate`` + 1 times (3), and
   c. still have X as their only common node after discarding any ``tolerate`` (2) of them: every partner is
      missing from at least three of them, so no bad link X-Y, even with two chance failures, explains them.
   This is the issue's "fails with at least two different partners that pass with others" made safe against
   chance: in pairwise rounds, X failing five times with at least four different partners that pass
   elsewhere; in a bisection, the failing groups whose other nodes passed without X (leaving X out makes them
   pass) plus X failing three times beside fresh partners that passed together. A convicted node has never
   passed in the results given.
5. A failing run whose nodes are all cleared is explained by a link (a pair of its nodes that never passed
   together) or by chance. Pair (A, B) is a *suspect link* when the failing runs that hold both, with every
   node cleared, meet the same three tests: at least ``min_runs``; at least ``tolerate`` + 1 in which (A, B) is
   the only pair that never passed together (the pair run alone); (A, B) still the only such pair common to
   them after discarding any ``tolerate``. Links are taken best supported first, and a run a link explains is
   no evidence for another. In pairwise rounds: the pair failing five times while both pass elsewhere. A
   suspect link is reported; it convicts neither node.
6. Nodes seen in the results are innocent (cleared), convicted, or undecided. A failing node set is explained
   by a convicted node or a suspect link inside it, or by chance when every node and every pair in it passed
   elsewhere; the others are listed as unexplained.

Why these numbers: a single chance failure must never convict, and nor must a bad link plus a little chance.
An innocent node is convicted only by at least three chance failures in runs that single it out (with a bad
link from it doing the rest), and by five when no bad link touches it: at 2% spurious failures, about 8 in a
million and 3 in ten billion for each node exposed (bench/blame.py measures it). The price is three runs of
each suspect beside fresh partners, one per round, which keeps one bad node among N within log2(N) + 3
rounds. Limits: a node that sometimes passes (intermittent) is cleared by its pass and never convicted here;
its failures stay unexplained or show as links. The results given must describe one state of the fleet (one
job's bisection, one pairwise sweep): a pass from before a node broke would clear it. With two nodes nothing
can be decided (a bad node and a bad link look alike); with three or four, each verdict needs several reruns.

:class:`Bisection` narrows failures down round by round (rounds of disjoint groups, run in parallel). A failing
group with more than four nodes not cleared is halved (both halves run); once four or fewer are left, each
suspect runs beside nodes that passed together (padded up to the failing group's size, at most four; fresh
partners each time, one a run when few nodes have passed), all suspects in the same round, again and again
until the rule convicts or a pass clears it. A failing group whose nodes have all passed elsewhere is rerun
once, unless a larger group around it failed twice (the check run first, below, may make that rerun
needless); if it fails again its link is searched for: unions of two of its quarters (the circle method over
four blocks), then the candidate pairs alone. Once every failure is explained, the whole group less the
convicted nodes (and one end of each suspect link) runs once to check nothing else is wrong. Results already
measured (the job's first run, earlier rounds, the pair history) are reused, never rerun but for the reruns
above. Without any passing node to pad with, suspects are split among themselves (halves, leave-one-out,
pairs) in groups not run before.

The issue's "leave-one-out padded" at four nodes would run G - {v} + one passing node for each suspect v:
those groups share all but one node, so they run one per round (four rounds for four suspects), and with two
bad nodes in the group every one of them fails and nothing is learnt. Running each suspect beside passing
nodes takes one round for all four and separates two bad nodes; "leaving X out makes the group pass" is
still evidence under the rule (G counts against X once its other nodes pass without X).
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Dict, FrozenSet, Hashable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ..hostlist import natural_key as _natural_key

Pair = Tuple[str, str]
Group = Tuple[str, ...]

# Node sets up to this size have their pairs checked one by one; larger ones are judged by whole passing runs.
EXACT_PAIRS_UP_TO = 32

_name_key = functools.lru_cache(maxsize=1 << 16)(lambda name: tuple(_natural_key(name)))


@dataclass(frozen=True)
class GroupResult:
    """The outcome of one all-reduce run over a group of nodes.

    nodes: the node names (kept as a frozenset); passed: the run met its threshold; busbw: the bus bandwidth in
    GB/s at ``size`` bytes, the size it was judged at (None when the run hung or gave no figure); job_id: the
    Slurm job (and step) that ran it; time: when it ended, seconds since the epoch.
    """

    nodes: FrozenSet[str]
    passed: bool
    busbw: Optional[float] = None
    size: Optional[int] = None
    job_id: Optional[str] = None
    time: Optional[float] = None

    def __post_init__(self) -> None:
        if isinstance(self.nodes, str):
            raise TypeError("GroupResult.nodes: a collection of node names, not one string")
        nodes = frozenset(self.nodes)
        if not nodes:
            raise ValueError("GroupResult.nodes: at least one node")
        if not isinstance(self.passed, bool):
            raise TypeError("GroupResult.passed: True or False, not %r" % (self.passed,))
        object.__setattr__(self, "nodes", nodes)


@dataclass(frozen=True)
class Evidence:
    """Why a node is convicted or a link suspected.

    runs: the failing runs that count (smallest first); partners: every other node in them, sorted; busbw and
    size: the lowest bus bandwidth among those runs and the size it was measured at (None when no run gave one).
    """

    runs: Tuple[GroupResult, ...]
    partners: Tuple[str, ...]
    busbw: Optional[float]
    size: Optional[int]


@dataclass(frozen=True)
class Verdict:
    """What the results say. convicted: node -> evidence; suspect_links: (a, b), a before b in natural order
    -> evidence; innocent: nodes that passed in some run; undecided: the other nodes seen, not convicted;
    unexplained: failing node sets that no verdict explains yet (smallest first)."""

    convicted: Mapping[str, Evidence]
    suspect_links: Mapping[Pair, Evidence]
    innocent: FrozenSet[str]
    undecided: FrozenSet[str]
    unexplained: Tuple[FrozenSet[str], ...]


def pair_rounds(nodes: Iterable[Hashable], rounds: Optional[int] = None) -> List[List[Tuple]]:
    """Rounds of disjoint pairs by the circle method: all n-1 rounds (n rounded up to even) cover every pair
    exactly once; with an odd n one node sits out each round, a different one every time.

    ``rounds`` takes only the first rounds (quick mode: 1 or 2; the second gives every node a second partner).
    Duplicates are dropped; the order is deterministic: the first node stays, the others rotate, and each pair
    is written in the order the nodes were given.
    """
    order = list(dict.fromkeys(nodes))
    if rounds is not None and (not isinstance(rounds, int) or rounds < 0):
        raise ValueError("rounds: a whole number >= 0, not %r" % (rounds,))
    if len(order) < 2:
        return []
    pos = {n: i for i, n in enumerate(order)}
    bye = object()
    ring: List = order + [bye] if len(order) % 2 else list(order)
    m = len(ring)
    count = m - 1 if rounds is None else min(rounds, m - 1)
    out: List[List[Tuple]] = []
    for _ in range(count):
        pairs = []
        for i in range(m // 2):
            a, b = ring[i], ring[m - 1 - i]
            if a is bye or b is bye:
                continue
            pairs.append((a, b) if pos[a] < pos[b] else (b, a))
        out.append(pairs)
        ring = [ring[0], ring[-1]] + ring[1:-1]
    return out


def convict(results: Iterable[GroupResult], tolerate: int = 2, min_runs: int = 5) -> Verdict:
    """The verdict of the results under the rule in this module's docstring: a verdict rests on at least
    ``min_runs`` failing runs and survives discarding any ``tolerate`` of them."""
    return _Knowledge(results, tolerate, min_runs).verdict()


def _by_name(nodes: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted(nodes, key=_name_key))


def _evidence(runs: Sequence[GroupResult], subject: Iterable[str]) -> Evidence:
    runs = sorted(runs, key=lambda r: (len(r.nodes), r.time if r.time is not None else 0.0))
    others = set().union(*(r.nodes for r in runs)) - set(subject)
    measured = [(r.busbw, i) for i, r in enumerate(runs) if r.busbw is not None]
    low = runs[min(measured)[1]] if measured else None
    return Evidence(tuple(runs), _by_name(others), low.busbw if low else None, low.size if low else None)


class _Knowledge:
    """What a list of results says, worked out once: cleared nodes and pairs, failing sets, verdicts."""

    def __init__(self, results: Iterable[GroupResult], tolerate: int = 2, min_runs: int = 5) -> None:
        if not isinstance(tolerate, int) or tolerate < 0:
            raise ValueError("tolerate: a whole number >= 0, not %r" % (tolerate,))
        if not isinstance(min_runs, int) or min_runs < 1:
            raise ValueError("min_runs: a whole number >= 1, not %r" % (min_runs,))
        self.tolerate = tolerate
        self.min_runs = min_runs
        self.runs = [r for r in results if len(r.nodes) >= 2]
        counts: Dict[FrozenSet[str], List[int]] = {}
        for r in self.runs:
            counts.setdefault(r.nodes, [0, 0])[0 if r.passed else 1] += 1
        self.tested = counts
        self.passing = [s for s, (p, _) in counts.items() if p]
        self.cleared = frozenset().union(*self.passing)
        self._idmap: Optional[Dict[str, Set[int]]] = None  # node -> the passing sets holding it, when first needed
        self._bit: Optional[Dict[str, int]] = None         # bit masks for lonely(), when first needed
        self._masks: List[int] = []
        self._whole: Dict[FrozenSet[str], int] = {}
        self._covers: Dict[str, int] = {}
        self._uncleared: Dict[FrozenSet[str], List[Pair]] = {}
        self.failing = {s: f for s, (p, f) in counts.items() if f and not p}
        self.failing_runs = [r for r in self.runs if r.nodes in self.failing]
        self.seen = frozenset().union(*(r.nodes for r in self.runs))
        self.against: Dict[str, List[GroupResult]] = {}
        self.link_runs: List[GroupResult] = []
        for r in self.failing_runs:
            suspects = r.nodes - self.cleared
            if len(suspects) == 1:
                self.against.setdefault(next(iter(suspects)), []).append(r)
            elif not suspects:
                self.link_runs.append(r)
        self.links: Dict[Pair, Evidence] = self._find_links()
        # a run holding both ends of a suspect link is explained by it, and counts against nobody
        claimed = [frozenset(link) for link in self.links]
        self.convicted: Dict[str, Evidence] = {}
        for x, runs in self.against.items():
            runs = [r for r in runs if not any(link <= r.nodes for link in claimed)]
            if self._pins_node(x, runs):
                self.convicted[x] = _evidence(runs, (x,))
        self.unexplained = self._unexplained()

    # -- pairs -------------------------------------------------------------------------------------------
    @property
    def _ids(self) -> Dict[str, Set[int]]:
        if self._idmap is None:
            self._idmap = {}
            for i, s in enumerate(self.passing):
                for n in s:
                    self._idmap.setdefault(n, set()).add(i)
        return self._idmap

    def pair_cleared(self, a: str, b: str) -> bool:
        ids = self._ids
        ia, ib = ids.get(a), ids.get(b)
        return bool(ia and ib and not ia.isdisjoint(ib))

    def runs_with(self, node: str) -> List[GroupResult]:
        """The failing runs that hold ``node``."""
        return [r for r in self.failing_runs if node in r.nodes]

    def uncleared_pairs(self, nodes: Iterable[str]) -> List[Pair]:
        """The pairs of ``nodes`` that never passed together (call on small sets only)."""
        nodes = frozenset(nodes)
        found = self._uncleared.get(nodes)
        if found is None:
            ids = self._ids
            found = [(a, b) for a, b in combinations(_by_name(nodes), 2)
                     if not (a in ids and b in ids and not ids[a].isdisjoint(ids[b]))]
            self._uncleared[nodes] = found
        return found

    def has_uncleared_pair(self, nodes: FrozenSet[str]) -> bool:
        """Whether some pair of ``nodes`` never passed together."""
        if len(nodes) < 2:
            return False
        if not nodes <= self.cleared:
            return True
        if len(nodes) <= EXACT_PAIRS_UP_TO:
            return any(not self.pair_cleared(a, b) for a, b in combinations(nodes, 2))
        return bool(self.lonely(nodes, first=True))

    def lonely(self, nodes: FrozenSet[str], first: bool = False) -> List[str]:
        """The nodes of ``nodes`` (all cleared) that never passed together with some other node of it (with
        ``first``, only the first found); node sets as bit masks, so a set of a thousand nodes takes a millisecond."""
        if self._bit is None:
            self._bit = {n: i for i, n in enumerate(sorted(self.cleared, key=_name_key))}
            self._masks = [sum(1 << self._bit[n] for n in s) for s in self.passing]
        whole = self._whole.get(nodes)
        if whole is None:
            bit = self._bit
            whole = self._whole[nodes] = sum(1 << bit[n] for n in nodes)
        covers, ids, masks = self._covers, self._ids, self._masks
        out = []
        for n in nodes:
            cover = covers.get(n)
            if cover is None:
                cover = 0
                for i in ids[n]:
                    cover |= masks[i]
                covers[n] = cover
            if cover & whole != whole:
                out.append(n)
                if first:
                    break
        return out

    # -- verdicts ----------------------------------------------------------------------------------------
    def _singles_out(self, partners: FrozenSet[str]) -> bool:
        """Whether every pair of ``partners`` passed together, so a failure with them can only be the one
        node's (or a link from it), never a link between two of them."""
        if not partners <= self.cleared:
            return False
        if len(partners) <= EXACT_PAIRS_UP_TO:
            return not self.uncleared_pairs(partners)
        return not self.lonely(partners, first=True)

    def _pins_node(self, x: str, runs: List[GroupResult]) -> bool:
        """Rule 4 on the runs that count against x: enough of them, enough singling x out, and x the only node
        common to the rest after discarding any ``tolerate`` of them (every pair with x is uncleared, so this is
        the same as: no uncleared pair common to the rest)."""
        n, t = len(runs), self.tolerate
        if n < max(t + 2, self.min_runs):
            return False
        singled = 0
        for r in sorted(runs, key=lambda r: len(r.nodes)):
            if self._singles_out(r.nodes - {x}):
                singled += 1
                if singled > t:
                    break
        if singled <= t:
            return False
        if t == 1:                               # the common case, by set intersections: drop each run in turn
            sets = [r.nodes for r in runs]
            before = [sets[0]]
            for s in sets[1:-1]:
                before.append(before[-1] & s)
            after = sets[-1]
            if len(before[-1]) > 1:              # dropping the last run
                return False
            for i in range(n - 2, 0, -1):
                if len(before[i - 1] & after) > 1:
                    return False
                after = after & sets[i]
            return len(after) == 1               # dropping the first run
        present = Counter(p for r in runs for p in r.nodes if p != x)
        return all(n - c > t for c in present.values())

    def _pins_link(self, link: Pair, runs: List[GroupResult]) -> bool:
        """Rule 5 on the failing runs (all nodes cleared) that hold ``link``."""
        n = len(runs)
        if n < max(self.tolerate + 2, self.min_runs):
            return False
        if sum(1 for r in runs if len(r.nodes) <= EXACT_PAIRS_UP_TO and self.uncleared_pairs(r.nodes) == [link]) \
                <= self.tolerate:
            return False
        common = frozenset.intersection(*(r.nodes for r in runs))
        if len(common) > EXACT_PAIRS_UP_TO or self.uncleared_pairs(common) != [link]:
            return False                  # another pair lies in every run: dropping runs only widens that
        for drop in combinations(range(n), self.tolerate):
            kept = sorted((runs[i].nodes for i in range(n) if i not in drop), key=len)
            common = kept[0].intersection(*kept[1:])
            if len(common) > EXACT_PAIRS_UP_TO:
                return False            # too wide to pin one pair; conservative: no link verdict
            if self.uncleared_pairs(common) != [link]:
                return False
        return True

    def _find_links(self) -> Dict[Pair, Evidence]:
        holding: Dict[str, Set[int]] = {}
        candidates: Set[Pair] = set()
        for i, r in enumerate(self.link_runs):
            for n in r.nodes:
                holding.setdefault(n, set()).add(i)
            if len(r.nodes) <= EXACT_PAIRS_UP_TO:
                candidates.update(self.uncleared_pairs(r.nodes))
        support = {link: sorted(holding[link[0]] & holding[link[1]]) for link in candidates}
        # the best-supported link first; a run it explains is no evidence for another
        pinned = [link for link in candidates if self._pins_link(link, [self.link_runs[i] for i in support[link]])]
        pinned.sort(key=lambda p: (-len(support[p]), _name_key(p[0]), _name_key(p[1])))
        out: Dict[Pair, Evidence] = {}
        claimed: Set[int] = set()
        for link in pinned:
            runs = [self.link_runs[i] for i in support[link] if i not in claimed]
            if self._pins_link(link, runs):
                out[link] = _evidence(runs, link)
                claimed.update(support[link])
        return dict(sorted(out.items(), key=lambda kv: (_name_key(kv[0][0]), _name_key(kv[0][1]))))

    def _unexplained(self) -> Tuple[FrozenSet[str], ...]:
        convicted = set(self.convicted)
        links = [frozenset(link) for link in self.links]
        out = []
        for s in self.failing:
            if not convicted.isdisjoint(s) or any(link <= s for link in links):
                continue
            if s <= self.cleared and not self.has_uncleared_pair(s):
                continue                  # every node and pair of it passed elsewhere: chance
            out.append(s)
        return tuple(sorted(out, key=len))       # smallest first; ties in the order of the results

    def verdict(self) -> Verdict:
        return Verdict(convicted=dict(sorted(self.convicted.items(), key=lambda kv: _name_key(kv[0]))),
                       suspect_links=dict(self.links),
                       innocent=self.cleared,
                       undecided=self.seen - self.cleared - set(self.convicted),
                       unexplained=self.unexplained)

    def confirmed_superset(self, s: FrozenSet[str]) -> bool:
        """Whether a strictly larger node set holding ``s`` failed at least twice and never passed."""
        return any(f >= 2 and s < t for t, f in self.failing.items())


def default_rounds(n: int) -> int:
    """The default round budget of a bisection over n nodes: 4 log2(n) + 8, log2 rounded up. A bad node takes
    about log2(n) + 1 rounds; a bad link about twice as many, after the nodes; a node whose runs a link turns
    out to explain needs more runs of its own."""
    return 4 * math.ceil(math.log2(max(n, 2))) + 8


class Bisection:
    """The plan that narrows a failing group down to the guilty node(s) or link, round by round.

    ``nodes``: the group (a job's allocation), in the order groups should list them; ``results``: what is
    already known (the failing run of the whole group, pair history; nodes outside ``nodes`` count as evidence
    but are never used as partners). ``max_rounds``: the round budget (default :func:`default_rounds`);
    ``small``: the size at which halving stops and suspects are tested one by one beside passing nodes (and the
    largest such padded group); ``verify``: once all is explained, run the group less the convicted nodes and
    one end of each suspect link; ``tolerate`` and ``min_runs``: as in :func:`convict`.

    Loop::

        plan = Bisection(nodes, [first_failure])
        while True:
            groups = plan.next_groups()           # disjoint: run them in parallel
            if not groups:
                break
            for g in groups:
                plan.record(run_allreduce(g))     # a GroupResult for each group proposed
        verdict = plan.verdict()

    ``next_groups`` returns [] when every failure is explained (and the check run passed), when nothing more
    can be learnt from these nodes, or when the round budget is spent. Asking again before recording returns the
    same groups without counting another round.
    """

    def __init__(self, nodes: Iterable[str], results: Iterable[GroupResult] = (), *,
                 max_rounds: Optional[int] = None, small: int = 4, verify: bool = True, tolerate: int = 2,
                 min_runs: int = 5) -> None:
        order = list(dict.fromkeys(nodes))
        if len(order) < 2:
            raise ValueError("a bisection needs at least two nodes")
        if small < 2:
            raise ValueError("small: at least 2, not %r" % (small,))
        self.nodes: Group = tuple(order)
        self._pos = {n: i for i, n in enumerate(order)}
        self._results: List[GroupResult] = list(results)
        self.small = small
        self.verify = verify
        self.tolerate = tolerate
        self.min_runs = min_runs
        self.max_rounds = default_rounds(len(order)) if max_rounds is None else max_rounds
        self.rounds = 0
        self.jobs = 0
        self._known: Optional[Tuple[int, _Knowledge]] = None
        self._plan_for: Optional[List] = None            # [len(results), groups, counted]
        _Knowledge((), tolerate, min_runs)                # validates them now

    # -- the loop ----------------------------------------------------------------------------------------
    def next_groups(self) -> List[Group]:
        """The groups to run this round: disjoint node tuples, each of two nodes or more."""
        plan = self._pending()
        if plan[1] and not plan[2]:
            self.rounds += 1
            self.jobs += len(plan[1])
            plan[2] = True
        return list(plan[1])

    def record(self, result: GroupResult) -> None:
        if not isinstance(result, GroupResult):
            raise TypeError("record: a GroupResult, not %r" % (result,))
        self._results.append(result)

    def verdict(self) -> Verdict:
        v = self._knowledge().verdict()
        rest = frozenset(self.nodes) - v.innocent - set(v.convicted)
        return replace(v, undecided=v.undecided | rest)

    @property
    def done(self) -> bool:
        return not self._pending()[1]

    @property
    def results(self) -> Tuple[GroupResult, ...]:
        return tuple(self._results)

    # -- planning ----------------------------------------------------------------------------------------
    def _knowledge(self) -> _Knowledge:
        if self._known is None or self._known[0] != len(self._results):
            self._known = (len(self._results), _Knowledge(self._results, self.tolerate, self.min_runs))
        return self._known[1]

    def _pending(self) -> List:
        if self._plan_for is None or self._plan_for[0] != len(self._results):
            groups = [] if self.rounds >= self.max_rounds else self._plan(self._knowledge())
            self._plan_for = [len(self._results), groups, False]
        return self._plan_for

    def _key(self, n: str):
        return (self._pos[n], ()) if n in self._pos else (len(self._pos), _name_key(n))

    def _ordered(self, nodes: Iterable[str]) -> Group:
        return tuple(sorted(nodes, key=self._key))

    def _plan(self, k: _Knowledge) -> List[Group]:
        whole = frozenset(self.nodes)
        if not k.failing and whole not in k.tested:
            return [self.nodes]
        # smallest first, ties in the order of the results; a failing set with nodes outside this plan's (from
        # the pair history) is evidence, but not this plan's to run
        unexplained = [s for s in k.unexplained if s <= whole]
        items: List[FrozenSet[str]] = []
        for s in unexplained:                    # the smallest failing sets: a larger one waits for them
            if not any(t < s for t in items):
                items.append(s)
        # a set that failed once, with every node passed elsewhere and no set around it failing twice, is most
        # likely chance: it is rerun, but only once nothing else is left, and the check run comes first (its
        # pass clears every pair inside it)
        reruns = [g for g in items if g <= k.cleared and k.failing[g] == 1 and not k.confirmed_superset(g)]
        items = [g for g in items if g not in reruns]
        rest = whole - set(k.convicted) - {link[1] for link in k.links}
        if not items:
            if self.verify and len(rest) >= 2 and rest not in k.tested:
                return [self._ordered(rest)]
            items, reruns = reruns, []
            if not items:
                return []

        halves: List[FrozenSet[str]] = []                     # node search first, then links
        requests: List[Tuple[str, FrozenSet[str]]] = []       # (a suspect to run beside passing nodes, its set)
        link_groups: List[FrozenSet[str]] = []                # reruns, unions of quarters, pairs alone
        for g in items:
            suspects = [n for n in self._ordered(g) if n not in k.cleared]
            if len(suspects) > self.small:
                half = (len(suspects) + 1) // 2
                halves += [frozenset(suspects[:half]), frozenset(suspects[half:])]
            elif suspects:
                requests += [(u, g) for u in suspects]
            elif k.failing[g] == 1 and not k.confirmed_superset(g):
                link_groups.append(g)                            # the rerun
            else:
                link_groups += self._link_search(k, g)

        used: Set[str] = set()
        out: List[Group] = []

        def take(nodes: Iterable[str]) -> bool:
            nodes = set(nodes)
            if len(nodes) < 2 or not used.isdisjoint(nodes):
                return False
            used.update(nodes)
            out.append(self._ordered(nodes))
            return True

        for g in halves:
            take(g)
        busy = set().union(*items)
        pool = [n for n in self.nodes if n in k.cleared and n not in used]
        live, seen = [], set()
        for u, g in requests:
            if u not in seen and u not in used:
                seen.add(u)
                live.append((u, g))
        share = max(1, len(pool) // max(1, len(live)))
        starved: List[FrozenSet[str]] = []
        for u, g in live:
            need = min(max(len(g), 2), self.small) - 1
            free = [p for p in pool if p not in used and p != u]
            if not free:
                if g not in starved:
                    starved.append(g)
                continue
            # fresh partners first (never in a failing run with the suspect), that all passed together; with few
            # passing nodes, one a run, so that each is missing from enough of the suspect's runs soon
            seen_with = Counter(p for r in k.runs_with(u) for p in r.nodes)
            free.sort(key=lambda p: (seen_with[p], p in busy, self._pos[p]))
            want = min(need, share, max(1, len(free) // (self.tolerate + 1)))
            pads: List[str] = []
            for p in free:
                if all(k.pair_cleared(p, q) for q in pads):
                    pads.append(p)
                    if len(pads) == want:
                        break
            take((u,) + tuple(pads))
        for g in link_groups:
            take(g)
        # no passing node to pad with: split the suspects among themselves, in groups not run before (halves,
        # leave-one-out, pairs); when nothing at all is proposed, try every failing set so
        for g in starved + ([s for s in unexplained if s not in starved] if not out else []):
            suspects = [n for n in self._ordered(g) if n not in k.cleared]
            half = len(suspects) // 2
            options = [suspects[:half], suspects[half:]] + [[n for n in g if n != u] for u in suspects] \
                + [list(pair) for rnd in pair_rounds(suspects) for pair in rnd]
            for option in options:
                if frozenset(option) not in k.tested:
                    take(option)
        if not out:                              # everything tried failed: one failure of them may be chance
            for g in unexplained:
                if k.failing[g] == 1:
                    take(g)
        return out

    def _link_search(self, k: _Knowledge, g: FrozenSet[str]) -> List[FrozenSet[str]]:
        """A failing set whose nodes all passed elsewhere (and that failed twice, or inside a set that did):
        the groups that narrow down the pair that never passed together, best first: unions of two quarters
        of the nodes still in such a pair (one round of the circle method over the quarters), or, with four
        nodes or fewer left, the candidate pairs alone (only a pair alone singles a link out)."""
        if len(g) <= EXACT_PAIRS_UP_TO:
            links = k.uncleared_pairs(g)
            touched = self._ordered({n for link in links for n in link})
        else:
            touched = self._ordered(k.lonely(g))
            links = k.uncleared_pairs(touched) if len(touched) <= self.small else []
        if len(touched) <= self.small:
            def weight(link: Pair) -> int:        # pairs that already failed go first
                a, b = link
                return -sum(1 for r in k.link_runs if a in r.nodes and b in r.nodes)
            return [frozenset(link) for link in
                    sorted(links, key=lambda p: (weight(p), self._key(p[0]), self._key(p[1])))]
        quarter = [touched[i * len(touched) // 4:(i + 1) * len(touched) // 4] for i in range(4)]
        for pairs in pair_rounds(range(4)):
            unions = [frozenset(quarter[i] + quarter[j]) for i, j in pairs]
            unions = [u for u in unions if u not in k.tested and k.has_uncleared_pair(u)]
            if unions:
                return unions
        return []
