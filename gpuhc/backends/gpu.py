"""The one GPU interface that NVML (gpu_nvml) and the simulation (gpu_sim) implement.

Every method takes a GPU index (0-based, NVML's order) and returns plain data:
ints, floats, strings, bools, dicts and lists, with ``None`` for a value the
GPU does not support. Failures raise :class:`GpuError` carrying a code from
``ERROR_CODES`` (named after NVML's return codes) so checks map them to
meaning in one place (``checks.base.gpu_error_finding``).

Every public call goes through :meth:`GpuBackend.call`, which records the call
in flight; when the runner's timeout fires while a call is in flight, the
backend is marked hung and every later call fails fast with ``TIMEOUT`` instead
of queueing behind the stuck one.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

# Error codes, after NVML's NVML_ERROR_* names.
LIBRARY_NOT_FOUND = "LIBRARY_NOT_FOUND"     # libnvidia-ml.so not present
DRIVER_NOT_LOADED = "DRIVER_NOT_LOADED"     # library present, kernel module not loaded
GPU_IS_LOST = "GPU_IS_LOST"                 # fell off the bus / not responding
NOT_SUPPORTED = "NOT_SUPPORTED"
NO_PERMISSION = "NO_PERMISSION"
TIMEOUT = "TIMEOUT"                         # the call hung past its timeout
NOT_FOUND = "NOT_FOUND"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNINITIALIZED = "UNINITIALIZED"
RESET_REQUIRED = "RESET_REQUIRED"
GPU_NOT_FOUND = "GPU_NOT_FOUND"             # handle for the index cannot be had
INSUFFICIENT_POWER = "INSUFFICIENT_POWER"
IRQ_ISSUE = "IRQ_ISSUE"
MEMORY = "MEMORY"
UNKNOWN = "UNKNOWN"

ERROR_CODES = (
    LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, GPU_IS_LOST, NOT_SUPPORTED, NO_PERMISSION,
    TIMEOUT, NOT_FOUND, INVALID_ARGUMENT, UNINITIALIZED, RESET_REQUIRED, GPU_NOT_FOUND,
    INSUFFICIENT_POWER, IRQ_ISSUE, MEMORY, UNKNOWN,
)

# Errors that concern the whole node (no GPU can be queried).
NODE_WIDE = (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, UNINITIALIZED)


class GpuError(Exception):
    def __init__(self, code: str, call: str = "", gpu: Optional[int] = None, detail: str = ""):
        self.code = code if code in ERROR_CODES else UNKNOWN
        self.call = call
        self.gpu = gpu
        self.detail = detail
        where = " on GPU %d" % gpu if gpu is not None else ""
        text = "%s%s: %s" % (call or "GPU call", where, code)
        if detail:
            text += " (%s)" % detail
        super().__init__(text)

    @property
    def node_wide(self) -> bool:
        return self.code in NODE_WIDE


# The calls of the interface, with the shape each returns. gpu_sim reads scenario
# keys of the same names; gpu_nvml implements each with pynvml.
CALLS = {
    "driver_version": "str",
    "device_count": "int",
    "identity": "{name, uuid, serial, pci_bus_id, board_part_number, vbios, architecture, minor_number}",
    "ecc": "{enabled, pending, volatile: {corrected, uncorrected}, aggregate: {corrected, uncorrected,"
           " uncorrected_sram, uncorrected_dram}}",
    "retired_pages": "{single_bit, double_bit, pending}",
    "remapped_rows": "{correctable, uncorrectable, pending, failure, banks_low, banks_none}",
    "pcie": "{gen_current, gen_max, gen_gpu_max, width_current, width_max, replay_counter}",
    "nvlink": "[{link, active, replay, recovery, crc_flit, crc_data, remote_pci_bus_id}]",
    "clock_event_reasons": "int bitmask (NVML clocks event / throttle reasons)",
    "temperature": "{gpu, slowdown, shutdown, max_operating, memory}",
    "power": "{usage_w, limit_w, default_limit_w, enforced_limit_w, min_limit_w, max_limit_w}",
    "modes": "{persistence, mig_current, mig_pending, compute_mode}",
    "fabric": "{state, status, clique_id, cluster_uuid} or None without NVSwitch fabric",
    "processes": "[{pid, used_memory_mib, name}]",
    "utilization": "{gpu, memory}",
}


@runtime_checkable
class GpuInterface(Protocol):
    """The GPU interface the checks use, whatever answers it (NVML, a scenario). Each per-GPU call
    takes the NVML index and returns the shape CALLS gives; a failure is a GpuError. ``hung`` is
    set once a call did not return in time (then every later call fails fast)."""
    kind: str
    hung: Optional[tuple]

    def mark_hung(self) -> Optional[tuple]: ...
    def in_flight(self) -> Optional[tuple]: ...
    def driver_version(self) -> str: ...
    def device_count(self) -> int: ...
    def identity(self, i: int) -> Dict[str, Any]: ...
    def ecc(self, i: int) -> Dict[str, Any]: ...
    def retired_pages(self, i: int) -> Dict[str, Any]: ...
    def remapped_rows(self, i: int) -> Dict[str, Any]: ...
    def pcie(self, i: int) -> Dict[str, Any]: ...
    def nvlink(self, i: int) -> List[Dict[str, Any]]: ...
    def clock_event_reasons(self, i: int) -> int: ...
    def temperature(self, i: int) -> Dict[str, Any]: ...
    def power(self, i: int) -> Dict[str, Any]: ...
    def modes(self, i: int) -> Dict[str, Any]: ...
    def fabric(self, i: int) -> Optional[Dict[str, Any]]: ...
    def processes(self, i: int) -> List[Dict[str, Any]]: ...
    def utilization(self, i: int) -> Dict[str, Any]: ...
    def close(self) -> None: ...


class GpuBackend:
    """Base class of every GpuInterface: call bookkeeping and hang detection. Subclasses implement
    ``_<call>`` for each call of CALLS (tests/test_contracts.py checks that they do)."""

    kind = "base"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: Optional[tuple] = None   # (call, gpu, started)
        self.hung: Optional[tuple] = None          # (call, gpu, seconds) once a call timed out

    # -- bookkeeping -------------------------------------------------------------------------
    def call(self, name: str, gpu: Optional[int] = None) -> Any:
        if self.hung is not None:
            hung_call, hung_gpu, _ = self.hung
            raise GpuError(TIMEOUT, name, gpu,
                           "GPU library unresponsive since %s hung" % hung_call)
        fn: Callable = getattr(self, "_" + name)
        with self._lock:
            self._in_flight = (name, gpu, time.monotonic())
        try:
            return fn() if gpu is None else fn(gpu)
        finally:
            with self._lock:
                self._in_flight = None

    def in_flight(self) -> Optional[tuple]:
        """(call, gpu, seconds so far) of the call in progress, or None."""
        with self._lock:
            if self._in_flight is None:
                return None
            name, gpu, started = self._in_flight
            return name, gpu, time.monotonic() - started

    def mark_hung(self) -> Optional[tuple]:
        """Called by the runner when a check's time ran out; returns the hung call, if any."""
        current = self.in_flight()
        if current is not None and self.hung is None:
            self.hung = current
        return current

    # -- public interface (thin wrappers so every call is tracked) ---------------------------
    def driver_version(self) -> str:
        return self.call("driver_version")

    def device_count(self) -> int:
        return self.call("device_count")

    def identity(self, i: int) -> Dict[str, Any]:
        return self.call("identity", i)

    def ecc(self, i: int) -> Dict[str, Any]:
        return self.call("ecc", i)

    def retired_pages(self, i: int) -> Dict[str, Any]:
        return self.call("retired_pages", i)

    def remapped_rows(self, i: int) -> Dict[str, Any]:
        return self.call("remapped_rows", i)

    def pcie(self, i: int) -> Dict[str, Any]:
        return self.call("pcie", i)

    def nvlink(self, i: int) -> List[Dict[str, Any]]:
        return self.call("nvlink", i)

    def clock_event_reasons(self, i: int) -> int:
        return self.call("clock_event_reasons", i)

    def temperature(self, i: int) -> Dict[str, Any]:
        return self.call("temperature", i)

    def power(self, i: int) -> Dict[str, Any]:
        return self.call("power", i)

    def modes(self, i: int) -> Dict[str, Any]:
        return self.call("modes", i)

    def fabric(self, i: int) -> Optional[Dict[str, Any]]:
        return self.call("fabric", i)

    def processes(self, i: int) -> List[Dict[str, Any]]:
        return self.call("processes", i)

    def utilization(self, i: int) -> Dict[str, Any]:
        return self.call("utilization", i)

    def close(self) -> None:
        """Release the library; never called while a call is hung."""


