"""nvml: whether the GPU library answers at all, and the inventory (index, UUID, PCI bus id, name,
serial, device minor) every other GPU check starts from. A node-wide failure is judged against
the profile's expectation (REBOOT where GPUs are expected, SKIP where none are, ERROR where the
profile does not say); a per-GPU failure is mapped once, on its GPU. Pure evaluate on hand-built
inventories, then gather -> evaluate on simulated nodes, then the runner.

``sim_context`` is shared by the other tests/test_checks_*.py files: a check Context on a
simulated node as the runner builds it, with this check's inventory gathered."""
import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc import scenario
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import GpuError
from gpuhc.backends.sim import SimGpu, SimHost
from gpuhc.checks import nvml as NV
from gpuhc.checks.base import Context, Inventory
from gpuhc.model import GpuRef

PROFILES = P.load()
DGX_H100, P5, GENERIC = PROFILES["dgx-h100"], PROFILES["p5.48xlarge"], PROFILES["generic"]
CPU_NODE = P.parse('cpu gpus=0 description="login node"\n')["cpu"]
# the bus ids of the bundled h100-healthy scenario, in NVML (PCI) order
H100_BUS = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
            "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]


def sim_context(name, context="check", profile=None, previous=None, job_gpus=None, config=None, node="gpu-001"):
    """A check Context on the simulated node ``name`` (a bundled scenario or a file), with the
    inventory the nvml check gathers first in every run."""
    sc = scenario.load(str(name), node)
    ctx = Context(node=node, context=context, gpu=SimGpu(sc), host=SimHost(sc), config=config or C.defaults(),
                  profile=profile, previous=previous or {}, job_gpus=job_gpus)
    NV.gather(ctx)
    return ctx


def where(finding):
    return finding.gpu.index if finding.gpu is not None else finding.device


def summary(findings):
    return [(f.severity.value, where(f), f.message) for f in findings]


def inventory(n=8, errors=None, error=None):
    inv = Inventory(driver_version="570.133.20", error=error)
    for i in range(n):
        inv.gpus.append(GpuRef(i, None if i in (errors or {}) else "GPU-%d" % i, H100_BUS[i]))
        if i not in (errors or {}):
            inv.names[i] = "NVIDIA H100 80GB HBM3"
    inv.errors = dict(errors or {})
    return inv


# -- evaluate on fixtures ----------------------------------------------------------------------------

def test_every_gpu_answering_is_one_pass_with_the_count():
    [out] = NV.evaluate(inventory(), DGX_H100, C.defaults())
    assert (out.severity.value, out.gpu, out.message) == ("PASS", None, "driver 570.133.20, 8 GPUs answer")
    assert out.metrics == {"gpus": 8}


@pytest.mark.parametrize("code,what", [(G.DRIVER_NOT_LOADED, "NVIDIA driver not loaded"),
                                       (G.LIBRARY_NOT_FOUND, "NVIDIA driver library (libnvidia-ml) not found"),
                                       (G.UNINITIALIZED, "NVML could not be initialised")])
def test_node_wide_failure_where_the_profile_expects_gpus_is_reboot(code, what):
    [out] = NV.evaluate(inventory(0, error=GpuError(code, "device_count")), DGX_H100, C.defaults())
    assert (out.severity.value, out.gpu) == ("REBOOT", None)
    assert out.message == "%s but profile dgx-h100 expects 8 GPUs" % what
    assert "reboot" in out.remediation


def test_node_wide_failure_where_the_profile_expects_no_gpu_is_skip():
    [out] = NV.evaluate(inventory(0, error=GpuError(G.LIBRARY_NOT_FOUND, "init")), CPU_NODE, C.defaults())
    assert out.severity.value == "SKIP"
    assert out.message == "NVIDIA driver library (libnvidia-ml) not found; this profile expects no GPU"


@pytest.mark.parametrize("profile,name", [(GENERIC, "generic"), (None, "?")])
def test_node_wide_failure_without_an_expectation_is_an_error_not_a_drain(profile, name):
    """A profile that does not say whether the node has GPUs cannot tell a broken driver from a
    CPU node: the checker says it could not decide (ERROR never drains by itself)."""
    [out] = NV.evaluate(inventory(0, error=GpuError(G.DRIVER_NOT_LOADED, "init")), profile, C.defaults())
    assert out.severity.value == "ERROR"
    assert out.message == "NVIDIA driver not loaded; profile %s does not say whether GPUs are expected" % name
    assert "load the NVIDIA driver" in out.remediation


def test_a_call_timing_out_before_the_inventory_is_reboot_for_the_node():
    """device_count timing out is not one of the node-wide codes, but it leaves no inventory: the
    finding is for the node (no GPU), with the per-call mapping of TIMEOUT."""
    [out] = NV.evaluate(inventory(0, error=GpuError(G.TIMEOUT, "device_count")), DGX_H100, C.defaults())
    assert (out.severity.value, out.gpu) == ("REBOOT", None)
    assert out.message.startswith("NVML call timed out (TIMEOUT in device_count")


