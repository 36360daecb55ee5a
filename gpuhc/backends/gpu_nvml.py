"""The GPU interface (:mod:`gpuhc.backends.gpu`) on real hardware, through pynvml.

``pynvml`` (the ``nvidia-ml-py`` distribution) is imported, and ``nvmlInit`` run,
on the first call, once and thread-safely; this module itself imports fine
without it, and a missing module or shared library surfaces as
``GpuError(LIBRARY_NOT_FOUND)`` from that first call.

Error handling, in one place each:

* :meth:`NvmlBackend.call` turns every ``pynvml.NVMLError`` into a
  :class:`GpuError` whose code is chosen by the error's numeric value
  (``_ERROR_CODES``), with the call name, the GPU index and NVML's own text
  as ``detail``.
* :meth:`NvmlBackend._opt` runs one sub-query of a call that returns a dict:
  where the GPU or driver does not support it (``NOT_SUPPORTED``, a symbol the
  driver lacks, a function this pynvml lacks) that field is ``None``; any other
  error propagates.
* :meth:`NvmlBackend._nv_call` picks the first of several pynvml functions that
  both this pynvml and the driver have, so newer names (``...ClocksEventReasons``,
  ``...GpuFabricInfoV``) fall back to older ones.

Constants are read from pynvml by name with their NVML ABI value as fallback
(``_k``), so older nvidia-ml-py releases lacking a newer name still work.
"""
from __future__ import annotations

import ctypes
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from gpuhc.backends.gpu import (
    DRIVER_NOT_LOADED,
    FABRIC_NOT_SUPPORTED,
    GPU_IS_LOST,
    GPU_NOT_FOUND,
    INSUFFICIENT_POWER,
    INVALID_ARGUMENT,
    IRQ_ISSUE,
    LIBRARY_NOT_FOUND,
    MEMORY,
    NO_PERMISSION,
    NOT_FOUND,
    NOT_SUPPORTED,
    RESET_REQUIRED,
    TIMEOUT,
    UNINITIALIZED,
    UNKNOWN,
    GpuBackend,
    GpuError,
    normalize_bus_id,
)

# NVML constants used here, with their ABI values for pynvml releases that lack the name.
_NVML_DEFAULTS = {
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_INVALID_ARGUMENT": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_POWER": 8,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_IRQ_ISSUE": 11,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_ERROR_MEMORY": 20,
    "NVML_ERROR_GPU_NOT_FOUND": 28,
    "NVML_ERROR_UNKNOWN": 999,
    "NVML_FEATURE_ENABLED": 1,
    "NVML_DEVICE_MIG_ENABLE": 1,
    "NVML_MEMORY_ERROR_TYPE_CORRECTED": 0,
    "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
    "NVML_VOLATILE_ECC": 0,
    "NVML_AGGREGATE_ECC": 1,
    "NVML_MEMORY_LOCATION_DRAM": 2,          # NVML_MEMORY_LOCATION_DEVICE_MEMORY in old releases
    "NVML_MEMORY_LOCATION_SRAM": 7,
    "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS": 0,
    "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR": 1,
    "NVML_NVLINK_MAX_LINKS": 18,             # 12 in old releases, 18 (Hopper), 36 (newer)
    "NVML_NVLINK_ERROR_DL_REPLAY": 0,
    "NVML_NVLINK_ERROR_DL_RECOVERY": 1,
    "NVML_NVLINK_ERROR_DL_CRC_FLIT": 2,
    "NVML_NVLINK_ERROR_DL_CRC_DATA": 3,
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN": 0,
    "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN": 1,
    "NVML_TEMPERATURE_THRESHOLD_MEM_MAX": 2,
    "NVML_TEMPERATURE_THRESHOLD_GPU_MAX": 3,
    "NVML_COMPUTEMODE_DEFAULT": 0,
    "NVML_COMPUTEMODE_EXCLUSIVE_THREAD": 1,
    "NVML_COMPUTEMODE_PROHIBITED": 2,
    "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS": 3,
    "NVML_DEVICE_ARCH_KEPLER": 2,
    "NVML_DEVICE_ARCH_MAXWELL": 3,
    "NVML_DEVICE_ARCH_PASCAL": 4,
    "NVML_DEVICE_ARCH_VOLTA": 5,
    "NVML_DEVICE_ARCH_TURING": 6,
    "NVML_DEVICE_ARCH_AMPERE": 7,
    "NVML_DEVICE_ARCH_ADA": 8,
    "NVML_DEVICE_ARCH_HOPPER": 9,
    "NVML_DEVICE_ARCH_BLACKWELL": 10,
    "NVML_DEVICE_ARCH_RUBIN": 13,
    "NVML_GPU_FABRIC_STATE_NOT_SUPPORTED": FABRIC_NOT_SUPPORTED,
}

