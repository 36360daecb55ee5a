"""Slurm hostlists (``gpu-[001-012,015]``): folding node names into one, expanding one into names.

Expanding goes through ClusterShell's NodeSet, which knows every form Slurm writes. Folding has a
fast path of its own, because ``gpuhc status`` folds 10,000 names in well under the time NodeSet
takes (0.2 s): it folds on the last run of digits of each name (``rack1-gpu[001-003]``), keeps
zero padding (``098-100`` stays three wide), and gives a hostlist NodeSet expands to exactly the
same names. Node names are Slurm's: letters, digits, ``.``, ``_`` and ``-``.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

from .errors import GpuhcError

_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> List:
    """Sort key putting gpu-2 before gpu-10: text and numbers alternate (text first), so keys compare."""
    parts: List = _DIGITS.split(name)
    parts[1::2] = [int(p) for p in parts[1::2]]
    return parts


def _ranges(numbers: List[str]) -> List[str]:
    """'001','002','003','007' -> ['001-003', '007']; a range keeps the padding of its first number."""
    out: List[str] = []
    start = end = ""
    width = value = 0
    for digits in sorted(set(numbers), key=lambda d: (int(d), len(d))):
        n = int(digits)
        if start and n == value + 1 and str(n).zfill(width) == digits:
            end, value = digits, n
            continue
        if start:
            out.append(start if start == end else "%s-%s" % (start, end))
        start = end = digits
        value = n
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
    if start:
        out.append(start if start == end else "%s-%s" % (start, end))
    return out


def fold(names: Iterable[str]) -> str:
    """The names as one hostlist: 'gpu-001,gpu-002,gpu-005,login' -> 'gpu-[001-002,005],login'."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    plain: List[str] = []
    for name in set(names):
        m = _LAST_NUMBER.match(name)
        if m is None:
            plain.append(name)
        else:
            groups.setdefault((m.group(1), m.group(3)), []).append(m.group(2))
    parts: List[Tuple[List, str]] = [(natural_key(n), n) for n in plain]
    for (prefix, suffix), numbers in groups.items():
        ranges = _ranges(numbers)
        text = prefix + ranges[0] + suffix if len(ranges) == 1 and "-" not in ranges[0] \
            else "%s[%s]%s" % (prefix, ",".join(ranges), suffix)
        parts.append((natural_key(prefix + min(numbers, key=int) + suffix), text))
    return ",".join(text for _, text in sorted(parts))


MAX_NAMES = 1_000_000      # far past any cluster; a typo like gpu-[1-99999999] is refused at once
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_SPAN = re.compile(r"^\s*(\d+)\s*-\s*(\d+)")


def _size_at_most(hostlist: str) -> int:
    """An upper bound on how many names a hostlist has, without expanding it."""
    total, depth, start = 0, 0, 0
    segments = []
    for i, ch in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            segments.append(hostlist[start:i])
            start = i + 1
    for segment in segments:
        count = 1
        for group in _BRACKET.findall(segment):
            items = 0
            for item in group.split(","):
                m = _SPAN.match(item)
                items += abs(int(m.group(2)) - int(m.group(1))) + 1 if m else 1
            count *= items
        total += count
    return total


def expand(hostlist: str, what: str = "node list") -> List[str]:
    """Every name of a hostlist, in order; a one-line error naming the bad list."""
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    size = _size_at_most(hostlist)
    if size > MAX_NAMES:
        raise GpuhcError("%s %r: %d names, more than the %d gpuhc takes" % (what, hostlist, size, MAX_NAMES))
    try:
        # never ClusterShell's node groups: resolving @name runs the group source's shell
        # commands, with no time limit, and a Slurm hostlist has no groups
        names = list(NodeSet(hostlist, resolver=RESOLVER_NOGROUP))
    except (NodeSetException, ValueError) as exc:
        raise GpuhcError("%s %r: not a valid hostlist: %s" % (what, hostlist, exc)) from None
    groups = [n for n in names if n.startswith("@")]
    if groups:
        raise GpuhcError("%s %r: %s: node groups are not taken, give a Slurm hostlist (gpu-[001-064])"
                         % (what, hostlist, groups[0]))
    return names
