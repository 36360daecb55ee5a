"""Scenario files: a complete simulated node (GPUs, kernel log, sysfs, command outputs, faults).

A scenario is YAML::

    description: one line shown by `gpuhc scenarios`
    extends: h100-healthy          # optional: a bundled name or a path; deep-merged underneath
    node: {instance_type: p5.48xlarge, driver_version: "570.133.20", boot_id: ...}
    gpu_count: 8
    pci_bus_ids: ["0000:18:00.0", ...]     # one per GPU, in NVML order
    gpu: {identity: {...}, ecc: {...}, pcie: {...}, ...}   # template for every GPU
    gpus: {3: {pcie: {width_current: 8}}, 5: {absent: true}}  # per-index overrides
    kernel_log: ["[  12.3] NVRM: Xid (PCI:0000:3a:00): 79, ...", ...]
    files: {/sys/class/infiniband/mlx5_0/ports/1/state: "4: ACTIVE"}
    commands: {"systemctl is-active nvidia-fabricmanager": {rc: 0, stdout: "active\\n"}}
    faults: [{call: ecc, gpu: 3, error: GPU_IS_LOST}, {call: "*", hang: 30}]

The keys of ``gpu`` are the calls of the GPU interface (backends/gpu.py CALLS),
each value of the shape that call returns (``GPU_SCHEMA``; ``null`` only where
NVML answers None for a value the GPU does not support). ``nvlink`` is either
that list of links or the short form ``{count: 18, down: [3], errors: {5:
{crc_flit: 10}}, active: true}``. ``absent: true`` keeps a GPU on PCI but out of
NVML's enumeration (a GPU that fell out of the driver). A ``%n`` in a scenario
path is replaced by the node name.

Every file is checked against ``SCENARIO_SCHEMA`` as it is read (so an error
names the file that holds the bad value), and what depends on the merged whole
(indexes against ``gpu_count``) once merged: a bad value is a one-line
:class:`ScenarioError` naming file and field, never a failure later in a check.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .backends.gpu import CALLS, ERROR_CODES
from .errors import ScenarioError
from .yamlio import read_yaml

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")


# -- the schema ------------------------------------------------------------------------------
# A schema is one of:
#   a leaf name from _LEAVES ("int", "str", ...), with "?" appended where null is allowed too;
#   a dict: a mapping with (some of) these keys, each value of its schema;
#   Whole({...}): the same with every key present (list items: lists are never merged);
#   a list of one schema: a list whose items are of that schema;
#   MapOf(key, value): a mapping with any keys of leaf type ``key``;
#   OneOf(noun, values): one of the given strings;
#   a tuple: any of these schemas (None in it: null allowed).

class Whole(dict):
    pass


class MapOf:
    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value


class OneOf:
    def __init__(self, noun: str, values: Any) -> None:
        self.noun, self.values = noun, frozenset(values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# leaf name -> (what it is, in an error message; test)
_LEAVES = {
    "int": ("an integer", _is_int),
    "count": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "index": ("an index (a non-negative integer)",
              lambda v: (_is_int(v) and v >= 0) or (isinstance(v, str) and v.isdigit())),
    "float": ("a number", _is_number),
    "seconds": ("a non-negative number of seconds", lambda v: _is_number(v) and v >= 0),
    "bool": ("true/false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "text": ("a string", lambda v: isinstance(v, str) or _is_int(v)),   # an integer reads as its digits
}

LINK_COUNTERS = ("replay", "recovery", "crc_flit", "crc_data")
_LINK = Whole({"link": "count", "active": "bool", "remote_pci_bus_id": "str?"},
             **{c: "int?" for c in LINK_COUNTERS})
# the short form of ``nvlink``, expanded to a list of _LINK by _expand_links
_LINK_SPEC = {"count": "count", "down": ["count"], "active": "bool",
              "errors": MapOf("index", {c: "int?" for c in LINK_COUNTERS})}

# Per GPU: the shape of each call of backends/gpu.py CALLS, as gpu_nvml.py returns it.
GPU_SCHEMA: Dict[str, Any] = {
    "identity": {"name": "str?", "uuid": "str?", "serial": "str?", "pci_bus_id": "str",
                 "board_part_number": "str?", "vbios": "str?", "architecture": ("str", "int", None),
                 "minor_number": "count?"},
    "ecc": {"enabled": "bool?", "pending": "bool?",
            "volatile": {"corrected": "int?", "uncorrected": "int?"},
            "aggregate": {"corrected": "int?", "uncorrected": "int?",
                          "uncorrected_sram": "int?", "uncorrected_dram": "int?"}},
    "retired_pages": {"single_bit": "int?", "double_bit": "int?", "pending": "bool?"},
    "remapped_rows": {"correctable": "int?", "uncorrectable": "int?", "pending": "bool?",
                      "failure": "bool?", "banks_low": "int?", "banks_none": "int?"},
    "pcie": {k: "int?" for k in ("gen_current", "gen_max", "gen_gpu_max", "width_current",
                                 "width_max", "replay_counter")},
    "nvlink": (_LINK_SPEC, [_LINK]),
    "clock_event_reasons": "count",
    "temperature": {k: "int?" for k in ("gpu", "slowdown", "shutdown", "max_operating", "memory")},
    "power": {k: "float?" for k in ("usage_w", "limit_w", "default_limit_w", "enforced_limit_w",
                                    "min_limit_w", "max_limit_w")},
    "modes": {"persistence": "bool?", "mig_current": "bool?", "mig_pending": "bool?",
              "compute_mode": "str?"},
    "fabric": ({"state": "int", "status": "int", "clique_id": "int", "cluster_uuid": "str?"}, None),
    "processes": [Whole({"pid": "count", "used_memory_mib": "int?", "name": "str?"})],
    "utilization": {"gpu": "int?", "memory": "int?"},
    "absent": "bool",
}
GPU_KEYS = set(GPU_SCHEMA)

_FAULT = {"call": OneOf("call", ("*",) + tuple(CALLS)), "gpu": "count",
          "error": OneOf("code", ERROR_CODES), "hang": "seconds", "detail": "text"}
_COMMAND = {"rc": "int", "stdout": "text", "stderr": "text", "hang": "seconds"}

# A whole scenario file. Null for a top-level section means "none" (or, after extends, drops the
# parent's).
SCENARIO_SCHEMA: Dict[str, Any] = {
    "name": "str?", "description": "text?", "extends": "str?",
    "node": ({"instance_type": "str?", "driver_version": "str", "boot_id": "str", "hostname": "str"}, None),
    "gpu_count": "count",
    "pci_bus_ids": (["str"], None),
    "gpu": (GPU_SCHEMA, None),
    "gpus": (MapOf("index", (GPU_SCHEMA, None)), None),
    "kernel_log": (["str"], "str", None),
    "files": (MapOf("str", "text"), None),
    "commands": (MapOf("str", _COMMAND), None),
    "faults": ([_FAULT], None),
}
TOP_KEYS = set(SCENARIO_SCHEMA)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(schema: Any) -> str:
    if schema is None:
        return "null"
    if isinstance(schema, str):
        what = _LEAVES[schema.rstrip("?")][0]
        return what + " or null" if schema.endswith("?") else what
    if isinstance(schema, (dict, MapOf)):
        return "a mapping"
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, OneOf):
        return "a %s" % schema.noun
    alts = [_describe(s) for s in schema]
    return ", ".join(alts[:-1]) + " or " + alts[-1]


def _fits(schema: Any, value: Any) -> bool:
    """Whether ``value`` is of the outer kind of ``schema`` (its contents are not looked at)."""
    if schema is None or value is None:
        return schema is value or (isinstance(schema, str) and schema.endswith("?"))
    if isinstance(schema, str):
        return _LEAVES[schema.rstrip("?")][1](value)
    if isinstance(schema, (dict, MapOf)):
        return isinstance(value, dict)
    if isinstance(schema, list):
        return isinstance(value, list)
    if isinstance(schema, OneOf):
        return isinstance(value, str)
    return any(_fits(s, value) for s in schema)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _at(where: str, key: Any) -> str:
    """``gpus.3.pcie``; ``commands['nvidia-smi -q']`` for a key that is not a plain word."""
    if _is_int(key) or (isinstance(key, str) and _PLAIN_KEY.match(key)):
        return "%s.%s" % (where, key) if where else str(key)
    return "%s[%r]" % (where, key)


def validate(value: Any, schema: Any, where: str = "") -> None:
    """Raise ScenarioError("WHERE: ...") unless ``value`` is of ``schema`` (see above)."""
    def bad(msg: str) -> ScenarioError:
        return ScenarioError("%s: %s" % (where, msg) if where else msg)

    if isinstance(schema, tuple):
        for alt in schema:
            if _fits(alt, value):
                if alt is not None:
                    validate(value, alt, where)
                return
    elif _fits(schema, value):
        if isinstance(schema, dict):
            missing = [key for key in schema if key not in value] if isinstance(schema, Whole) else []
            if missing:
                raise bad("missing key %r" % missing[0])
            for key, item in value.items():
                if key not in schema:
                    raise bad("unknown key %r (known: %s)" % (key, ", ".join(sorted(schema))))
                validate(item, schema[key], _at(where, key))
        elif isinstance(schema, MapOf):
            for key, item in value.items():
                if not _fits(schema.key, key):
                    raise bad("key %s: expected %s" % (_show(key), _describe(schema.key)))
                validate(item, schema.value, _at(where, key))
        elif isinstance(schema, list):
            for n, item in enumerate(value):
                validate(item, schema[0], "%s[%d]" % (where, n))
        elif isinstance(schema, OneOf) and value not in schema.values:
            raise bad("unknown %s %r" % (schema.noun, value))
        return
    raise bad("expected %s, got %s" % (_describe(schema), _show(value)))


@dataclass
class Scenario:
    name: str
    description: str
    path: str
    node: Dict[str, Any]
    gpus: List[Dict[str, Any]]          # every GPU on PCI, each a dict of call -> value
    kernel_log: List[str]
    files: Dict[str, str]
    commands: Dict[str, Dict[str, Any]]
    faults: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def nvml_gpus(self) -> List[Dict[str, Any]]:
        """The GPUs NVML enumerates (absent ones left out), in order."""
        return [g for g in self.gpus if not g.get("absent")]


def bundled_names() -> List[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(BUNDLED_DIR) if f.endswith(".yaml"))
    except OSError:
        return []


def resolve(name_or_path: str, node: Optional[str] = None) -> str:
    """A scenario path from a bundled name or a path (``%n`` replaced by the node name)."""
    text = name_or_path
    if "%n" in text:
        if not node:
            raise ScenarioError("scenario path %r uses %%n but the node name is unknown" % text)
        text = text.replace("%n", node)
    if os.sep in text or text.endswith((".yaml", ".yml")):
        if not os.path.isfile(text):
            raise ScenarioError("scenario file not found: %s" % text)
        return text
    path = os.path.join(BUNDLED_DIR, text + ".yaml")
    if not os.path.isfile(path):
        raise ScenarioError("unknown scenario %r (bundled: %s)" % (text, ", ".join(bundled_names())))
    return path


def _read_yaml(path: str) -> Dict[str, Any]:
    data = read_yaml(path, ScenarioError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError("%s: a scenario must be a mapping at the top level" % path)
    try:
        validate(data, SCENARIO_SCHEMA)
        if data.get("gpus"):
            data["gpus"] = _by_index(data["gpus"])
    except ScenarioError as exc:
        raise ScenarioError("%s: %s" % (path, exc)) from None
    return data


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Dicts merge key by key; anything else in ``over`` replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _by_index(overrides: Dict[Any, Any]) -> Dict[int, Any]:
    """``gpus`` keyed by int (keys already checked): YAML's ``3:`` and ``"3":`` are one GPU."""
    out: Dict[int, Any] = {}
    for key, value in overrides.items():
        if int(key) in out:
            raise ScenarioError("gpus: GPU %d given twice" % int(key))
        out[int(key)] = value
    return out


