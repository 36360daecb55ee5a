"""gpuhc.backends.gpu_nvml against the installed pynvml (nvidia-ml-py) and NVML, without a GPU.

Three kinds of test:

* static checks against the real ``pynvml`` module: every function, struct and constant
  gpu_nvml names exists, takes the arguments gpu_nvml passes, and (for constants and
  bitmasks gpuhc hard-codes) has the value gpuhc assumes;
* an emulated driver: the *real* pynvml wrappers run against a stand-in for
  ``libnvidia-ml.so`` (``pynvml.nvmlLib``) whose symbols answer as a real H100 on a
  given driver does, so pynvml's own argument marshalling, struct versions and error
  classes are exercised, not a copy of them;
* traps a review found: a dead GPU whose handle NVML cannot get (UNKNOWN, not GPU_IS_LOST),
  the GPU-marked test's key sets against what the backend returns on an H100, and a remap
  state MIG makes unreadable.
"""
from __future__ import annotations

import ctypes
import inspect
import os
import re
import sys

import pytest

from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import GpuError
from gpuhc.backends.gpu_nvml import NvmlBackend
from gpuhc.backends.nvml_library import _ERROR_CODES, _NVML_DEFAULTS
from gpuhc.checks import memory_remap
from gpuhc.checks.base import Entry, gpu_error_finding
from gpuhc.model import GpuRef, Severity

N = pytest.importorskip("pynvml")

HERE = os.path.dirname(os.path.abspath(__file__))
# the NVML backend: its readers, and the library layer under them
SOURCES = [os.path.join(os.path.dirname(HERE), "gpuhc", "backends", name)
           for name in ("gpu_nvml.py", "nvml_library.py")]


def _source_names(prefixes):
    text = "\n".join(open(path).read() for path in SOURCES)
    return sorted({m for m in re.findall(r'"((?:%s)[A-Za-z0-9_]*)"' % "|".join(prefixes), text)})


# -- 1. names, argument lists, constant values ------------------------------------------------

# How gpu_nvml calls each pynvml function: the positional arguments it passes
# ("h" a handle, ints for the rest).
CALL_SHAPES = {
    "nvmlInit": (), "nvmlShutdown": (), "nvmlSystemGetDriverVersion": (), "nvmlDeviceGetCount": (),
    "nvmlDeviceGetHandleByIndex": (0,),
    **{name: ("h",) for name in (
        "nvmlDeviceGetArchitecture", "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetSerial",
        "nvmlDeviceGetPciInfo", "nvmlDeviceGetBoardPartNumber", "nvmlDeviceGetVbiosVersion",
        "nvmlDeviceGetMinorNumber", "nvmlDeviceGetEccMode", "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows", "nvmlDeviceGetRowRemapperHistogram",
        "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
        "nvmlDeviceGetGpuMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
        "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetPowerUsage", "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetPowerManagementDefaultLimit", "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints", "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetMigMode", "nvmlDeviceGetComputeMode", "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetUtilizationRates")},
    "nvmlDeviceGetRetiredPages": ("h", 0),
    "nvmlDeviceGetNvLinkState": ("h", 0),
    "nvmlDeviceGetNvLinkRemotePciInfo": ("h", 0),
    "nvmlDeviceGetTemperature": ("h", 0),
    "nvmlDeviceGetTemperatureV": ("h", 0),
    "nvmlDeviceGetTemperatureThreshold": ("h", 0),
    "nvmlDeviceGetGpuFabricInfoV": ("h", "ref"),
    "nvmlDeviceGetGpuFabricInfo": ("h", "ref"),
    "nvmlDeviceGetTotalEccErrors": ("h", 0, 0),
    "nvmlDeviceGetNvLinkErrorCounter": ("h", 0, 0),
    "nvmlDeviceGetMemoryErrorCounter": ("h", 0, 0, 0),
}


def test_every_pynvml_function_gpu_nvml_names_exists_with_that_argument_list():
    used = set(_source_names(["nvml"])) - {"nvml"} | {"nvmlInit", "nvmlShutdown"}
    assert used <= set(CALL_SHAPES), "a call gpu_nvml makes is not described here: %s" % (used - set(CALL_SHAPES))
    for name in sorted(used):
        assert hasattr(N, name), name
        sig = inspect.signature(getattr(N, name))
        sig.bind(*CALL_SHAPES[name])          # raises TypeError on a wrong argument count


