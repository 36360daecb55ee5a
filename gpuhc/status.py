"""``gpuhc status`` in sinfo's style, and the ``show`` and ``history`` views of one node.

Health state of a node, from Slurm's view of it (when given) and its newest result in the store;
the first rule that applies wins:

==============  =============================================================================
quarantine      Slurm: the node is in a reservation named ``gpuhc-quarantine*``, or its reason
                starts with ``gpuhc: quarantine``; without Slurm: the newest result has action
                ``quarantine``
drained         Slurm: DRAIN (or FAIL) with a reason starting ``gpuhc:`` (severity from the reason);
                without Slurm: the newest result has action ``drain``
drained-admin   Slurm: DRAIN (or FAIL) with any other reason: an operator's drain
down            Slurm: DOWN or NOT_RESPONDING (gpuhc leaves such nodes alone)
never-checked   Slurm knows the node; the store has no result for it
stale           the newest result is older than ``status.stale_after`` seconds, or dated more than 5 min
                ahead of this clock (the node's clock is wrong: the result says nothing of its age)
would-drain     the newest result has action ``would-drain`` (the breaker held the drain back)
error           the newest result is ERROR: the checks could not run
unhealthy       the newest result is RESET or worse, and the node is not drained
monitor         the newest result is MONITOR
healthy         the newest result is PASS
==============  =============================================================================

Slurm's view is a mapping node -> {"state": "IDLE+DRAIN" or ["IDLE", "DRAIN"], "flags": [...],
"reason": str, "partitions": [...], "reservation": str}, every key optional; None or {} when Slurm
is absent, and then the partition is ``-``.

Format fields (``-o``), ``%[.][size]X`` as in sinfo: ``size`` pads (and truncates) the field,
``.`` right-justifies it; anything else is copied. Rows are grouped by every field but %N and %D.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import GpuhcError
from .hostlist import expand, fold, natural_key
from .model import Severity
from .store import Store
from .text import clean

FUTURE_SLACK = 300.0     # seconds a result may be dated ahead of the reader's clock (skew) before it is stale
STATES = ("healthy", "monitor", "stale", "never-checked", "error", "would-drain", "unhealthy", "drained",
          "quarantine", "drained-admin", "down")
_STATE_ORDER = {s: n for n, s in enumerate(STATES)}
_DRAIN_WORDS = {"DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING"}
_DOWN_WORDS = {"DOWN", "NOT_RESPONDING", "NO_RESPOND"}
_GPUHC_REASON = re.compile(r"^gpuhc:\s*([A-Za-z]+)?")

SlurmView = Optional[Mapping[str, Mapping[str, Any]]]


@dataclass
class NodeStatus:
    node: str
    health: str
    severity: str = "-"
    reason: str = ""
    where: str = ""
    partitions: List[str] = field(default_factory=lambda: ["-"])
    slurm_state: str = "-"
    slurm_reason: str = ""
    last_ts: Optional[float] = None
    context: str = ""
    job_id: str = ""
    profile: str = ""
    action: str = ""

    def to_dict(self, now: float) -> Dict[str, Any]:
        return {"node": self.node, "partitions": [p for p in self.partitions if p != "-"], "health": self.health,
                "severity": None if self.severity == "-" else self.severity, "reason": self.reason or None,
                "where": self.where or None,
                "slurm": None if self.slurm_state == "-" else {"state": self.slurm_state,
                                                               "reason": self.slurm_reason or None},
                "last_check": _iso(self.last_ts) if self.last_ts is not None else None,
                "last_check_ts": self.last_ts,
                "age_s": round(now - self.last_ts, 1) if self.last_ts is not None else None,
                "context": self.context or None, "job_id": self.job_id or None, "profile": self.profile or None,
                "action": self.action or None}


# ---------------------------------------------------------------------------------------------
# Health state

def _slurm_words(entry: Mapping[str, Any]) -> List[str]:
    state = entry.get("state") or []
    parts = state.split("+") if isinstance(state, str) else list(state)
    words = [p.strip().upper() for p in list(parts) + list(entry.get("flags") or []) if p and p.strip()]
    return list(dict.fromkeys(words))


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%g%s" % (round(seconds / size, 1), unit)
    return "%ds" % max(0, seconds)


def gpuhc_drain_severity(slurm: Mapping[str, Any]) -> Optional[str]:
    """The severity word of a gpuhc drain reason when Slurm shows the node drained by gpuhc
    ("" when the reason names none), else None."""
    match = _GPUHC_REASON.match(str(slurm.get("reason") or ""))
    if not match or not _DRAIN_WORDS.intersection(_slurm_words(slurm)):
        return None
    word = (match.group(1) or "").upper()
    return word if word in Severity.__members__ else ""


def node_status(node: str, summary: Optional[Mapping[str, Any]], slurm: Optional[Mapping[str, Any]],
                now: float, stale_after: float) -> NodeStatus:
    st = NodeStatus(node=node, health="healthy")
    top = None
    if summary is not None:
        st.severity = summary.get("overall") or "-"
        st.last_ts = float(summary.get("started_ts") or 0)
        st.context = summary.get("context") or ""
        st.job_id = str(summary.get("job_id") or "")
        st.profile = summary.get("profile") or ""
        st.action = summary.get("action") or ""
        top = summary.get("top") or None
        if top:
            st.reason = "%s: %s" % (top.get("check"), top.get("message"))
            st.where = top.get("where") or ""
    slurm_health = None
    if slurm is not None:
        words = _slurm_words(slurm)
        st.slurm_state = "+".join(words).lower() or "-"
        st.slurm_reason = slurm.get("reason") or ""
        st.partitions = list(slurm.get("partitions") or []) or ["-"]
        gpuhc_reason = _GPUHC_REASON.match(st.slurm_reason)
        if str(slurm.get("reservation") or "").startswith("gpuhc-quarantine") or \
                st.slurm_reason.startswith("gpuhc: quarantine"):
            slurm_health = "quarantine"
        elif _DRAIN_WORDS.intersection(words):
            slurm_health = "drained" if gpuhc_reason else "drained-admin"
            word = (gpuhc_reason.group(1) or "").upper() if gpuhc_reason else ""
            if slurm_health == "drained" and word in Severity.__members__:
                st.severity = word
        elif _DOWN_WORDS.intersection(words):
            slurm_health = "down"
        if slurm_health is not None and st.slurm_reason:
            # the newest report's top finding is where the reason points only when the reason names its check
            same = bool(gpuhc_reason and top and (" %s:" % top.get("check")) in st.slurm_reason)
            st.reason, st.where = st.slurm_reason, st.where if same else ""
    if slurm_health is not None:
        st.health = slurm_health
    elif slurm is None and st.action in ("drain", "held", "quarantine"):
        st.health = "quarantine" if st.action == "quarantine" else "drained"
    elif summary is None:
        st.health, st.reason = "never-checked", "never checked"
    elif st.last_ts is not None and (now - st.last_ts > stale_after or st.last_ts - now > FUTURE_SLACK):
        # a result dated ahead (a node whose clock ran ahead) says nothing of how long ago the node
        # last checked: it would show healthy until that date after the node died
        why = ("no result for more than %s" % _duration(stale_after) if now - st.last_ts > stale_after else
               "newest result dated %s ahead of this clock (node clock wrong?)" % _duration(st.last_ts - now))
        st.health, st.reason = "stale", why + (" (last: %s)" % st.reason if top else "")
    elif st.action == "would-drain":
        st.health = "would-drain"
    elif st.severity == Severity.ERROR.value:
        st.health = "error"
    elif st.severity in ("RESET", "REBOOT", "ISOLATE"):
        st.health = "unhealthy"
    elif st.severity == Severity.MONITOR.value:
        st.health = "monitor"
    return st


def collect(summaries: Mapping[str, Mapping[str, Any]], slurm: SlurmView, now: float,
            stale_after: float) -> List[NodeStatus]:
    """Every node the store or Slurm knows, with its health state."""
    slurm = slurm or {}
    names = set(summaries) | set(slurm)
    return [node_status(n, summaries.get(n), slurm.get(n), now, stale_after) for n in sorted(names, key=natural_key)]


def parse_states(text: Optional[str]) -> Optional[List[str]]:
    if not text:
        return None
    states = [s.strip().lower() for s in text.split(",") if s.strip()]
    for s in states:
        if s not in _STATE_ORDER:
            raise GpuhcError("-t: unknown state %r (known: %s)" % (s, ", ".join(STATES)))
    return states


Row = Tuple[NodeStatus, str]      # a node in one of its partitions


def select(statuses: Iterable[NodeStatus], partitions: Optional[Sequence[str]] = None,
           nodes: Optional[Sequence[str]] = None, states: Optional[Sequence[str]] = None,
           reasons_only: bool = False) -> List[Row]:
    wanted_nodes = set(nodes) if nodes is not None else None
    rows: List[Row] = []
    for st in statuses:
        if wanted_nodes is not None and st.node not in wanted_nodes:
            continue
        if states is not None and st.health not in states:
            continue
        if reasons_only and not st.reason:
            continue
        rows.extend((st, p) for p in st.partitions if partitions is None or p in partitions)
    return rows


# ---------------------------------------------------------------------------------------------
# Format fields

def _local(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) if ts is not None else "-"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_SEVERITY_SORT = {s.value: -s.rank for s in Severity}
# letter -> (column header, text of a node in a partition at a time)
FIELDS: Dict[str, Tuple[str, Callable[[NodeStatus, str, float], str]]] = {
    "N": ("NODELIST", lambda st, p, now: st.node),
    "D": ("NODES", lambda st, p, now: "1"),
    "P": ("PARTITION", lambda st, p, now: p),
    "t": ("HEALTH", lambda st, p, now: st.health),
    "s": ("SEVERITY", lambda st, p, now: st.severity),
    "T": ("SLURM_STATE", lambda st, p, now: st.slurm_state),
    "c": ("CONTEXT", lambda st, p, now: st.context),
    "j": ("JOBID", lambda st, p, now: st.job_id),
    "L": ("LAST_CHECK", lambda st, p, now: _local(st.last_ts)),
    "a": ("AGE", lambda st, p, now: _duration(now - st.last_ts) if st.last_ts is not None else ""),
    "R": ("REASON", lambda st, p, now: st.reason),
    "E": ("REASON", lambda st, p, now: st.reason),
    "W": ("WHERE", lambda st, p, now: st.where),
    "p": ("PROFILE", lambda st, p, now: st.profile),
    "A": ("ACTION", lambda st, p, now: st.action),
}
_JSON_KEYS = {"P": "partition", "t": "health", "s": "severity", "R": "reason"}
_SORT: Dict[str, Callable[[str], Any]] = {
    "P": lambda v: (v == "-", v), "t": lambda v: _STATE_ORDER.get(v, 99), "s": lambda v: _SEVERITY_SORT.get(v, 9),
}

DEFAULT_FORMAT = "%P  %t  %s  %.D  %N"
NODE_FORMAT = "%N  %P  %t  %s  %L  %c  %j  %W  %R"
REASON_FORMAT = "%R  %s  %.D  %N"
_TOKEN = re.compile(r"%(\.)?(\d*)(.)|[^%]+|%$", re.S)


@dataclass
class _Field:
    letter: str
    width: Optional[int]
    right: bool


MAX_WIDTH = 1000       # a field wider than a screen many times over is a typo


def parse_format(fmt: str) -> List[Any]:
    """Literal strings and _Field items; a one-line error naming the bad specifier and its place."""
    out: List[Any] = []
    if not fmt.strip():
        raise GpuhcError("-o %r: empty format (fields like %%N %%t %%s)" % fmt)
    for m in _TOKEN.finditer(fmt):
        text = m.group(0)
        if not text.startswith("%"):
            out.append(text)
        elif text == "%" or m.group(3) is None:
            raise GpuhcError("-o %r: '%%' at the end needs a field letter" % fmt)
        elif m.group(3) == "%":
            out.append("%")
        elif m.group(3) not in FIELDS:
            raise GpuhcError("-o %r: unknown field %%%s at column %d (known: %s)"
                             % (fmt, m.group(3), m.start() + 1, " ".join("%" + k for k in FIELDS)))
        elif m.group(2) and (len(m.group(2)) > 4 or int(m.group(2)) > MAX_WIDTH):
            raise GpuhcError("-o %r: width %s at column %d is more than %d" % (fmt, m.group(2), m.start() + 1, MAX_WIDTH))
        else:
            out.append(_Field(m.group(3), int(m.group(2)) if m.group(2) else None, bool(m.group(1))))
    return out


def _grouped(rows: List[Row], keys: Sequence[str], now: float) -> List[Tuple[Dict[str, str], List[str]]]:
    """(value of each key letter, member nodes) per group of rows sharing every key value."""
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for st, p in rows:
        groups.setdefault(tuple(FIELDS[k][1](st, p, now) for k in keys), []).append(st.node)

    def order(item: Tuple[Tuple[str, ...], List[str]]) -> Tuple:
        values, members = item
        return tuple(_SORT.get(k, lambda v: v)(v) for k, v in zip(keys, values)) + (natural_key(members[0]),)
    return [(dict(zip(keys, values)), members) for values, members in sorted(groups.items(), key=order)]


def _columns(fields: List[_Field], rows: List[Row], group: bool, now: float) -> Dict[str, List[str]]:
    """letter -> the text of that field on every output line."""
    letters = list(dict.fromkeys(f.letter for f in fields))
    if not group:
        return {l: [FIELDS[l][1](st, p, now) or "-" for st, p in rows] for l in letters}
    keys = [l for l in letters if l not in ("N", "D")]
    groups = _grouped(rows, keys, now)
    columns = {k: [values[k] or "-" for values, _ in groups] for k in keys}
    columns["N"] = [fold(members) for _, members in groups]
    columns["D"] = [str(len(set(members))) for _, members in groups]
    return columns


def render(tokens: List[Any], rows: List[Row], group: bool, now: float, auto_width: bool = False,
           header: bool = True, node_header: str = "NODELIST") -> str:
    """sinfo's way: each field padded (and cut) to its size; with auto_width to its column's width."""
    fields = [t for t in tokens if isinstance(t, _Field)]
    columns = _columns(fields, rows, group, now)
    parts: List[List[str]] = []          # one list per token, a text per line (the header first)
    lines = len(columns[fields[0].letter]) if fields else len(rows)
    for tok in tokens:
        if not isinstance(tok, _Field):
            parts.append([tok] * (lines + 1))
            continue
        texts = [node_header if tok.letter == "N" else FIELDS[tok.letter][0]] + \
            [clean(t) for t in columns[tok.letter]]     # one line per row, whatever a message holds (text.clean)
        width = tok.width
        if width is None and auto_width:
            width = max(map(len, texts))
        if width is not None:
            texts = [t[:width].rjust(width) if tok.right else t[:width].ljust(width) for t in texts]
        parts.append(texts)
    out = ["".join(line).rstrip() for line in zip(*parts)]
    return "\n".join(out if header else out[1:])


def _groups_json(rows: List[Row], keys: Sequence[str], now: float) -> List[Dict[str, Any]]:
    out = []
    for values, members in _grouped(rows, keys, now):
        item: Dict[str, Any] = {_JSON_KEYS[k]: (None if v in ("", "-") else v) for k, v in values.items()}
        item.update(count=len(set(members)), nodelist=fold(members), nodes=sorted(set(members), key=natural_key))
        out.append(item)
    return out


def status_text(cfg: Dict[str, Any], per_node: bool = False, reasons: bool = False,
                partitions: Optional[str] = None, nodelist: Optional[str] = None, states: Optional[str] = None,
                fmt: Optional[str] = None, as_json: bool = False, header: bool = True, slurm: SlurmView = None,
                now: Optional[float] = None) -> str:
    """What ``gpuhc status`` prints."""
    now = time.time() if now is None else now
    wanted_states = parse_states(states)
    wanted_nodes = expand(nodelist, "-n") if nodelist else None
    wanted_parts = [p.strip() for p in partitions.split(",") if p.strip()] if partitions else None
    tokens = parse_format(fmt) if fmt is not None else None
    store = Store.from_config(cfg)
    summaries = store.summaries()
    statuses = collect(summaries, slurm, now, float(cfg["status"]["stale_after"]))
    known = {st.node for st in statuses}
    unknown = [n for n in wanted_nodes or () if n not in known]
    if unknown:
        raise GpuhcError("-n: %s: not in the store%s" % (fold(unknown), " nor in Slurm" if slurm else ""))
    if wanted_parts and slurm:
        parts = {p for st in statuses for p in st.partitions}
        missing = [p for p in wanted_parts if p not in parts]
        if missing:
            raise GpuhcError("-p: no partition %s (Slurm has %s)" % (", ".join(missing), ", ".join(sorted(parts - {"-"}))))
    rows = select(statuses, wanted_parts, wanted_nodes, wanted_states, reasons_only=reasons)
    if as_json:
        doc: Dict[str, Any] = {"schema_version": 1, "generated": _iso(now), "store": store.root,
                               "slurm": bool(slurm)}
        if per_node:
            chosen = {st.node for st, _ in rows}
            doc["nodes"] = [st.to_dict(now) for st in statuses if st.node in chosen]
        elif reasons:
            doc["reasons"] = _groups_json(rows, ["R", "s"], now)
        else:
            doc["groups"] = _groups_json(rows, ["P", "t", "s"], now)
        return json.dumps(doc, indent=2)
    if not statuses:
        return "no results in the store %s" % store.root
    default = NODE_FORMAT if per_node else REASON_FORMAT if reasons else DEFAULT_FORMAT
    return render(tokens or parse_format(default), rows, group=not per_node, now=now, auto_width=tokens is None,
                  header=header, node_header="NODE" if per_node else "NODELIST")


def __getattr__(name: str) -> Any:
    """show_text, history_text and parse_duration: one node's views, in gpuhc/nodeview.py (which
    uses this module), found here too by their callers."""
    if name in ("show_text", "history_text", "parse_duration"):
        from . import nodeview

        return getattr(nodeview, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
