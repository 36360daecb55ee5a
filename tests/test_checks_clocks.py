"""clocks: hardware slowdown reasons (HW slowdown, HW thermal, HW power brake) are MONITOR on first
sight and RESET when the same reason persists from the previous run; software thermal slowdown is
MONITOR; GPU idle, SW power cap and application clocks are normal (PASS); a GPU that does not answer
is mapped once. Pure evaluate on hand-built entries, then gather -> evaluate on simulated nodes
(two gathers for persistence), then the runner."""
import pytest

from gpuhc import config as C
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import CLOCK_REASON_BITS, GpuError
from gpuhc.checks import clocks as CL
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

from test_checks_nvml import sim_context, summary

BIT = CLOCK_REASON_BITS
IDLE, SW_POWER_CAP, APP_CLOCKS = BIT["gpu_idle"], BIT["sw_power_cap"], BIT["applications_clocks_setting"]
HW_SLOWDOWN, HW_THERMAL, POWER_BRAKE = BIT["hw_slowdown"], BIT["hw_thermal_slowdown"], BIT["hw_power_brake_slowdown"]
SW_THERMAL = BIT["sw_thermal_slowdown"]


def gpu(i):
    return GpuRef(i, "GPU-%d" % i, "0000:%02x:00.0" % (0x18 + i))


def evaluate(*masks, previous=None):
    """One entry per mask (GPU 0, 1, ...); a GpuError in place of a mask is that GPU's error."""
    entries = [Entry(gpu(i), error=m) if isinstance(m, GpuError) else Entry(gpu(i), m) for i, m in enumerate(masks)]
    return CL.evaluate({"gpus": entries, "previous": previous or {}}, None, C.defaults())


# -- evaluate on fixtures ----------------------------------------------------------------------------

@pytest.mark.parametrize("mask,reasons", [(0, "none"), (IDLE, "gpu_idle"), (IDLE | SW_POWER_CAP, "gpu_idle, sw_power_cap"),
                                          (IDLE | SW_POWER_CAP | APP_CLOCKS,
                                           "gpu_idle, applications_clocks_setting, sw_power_cap")])
def test_no_hardware_slowdown_passes_and_names_the_reasons(mask, reasons):
    assert summary(evaluate(mask)) == [("PASS", 0, "no hardware slowdown (%s)" % reasons)]


def test_none_from_nvml_is_no_reason():
    assert summary(evaluate(None)) == [("PASS", 0, "no hardware slowdown (none)")]


@pytest.mark.parametrize("mask,names", [(HW_SLOWDOWN, "hw_slowdown"),
                                        (HW_THERMAL | HW_SLOWDOWN, "hw_slowdown, hw_thermal_slowdown"),
                                        (POWER_BRAKE | HW_SLOWDOWN | IDLE, "hw_slowdown, hw_power_brake_slowdown")])
def test_hardware_slowdown_seen_once_is_monitor(mask, names):
    [out] = evaluate(IDLE, mask)[1:]
    assert (out.severity.value, out.gpu.index, out.message) == ("MONITOR", 1, "clocks held down by %s" % names)
    assert out.metrics == {"reasons_mask": mask}
    assert "RESET if it persists" in out.remediation


def test_hardware_slowdown_persisting_from_the_previous_run_is_reset():
    out = evaluate(IDLE, HW_THERMAL | HW_SLOWDOWN, previous={"GPU-1": ["hw_thermal_slowdown"], "GPU-0": []})
    assert summary(out) == [("PASS", 0, "no hardware slowdown (gpu_idle)"),
                            ("RESET", 1, "clocks held down by hw_thermal_slowdown, as in the previous run")]
    assert out[1].metrics == {"reasons_mask": HW_THERMAL | HW_SLOWDOWN}
    assert "drain" in out[1].remediation


def test_persistence_is_per_gpu_uuid_and_per_reason():
    """The previous run's slowdown on another GPU, or another hardware reason on this one, is not
    'as in the previous run'."""
    assert [f.severity.value for f in evaluate(HW_SLOWDOWN, previous={"GPU-1": ["hw_slowdown"]})] == ["MONITOR"]
    assert [f.severity.value for f in evaluate(POWER_BRAKE, previous={"GPU-0": ["hw_thermal_slowdown"]})] == ["MONITOR"]