def test_every_pynvml_constant_and_struct_gpu_nvml_names_exists():
    names = _source_names(["NVML_", "c_nvml", "NVMLLibraryMismatchError"])
    missing = [n for n in names if not hasattr(N, n)]
    assert missing == []
    for field in ("clusterUuid", "status", "cliqueId", "state"):
        assert field in dict(N.c_nvmlGpuFabricInfoV_t._fields_) and field in dict(N.c_nvmlGpuFabricInfo_t._fields_)
    # the V struct carries its own version (nvmlGpuFabricInfo_v2) from its constructor: NVML
    # answers ARGUMENT_VERSION_MISMATCH to a struct without it
    assert N.c_nvmlGpuFabricInfoV_t().version == N.nvmlGpuFabricInfo_v2
    assert {"max", "high", "partial", "low", "none"} == {f for f, _ in N.c_nvmlRowRemapperHistogramValues._fields_}
    assert {"pid", "usedGpuMemory"} <= {f for f, _ in N.c_nvmlProcessInfo_v3_t._fields_}


def test_fallback_constants_equal_pynvml_values():
    """_NVML_DEFAULTS is only used where pynvml lacks a name; each equals the ABI value.
    NVML_NVLINK_MAX_LINKS is the one that varies by release (12, 18, 36); any bound works
    since links past the GPU's own count answer INVALID_ARGUMENT and are skipped."""
    differ = {k: (v, getattr(N, k)) for k, v in _NVML_DEFAULTS.items()
              if hasattr(N, k) and getattr(N, k) != v}
    assert differ == {"NVML_NVLINK_MAX_LINKS": (18, N.NVML_NVLINK_MAX_LINKS)}
    for name in _ERROR_CODES:
        assert getattr(N, name) == _NVML_DEFAULTS[name]


def test_clock_reason_bits_and_fabric_states_match_pynvml():
    names = {"gpu_idle": "GpuIdle", "applications_clocks_setting": "ApplicationsClocksSetting",
             "sw_power_cap": "SwPowerCap", "hw_slowdown": "HwSlowdown", "sync_boost": "SyncBoost",
             "sw_thermal_slowdown": "SwThermalSlowdown", "hw_thermal_slowdown": "HwThermalSlowdown",
             "hw_power_brake_slowdown": "HwPowerBrakeSlowdown", "display_clock_setting": "DisplayClockSetting"}
    for bit, name in G.CLOCK_REASONS.items():
        assert getattr(N, "nvmlClocksEventReason" + names[name]) == bit
        assert getattr(N, "nvmlClocksThrottleReason" + names[name]) == bit
    assert (G.FABRIC_NOT_SUPPORTED, G.FABRIC_NOT_STARTED, G.FABRIC_IN_PROGRESS, G.FABRIC_COMPLETED) == (
        N.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, N.NVML_GPU_FABRIC_STATE_NOT_STARTED,
        N.NVML_GPU_FABRIC_STATE_IN_PROGRESS, N.NVML_GPU_FABRIC_STATE_COMPLETED)


# -- 2. the real pynvml against an emulated driver --------------------------------------------

OK = 0
H100_LINKS = 18


def _set(arg, value):
    """Write an output argument the way the C library would."""
    obj = getattr(arg, "_obj", arg)                       # byref(x) -> x
    if isinstance(obj, ctypes.Array) and obj._type_ is ctypes.c_char:
        obj.value = value.encode()
    elif isinstance(obj, ctypes.Structure):
        for k, v in value.items():
            if isinstance(v, bytes):
                ctypes.memmove(getattr(obj, k), v, len(v))
            else:
                setattr(obj, k, v)
    else:
        obj.value = value