# NVML return code name -> GpuError code. FUNCTION_NOT_FOUND (a symbol the driver is too
# old to export) reads as NOT_SUPPORTED; anything not listed is UNKNOWN.
_ERROR_CODES = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": LIBRARY_NOT_FOUND,
    "NVML_ERROR_DRIVER_NOT_LOADED": DRIVER_NOT_LOADED,
    # driver upgraded without a reboot: the kernel module and the library disagree; node-wide
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": DRIVER_NOT_LOADED,
    "NVML_ERROR_GPU_IS_LOST": GPU_IS_LOST,
    "NVML_ERROR_NOT_SUPPORTED": NOT_SUPPORTED,
    "NVML_ERROR_FUNCTION_NOT_FOUND": NOT_SUPPORTED,
    "NVML_ERROR_NO_PERMISSION": NO_PERMISSION,
    "NVML_ERROR_TIMEOUT": TIMEOUT,
    "NVML_ERROR_NOT_FOUND": NOT_FOUND,
    "NVML_ERROR_INVALID_ARGUMENT": INVALID_ARGUMENT,
    "NVML_ERROR_UNINITIALIZED": UNINITIALIZED,
    "NVML_ERROR_RESET_REQUIRED": RESET_REQUIRED,
    "NVML_ERROR_INSUFFICIENT_POWER": INSUFFICIENT_POWER,
    "NVML_ERROR_IRQ_ISSUE": IRQ_ISSUE,
    "NVML_ERROR_MEMORY": MEMORY,
    "NVML_ERROR_GPU_NOT_FOUND": GPU_NOT_FOUND,
}

# Errors of nvmlDeviceGetHandleByIndex that mean "no GPU at this index".
_NO_SUCH_GPU = ("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_NOT_FOUND", "NVML_ERROR_GPU_NOT_FOUND")
_LINK_ABSENT = ("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_UNKNOWN")
# a GPU NVML counts but whose handle it cannot get: lost (the usual face of Xid 79 is UNKNOWN here)
_HANDLE_LOST = ("NVML_ERROR_UNKNOWN", "NVML_ERROR_GPU_IS_LOST")

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

# A pynvml function (by name) or a callable; _nv_call takes one or a sequence of them.
_Fn = Union[str, Callable[..., Any]]


class _Missing(Exception):
    """No candidate function exists in this pynvml / driver pairing."""


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


