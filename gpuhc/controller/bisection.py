"""Bisection: the rounds of all-reduce runs that narrow a failure down to a node or a link.

Pure functions over plain data (no torch, no Slurm, no store), like the rule they feed
(:mod:`gpuhc.controller.conviction`); ``gpuhc.controller.blame`` re-exports them.

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

import math
from collections import Counter
from dataclasses import replace
from typing import FrozenSet, Hashable, Iterable, List, Optional, Set, Tuple

from .conviction import EXACT_PAIRS_UP_TO, Group, GroupResult, Pair, Verdict, _Knowledge, _name_key


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