class FakeDriver:
    """Symbols of libnvidia-ml.so as pynvml looks them up (getattr on the CDLL): a
    healthy 2-GPU H100 HGX node. ``missing`` names symbols this driver lacks; ``errors``
    maps a symbol to the NVML return code it answers."""

    def __init__(self, version="535.183.01", count=2, missing=(), errors=None):
        self.version, self.count = version, count
        self.missing = set(missing)
        self.errors = dict(errors or {})
        self.devices = [N.struct_c_nvmlDevice_t() for _ in range(count)]
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_") or name in self.missing:
            raise AttributeError(name)
        impl = getattr(type(self), "sym_" + name, None)
        if impl is None:
            raise AttributeError(name)

        def fn(*args):
            # scalars pynvml wraps (c_uint(link), an enum) reach the C side as plain values
            args = tuple(a.value if isinstance(a, ctypes._SimpleCData) else a for a in args)
            self.calls.append(name)
            if name in self.errors:
                code = self.errors[name]
                return code(*args) if callable(code) else code
            return impl(self, *args)
        return fn

    def index(self, handle):
        return [ctypes.addressof(d) for d in self.devices].index(ctypes.addressof(handle.contents))

    # library
    def sym_nvmlInitWithFlags(self, flags): return OK
    def sym_nvmlShutdown(self): return OK

    def sym_nvmlErrorString(self, code):
        return b"NVML error %d" % code

    def sym_nvmlSystemGetDriverVersion(self, buf, size): _set(buf, self.version); return OK
    def sym_nvmlDeviceGetCount_v2(self, out): _set(out, self.count); return OK

    def sym_nvmlDeviceGetHandleByIndex_v2(self, index, out):
        if index >= self.count:
            return N.NVML_ERROR_INVALID_ARGUMENT
        out._obj.contents = self.devices[index]
        return OK

    # identity
    def sym_nvmlDeviceGetName(self, h, buf, size): _set(buf, "NVIDIA H100 80GB HBM3"); return OK
    def sym_nvmlDeviceGetUUID(self, h, buf, size): _set(buf, "GPU-%08x-0000-0000-0000-000000000000" % self.index(h)); return OK
    def sym_nvmlDeviceGetSerial(self, h, buf, size): _set(buf, "165422000000%d" % self.index(h)); return OK
    def sym_nvmlDeviceGetBoardPartNumber(self, h, buf, size): _set(buf, "692-2G520-0200-000"); return OK
    def sym_nvmlDeviceGetVbiosVersion(self, h, buf, size): _set(buf, "96.00.74.00.01"); return OK
    def sym_nvmlDeviceGetArchitecture(self, h, out): _set(out, N.NVML_DEVICE_ARCH_HOPPER); return OK
    def sym_nvmlDeviceGetMinorNumber(self, h, out): _set(out, self.index(h)); return OK

    def sym_nvmlDeviceGetPciInfo_v3(self, h, out):
        bus = "00000000:%02X:00.0" % (0x18 + 0x12 * self.index(h))
        out._obj.busId = bus.encode()
        out._obj.busIdLegacy = bus[4:].encode()
        return OK

    # memory
    def sym_nvmlDeviceGetEccMode(self, h, cur, pend): _set(cur, 1); _set(pend, 1); return OK
    def sym_nvmlDeviceGetTotalEccErrors(self, h, kind, counter, out): _set(out, 0); return OK
    def sym_nvmlDeviceGetMemoryErrorCounter(self, h, kind, counter, location, out): _set(out, 0); return OK

    def sym_nvmlDeviceGetRetiredPages(self, h, cause, count, pages):
        return N.NVML_ERROR_NOT_SUPPORTED                           # Ampere and later: row remapping

    def sym_nvmlDeviceGetRetiredPagesPendingStatus(self, h, out): return N.NVML_ERROR_NOT_SUPPORTED

    def sym_nvmlDeviceGetRemappedRows(self, h, corr, unc, pending, failure):
        for a, v in ((corr, 1), (unc, 0), (pending, 0), (failure, 0)):
            _set(a, v)
        return OK

    def sym_nvmlDeviceGetRowRemapperHistogram(self, h, out):
        _set(out, {"max": 639, "high": 1, "partial": 0, "low": 0, "none": 0}); return OK

    # pcie
    def sym_nvmlDeviceGetCurrPcieLinkGeneration(self, h, out): _set(out, 5); return OK
    def sym_nvmlDeviceGetMaxPcieLinkGeneration(self, h, out): _set(out, 5); return OK
    def sym_nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h, out): _set(out, 5); return OK
    def sym_nvmlDeviceGetCurrPcieLinkWidth(self, h, out): _set(out, 16); return OK
    def sym_nvmlDeviceGetMaxPcieLinkWidth(self, h, out): _set(out, 16); return OK
    def sym_nvmlDeviceGetPcieReplayCounter(self, h, out): _set(out, 0); return OK

    # nvlink: an H100 has 18 links; NVML rejects indices past that with INVALID_ARGUMENT
    def sym_nvmlDeviceGetNvLinkState(self, h, link, out):
        if link >= H100_LINKS:
            return N.NVML_ERROR_INVALID_ARGUMENT
        _set(out, 1); return OK

    def sym_nvmlDeviceGetNvLinkErrorCounter(self, h, link, counter, out):
        if link >= H100_LINKS:
            return N.NVML_ERROR_INVALID_ARGUMENT
        if counter == N.NVML_NVLINK_ERROR_DL_CRC_DATA:
            return N.NVML_ERROR_NOT_SUPPORTED
        _set(out, 0); return OK

    def sym_nvmlDeviceGetNvLinkRemotePciInfo_v2(self, h, link, out):
        out._obj.busId = b"00000008:00:00.0"; return OK

    # clocks, thermal, power, modes
    def sym_nvmlDeviceGetCurrentClocksEventReasons(self, h, out): _set(out, 0x1); return OK
    def sym_nvmlDeviceGetCurrentClocksThrottleReasons(self, h, out): _set(out, 0x1); return OK
    def sym_nvmlDeviceGetTemperature(self, h, sensor, out): _set(out, 34); return OK

    def sym_nvmlDeviceGetTemperatureThreshold(self, h, which, out):
        _set(out, {0: 92, 1: 89, 2: 95, 3: 87}[which]); return OK

    def sym_nvmlDeviceGetPowerUsage(self, h, out): _set(out, 71234); return OK
    def sym_nvmlDeviceGetPowerManagementLimit(self, h, out): _set(out, 700000); return OK
    def sym_nvmlDeviceGetPowerManagementDefaultLimit(self, h, out): _set(out, 700000); return OK
    def sym_nvmlDeviceGetEnforcedPowerLimit(self, h, out): _set(out, 700000); return OK

    def sym_nvmlDeviceGetPowerManagementLimitConstraints(self, h, lo, hi):
        _set(lo, 200000); _set(hi, 700000); return OK

    def sym_nvmlDeviceGetPersistenceMode(self, h, out): _set(out, 1); return OK
    def sym_nvmlDeviceGetMigMode(self, h, cur, pend): _set(cur, 0); _set(pend, 0); return OK
    def sym_nvmlDeviceGetComputeMode(self, h, out): _set(out, 0); return OK

    def sym_nvmlDeviceGetUtilizationRates(self, h, out): _set(out, {"gpu": 97, "memory": 40}); return OK

    # fabric: the V call checks the struct version as NVML does
    def sym_nvmlDeviceGetGpuFabricInfoV(self, h, ref):
        info = ref._obj
        if info.version != N.nvmlGpuFabricInfo_v2:
            return N.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        info.state, info.status, info.cliqueId = N.NVML_GPU_FABRIC_STATE_COMPLETED, OK, 32766
        ctypes.memmove(info.clusterUuid, bytes(range(1, 17)), 16)
        return OK

    def sym_nvmlDeviceGetGpuFabricInfo(self, h, ref):
        info = ref._obj
        info.state, info.status, info.cliqueId = N.NVML_GPU_FABRIC_STATE_COMPLETED, OK, 32766
        return OK

    # processes: one process, the count-then-fill protocol of the _v3 symbol
    def sym_nvmlDeviceGetComputeRunningProcesses_v3(self, h, count, infos):
        if infos is None:
            _set(count, 1)
            return N.NVML_ERROR_INSUFFICIENT_SIZE
        infos[0].pid, infos[0].usedGpuMemory = os.getpid(), 1536 * 2 ** 20
        _set(count, 1)
        return OK

    sym_nvmlDeviceGetComputeRunningProcesses_v2 = sym_nvmlDeviceGetComputeRunningProcesses_v3


