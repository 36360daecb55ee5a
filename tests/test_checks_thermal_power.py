"""thermal_power: GPU temperature against the GPU's own slowdown/shutdown thresholds (MONITOR
within the margin, RESET at slowdown, ISOLATE within 3 C of shutdown); a power limit below the
default is MONITOR. Pure evaluate on fixtures, then scenarios through the runner."""
import pytest

from gpuhc import config as C
from gpuhc.backends.gpu import GpuError
from gpuhc.checks import thermal_power as T
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

# what NVML reports for an H100 SXM5 (slowdown 90 C, shutdown 95 C, 700 W default limit)
H100_TEMP = {"gpu": 34, "slowdown": 90, "shutdown": 95, "max_operating": 87, "memory": 95}
H100_POWER = {"usage_w": 72.5, "limit_w": 700.0, "default_limit_w": 700.0, "enforced_limit_w": 700.0,
              "min_limit_w": 200.0, "max_limit_w": 700.0}
CHECKS = ["thermal_power"]


def gpu(temp=None, power=None, index=0):
    t = dict(H100_TEMP, **(temp or {}))
    p = dict(H100_POWER, **(power or {}))
    return Entry(GpuRef(index, "GPU-%d" % index, "0000:%02x:00.0" % (0x18 + index)), {"temperature": t, "power": p})


def evaluate(*entries, config=None):
    return T.evaluate({"gpus": list(entries)}, None, config if config is not None else C.validate({}))


def sev(findings):
    return [f.severity.value for f in findings]


@pytest.mark.parametrize("temp, expected", [
    (34, "PASS"),        # idle
    (84, "PASS"),        # 6 C below slowdown: outside the 5 C margin
    (85, "MONITOR"),     # slowdown - margin: the first degree watched
    (89, "MONITOR"),
    (90, "RESET"),       # at slowdown: the GPU throttles here
    (91, "RESET"),
    (92, "ISOLATE"),     # shutdown - 3
    (95, "ISOLATE"),     # at shutdown
    (97, "ISOLATE"),     # above shutdown
])
def test_temperature_against_the_gpus_own_thresholds(temp, expected):
    out = evaluate(gpu({"gpu": temp}))
    assert sev(out) == [expected]
    assert out[0].metrics["temperature_c"] == temp and out[0].gpu.index == 0


def test_messages_name_the_threshold_crossed():
    assert "at or above the slowdown threshold 90 C" in evaluate(gpu({"gpu": 90}))[0].message
    assert "near the shutdown threshold 95 C" in evaluate(gpu({"gpu": 93}))[0].message
    assert "within 5 C of slowdown (90 C)" in evaluate(gpu({"gpu": 86}))[0].message


def test_thresholds_are_the_gpus_own_not_fixed_numbers():
    # 88 C is MONITOR on an H100 (slowdown 90) but fine on a GPU that slows down at 100 C
    assert sev(evaluate(gpu({"gpu": 88}))) == ["MONITOR"]
    assert sev(evaluate(gpu({"gpu": 88, "slowdown": 100, "shutdown": 105}))) == ["PASS"]
    # and 80 C is RESET on a GPU whose slowdown is 80 C
    assert sev(evaluate(gpu({"gpu": 80, "slowdown": 80, "shutdown": 90}))) == ["RESET"]


def test_margin_comes_from_config():
    cfg = C.validate({"thresholds": {"temperature_margin_c": 10}})
    assert sev(evaluate(gpu({"gpu": 81}), config=cfg)) == ["MONITOR"]
    assert sev(evaluate(gpu({"gpu": 79}), config=cfg)) == ["PASS"]


def test_unknown_temperature_or_thresholds_pass():
    assert sev(evaluate(gpu({"gpu": None}))) == ["PASS"]
    assert sev(evaluate(gpu({"gpu": 99, "slowdown": None, "shutdown": None}))) == ["PASS"]
    # shutdown unknown: slowdown still applies
    assert sev(evaluate(gpu({"gpu": 99, "shutdown": None}))) == ["RESET"]


