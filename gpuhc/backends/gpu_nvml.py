"""The GPU interface (:mod:`gpuhc.backends.gpu`) on real hardware, through pynvml.

``pynvml`` (the ``nvidia-ml-py`` distribution) is imported, and ``nvmlInit`` run,
on the first call, once and thread-safely; this module itself imports fine
without it, and a missing module or shared library surfaces as
``GpuError(LIBRARY_NOT_FOUND)`` from that first call.

The library itself (pynvml loaded on first use, its constants with their ABI values as fallback, its errors
turned into :class:`~gpuhc.backends.gpu.GpuError`, device handles, calls that fall back to older names) is
:class:`~gpuhc.backends.nvml_library.NvmlLibrary`; :class:`NvmlBackend` adds one reader per call of the GPU
interface, each a dict (or list, or number) in the shape :mod:`gpuhc.backends.gpu` documents, where a field
the GPU or driver does not support is ``None``.
"""
from __future__ import annotations

import ctypes
import uuid
from typing import Any, Callable, Dict, List, Optional

from gpuhc.backends.gpu import normalize_bus_id
from gpuhc.backends.nvml_library import NvmlLibrary, _Missing

_LINK_ABSENT = ("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_UNKNOWN")

_COMPUTE_MODES = {
    "NVML_COMPUTEMODE_DEFAULT": "default",
    "NVML_COMPUTEMODE_EXCLUSIVE_THREAD": "exclusive_thread",
    "NVML_COMPUTEMODE_PROHIBITED": "prohibited",
    "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS": "exclusive_process",
}

_ARCHITECTURES = {
    "NVML_DEVICE_ARCH_%s" % name.upper(): name
    for name in ("kepler", "maxwell", "pascal", "volta", "turing", "ampere", "ada",
                 "hopper", "blackwell", "rubin")
}
_ARCH_UNKNOWN = 0xFFFFFFFF


def _text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def _bus_id(pci: Any) -> Optional[str]:
    """Canonical bus id of an nvmlPciInfo_t (``busIdLegacy`` where ``busId`` is empty)."""
    if pci is None:
        return None
    return normalize_bus_id(_text(getattr(pci, "busId", None) or getattr(pci, "busIdLegacy", None)))


def _process_name(pid: int) -> Optional[str]:
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


def _cluster_uuid(raw: Any) -> Optional[str]:
    data = bytes(raw)
    if not any(data):
        return None
    return str(uuid.UUID(bytes=data[:16]))


