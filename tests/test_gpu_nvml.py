"""Tests of the NVML backend (gpuhc.backends.gpu_nvml).

The unit tests run anywhere: they put a stand-in ``pynvml`` module in
``sys.modules`` whose constants and exception classes are the real pynvml's
(errors are raised as ``pynvml.NVMLError(code)``, which builds the real
subclass for that code) and whose functions describe a small healthy node.

The ``gpu``-marked tests run every call on every GPU of a real machine and are
skipped when NVML cannot initialise there.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap
import threading
import types

import pytest

from gpuhc.backends.gpu import (
    CALLS, DRIVER_NOT_LOADED, FABRIC_COMPLETED, GPU_IS_LOST, GPU_NOT_FOUND, LIBRARY_NOT_FOUND,
    NO_PERMISSION, NOT_SUPPORTED, UNKNOWN, GpuError,
)
from gpuhc.backends.gpu_nvml import NvmlBackend

real_nvml = pytest.importorskip("pynvml")
N = real_nvml

BUS_ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
NVLINKS = 4               # links 0..3 exist on the fake GPUs; link 2 is down
CLUSTER_UUID = bytes(range(1, 17))


def nvml_error(name):
    """A real pynvml exception for NVML_ERROR_<name>."""
    return real_nvml.NVMLError(getattr(real_nvml, "NVML_ERROR_" + name))


def raiser(name):
    def fn(*args, **kwargs):
        raise nvml_error(name)
    return fn


class HealthyNode:
    """The fake pynvml's functions (bound methods) and state: two healthy H100s."""

    def __init__(self):
        self.count = 2
        self.init_calls = 0
        self.shutdown_calls = 0
        self.handle_calls = 0
        self.fabric_state = FABRIC_COMPLETED

    # library
    def nvmlInit(self):
        self.init_calls += 1

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"          # older pynvml returns bytes

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handle_calls += 1
        if not 0 <= i < self.count:
            raise nvml_error("INVALID_ARGUMENT")
        return ("handle", i)

    # identity
    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-%08d-aaaa-bbbb-cccc-dddddddddddd" % h[1]

    def nvmlDeviceGetSerial(self, h):
        return "165422%07d" % h[1]

    def nvmlDeviceGetPciInfo(self, h):
        return types.SimpleNamespace(busId="00000000:%02X:00.0" % (0x3B + h[1]))

    def nvmlDeviceGetBoardPartNumber(self, h):
        return "692-2G520-0200-000"

    def nvmlDeviceGetVbiosVersion(self, h):
        return "96.00.74.00.01"

    def nvmlDeviceGetArchitecture(self, h):
        return N.NVML_DEVICE_ARCH_HOPPER

    def nvmlDeviceGetMinorNumber(self, h):
        return 7 - h[1]          # /dev/nvidiaN in the reverse of NVML's order

    # memory
    def nvmlDeviceGetEccMode(self, h):
        return [N.NVML_FEATURE_ENABLED, N.NVML_FEATURE_ENABLED]

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter):
        return 3 if (kind, counter) == (N.NVML_MEMORY_ERROR_TYPE_CORRECTED, N.NVML_AGGREGATE_ECC) else 0

    def nvmlDeviceGetMemoryErrorCounter(self, h, kind, counter, location):
        if location == N.NVML_MEMORY_LOCATION_SRAM:
            raise nvml_error("NOT_SUPPORTED")
        return 0

    nvmlDeviceGetRetiredPages = staticmethod(raiser("NOT_SUPPORTED"))            # Hopper
    nvmlDeviceGetRetiredPagesPendingStatus = staticmethod(raiser("NOT_SUPPORTED"))

    def nvmlDeviceGetRemappedRows(self, h):
        return (2, 0, 0, 0)

    def nvmlDeviceGetRowRemapperHistogram(self, h):
        vals = real_nvml.c_nvmlRowRemapperHistogramValues()
        vals.max, vals.high, vals.partial, vals.low, vals.none = 600, 38, 1, 1, 0
        return vals

    # pcie
    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return 5

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return 5

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h):
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetPcieReplayCounter(self, h):
        return 0

    # nvlink
    def nvmlDeviceGetNvLinkState(self, h, link):
        if link >= NVLINKS:
            raise nvml_error("INVALID_ARGUMENT")
        return N.NVML_FEATURE_DISABLED if link == 2 else N.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkErrorCounter(self, h, link, counter):
        return 10 * link + counter

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h, link):
        return types.SimpleNamespace(busId=b"00000000:0%d:00.0" % link)

    # clocks, thermal, power, modes
    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0x1

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == N.NVML_TEMPERATURE_GPU
        return 34

    def nvmlDeviceGetTemperatureThreshold(self, h, which):
        return {N.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 92,
                N.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 89,
                N.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 87,
                N.NVML_TEMPERATURE_THRESHOLD_MEM_MAX: 95}[which]

    def nvmlDeviceGetPowerUsage(self, h):
        return 71234

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 700000

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h):
        return 700000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h):
        return [200000, 700000]

    def nvmlDeviceGetPersistenceMode(self, h):
        return N.NVML_FEATURE_ENABLED

    def nvmlDeviceGetMigMode(self, h):
        return [0, 1]

    def nvmlDeviceGetComputeMode(self, h):
        return N.NVML_COMPUTEMODE_DEFAULT

    # fabric: fills the struct it is handed by reference, as the C call does

    def nvmlDeviceGetGpuFabricInfoV(self, h, ref):
        info = ref._obj
        assert isinstance(info, N.c_nvmlGpuFabricInfoV_t)
        info.state = self.fabric_state
        info.status = 0
        info.cliqueId = 7
        ctypes.memmove(info.clusterUuid, CLUSTER_UUID, 16)

    # processes, utilisation (only the unversioned name: the backend falls back to it)
    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * 2 ** 20),
                types.SimpleNamespace(pid=2 ** 22 + 1, usedGpuMemory=None)]

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=5, memory=1)


