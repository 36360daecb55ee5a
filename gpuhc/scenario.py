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
    commands: {"systemctl is-active nvidia-fabricmanager": {rc: 0, stdout: "active"}}
    faults: [{call: ecc, gpu: 3, error: GPU_IS_LOST}, {call: "*", hang: 30}]

The keys of ``gpu`` are the calls of the GPU interface (backends/gpu.py CALLS).
``absent: true`` keeps a GPU on PCI but out of NVML's enumeration (a GPU that
fell out of the driver). A ``%n`` in a scenario path is replaced by the node name.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .backends.gpu import CALLS, ERROR_CODES
from .errors import ScenarioError
from .yamlio import read_yaml

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")

TOP_KEYS = {"name", "description", "extends", "node", "gpu_count", "pci_bus_ids", "gpu", "gpus",
            "kernel_log", "files", "commands", "faults"}
NODE_KEYS = {"instance_type", "driver_version", "boot_id", "hostname"}
GPU_KEYS = (set(CALLS) - {"driver_version", "device_count"}) | {"absent"}
FAULT_KEYS = {"call", "gpu", "error", "hang", "detail"}
COMMAND_KEYS = {"rc", "stdout", "stderr", "hang"}


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


def _raw(path: str, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise ScenarioError("%s: 'extends' loops back to itself" % path)
    data = _read_yaml(path)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ScenarioError("%s: unknown key %r" % (path, sorted(unknown)[0]))
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
        # per-index overrides and lists merge by their own rules below
        data = deep_merge(base, data)
    return data


def _fake_uuid(seed: str, index: int) -> str:
    h = hashlib.sha1(("%s:%d" % (seed, index)).encode()).hexdigest()
    return "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:32])


LINK_COUNTERS = ("replay", "recovery", "crc_flit", "crc_data")


def _expand_links(spec: Dict[str, Any], where: str) -> List[Dict[str, Any]]:
    """``{count: 18, down: [3], errors: {5: {crc_flit: 10}}}`` -> the interface's list of links."""
    unknown = set(spec) - {"count", "down", "errors", "active"}
    if unknown:
        raise ScenarioError("%s: unknown key %r (count, down, errors, active)" % (where, sorted(unknown)[0]))
    down = set(spec.get("down") or [])
    all_active = spec.get("active", True)
    errors = spec.get("errors") or {}
    links = []
    for n in range(int(spec.get("count", 0))):
        link = {"link": n, "active": bool(all_active) and n not in down, "remote_pci_bus_id": None}
        for counter in LINK_COUNTERS:
            link[counter] = 0
        link.update(errors.get(n, errors.get(str(n), {})) or {})
        links.append(link)
    return links


def load(name_or_path: str, node: Optional[str] = None) -> Scenario:
    path = resolve(name_or_path, node)
    data = _raw(path)
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]

    def fail(msg: str) -> "ScenarioError":
        return ScenarioError("%s: %s" % (path, msg))

    node_info = data.get("node") or {}
    if not isinstance(node_info, dict) or set(node_info) - NODE_KEYS:
        raise fail("node: unknown key %r" % sorted(set(node_info) - NODE_KEYS)[0]
                   if isinstance(node_info, dict) else "node: must be a mapping")
    count = data.get("gpu_count", 0)
    if not isinstance(count, int) or count < 0:
        raise fail("gpu_count: must be a non-negative integer")
    template = data.get("gpu") or {}
    overrides = data.get("gpus") or {}
    if not isinstance(template, dict) or not isinstance(overrides, dict):
        raise fail("gpu and gpus must be mappings")
    for key in template:
        if key not in GPU_KEYS:
            raise fail("gpu: unknown key %r" % key)
    bus_ids = data.get("pci_bus_ids") or []
    if bus_ids and len(bus_ids) < count:
        raise fail("pci_bus_ids: %d given for %d GPUs" % (len(bus_ids), count))
    # a node keeps its boards whichever scenario it runs (a fault scenario is the same hardware);
    # without a node name the scenario's name tells the boards apart
    seed = node or node_info.get("hostname") or name
    gpus = []
    for i in range(count):
        over = overrides.get(i, overrides.get(str(i), {})) or {}
        if not isinstance(over, dict):
            raise fail("gpus.%d: must be a mapping" % i)
        for key in over:
            if key not in GPU_KEYS:
                raise fail("gpus.%d: unknown key %r" % (i, key))
        gpu = deep_merge(template, over)
        if isinstance(gpu.get("nvlink"), dict):
            gpu["nvlink"] = _expand_links(gpu["nvlink"], "%s: gpus.%d.nvlink" % (path, i))
        ident = dict(gpu.get("identity") or {})
        ident.setdefault("uuid", _fake_uuid(seed, i))
        ident.setdefault("serial", "16549%05d" % (int(hashlib.sha1(seed.encode()).hexdigest()[:4], 16) * 8 + i))
        ident.setdefault("pci_bus_id", bus_ids[i] if bus_ids else "0000:%02x:00.0" % (0x10 + 0x10 * i))
        ident.setdefault("minor_number", i)
        gpu["identity"] = ident
        gpus.append(gpu)
    for key in overrides:
        if not str(key).isdigit() or int(key) >= count:
            raise fail("gpus: index %s out of range for %d GPUs" % (key, count))
    faults = data.get("faults") or []
    for n, fault in enumerate(faults):
        if not isinstance(fault, dict) or set(fault) - FAULT_KEYS:
            raise fail("faults[%d]: expected keys among %s" % (n, sorted(FAULT_KEYS)))
        call = fault.get("call", "*")
        if call != "*" and call not in CALLS:
            raise fail("faults[%d].call: unknown call %r" % (n, call))
        if "error" not in fault and "hang" not in fault:
            raise fail("faults[%d]: needs 'error' or 'hang'" % n)
        if "error" in fault and fault["error"] not in ERROR_CODES:
            raise fail("faults[%d].error: unknown code %r" % (n, fault["error"]))
    commands = data.get("commands") or {}
    for cmd, spec in commands.items():
        if not isinstance(spec, dict) or set(spec) - COMMAND_KEYS:
            raise fail("commands[%r]: expected keys among %s" % (cmd, sorted(COMMAND_KEYS)))
    kernel_log = data.get("kernel_log") or []
    if isinstance(kernel_log, str):
        kernel_log = kernel_log.splitlines()
    files = {str(k): str(v) for k, v in (data.get("files") or {}).items()}
    return Scenario(name=name, description=str(data.get("description", "")), path=path,
                    node=node_info, gpus=gpus, kernel_log=[str(x) for x in kernel_log],
                    files=files, commands=commands, faults=list(faults))


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