@pytest.fixture
def driver(monkeypatch):
    """Installs a FakeDriver as the real pynvml's loaded library; yields a factory."""
    def install(**kw):
        drv = FakeDriver(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", N)
        monkeypatch.setattr(N, "nvmlLib", drv)
        monkeypatch.setattr(N, "_nvmlGetFunctionPointer_cache", {})
        monkeypatch.setattr(N, "_nvmlLib_refcount", 0)
        return drv
    return install


def test_real_pynvml_healthy_h100_every_call(driver):
    """A healthy H100 on r535 through the real pynvml wrappers: units, shapes, the 36-link
    loop bound, fallbacks for symbols a driver lacks."""
    driver()
    b = NvmlBackend()
    try:
        assert b.driver_version() == "535.183.01"
        assert b.device_count() == 2
        ident = b.identity(1)
        assert ident["pci_bus_id"] == "0000:2a:00.0" and ident["architecture"] == "hopper"
        assert ident["uuid"].startswith("GPU-") and ident["minor_number"] == 1
        assert b.ecc(0)["enabled"] is True and b.ecc(0)["aggregate"]["uncorrected_dram"] == 0
        assert b.retired_pages(0) == {"single_bit": None, "double_bit": None, "pending": None}
        assert b.remapped_rows(0) == {"correctable": 1, "uncorrectable": 0, "pending": False,
                                      "failure": False, "banks_low": 0, "banks_none": 0}
        assert b.pcie(0) == {"gen_current": 5, "gen_max": 5, "gen_gpu_max": 5,
                             "width_current": 16, "width_max": 16, "replay_counter": 0}
        links = b.nvlink(0)
        assert [l["link"] for l in links] == list(range(H100_LINKS))      # 18..35 skipped
        assert links[0]["crc_data"] is None and links[0]["replay"] == 0
        assert links[0]["remote_pci_bus_id"] == "0008:00:00.0"
        assert b.clock_event_reasons(0) == 1
        assert b.temperature(0) == {"gpu": 34, "slowdown": 89, "shutdown": 92, "max_operating": 87, "memory": 95}
        assert b.power(0)["usage_w"] == 71.234 and b.power(0)["max_limit_w"] == 700.0
        assert b.modes(0) == {"persistence": True, "mig_current": False, "mig_pending": False,
                              "compute_mode": "default"}
        fabric = b.fabric(0)
        assert fabric == {"state": 3, "status": 0, "clique_id": 32766,
                          "cluster_uuid": "01020304-0506-0708-090a-0b0c0d0e0f10"}
        assert b.processes(0)[0]["used_memory_mib"] == 1536
        assert b.utilization(0) == {"gpu": 97, "memory": 40}
    finally:
        b.close()


def test_real_pynvml_older_driver_without_new_symbols(driver):
    """A driver predating ClocksEventReasons, GpuFabricInfoV and ComputeRunningProcesses_v3:
    pynvml raises FUNCTION_NOT_FOUND and gpu_nvml falls back to the older symbol."""
    driver(version="530.30.02", missing={"nvmlDeviceGetCurrentClocksEventReasons",
                                         "nvmlDeviceGetGpuFabricInfoV",
                                         "nvmlDeviceGetComputeRunningProcesses_v3",
                                         "nvmlDeviceGetGpuMaxPcieLinkGeneration"})
    b = NvmlBackend()
    try:
        assert b.clock_event_reasons(0) == 1
        assert b.fabric(0)["state"] == G.FABRIC_COMPLETED
        assert b.processes(0)[0]["used_memory_mib"] == 1536
        assert b.pcie(0)["gen_gpu_max"] is None
    finally:
        b.close()


@pytest.mark.parametrize("symbol", ["nvmlDeviceGetRemappedRows", "nvmlDeviceGetNvLinkState",
                                    "nvmlDeviceGetTemperature", "nvmlDeviceGetEccMode"])
def test_real_pynvml_gpu_is_lost_in_any_query_is_reboot(driver, symbol):
    driver(errors={symbol: N.NVML_ERROR_GPU_IS_LOST})
    b = NvmlBackend()
    call = {"nvmlDeviceGetRemappedRows": b.remapped_rows, "nvmlDeviceGetNvLinkState": b.nvlink,
            "nvmlDeviceGetTemperature": b.temperature, "nvmlDeviceGetEccMode": b.ecc}[symbol]
    with pytest.raises(GpuError) as info:
        call(0)
    assert info.value.code == G.GPU_IS_LOST
    assert gpu_error_finding("x", info.value).severity is Severity.REBOOT


def test_a_down_link_that_refuses_its_counters_is_still_reported_down(driver):
    """Link 5 is down (state 0) and answers INVALID_ARGUMENT or UNKNOWN for its error counters and
    remote end: the link is listed inactive with None there, so the nvlink check can RESET it;
    an error for the whole call would have hidden it behind a checker ERROR."""
    drv = driver()
    state, counter, remote = (drv.sym_nvmlDeviceGetNvLinkState, drv.sym_nvmlDeviceGetNvLinkErrorCounter,
                              drv.sym_nvmlDeviceGetNvLinkRemotePciInfo_v2)
    drv.errors["nvmlDeviceGetNvLinkState"] = lambda h, link, out: (_set(out, 0) or OK) if link == 5 else state(h, link, out)
    drv.errors["nvmlDeviceGetNvLinkErrorCounter"] = (
        lambda h, link, c, out: N.NVML_ERROR_INVALID_ARGUMENT if link == 5 else counter(h, link, c, out))
    drv.errors["nvmlDeviceGetNvLinkRemotePciInfo_v2"] = (
        lambda h, link, out: N.NVML_ERROR_UNKNOWN if link == 5 else remote(h, link, out))
    links = NvmlBackend().nvlink(0)
    down = [l for l in links if not l["active"]]
    assert [l["link"] for l in down] == [5] and len(links) == H100_LINKS
    assert down[0]["replay"] is None and down[0]["remote_pci_bus_id"] is None
    assert links[0]["replay"] == 0


def test_real_pynvml_utilization_not_supported_under_mig(driver):
    """MIG enabled: device utilisation is NOT_SUPPORTED (documented); a None, never an error."""
    driver(errors={"nvmlDeviceGetUtilizationRates": N.NVML_ERROR_NOT_SUPPORTED})
    assert NvmlBackend().utilization(0) == {"gpu": None, "memory": None}


# -- 3. traps ------------------------------------------------------------------------------------

def test_handle_unknown_error_of_a_dead_gpu_drains(driver):
    drv = driver()
    good = drv.sym_nvmlDeviceGetHandleByIndex_v2
    drv.errors["nvmlDeviceGetHandleByIndex_v2"] = (
        lambda index, out: N.NVML_ERROR_UNKNOWN if index == 1 else good(index, out))
    b = NvmlBackend()
    assert b.identity(0)["uuid"]                       # the other GPU answers
    with pytest.raises(GpuError) as info:
        b.identity(1)
    finding = gpu_error_finding("nvml", info.value, GpuRef(1, None, "0000:2a:00.0"))
    assert finding.severity is Severity.REBOOT, (info.value.code, finding.severity)
    assert "no device handle" in finding.message


def test_real_gpu_test_passes_on_an_emulated_h100(driver):
    import test_gpu_nvml
    driver()
    b = NvmlBackend()
    try:
        test_gpu_nvml.test_gpu_every_call_every_gpu(b)
    finally:
        b.close()


def test_remapped_rows_keys_are_the_interfaces_whether_or_not_supported(driver):
    drv = driver()
    b = NvmlBackend()
    assert "minor_number" in b.identity(0)
    assert set(b.remapped_rows(0)) == {"correctable", "uncorrectable", "pending", "failure", "banks_low", "banks_none"}
    b2 = NvmlBackend()
    drv.errors["nvmlDeviceGetRemappedRows"] = N.NVML_ERROR_NOT_SUPPORTED
    assert set(b2.remapped_rows(0)) == set(b.remapped_rows(0))
    assert all(v is None for v in b2.remapped_rows(0).values())


def test_mig_remap_state_unreadable_is_not_pass(driver):
    driver(errors={"nvmlDeviceGetRemappedRows": N.NVML_ERROR_NOT_SUPPORTED})
    b = NvmlBackend()
    value = {"rows": b.remapped_rows(0), "pages": b.retired_pages(0)}
    findings = memory_remap.evaluate({"gpus": [Entry(GpuRef(0, "GPU-0", "0000:18:00.0"), value)]}, None, None)
    assert [f.severity for f in findings] == [Severity.SKIP], findings
