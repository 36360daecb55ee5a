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

Every file is checked against ``SCENARIO_SCHEMA`` (gpuhc/schema.py) as it is read (so an error
names the file that holds the bad value), and what depends on the merged whole
(indexes against ``gpu_count``) once merged: a bad value is a one-line
:class:`ScenarioError` naming file and field, never a failure later in a check.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .backends.gpu import CALLS, ERROR_CODES
from .errors import ScenarioError
from .schema import MapOf, OneOf, Whole, validate
from .yamlio import read_yaml

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")


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

# What the deep checks would measure on this node (backends/deep.py shapes): per-GPU figures (a
# template and per-index overrides, like gpu/gpus), the node's all-reduce peak, calls that hang;
# and how its ranks behave in a real multi-node all-reduce (`gpuhc nccl`): nccl.delay_s seconds
# added to each of its collectives (the whole group slows, as with a slow node), nccl.hang: its
# ranks stop in the collective (the group's peers time out, as with a hung node).
DEEP_GPU = {"matmul_tflops": "amount", "stress_tflops": "amount", "hbm_gbps": "amount", "h2d_gbps": "amount",
            "d2h_gbps": "amount", "p2p_gbps": "amount", "mismatches": "count"}
DEEP_SCHEMA = {"gpu": DEEP_GPU, "gpus": MapOf("index", DEEP_GPU), "allreduce": {"busbw_gbps": "amount"},
               "hang": [OneOf("call", ("stress", "bench", "allreduce"))],
               "nccl": {"delay_s": "amount", "hang": "bool"}}

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
    "deep": (DEEP_SCHEMA, None),
}
TOP_KEYS = set(SCENARIO_SCHEMA)


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
    deep: Dict[str, Any] = field(default_factory=dict)      # DEEP_SCHEMA, GPU overrides keyed by int

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
        validate(data, SCENARIO_SCHEMA, error=ScenarioError)
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
    for name, numbers in (("down", down), ("errors", errors)):
        beyond = sorted(n for n in numbers if n >= count)
        if beyond:
            raise ScenarioError("%s.%s: link %d out of range for %d links" % (where, name, beyond[0], count))
    links: List[Dict[str, Any]] = []
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
                    files=files, commands=data.get("commands") or {}, faults=list(faults),
                    deep=_deep(data.get("deep") or {}, count, fail))


def _deep(deep: Dict[str, Any], count: int, fail: Any) -> Dict[str, Any]:
    """The deep section with its per-GPU overrides keyed by int and checked against the GPU count."""
    deep = dict(deep)
    overrides = {}
    for key, value in (deep.get("gpus") or {}).items():
        if int(key) >= count:
            raise fail("deep.gpus: index %s out of range for %d GPUs" % (key, count))
        overrides[int(key)] = value
    deep["gpus"] = overrides
    return deep


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
