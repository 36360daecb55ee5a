"""Conviction: what a set of all-reduce results says about nodes and links (the rule of :func:`convict`).

Pure functions over plain data (no torch, no Slurm, no store). A *run* is one all-reduce over a group of nodes:
a :class:`GroupResult`. Runs over one node judge that node's own bandwidth against the one-node threshold and
are no evidence about partners: blame ignores them.

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

:class:`~gpuhc.controller.bisection.Bisection` plans the runs that gather this evidence; ``gpuhc.controller.blame``
re-exports both.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

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

