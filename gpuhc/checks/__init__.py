"""The check registry: name -> module, imported only when a suite or the metadata needs it.

Adding a check is one module (see checks/meta.py for the contract) plus one line here; the
default suites and thresholds come from each module's ``META``.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

# registry order is the order checks run in within a default suite
CHECKS: Dict[str, str] = {
    "nvml": "nvml",
    "gpu_count": "gpu_count",
    "xid": "xid",
    "ecc": "ecc",
    "memory_remap": "memory_remap",
    "pcie": "pcie",
    "nvlink": "nvlink",
    "clocks": "clocks",
    "thermal_power": "thermal_power",
    "gpu_config": "gpu_config",
    "fabric": "fabric",
    "processes": "processes",
    "network": "network",
    "dcgm": "dcgm",
    "gpu_stress": "gpu_stress",
    "gpu_bench": "gpu_bench",
    "allreduce_node": "allreduce_node",
}


def names() -> List[str]:
    return list(CHECKS)


def load(name: str) -> Any:
    """The check module (a checks.meta.CheckModule)."""
    return importlib.import_module("%s.%s" % (__name__, CHECKS[name]))


def metadata(name: str):
    """The check's checks.meta.CheckMeta."""
    return load(name).META


def default_suites() -> Dict[str, List[str]]:
    """{suite: [check names]} as the checks' metadata declares them, in registry order."""
    from .meta import SUITES

    out: Dict[str, List[str]] = {suite: [] for suite in SUITES}
    for name in CHECKS:
        for suite in metadata(name).suites:
            out.setdefault(suite, []).append(name)
    return out


def default_thresholds() -> Dict[str, Any]:
    """{threshold name: checks.meta.Threshold} over every check."""
    out: Dict[str, Any] = {}
    for name in CHECKS:
        for key, value in metadata(name).thresholds.items():
            if key in out:
                raise ValueError("threshold %s declared by two checks" % key)
            out[key] = value
    return out