# NVML clocks event reason bits (nvmlClocksEventReason*, formerly ClocksThrottleReason*).
CLOCK_REASONS = {
    0x0000000000000001: "gpu_idle",
    0x0000000000000002: "applications_clocks_setting",
    0x0000000000000004: "sw_power_cap",
    0x0000000000000008: "hw_slowdown",
    0x0000000000000010: "sync_boost",
    0x0000000000000020: "sw_thermal_slowdown",
    0x0000000000000040: "hw_thermal_slowdown",
    0x0000000000000080: "hw_power_brake_slowdown",
    0x0000000000000100: "display_clock_setting",
}
CLOCK_REASON_BITS = {v: k for k, v in CLOCK_REASONS.items()}


def clock_reason_names(mask: int) -> List[str]:
    return [name for bit, name in CLOCK_REASONS.items() if mask & bit]


# GPU fabric states (nvmlGpuFabricState_t).
FABRIC_NOT_SUPPORTED = 0
FABRIC_NOT_STARTED = 1
FABRIC_IN_PROGRESS = 2
FABRIC_COMPLETED = 3
FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}


def normalize_bus_id(bus_id: Optional[str]) -> Optional[str]:
    """Canonical PCI bus id ``0000:3b:00.0`` from NVML's ``00000000:3B:00.0``, a bare
    ``3b:00.0``, or the kernel log's ``0000:3b:00`` (function 0 assumed)."""
    if not bus_id:
        return None
    text = bus_id.strip().lower()
    parts = text.split(":")
    if len(parts) == 2:            # bus:dev.fn
        parts = ["0000"] + parts
    if len(parts) != 3:
        return text
    domain, bus, devfn = parts
    domain = domain[-4:].rjust(4, "0")
    if "." not in devfn:
        devfn += ".0"
    dev, fn = devfn.split(".", 1)
    return "%s:%s:%s.%s" % (domain, bus.rjust(2, "0"), dev.rjust(2, "0"), fn)


_BUS_ID = re.compile(r"^([0-9a-f]{1,8}:)?[0-9a-f]{1,2}:[0-9a-f]{1,2}(\.[0-7])?$")


def parse_bus_id(text: str) -> Optional[str]:
    """A PCI bus id typed by an operator (``0000:5d:00.0``, ``00000000:5D:00.0``, ``5d:00.0``),
    canonical; None when it is not one."""
    text = (text or "").strip().lower()
    return normalize_bus_id(text) if _BUS_ID.match(text) else None
