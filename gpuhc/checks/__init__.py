"""The check catalogue: name -> module, imported only when a suite uses it."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, List

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
}


def names() -> List[str]:
    return list(CHECKS)


def load(name: str) -> ModuleType:
    return importlib.import_module("%s.%s" % (__name__, CHECKS[name]))