@pytest.mark.parametrize("power, expected", [
    ({}, "PASS"),                                                  # at the default
    ({"enforced_limit_w": 665.0, "limit_w": 665.0}, "PASS"),      # exactly 95% of default
    ({"enforced_limit_w": 664.0, "limit_w": 664.0}, "MONITOR"),   # just below 95%
    ({"enforced_limit_w": 400.0, "limit_w": 400.0}, "MONITOR"),   # capped by an operator
    ({"enforced_limit_w": 400.0}, "MONITOR"),                      # enforced wins over the set limit
    ({"enforced_limit_w": None, "limit_w": 500.0}, "MONITOR"),    # no enforced value: the set limit
    ({"default_limit_w": None, "enforced_limit_w": 400.0}, "PASS"),  # no default to compare with
])
def test_power_limit_below_default(power, expected):
    out = evaluate(gpu(power=power))
    assert sev(out) == [expected]
    if expected == "MONITOR":
        assert "below the default 700 W" in out[0].message and "-pl 700" in out[0].remediation


def test_hot_gpu_with_a_lowered_power_limit_reports_both():
    out = evaluate(gpu({"gpu": 91}, {"enforced_limit_w": 500.0}))
    assert sorted(sev(out)) == ["MONITOR", "RESET"]


def test_each_gpu_on_its_own_and_a_lost_gpu_is_reboot():
    lost = Entry(GpuRef(3, "GPU-3"), error=GpuError("GPU_IS_LOST", "temperature", 3))
    out = evaluate(gpu(index=0), gpu({"gpu": 92}, index=1), lost)
    assert [(f.gpu.index, f.severity.value) for f in out] == [(0, "PASS"), (1, "ISOLATE"), (3, "REBOOT")]


# -- scenarios through the runner ------------------------------------------------------------------

def write(tmp_path, text, name="node.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def thermal(report):
    return [(f.where(), f.severity.value) for f in report.findings if f.check == "thermal_power"
            and f.severity.value != "PASS"]


def test_healthy_h100_node_passes(run_scenario):
    report = run_scenario("h100-healthy", checks=CHECKS)
    found = [f for f in report.findings if f.check == "thermal_power"]
    assert len(found) == 8 and all(f.severity.value == "PASS" for f in found)
    assert found[0].metrics == {"temperature_c": 34, "power_w": 72.5, "power_limit_w": 700.0}
    assert report.overall.value == "PASS"


def test_bundled_thermal_slowdown_scenario_is_monitor_on_gpu2(run_scenario):
    # 88 C against the H100's 90 C slowdown: within the margin, not yet at it
    report = run_scenario("h100-thermal-slowdown", checks=CHECKS)
    assert thermal(report) == [("GPU2", "MONITOR")] and report.overall.value == "MONITOR"


def test_gpu_at_slowdown_is_reset(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n  5:\n    temperature: {gpu: 90}\n")
    report = run_scenario(path, checks=CHECKS)
    assert thermal(report) == [("GPU5", "RESET")] and report.overall.value == "RESET"


def test_gpu_near_shutdown_is_isolate(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n  1:\n    temperature: {gpu: 94}\n"
                           "  6:\n    temperature: {gpu: 87}\n")
    report = run_scenario(path, checks=CHECKS)
    assert thermal(report) == [("GPU1", "ISOLATE"), ("GPU6", "MONITOR")] and report.overall.value == "ISOLATE"


def test_lowered_power_limit_is_monitor(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n  3:\n"
                           "    power: {limit_w: 500.0, enforced_limit_w: 500.0}\n")
    report = run_scenario(path, checks=CHECKS)
    assert thermal(report) == [("GPU3", "MONITOR")] and report.overall.value == "MONITOR"
    [hit] = [f for f in report.findings if f.check == "thermal_power" and f.severity.value == "MONITOR"]
    assert hit.message == "power limit 500 W below the default 700 W" and hit.metrics["power_limit_w"] == 500.0


@pytest.mark.parametrize("temp, expected", [(91, "MONITOR"), (92, "RESET"), (93, "ISOLATE"), (95, "ISOLATE")])
def test_close_thresholds_slowdown_is_reset_before_anything_is_isolate(temp, expected):
    """A100-like thresholds (slowdown 92 C, shutdown 95 C): reaching slowdown drains for a reset,
    not for good; only past slowdown and near shutdown is ISOLATE."""
    assert sev(evaluate(gpu(temp={"gpu": temp, "slowdown": 92, "shutdown": 95}))) == [expected]


def test_shutdown_margin_is_a_threshold():
    cfg = C.validate({"thresholds": {"temperature_shutdown_margin_c": 1}})
    assert sev(evaluate(gpu(temp={"gpu": 93}), config=cfg)) == ["RESET"]
    assert sev(evaluate(gpu(temp={"gpu": 94}), config=cfg)) == ["ISOLATE"]