def _raw(path: str, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise ScenarioError("%s: 'extends' loops back to itself" % path)
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent:
        base_path = parent
        if not os.path.isabs(parent) and (os.sep in parent or parent.endswith(".yaml")):
            base_path = os.path.join(os.path.dirname(path), parent)
        try:
            base_file = resolve(base_path)
        except ScenarioError as exc:
            raise ScenarioError("%s: extends: %s" % (path, exc)) from None
        base = _raw(base_file, seen + (path,))
        base.pop("description", None)
        base.pop("name", None)
        data = deep_merge(base, data)
    return data


def _fake_uuid(seed: str, index: int) -> str:
    h = hashlib.sha1(("%s:%d" % (seed, index)).encode()).hexdigest()
    return "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:32])


def _expand_links(spec: Dict[str, Any], where: str) -> List[Dict[str, Any]]:
    """``{count: 18, down: [3], errors: {5: {crc_flit: 10}}}`` -> the interface's list of links
    (``spec`` already checked against _LINK_SPEC)."""
    count = spec.get("count", 0)
    down = set(spec.get("down") or [])
    errors = {int(k): v for k, v in (spec.get("errors") or {}).items()}
    for name, links in (("down", down), ("errors", errors)):
        beyond = sorted(n for n in links if n >= count)
        if beyond:
            raise ScenarioError("%s.%s: link %d out of range for %d links" % (where, name, beyond[0], count))
    links = []
    for n in range(count):
        link = {"link": n, "active": spec.get("active", True) and n not in down, "remote_pci_bus_id": None}
        for counter in LINK_COUNTERS:
            link[counter] = 0
        link.update(errors.get(n) or {})
        links.append(link)
    return links


def load(name_or_path: str, node: Optional[str] = None) -> Scenario:
    path = resolve(name_or_path, node)
    data = _raw(path)
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]

    def fail(msg: str) -> "ScenarioError":
        return ScenarioError("%s: %s" % (path, msg))

    # types are checked file by file as read (_read_yaml); what remains is what depends on the
    # merged whole: indexes against the number of GPUs and links
    node_info = data.get("node") or {}
    count = data.get("gpu_count") or 0
    template = data.get("gpu") or {}
    overrides = data.get("gpus") or {}
    bus_ids = data.get("pci_bus_ids") or []
    if bus_ids and len(bus_ids) < count:
        raise fail("pci_bus_ids: %d given for %d GPUs" % (len(bus_ids), count))
    for key in overrides:
        if key >= count:
            raise fail("gpus: index %s out of range for %d GPUs" % (key, count))
    # a node keeps its boards whichever scenario it runs (a fault scenario is the same hardware);
    # without a node name the scenario's name tells the boards apart
    seed = node or node_info.get("hostname") or name
    gpus = []
    for i in range(count):
        gpu = deep_merge(template, overrides.get(i) or {})
        if isinstance(gpu.get("nvlink"), dict):
            try:
                gpu["nvlink"] = _expand_links(gpu["nvlink"], "gpus.%d.nvlink" % i)
            except ScenarioError as exc:
                raise fail(str(exc)) from None
        ident = dict(gpu.get("identity") or {})
        ident.setdefault("uuid", _fake_uuid(seed, i))
        ident.setdefault("serial", "16549%05d" % (int(hashlib.sha1(seed.encode()).hexdigest()[:4], 16) * 8 + i))
        ident.setdefault("pci_bus_id", bus_ids[i] if bus_ids else "0000:%02x:00.0" % (0x10 + 0x10 * i))
        ident.setdefault("minor_number", i)
        gpu["identity"] = ident
        gpus.append(gpu)
    faults = data.get("faults") or []
    for n, fault in enumerate(faults):
        if "error" not in fault and "hang" not in fault:
            raise fail("faults[%d]: needs 'error' or 'hang'" % n)
        if fault.get("gpu", -1) >= count:
            raise fail("faults[%d].gpu: index %d out of range for %d GPUs" % (n, fault["gpu"], count))
    kernel_log = data.get("kernel_log") or []
    if isinstance(kernel_log, str):
        kernel_log = kernel_log.splitlines()
    files = {k: str(v) for k, v in (data.get("files") or {}).items()}
    return Scenario(name=name, description=str(data.get("description") or ""), path=path,
                    node=node_info, gpus=gpus, kernel_log=list(kernel_log),
                    files=files, commands=data.get("commands") or {}, faults=list(faults))


def describe_all() -> List[tuple]:
    """(name, description) of every bundled scenario, from its first lines only."""
    out = []
    for name in bundled_names():
        desc = ""
        with open(os.path.join(BUNDLED_DIR, name + ".yaml")) as fh:
            for line in fh:
                if line.startswith("description:"):
                    desc = line.split(":", 1)[1].strip().strip("'\"")
                    break
        out.append((name, desc))
    return out