def fake_pynvml():
    """A module with the real pynvml's constants, exception classes and structs, and
    HealthyNode's methods as its functions (``module.node`` is the HealthyNode)."""
    mod = types.ModuleType("pynvml")
    for name in dir(real_nvml):
        if name.startswith(("NVML_", "NVMLError", "NVMLLibraryMismatchError", "c_nvml")):
            setattr(mod, name, getattr(real_nvml, name))
    mod.node = HealthyNode()
    for name in dir(HealthyNode):
        if name.startswith("nvml"):
            setattr(mod, name, getattr(mod.node, name))
    return mod


@pytest.fixture
def fake(monkeypatch):
    mod = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return mod


@pytest.fixture
def backend(fake):
    b = NvmlBackend()
    yield b
    b.close()


def test_module_imports_without_pynvml():
    """In a fresh interpreter where "import pynvml" fails, the module still imports and
    the first call raises LIBRARY_NOT_FOUND."""
    code = textwrap.dedent("""
        import sys
        sys.modules["pynvml"] = None          # makes "import pynvml" raise ImportError
        from gpuhc.backends.gpu import GpuError
        from gpuhc.backends.gpu_nvml import NvmlBackend
        try:
            NvmlBackend().device_count()
        except GpuError as err:
            print(err.code, err.call, err.node_wide)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [LIBRARY_NOT_FOUND, "device_count", "True"]


def test_missing_pynvml_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(GpuError) as info:
        NvmlBackend().identity(0)
    assert (info.value.code, info.value.call, info.value.gpu) == (LIBRARY_NOT_FOUND, "identity", 0)
    assert "nvidia-ml-py" in info.value.detail


# -- the calls on a healthy fake GPU -------------------------------------------------------

def test_every_call_on_fake(backend, fake):
    assert backend.kind == "nvml"
    assert backend.driver_version() == "550.54.15"
    assert backend.device_count() == 2
    assert backend.identity(1) == {
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd",
        "serial": "1654220000001", "pci_bus_id": "0000:3c:00.0",
        "board_part_number": "692-2G520-0200-000", "vbios": "96.00.74.00.01",
        "architecture": "hopper", "minor_number": 6}
    assert backend.ecc(0) == {
        "enabled": True, "pending": True,
        "volatile": {"corrected": 0, "uncorrected": 0},
        "aggregate": {"corrected": 3, "uncorrected": 0,
                      "uncorrected_sram": None, "uncorrected_dram": 0}}
    assert backend.retired_pages(0) == {"single_bit": None, "double_bit": None, "pending": None}
    assert backend.remapped_rows(0) == {"correctable": 2, "uncorrectable": 0,
                                        "pending": False, "failure": False, "banks_low": 1, "banks_none": 0}
    assert backend.pcie(0) == {"gen_current": 5, "gen_max": 5, "gen_gpu_max": 5,
                               "width_current": 16, "width_max": 16, "replay_counter": 0}
    assert backend.clock_event_reasons(0) == 1
    assert backend.temperature(0) == {"gpu": 34, "slowdown": 89, "shutdown": 92,
                                      "max_operating": 87, "memory": 95}
    assert backend.power(0) == {"usage_w": 71.234, "limit_w": 700.0, "default_limit_w": 700.0,
                                "enforced_limit_w": 700.0, "min_limit_w": 200.0, "max_limit_w": 700.0}
    assert backend.modes(0) == {"persistence": True, "mig_current": False, "mig_pending": True,
                                "compute_mode": "default"}
    assert backend.fabric(0) == {"state": FABRIC_COMPLETED, "status": 0, "clique_id": 7,
                                 "cluster_uuid": "01020304-0506-0708-090a-0b0c0d0e0f10"}
    procs = backend.processes(0)
    assert procs[0]["pid"] == os.getpid() and procs[0]["used_memory_mib"] == 512
    assert procs[0]["name"]                                     # read from /proc/<pid>/comm
    assert procs[1] == {"pid": 2 ** 22 + 1, "used_memory_mib": None, "name": None}
    assert backend.utilization(0) == {"gpu": 5, "memory": 1}
    assert len(backend.nvlink(0)) == NVLINKS
    for name in CALLS:                                         # nothing left unimplemented
        assert callable(getattr(backend, "_" + name))


def test_init_once_across_threads_and_close(fake):
    b = NvmlBackend()
    threads = [threading.Thread(target=lambda: [b.identity(n % 2) for n in range(20)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.node.init_calls == 1
    assert fake.node.handle_calls <= 2 * 8            # cached per index (a race may fetch twice)
    b.close()
    b.close()
    assert fake.node.shutdown_calls == 1
    b.device_count()                             # re-initialises after close
    assert fake.node.init_calls == 2


def test_close_before_any_call_does_nothing(fake):
    NvmlBackend().close()
    assert fake.node.shutdown_calls == 0 and fake.node.init_calls == 0


# -- error mapping -------------------------------------------------------------------------

def test_gpu_is_lost_on_device_call(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetTemperature", raiser("GPU_IS_LOST"))
    with pytest.raises(GpuError) as info:
        backend.temperature(1)
    err = info.value
    assert (err.code, err.call, err.gpu, err.node_wide) == (GPU_IS_LOST, "temperature", 1, False)
    assert err.detail == "GPU is lost"
    assert isinstance(err.__cause__, real_nvml.NVMLError_GpuIsLost)


def test_driver_not_loaded_at_init(fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlInit", raiser("DRIVER_NOT_LOADED"))
    with pytest.raises(GpuError) as info:
        NvmlBackend().device_count()
    err = info.value
    assert (err.code, err.call, err.gpu) == (DRIVER_NOT_LOADED, "device_count", None)
    assert err.node_wide
    assert "Driver Not Loaded" in err.detail


@pytest.mark.parametrize("failure", ["nvml_error", "oserror"])
def test_library_not_found_at_init(fake, monkeypatch, failure):
    def init():
        if failure == "oserror":
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")
        raise nvml_error("LIBRARY_NOT_FOUND")
    monkeypatch.setattr(fake, "nvmlInit", init)
    b = NvmlBackend()
    with pytest.raises(GpuError) as info:
        b.ecc(0)
    assert (info.value.code, info.value.call, info.value.gpu) == (LIBRARY_NOT_FOUND, "ecc", 0)
    assert info.value.node_wide
    b.close()                                     # nothing initialised: no shutdown
    assert fake.node.shutdown_calls == 0


@pytest.mark.parametrize("nvml_name,code", [
    ("NO_PERMISSION", NO_PERMISSION), ("TIMEOUT", "TIMEOUT"), ("RESET_REQUIRED", "RESET_REQUIRED"),
    ("INSUFFICIENT_POWER", "INSUFFICIENT_POWER"), ("IRQ_ISSUE", "IRQ_ISSUE"), ("MEMORY", "MEMORY"),
    ("UNINITIALIZED", "UNINITIALIZED"), ("NOT_FOUND", "NOT_FOUND"),
    ("FUNCTION_NOT_FOUND", NOT_SUPPORTED), ("CORRUPTED_INFOROM", UNKNOWN), ("UNKNOWN", UNKNOWN),
])
def test_error_codes(backend, fake, monkeypatch, nvml_name, code):
    monkeypatch.setattr(fake, "nvmlDeviceGetCount", raiser(nvml_name))
    with pytest.raises(GpuError) as info:
        backend.device_count()
    assert info.value.code == code


def test_not_supported_top_level_call(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetComputeRunningProcesses", raiser("NOT_SUPPORTED"))
    with pytest.raises(GpuError) as info:
        backend.processes(0)
    assert (info.value.code, info.value.call, info.value.gpu) == (NOT_SUPPORTED, "processes", 0)


def test_bad_index_is_gpu_not_found(backend):
    with pytest.raises(GpuError) as info:
        backend.pcie(5)
    assert (info.value.code, info.value.call, info.value.gpu) == (GPU_NOT_FOUND, "pcie", 5)


def test_other_error_in_sub_query_propagates(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetSerial", raiser("NO_PERMISSION"))
    with pytest.raises(GpuError) as info:
        backend.identity(0)
    assert (info.value.code, info.value.call) == (NO_PERMISSION, "identity")


# -- unsupported sub-queries -> None --------------------------------------------------------

def test_sub_query_not_supported_or_missing_is_none(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetGpuMaxPcieLinkGeneration", raiser("FUNCTION_NOT_FOUND"))
    monkeypatch.setattr(fake, "nvmlDeviceGetPcieReplayCounter", raiser("NOT_SUPPORTED"))
    monkeypatch.delattr(fake, "nvmlDeviceGetMaxPcieLinkWidth")            # older pynvml
    assert backend.pcie(0) == {"gen_current": 5, "gen_max": 5, "gen_gpu_max": None,
                               "width_current": 16, "width_max": None, "replay_counter": None}


def test_ecc_not_supported_at_all(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetEccMode", raiser("NOT_SUPPORTED"))
    assert backend.ecc(0) == {
        "enabled": None, "pending": None,
        "volatile": {"corrected": None, "uncorrected": None},
        "aggregate": {"corrected": None, "uncorrected": None,
                      "uncorrected_sram": None, "uncorrected_dram": None}}


def test_retired_pages_pre_ampere(backend, fake, monkeypatch):
    cause_dbe = fake.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    monkeypatch.setattr(fake, "nvmlDeviceGetRetiredPages",
                        lambda h, cause: [0x1000, 0x2000] if cause == cause_dbe else [0x3000])
    monkeypatch.setattr(fake, "nvmlDeviceGetRetiredPagesPendingStatus", lambda h: 1)
    assert backend.retired_pages(0) == {"single_bit": 1, "double_bit": 2, "pending": True}


def test_remapped_rows_and_utilization_not_supported(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetRemappedRows", raiser("NOT_SUPPORTED"))
    monkeypatch.setattr(fake, "nvmlDeviceGetUtilizationRates", raiser("NOT_SUPPORTED"))
    assert backend.remapped_rows(0) == {"correctable": None, "uncorrectable": None, "pending": None,
                                        "failure": None, "banks_low": None, "banks_none": None}
    assert backend.utilization(0) == {"gpu": None, "memory": None}


def test_mig_not_supported(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetMigMode", raiser("NOT_SUPPORTED"))
    modes = backend.modes(0)
    assert modes["mig_current"] is None and modes["mig_pending"] is None
    assert modes["persistence"] is True


# -- naming fallbacks ----------------------------------------------------------------------

def test_clock_reasons_fall_back_to_throttle_reasons(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetCurrentClocksEventReasons", raiser("FUNCTION_NOT_FOUND"))
    monkeypatch.setattr(fake, "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: 0x44, raising=False)
    assert backend.clock_event_reasons(0) == 0x44
    monkeypatch.delattr(fake, "nvmlDeviceGetCurrentClocksEventReasons")   # older pynvml
    assert backend.clock_event_reasons(1) == 0x44


def test_clock_reasons_missing_everywhere_is_not_supported(backend, fake, monkeypatch):
    monkeypatch.delattr(fake, "nvmlDeviceGetCurrentClocksEventReasons")
    with pytest.raises(GpuError) as info:
        backend.clock_event_reasons(0)
    assert info.value.code == NOT_SUPPORTED


def test_processes_prefer_versioned_function(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetComputeRunningProcesses_v3", raiser("FUNCTION_NOT_FOUND"),
                        raising=False)
    monkeypatch.setattr(fake, "nvmlDeviceGetComputeRunningProcesses_v2",
                        lambda h: [types.SimpleNamespace(pid=1, usedGpuMemory=3 * 2 ** 20 + 5)],
                        raising=False)
    assert backend.processes(0)[0]["used_memory_mib"] == 3


def test_architecture_names(backend, fake, monkeypatch):
    for value, expected in [(fake.NVML_DEVICE_ARCH_AMPERE, "ampere"),
                            (fake.NVML_DEVICE_ARCH_BLACKWELL, "blackwell"),
                            (42, 42), (0xFFFFFFFF, None)]:
        monkeypatch.setattr(fake, "nvmlDeviceGetArchitecture", lambda h, v=value: v)
        assert backend.identity(0)["architecture"] == expected


# -- bus ids, compute modes ----------------------------------------------------------------

@pytest.mark.parametrize("raw", ["00000000:3B:00.0", b"00000000:3B:00.0", "0000:3b:00.0", "3B:00.0"])
def test_bus_id_normalised(backend, fake, monkeypatch, raw):
    monkeypatch.setattr(fake, "nvmlDeviceGetPciInfo", lambda h: types.SimpleNamespace(busId=raw))
    bus_id = backend.identity(0)["pci_bus_id"]
    assert bus_id == "0000:3b:00.0"
    assert BUS_ID_RE.match(bus_id)


@pytest.mark.parametrize("const,name", [
    ("NVML_COMPUTEMODE_DEFAULT", "default"),
    ("NVML_COMPUTEMODE_EXCLUSIVE_THREAD", "exclusive_thread"),
    ("NVML_COMPUTEMODE_PROHIBITED", "prohibited"),
    ("NVML_COMPUTEMODE_EXCLUSIVE_PROCESS", "exclusive_process"),
    (None, "unknown"),
])
def test_compute_mode_names(backend, fake, monkeypatch, const, name):
    value = getattr(real_nvml, const) if const else 77
    monkeypatch.setattr(fake, "nvmlDeviceGetComputeMode", lambda h: value)
    assert backend.modes(0)["compute_mode"] == name


# -- nvlink --------------------------------------------------------------------------------

def test_nvlink_enumeration_stops_at_missing_links(backend):
    links = backend.nvlink(0)
    assert [l["link"] for l in links] == list(range(NVLINKS))
    assert [l["active"] for l in links] == [True, True, False, True]
    assert links[1] == {"link": 1, "active": True, "replay": 10, "recovery": 11,
                        "crc_flit": 12, "crc_data": 13, "remote_pci_bus_id": "0000:01:00.0"}


def test_nvlink_none_on_pcie_only_gpu(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetNvLinkState", raiser("NOT_SUPPORTED"))
    assert backend.nvlink(0) == []


def test_nvlink_counters_not_supported_and_lost_gpu(backend, fake, monkeypatch):
    monkeypatch.setattr(fake, "nvmlDeviceGetNvLinkErrorCounter", raiser("NOT_SUPPORTED"))
    monkeypatch.setattr(fake, "nvmlDeviceGetNvLinkRemotePciInfo", raiser("NOT_SUPPORTED"))
    link = backend.nvlink(0)[0]
    assert link == {"link": 0, "active": True, "replay": None, "recovery": None,
                    "crc_flit": None, "crc_data": None, "remote_pci_bus_id": None}
    monkeypatch.setattr(fake, "nvmlDeviceGetNvLinkState", raiser("GPU_IS_LOST"))
    with pytest.raises(GpuError) as info:
        backend.nvlink(0)
    assert (info.value.code, info.value.call) == (GPU_IS_LOST, "nvlink")


# -- fabric --------------------------------------------------------------------------------

def test_fabric_none_without_nvswitch(backend, fake, monkeypatch):
    monkeypatch.setattr(fake.node, "fabric_state", fake.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED)
    assert backend.fabric(0) is None
    monkeypatch.setattr(fake, "nvmlDeviceGetGpuFabricInfoV", raiser("NOT_SUPPORTED"))
    assert backend.fabric(0) is None


def test_fabric_falls_back_to_unversioned_function(backend, fake, monkeypatch):
    def old(h, ref):
        info = ref._obj
        assert isinstance(info, fake.c_nvmlGpuFabricInfo_t)
        info.state = fake.NVML_GPU_FABRIC_STATE_IN_PROGRESS
        info.status = 27                         # NVML_ERROR_NOT_READY
    monkeypatch.setattr(fake, "nvmlDeviceGetGpuFabricInfoV", raiser("FUNCTION_NOT_FOUND"))
    monkeypatch.setattr(fake, "nvmlDeviceGetGpuFabricInfo", old, raising=False)
    assert backend.fabric(0) == {"state": 2, "status": 27, "clique_id": 0, "cluster_uuid": None}


# -- this machine, real pynvml -------------------------------------------------------------

def test_real_library_fails_only_with_node_wide_error():
    """Without a driver (as on CI) the real NVML answers LIBRARY_NOT_FOUND or
    DRIVER_NOT_LOADED, never another exception; with one it counts GPUs."""
    b = NvmlBackend()
    try:
        count = b.device_count()
    except GpuError as err:
        assert err.code in (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED), err
        assert err.node_wide
    else:
        assert isinstance(count, int) and count >= 0
    finally:
        b.close()


# -- real GPUs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvml_gpu():
    try:
        real_nvml.nvmlInit()
    except (real_nvml.NVMLError, OSError) as e:
        pytest.skip("NVML cannot initialise on this machine (no NVIDIA GPU/driver): %s" % e)
    real_nvml.nvmlShutdown()
    b = NvmlBackend()
    yield b
    b.close()


def _keys(value):
    return set(value) if isinstance(value, dict) else None


def _number_or_none(value):
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _bool_or_none(value):
    return value is None or isinstance(value, bool)


@pytest.mark.gpu
def test_gpu_every_call_every_gpu(nvml_gpu):
    b = nvml_gpu
    assert re.match(r"^\d+\.\d+", b.driver_version())
    count = b.device_count()
    assert isinstance(count, int) and count >= 1
    for i in range(count):
        results = {}
        for name in CALLS:
            if name in ("driver_version", "device_count"):
                continue
            try:
                results[name] = b.call(name, i)
            except GpuError as err:       # only a call without a dict may be wholly unsupported
                assert err.code == NOT_SUPPORTED and name in ("clock_event_reasons", "processes"), err

        ident = results["identity"]
        assert _keys(ident) == {"name", "uuid", "serial", "pci_bus_id", "board_part_number",
                                "vbios", "architecture", "minor_number"}
        assert ident["uuid"].startswith("GPU-")
        assert BUS_ID_RE.match(ident["pci_bus_id"]), ident["pci_bus_id"]
        assert isinstance(ident["name"], str) and ident["name"]

        ecc = results["ecc"]
        assert _keys(ecc) == {"enabled", "pending", "volatile", "aggregate"}
        assert _keys(ecc["volatile"]) == {"corrected", "uncorrected"}
        assert _keys(ecc["aggregate"]) == {"corrected", "uncorrected", "uncorrected_sram",
                                           "uncorrected_dram"}
        assert _bool_or_none(ecc["enabled"]) and _bool_or_none(ecc["pending"])
        assert all(_number_or_none(v) for v in list(ecc["volatile"].values())
                   + list(ecc["aggregate"].values()))

        pages = results["retired_pages"]
        assert _keys(pages) == {"single_bit", "double_bit", "pending"}
        assert _number_or_none(pages["single_bit"]) and _bool_or_none(pages["pending"])

        rows = results["remapped_rows"]
        assert _keys(rows) == {"correctable", "uncorrectable", "pending", "failure", "banks_low", "banks_none"}
        assert _bool_or_none(rows["pending"]) and _bool_or_none(rows["failure"])

        pcie = results["pcie"]
        assert _keys(pcie) == {"gen_current", "gen_max", "gen_gpu_max", "width_current",
                               "width_max", "replay_counter"}
        assert all(_number_or_none(v) for v in pcie.values())
        if pcie["width_current"] is not None and pcie["width_max"] is not None:
            assert 1 <= pcie["width_current"] <= pcie["width_max"]

        for link in results["nvlink"]:
            assert _keys(link) == {"link", "active", "replay", "recovery", "crc_flit", "crc_data",
                                   "remote_pci_bus_id"}
            assert isinstance(link["active"], bool)
            assert link["remote_pci_bus_id"] is None or BUS_ID_RE.match(link["remote_pci_bus_id"])

        if "clock_event_reasons" in results:
            assert isinstance(results["clock_event_reasons"], int)

        temp = results["temperature"]
        assert _keys(temp) == {"gpu", "slowdown", "shutdown", "max_operating", "memory"}
        assert isinstance(temp["gpu"], (int, float)) and 0 <= temp["gpu"] <= 120

        power = results["power"]
        assert _keys(power) == {"usage_w", "limit_w", "default_limit_w", "enforced_limit_w",
                                "min_limit_w", "max_limit_w"}
        assert all(v is None or isinstance(v, float) for v in power.values())
        if power["usage_w"] is not None:
            assert 0 <= power["usage_w"] < 5000

        modes = results["modes"]
        assert _keys(modes) == {"persistence", "mig_current", "mig_pending", "compute_mode"}
        assert modes["compute_mode"] in ("default", "exclusive_thread", "prohibited",
                                         "exclusive_process", "unknown")
        assert all(_bool_or_none(modes[k]) for k in ("persistence", "mig_current", "mig_pending"))

        fabric = results["fabric"]
        if fabric is not None:
            assert _keys(fabric) == {"state", "status", "clique_id", "cluster_uuid"}
            assert fabric["state"] in (1, 2, 3)

        for proc in results.get("processes", []):
            assert _keys(proc) == {"pid", "used_memory_mib", "name"}
            assert isinstance(proc["pid"], int)

        util = results["utilization"]
        assert _keys(util) == {"gpu", "memory"}
        assert all(v is None or 0 <= v <= 100 for v in util.values())


@pytest.mark.gpu
def test_gpu_bad_index_is_gpu_not_found(nvml_gpu):
    with pytest.raises(GpuError) as info:
        nvml_gpu.identity(nvml_gpu.device_count() + 64)
    assert info.value.code == GPU_NOT_FOUND