class NvmlBackend(NvmlLibrary):
    """The NVML backend: one reader per call of the GPU interface, over NvmlLibrary's loading, errors and
    handles."""

    kind = "nvml"

    # -- the calls ---------------------------------------------------------------------------
    def _driver_version(self) -> str:
        return _text(self._nv_call("nvmlSystemGetDriverVersion")) or ""    # pynvml never answers None here

    def _device_count(self) -> int:
        return int(self._nv_call("nvmlDeviceGetCount"))

    def _identity(self, i: int) -> Dict[str, Any]:
        h = self._handle(i)
        arch = self._opt("nvmlDeviceGetArchitecture", h)
        if arch is not None:
            arch = None if arch == _ARCH_UNKNOWN else (self._label(_ARCHITECTURES, arch) or int(arch))
        return {
            "name": _text(self._opt("nvmlDeviceGetName", h)),
            "uuid": _text(self._opt("nvmlDeviceGetUUID", h)),
            "serial": _text(self._opt("nvmlDeviceGetSerial", h)),
            "pci_bus_id": _bus_id(self._opt("nvmlDeviceGetPciInfo", h)),
            "board_part_number": _text(self._opt("nvmlDeviceGetBoardPartNumber", h)),
            "vbios": _text(self._opt("nvmlDeviceGetVbiosVersion", h)),
            "architecture": arch,
            "minor_number": self._opt("nvmlDeviceGetMinorNumber", h),     # /dev/nvidiaN: Slurm's GPU id
        }

    def _ecc(self, i: int) -> Dict[str, Any]:
        h, k = self._handle(i), self._k
        mode = self._opt("nvmlDeviceGetEccMode", h)
        corrected, uncorrected = k("NVML_MEMORY_ERROR_TYPE_CORRECTED"), k("NVML_MEMORY_ERROR_TYPE_UNCORRECTED")
        volatile, aggregate = k("NVML_VOLATILE_ECC"), k("NVML_AGGREGATE_ECC")

        def total(kind: int, counter: int) -> Optional[int]:
            return None if mode is None else self._opt("nvmlDeviceGetTotalEccErrors", h, kind, counter)

        def located(location: str) -> Optional[int]:
            return None if mode is None else self._opt(
                "nvmlDeviceGetMemoryErrorCounter", h, uncorrected, aggregate, k(location))

        enabled = k("NVML_FEATURE_ENABLED")
        return {
            "enabled": None if mode is None else mode[0] == enabled,
            "pending": None if mode is None else mode[1] == enabled,
            "volatile": {"corrected": total(corrected, volatile),
                         "uncorrected": total(uncorrected, volatile)},
            "aggregate": {"corrected": total(corrected, aggregate),
                          "uncorrected": total(uncorrected, aggregate),
                          "uncorrected_sram": located("NVML_MEMORY_LOCATION_SRAM"),
                          "uncorrected_dram": located("NVML_MEMORY_LOCATION_DRAM")},
        }

    def _retired_pages(self, i: int) -> Dict[str, Any]:
        h = self._handle(i)
        single = self._opt("nvmlDeviceGetRetiredPages", h,
                           self._k("NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"))
        double = self._opt("nvmlDeviceGetRetiredPages", h,
                           self._k("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"))
        pending = self._opt("nvmlDeviceGetRetiredPagesPendingStatus", h)
        return {
            "single_bit": None if single is None else len(single),
            "double_bit": None if double is None else len(double),
            "pending": None if pending is None else bool(pending),
        }

    def _remapped_rows(self, i: int) -> Dict[str, Any]:
        rows = self._opt("nvmlDeviceGetRemappedRows", self._handle(i))
        if rows is None:
            return {"correctable": None, "uncorrectable": None, "pending": None, "failure": None,
                    "banks_low": None, "banks_none": None}
        corr, unc, pending, failure = rows
        # banks by spare rows left: "none" = a bank that cannot remap another row
        hist = self._opt("nvmlDeviceGetRowRemapperHistogram", self._handle(i))
        return {"correctable": int(corr), "uncorrectable": int(unc),
                "pending": bool(pending), "failure": bool(failure),
                "banks_low": int(hist.low) if hist is not None else None,
                "banks_none": int(hist.none) if hist is not None else None}

    def _pcie(self, i: int) -> Dict[str, Any]:
        h = self._handle(i)
        return {
            "gen_current": self._opt("nvmlDeviceGetCurrPcieLinkGeneration", h),
            "gen_max": self._opt("nvmlDeviceGetMaxPcieLinkGeneration", h),
            "gen_gpu_max": self._opt("nvmlDeviceGetGpuMaxPcieLinkGeneration", h),
            "width_current": self._opt("nvmlDeviceGetCurrPcieLinkWidth", h),
            "width_max": self._opt("nvmlDeviceGetMaxPcieLinkWidth", h),
            "replay_counter": self._opt("nvmlDeviceGetPcieReplayCounter", h),
        }

    def _nvlink(self, i: int) -> List[Dict[str, Any]]:
        """Every link NVML knows: a link answering NOT_SUPPORTED or INVALID_ARGUMENT to
        nvmlDeviceGetNvLinkState does not exist and is left out (skipped, not a stop, as
        links need not be numbered contiguously)."""
        h, k = self._handle(i), self._k
        counters = {"replay": "NVML_NVLINK_ERROR_DL_REPLAY",
                    "recovery": "NVML_NVLINK_ERROR_DL_RECOVERY",
                    "crc_flit": "NVML_NVLINK_ERROR_DL_CRC_FLIT",
                    "crc_data": "NVML_NVLINK_ERROR_DL_CRC_DATA"}
        links = []
        for link in range(k("NVML_NVLINK_MAX_LINKS")):
            state = self._opt("nvmlDeviceGetNvLinkState", h, link, absent=("NVML_ERROR_INVALID_ARGUMENT",))
            if state is None:
                continue
            entry: Dict[str, Any] = {"link": link, "active": state == k("NVML_FEATURE_ENABLED")}
            # a link that is down may refuse its counters and remote end: None, so that the
            # down link itself is still reported (an error here would hide it)
            for field, const in counters.items():
                entry[field] = self._opt("nvmlDeviceGetNvLinkErrorCounter", h, link, k(const), absent=_LINK_ABSENT)
            entry["remote_pci_bus_id"] = _bus_id(self._opt("nvmlDeviceGetNvLinkRemotePciInfo", h, link,
                                                           absent=_LINK_ABSENT))
            links.append(entry)
        return links

    def _clock_event_reasons(self, i: int) -> int:
        return int(self._nv_call(("nvmlDeviceGetCurrentClocksEventReasons",
                                  "nvmlDeviceGetCurrentClocksThrottleReasons"), self._handle(i)))

    def _temperature(self, i: int) -> Dict[str, Any]:
        h, k = self._handle(i), self._k

        def threshold(name: str) -> Optional[int]:
            return self._opt("nvmlDeviceGetTemperatureThreshold", h, k(name))

        return {
            "gpu": self._opt(("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"),
                             h, k("NVML_TEMPERATURE_GPU")),
            "slowdown": threshold("NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            "shutdown": threshold("NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            "max_operating": threshold("NVML_TEMPERATURE_THRESHOLD_GPU_MAX"),
            "memory": threshold("NVML_TEMPERATURE_THRESHOLD_MEM_MAX"),
        }

    def _power(self, i: int) -> Dict[str, Any]:
        h = self._handle(i)

        def watts(fn: str) -> Optional[float]:
            mw = self._opt(fn, h)
            return None if mw is None else mw / 1000.0

        constraints = self._opt("nvmlDeviceGetPowerManagementLimitConstraints", h)
        return {
            "usage_w": watts("nvmlDeviceGetPowerUsage"),
            "limit_w": watts("nvmlDeviceGetPowerManagementLimit"),
            "default_limit_w": watts("nvmlDeviceGetPowerManagementDefaultLimit"),
            "enforced_limit_w": watts("nvmlDeviceGetEnforcedPowerLimit"),
            "min_limit_w": None if constraints is None else constraints[0] / 1000.0,
            "max_limit_w": None if constraints is None else constraints[1] / 1000.0,
        }

    def _modes(self, i: int) -> Dict[str, Any]:
        h = self._handle(i)
        persistence = self._opt("nvmlDeviceGetPersistenceMode", h)
        mig = self._opt("nvmlDeviceGetMigMode", h)
        compute = self._opt("nvmlDeviceGetComputeMode", h)
        mig_on = self._k("NVML_DEVICE_MIG_ENABLE")
        return {
            "persistence": None if persistence is None else persistence == self._k("NVML_FEATURE_ENABLED"),
            "mig_current": None if mig is None else mig[0] == mig_on,
            "mig_pending": None if mig is None else mig[1] == mig_on,
            "compute_mode": None if compute is None else (self._label(_COMPUTE_MODES, compute) or "unknown"),
        }

    def _fabric_query(self, fn: str, struct: str) -> Callable[[Any], Any]:
        """A callable for _nv_call: fills pynvml's fabric struct ``struct`` through ``fn``."""
        def query(handle: Any) -> Any:
            getter, info_type = getattr(self._nv, fn, None), getattr(self._nv, struct, None)
            if getter is None or info_type is None:
                raise _Missing(fn)
            info = info_type()
            getter(handle, ctypes.byref(info))
            return info
        return query

    def _fabric(self, i: int) -> Optional[Dict[str, Any]]:
        info = self._opt((self._fabric_query("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
                          self._fabric_query("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t")),
                         self._handle(i))
        if info is None or info.state == self._k("NVML_GPU_FABRIC_STATE_NOT_SUPPORTED"):
            return None
        return {
            "state": int(info.state),
            "status": int(info.status),
            "clique_id": int(info.cliqueId),
            "cluster_uuid": _cluster_uuid(info.clusterUuid),
        }

    def _processes(self, i: int) -> List[Dict[str, Any]]:
        procs = self._nv_call(("nvmlDeviceGetComputeRunningProcesses_v3",
                               "nvmlDeviceGetComputeRunningProcesses_v2",
                               "nvmlDeviceGetComputeRunningProcesses"), self._handle(i))
        result = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            result.append({"pid": int(p.pid),
                           "used_memory_mib": None if used is None else int(used) // 2 ** 20,
                           "name": _process_name(int(p.pid))})
        return result

    def _utilization(self, i: int) -> Dict[str, Any]:
        rates = self._opt("nvmlDeviceGetUtilizationRates", self._handle(i))
        if rates is None:
            return {"gpu": None, "memory": None}
        return {"gpu": int(rates.gpu), "memory": int(rates.memory)}
