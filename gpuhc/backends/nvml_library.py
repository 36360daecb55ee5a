"""The NVML library under the NVML backend (:mod:`gpuhc.backends.gpu_nvml`): loading, constants, errors, handles.

``pynvml`` (the ``nvidia-ml-py`` distribution) is imported, and ``nvmlInit`` run,
on the first call, once and thread-safely; this module itself imports fine
without it, and a missing module or shared library surfaces as
``GpuError(LIBRARY_NOT_FOUND)`` from that first call.

Error handling, in one place each:

* :meth:`NvmlLibrary.call` turns every ``pynvml.NVMLError`` into a
  :class:`GpuError` whose code is chosen by the error's numeric value
  (``_ERROR_CODES``), with the call name, the GPU index and NVML's own text
  as ``detail``.
* :meth:`NvmlLibrary._opt` runs one sub-query of a call that returns a dict:
  where the GPU or driver does not support it (``NOT_SUPPORTED``, a symbol the
  driver lacks, a function this pynvml lacks) that field is ``None``; any other
  error propagates.
* :meth:`NvmlLibrary._nv_call` picks the first of several pynvml functions that
  both this pynvml and the driver have, so newer names (``...ClocksEventReasons``,
  ``...GpuFabricInfoV``) fall back to older ones.

Constants are read from pynvml by name with their NVML ABI value as fallback
(``_k``), so older nvidia-ml-py releases lacking a newer name still work.

:class:`NvmlLibrary` holds this machinery; :class:`~gpuhc.backends.gpu_nvml.NvmlBackend` adds one reader per
call of the GPU interface on top of it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, Sequence, Union

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
# a GPU NVML counts but whose handle it cannot get: lost (the usual face of Xid 79 is UNKNOWN here)
_HANDLE_LOST = ("NVML_ERROR_UNKNOWN", "NVML_ERROR_GPU_IS_LOST")

# A pynvml function (by name) or a callable; _nv_call takes one or a sequence of them.
_Fn = Union[str, Callable[..., Any]]


class _Missing(Exception):
    """No candidate function exists in this pynvml / driver pairing."""


class NvmlLibrary(GpuBackend):
    """pynvml loaded and initialised on first use, its errors as GpuError, device handles, and the calls that
    fall back to older pynvml names; the readers of the GPU interface's calls are in NvmlBackend."""

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