@pytest.mark.parametrize("code,severity,text", [
    (G.GPU_IS_LOST, "REBOOT", "GPU is lost: it fell off the bus or stopped responding"),
    (G.RESET_REQUIRED, "RESET", "GPU requires a reset"),
    (G.TIMEOUT, "REBOOT", "NVML call timed out"),
    (G.IRQ_ISSUE, "REBOOT", "interrupt problem talking to the GPU"),
    (G.INSUFFICIENT_POWER, "ISOLATE", "GPU reports insufficient power"),
    (G.NOT_SUPPORTED, "SKIP", "not supported on this GPU"),
    (G.NO_PERMISSION, "ERROR", "GPU library error"),
])
def test_a_gpu_that_does_not_answer_is_mapped_on_its_gpu(code, severity, text):
    err = GpuError(code, "identity", 3, "simulated")
    out = NV.evaluate(inventory(errors={3: err}), DGX_H100, C.defaults())
    assert [(f.severity.value, where(f)) for f in out] == [(severity, 3)]
    assert out[0].message.startswith(text) and "(%s in identity: simulated)" % code in out[0].message
    assert out[0].gpu.pci_bus_id == "0000:5d:00.0"


def test_several_gpus_failing_are_each_reported_in_index_order():
    errors = {6: GpuError(G.RESET_REQUIRED, "identity", 6), 1: GpuError(G.GPU_IS_LOST, "identity", 1)}
    out = NV.evaluate(inventory(errors=errors), DGX_H100, C.defaults())
    assert [(f.severity.value, where(f)) for f in out] == [("REBOOT", 1), ("RESET", 6)]


# -- gather -> evaluate on simulated nodes ---------------------------------------------------------

def test_healthy_node_inventory_and_pass():
    ctx = sim_context("h100-healthy")
    inv = ctx.inventory
    assert inv.error is None and inv.errors == {} and inv.driver_version == "570.133.20"
    assert [g.index for g in inv.gpus] == list(range(8)) and [g.pci_bus_id for g in inv.gpus] == H100_BUS
    assert all(g.uuid.startswith("GPU-") for g in inv.gpus) and len({g.uuid for g in inv.gpus}) == 8
    assert inv.model == "NVIDIA H100 80GB HBM3" and inv.minors == {i: i for i in range(8)}
    assert all(inv.serials[i] for i in range(8))
    assert summary(NV.evaluate(inv, DGX_H100, C.defaults())) == [("PASS", None, "driver 570.133.20, 8 GPUs answer")]


def test_lost_gpu_keeps_its_pci_address_from_sysfs():
    """GPU 3 fell off the bus (Xid 79): NVML cannot give its identity, so its bus id comes from
    the NVIDIA GPUs on PCI (NVML enumerates in bus order, all eight are still there)."""
    ctx = sim_context("h100-xid79")
    inv = ctx.inventory
    assert set(inv.errors) == {3} and inv.errors[3].code == G.GPU_IS_LOST
    assert inv.gpus[3] == GpuRef(3, None, "0000:5d:00.0")
    assert [g.index for g in ctx.healthy_gpus()] == [0, 1, 2, 4, 5, 6, 7]
    [out] = NV.evaluate(inv, DGX_H100, C.defaults())
    assert (out.severity.value, where(out), out.gpu.pci_bus_id) == ("REBOOT", 3, "0000:5d:00.0")
    assert "GPU is lost" in out.message


def test_driver_not_loaded_on_a_node_that_should_have_gpus():
    ctx = sim_context("h100-driver-not-loaded")
    assert ctx.inventory.error.code == G.DRIVER_NOT_LOADED and ctx.inventory.gpus == []
    assert ctx.gpu_unavailable() == "GPU library unavailable: DRIVER_NOT_LOADED"
    assert summary(NV.evaluate(ctx.inventory, P5, C.defaults())) == [
        ("REBOOT", None, "NVIDIA driver not loaded but profile p5.48xlarge expects 8 GPUs")]
    assert [f.severity.value for f in NV.evaluate(ctx.inventory, CPU_NODE, C.defaults())] == ["SKIP"]


def test_gpu_missing_from_nvml_is_not_the_nvml_checks_to_find():
    """NVML lists 7 GPUs and each answers: nvml passes; the GPU absent from NVML is gpu_count's
    finding (it compares with PCI and the profile)."""
    ctx = sim_context("h100-gpu-missing")
    assert len(ctx.inventory.gpus) == 7 and "0000:ab:00.0" not in [g.pci_bus_id for g in ctx.inventory.gpus]
    assert summary(NV.evaluate(ctx.inventory, DGX_H100, C.defaults())) == [
        ("PASS", None, "driver 570.133.20, 7 GPUs answer")]


def test_identity_failure_on_one_gpu_of_a_node_with_a_gpu_missing_has_no_bus_id(tmp_path):
    """With fewer GPUs in NVML than on PCI, the index no longer names a PCI address: the lost
    GPU's bus id is left unknown rather than guessed."""
    sc = tmp_path / "node.yaml"
    sc.write_text("extends: h100-gpu-missing\nfaults: [{call: identity, gpu: 2, error: RESET_REQUIRED}]\n")
    ctx = sim_context(sc)
    assert ctx.inventory.gpus[2] == GpuRef(2, None, None)
    [out] = NV.evaluate(ctx.inventory, DGX_H100, C.defaults())
    assert (out.severity.value, where(out)) == ("RESET", 2) and "GPU requires a reset" in out.message


def test_through_the_runner(run_scenario):
    report = run_scenario("h100-xid79", checks=["nvml"])
    found = [(f.severity.value, where(f)) for f in report.findings if f.check == "nvml"]
    assert found == [("REBOOT", 3)]
    assert report.overall.value == "REBOOT"