def test_software_thermal_slowdown_is_monitor():
    [out] = evaluate(SW_THERMAL | IDLE)
    assert (out.severity.value, out.gpu.index, out.message) == ("MONITOR", 0, "software thermal slowdown active")
    assert out.metrics == {"reasons_mask": SW_THERMAL | IDLE}


def test_hardware_slowdown_wins_over_software_thermal():
    [out] = evaluate(SW_THERMAL | HW_SLOWDOWN)
    assert (out.severity.value, out.message) == ("MONITOR", "clocks held down by hw_slowdown")


@pytest.mark.parametrize("code,severity", [(G.GPU_IS_LOST, "REBOOT"), (G.RESET_REQUIRED, "RESET"),
                                           (G.NOT_SUPPORTED, "SKIP"), (G.UNKNOWN, "ERROR")])
def test_a_gpu_error_is_mapped_on_its_gpu(code, severity):
    out = evaluate(IDLE, GpuError(code, "clock_event_reasons", 1))
    assert [(f.severity.value, f.gpu.index) for f in out] == [("PASS", 0), (severity, 1)]
    assert "(%s in clock_event_reasons" % code in out[1].message


# -- gather -> evaluate on simulated nodes ---------------------------------------------------------

def test_healthy_node_gathers_idle_and_passes():
    ctx = sim_context("h100-healthy")
    data = CL.gather(ctx)
    assert [e.value for e in data["gpus"]] == [IDLE] * 8 and data["previous"] == {}
    assert data["_state"] == {g.uuid: [] for g in ctx.inventory.gpus}
    out = CL.evaluate(data, None, C.defaults())
    assert {(f.severity.value, f.message) for f in out} == {("PASS", "no hardware slowdown (gpu_idle)")}
    assert [f.gpu.index for f in out] == list(range(8))


def test_thermal_slowdown_scenario_first_run_monitor_second_run_reset():
    """h100-thermal-slowdown: GPU 2 at 88 C with HW slowdown and HW thermal slowdown (mask 72).
    The first run keeps the reasons it saw; the next run, seeing them again, resets."""
    ctx = sim_context("h100-thermal-slowdown")
    first = CL.gather(ctx)
    out = CL.evaluate(first, None, C.defaults())
    assert [(f.severity.value, f.gpu.index) for f in out if f.severity.value != "PASS"] == [("MONITOR", 2)]
    assert out[2].message == "clocks held down by hw_slowdown, hw_thermal_slowdown"
    uuid2 = ctx.inventory.gpus[2].uuid
    assert first["_state"][uuid2] == ["hw_slowdown", "hw_thermal_slowdown"]

    second = CL.gather(sim_context("h100-thermal-slowdown", previous={"clocks": first["_state"]}))
    out = CL.evaluate(second, None, C.defaults())
    bad = [f for f in out if f.severity.value != "PASS"]
    assert [(f.severity.value, f.gpu.index) for f in bad] == [("RESET", 2)]
    assert bad[0].message == "clocks held down by hw_slowdown, hw_thermal_slowdown, as in the previous run"


def test_lost_gpu_is_not_asked_and_a_failing_call_is_mapped(tmp_path):
    """The inventory's lost GPU is left out of the gather (nvml reports it); a GPU whose clock
    reasons call fails is reported on that GPU."""
    data = CL.gather(sim_context("h100-xid79"))
    assert [e.gpu.index for e in data["gpus"]] == [0, 1, 2, 4, 5, 6, 7]
    sc = tmp_path / "node.yaml"
    sc.write_text("extends: h100-healthy\nfaults: [{call: clock_event_reasons, gpu: 6, error: RESET_REQUIRED}]\n")
    data = CL.gather(sim_context(sc))
    out = [f for f in CL.evaluate(data, None, C.defaults()) if f.severity.value != "PASS"]
    assert [(f.severity.value, f.gpu.index) for f in out] == [("RESET", 6)]
    assert "GPU requires a reset" in out[0].message
    assert out[0].gpu.uuid not in data["_state"]


def test_through_the_runner(run_scenario):
    report = run_scenario("h100-thermal-slowdown", checks=["clocks"])
    bad = [(f.severity.value, f.gpu.index) for f in report.findings if f.check == "clocks" and f.severity.value != "PASS"]
    assert bad == [("MONITOR", 2)] and report.overall.value == "MONITOR"