class NvmlBackend(GpuBackend):
    kind = "nvml"

    def __init__(self) -> None:
        super().__init__()
        self._init_lock = threading.Lock()
        self._nv: Any = None                  # the pynvml module once imported
        self._ready = False                   # nvmlInit succeeded
        self._handles: Dict[int, Any] = {}

    # -- library, handles, errors ------------------------------------------------------------
    def _nvml(self) -> Any:
        """pynvml, initialised on first use."""
        if self._ready:
            return self._nv
        with self._init_lock:
            if not self._ready:
                try:
                    import pynvml
                except ImportError as e:
                    raise GpuError(LIBRARY_NOT_FOUND,
                                   detail="python module pynvml (nvidia-ml-py) missing: %s" % e)
                self._nv = pynvml
                try:
                    pynvml.nvmlInit()
                except OSError as e:           # ctypes failed to load libnvidia-ml.so
                    raise GpuError(LIBRARY_NOT_FOUND, detail=str(e))
                self._ready = True
        return self._nv

    def _k(self, name: str) -> Any:
        """An NVML constant from pynvml, or its ABI value where this pynvml lacks it."""
        return getattr(self._nv, name, _NVML_DEFAULTS.get(name))

    def _label(self, table: Dict[str, str], value: Any) -> Optional[str]:
        for const, label in table.items():
            if self._k(const) == value:
                return label
        return None

    def _error_value(self, exc: BaseException) -> Optional[int]:
        """NVML return code of an NVMLError, else None."""
        nv = self._nv
        if nv is not None and isinstance(exc, nv.NVMLError):
            return getattr(exc, "value", None)
        return None

    def _is_missing(self, exc: BaseException) -> bool:
        """The function does not exist in this pynvml or driver."""
        mismatch = getattr(self._nv, "NVMLLibraryMismatchError", ())
        return (isinstance(exc, (_Missing, mismatch))
                or self._error_value(exc) == self._k("NVML_ERROR_FUNCTION_NOT_FOUND"))

    def _to_gpu_error(self, exc: BaseException, call: str, gpu: Optional[int]) -> Optional[GpuError]:
        """The GpuError for an exception raised by pynvml, or None for anything else."""
        if isinstance(exc, GpuError):
            if exc.call:
                return exc
            return GpuError(exc.code, call, gpu if exc.gpu is None else exc.gpu, exc.detail)
        value = self._error_value(exc)
        if value is not None:
            code = next((c for name, c in _ERROR_CODES.items() if self._k(name) == value), UNKNOWN)
            try:
                detail = str(exc)
            except Exception:          # pragma: no cover - str() of NVMLError calls into NVML
                detail = "NVML error %s" % value
            return GpuError(code, call, gpu, detail)
        if self._is_missing(exc):
            return GpuError(NOT_SUPPORTED, call, gpu, str(exc) or "function not in this driver")
        return None

    def call(self, name: str, gpu: Optional[int] = None) -> Any:
        try:
            return super().call(name, gpu)
        except Exception as exc:
            err = self._to_gpu_error(exc, name, gpu)
            if err is None or err is exc:
                raise
            raise err from exc

    def _handle(self, i: int) -> Any:
        handle = self._handles.get(i)
        if handle is None:
            nv = self._nvml()
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
            except nv.NVMLError as e:
                if e.value in [self._k(n) for n in _NO_SUCH_GPU]:
                    raise GpuError(GPU_NOT_FOUND, gpu=i, detail=str(e)) from e
                if e.value in [self._k(n) for n in _HANDLE_LOST]:
                    # NVML counts the GPU but cannot open it: nvidia-smi's "Unable to determine
                    # the device handle for GPU ...: Unknown Error", a GPU off the bus
                    raise GpuError(GPU_IS_LOST, "nvmlDeviceGetHandleByIndex", gpu=i,
                                   detail="no device handle: %s" % e) from e
                raise
            self._handles[i] = handle
        return handle

    def _nv_call(self, fns: Union[_Fn, Sequence[_Fn]], *args: Any) -> Any:
        """Call the first of ``fns`` (pynvml names or callables) that exists; NVML errors
        propagate. Raises _Missing when none exists."""
        self._nvml()
        for fn in ([fns] if isinstance(fns, str) or callable(fns) else fns):
            target = getattr(self._nv, fn, None) if isinstance(fn, str) else fn
            if target is None:
                continue
            try:
                return target(*args)
            except Exception as e:
                if not self._is_missing(e):
                    raise
        raise _Missing("none of %s in this pynvml/driver" % (fns,))

    def _opt(self, fns: Union[_Fn, Sequence[_Fn]], *args: Any, absent: Sequence[str] = ()) -> Any:
        """``_nv_call`` for one field: None where the GPU or driver does not support it
        (or where NVML answers one of the ``absent`` error names)."""
        try:
            return self._nv_call(fns, *args)
        except Exception as e:
            if self._is_missing(e):
                return None
            value = self._error_value(e)
            if value is not None and value in [self._k(n) for n in
                                               ("NVML_ERROR_NOT_SUPPORTED",) + tuple(absent)]:
                return None
            raise

    def close(self) -> None:
        with self._init_lock:
            if not self._ready:
                return
            self._ready = False
            self._handles.clear()
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass

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
