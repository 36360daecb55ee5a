"""ecc: ECC enabled where the profile expects it (RESET when not); uncorrectable errors since the
last reset (RESET), aggregate SRAM (ISOLATE beyond the limit) and aggregate DRAM (MONITOR, ISOLATE
beyond the limit); corrected-error growth as a trend metric, MONITOR beyond its limit.
Pure evaluate on fixtures, then scenarios through the runner (two runs for the trend)."""
import copy

import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc.checks import ecc as E
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

# as NVML reports it for a healthy H100 (ecc mode enabled, pending enabled)
HEALTHY = {"enabled": True, "pending": True,
           "volatile": {"corrected": 0, "uncorrected": 0},
           "aggregate": {"corrected": 12, "uncorrected": 0, "uncorrected_sram": 0, "uncorrected_dram": 0}}
PROFILES = P.parse('dgx-h100 gpus=8 model="H100"\nno-ecc gpus=8 model="H100" ecc=no\n')
DGX, NO_ECC, GENERIC = PROFILES["dgx-h100"], PROFILES["no-ecc"], PROFILES["generic"]
CHECKS = ["ecc"]


def ecc(volatile=None, aggregate=None, **top):
    value = copy.deepcopy(HEALTHY)
    value["volatile"].update(volatile or {})
    value["aggregate"].update(aggregate or {})
    value.update(top)
    return value


def evaluate(*values, profile=DGX, previous=None, thresholds=None):
    entries = [Entry(GpuRef(i, "GPU-%d" % i), v) for i, v in enumerate(values)]
    cfg = C.validate({"thresholds": thresholds} if thresholds else {})
    return E.evaluate({"gpus": entries, "previous": previous or {}}, profile, cfg)


def problems(findings):
    return [(f.severity.value, f.message) for f in findings if f.severity.value != "PASS"]


def test_default_limits():
    assert C.THRESHOLDS["ecc_sram_uncorrected"] == 4 and C.THRESHOLDS["ecc_dram_uncorrected"] == 64
    assert C.defaults()["thresholds"]["ecc_dram_uncorrected"] == 64


def test_healthy_gpu_passes_with_metrics():
    [out] = evaluate(ecc())
    assert out.severity.value == "PASS" and out.message == "ECC on, no uncorrectable errors"
    assert out.metrics == {"volatile_corrected": 0, "volatile_uncorrected": 0, "aggregate_corrected": 12,
                           "aggregate_uncorrected": 0, "aggregate_uncorrected_sram": 0,
                           "aggregate_uncorrected_dram": 0}


# -- ECC mode ----------------------------------------------------------------------------------------

def test_ecc_disabled_where_the_profile_expects_it_is_reset():
    out = evaluate(ecc(enabled=False, pending=False))
    assert problems(out) == [("RESET", "ECC is disabled")]
    assert out[0].remediation == "enable ECC (nvidia-smi -i 0 -e 1) and reset the GPU"


def test_ecc_disabled_with_enable_pending_is_reset_and_monitor():
    out = evaluate(ecc(enabled=False, pending=True))
    assert sorted(problems(out)) == [("MONITOR", "ECC mode change pending until the next reset"),
                                     ("RESET", "ECC is disabled")]


@pytest.mark.parametrize("profile", [NO_ECC, GENERIC, None])
def test_ecc_disabled_without_the_expectation_passes(profile):
    out = evaluate(ecc(enabled=False, pending=False), profile=profile)
    assert problems(out) == [] and out[0].message == "ECC off; profile does not require it"


def test_ecc_disable_pending_is_monitor():
    assert problems(evaluate(ecc(pending=False))) == [("MONITOR", "ECC mode change pending until the next reset")]


def test_ecc_not_supported_is_skip():
    [out] = evaluate({"enabled": None, "pending": None, "volatile": {}, "aggregate": {}})
    assert out.severity.value == "SKIP"


# -- uncorrectable errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("count, expected", [(0, []), (1, ["RESET"]), (2, ["RESET"])])
def test_volatile_uncorrectable_is_reset(count, expected):
    out = evaluate(ecc(volatile={"uncorrected": count}))
    assert [s for s, _ in problems(out)] == expected
    if count:
        assert out[0].message == "%d uncorrectable ECC errors since the last reset" % count
        assert out[0].metrics["volatile_uncorrected"] == count


@pytest.mark.parametrize("count, expected", [(0, []), (4, []), (5, ["ISOLATE"]), (40, ["ISOLATE"])])
def test_aggregate_sram_uncorrectable_limit_is_isolate(count, expected):
    out = evaluate(ecc(aggregate={"uncorrected": count, "uncorrected_sram": count}))
    assert [s for s, _ in problems(out)] == expected
    if expected:
        assert out[0].message == "%d uncorrectable SRAM ECC errors over the GPU's life (limit 4)" % count
        assert "RMA" in out[0].remediation


def test_sram_limit_is_configurable():
    out = evaluate(ecc(aggregate={"uncorrected_sram": 2}), thresholds={"ecc_sram_uncorrected": 1})
    assert [s for s, _ in problems(out)] == ["ISOLATE"]


def test_sram_below_the_limit_passes_and_says_so():
    [out] = evaluate(ecc(aggregate={"uncorrected": 3, "uncorrected_sram": 3}))
    assert out.severity.value == "PASS"
    assert out.message == "ECC on, 3 uncorrectable errors over the GPU's life, within limits"


@pytest.mark.parametrize("count, expected", [(0, []), (1, ["MONITOR"]), (64, ["MONITOR"]), (65, ["ISOLATE"]),
                                             (500, ["ISOLATE"])])
def test_aggregate_dram_uncorrectable_monitor_then_isolate(count, expected):
    out = evaluate(ecc(aggregate={"uncorrected": count, "uncorrected_dram": count}))
    assert [s for s, _ in problems(out)] == expected
    if expected:
        assert "%d uncorrectable DRAM ECC error" % count in out[0].message and "(limit 64)" in out[0].message
        assert out[0].metrics["aggregate_uncorrected_dram"] == count


def test_dram_limit_is_configurable():
    out = evaluate(ecc(aggregate={"uncorrected_dram": 9}), thresholds={"ecc_dram_uncorrected": 8})
    assert [s for s, _ in problems(out)] == ["ISOLATE"]
    out = evaluate(ecc(aggregate={"uncorrected_dram": 8}), thresholds={"ecc_dram_uncorrected": 8})
    assert [s for s, _ in problems(out)] == ["MONITOR"]


def test_dram_threshold_is_validated_in_config():
    with pytest.raises(Exception, match="thresholds.ecc_dram_uncorrected"):
        C.validate({"thresholds": {"ecc_dram_uncorrected": "many"}}, "cfg")


def test_fresh_dram_error_is_reset_for_the_volatile_count_and_monitor_for_the_lifetime_one():
    out = evaluate(ecc(volatile={"uncorrected": 1}, aggregate={"uncorrected": 1, "uncorrected_dram": 1}))
    assert sorted(s for s, _ in problems(out)) == ["MONITOR", "RESET"]


def test_missing_location_counters_are_not_errors():
    # drivers or GPUs without per-location counters report None
    out = evaluate(ecc(aggregate={"uncorrected_sram": None, "uncorrected_dram": None}))
    assert problems(out) == [] and "aggregate_uncorrected_dram" not in out[0].metrics


# -- corrected errors: the trend --------------------------------------------------------------------

def test_corrected_growth_is_a_metric_without_a_finding_below_the_limit():
    [out] = evaluate(ecc(aggregate={"corrected": 1012}), previous={"GPU-0": 12})
    assert out.severity.value == "PASS" and out.metrics["corrected_growth"] == 1000


def test_corrected_growth_beyond_the_limit_is_monitor():
    out = evaluate(ecc(aggregate={"corrected": 1013}), previous={"GPU-0": 12})
    assert problems(out) == [("MONITOR", "1001 corrected ECC errors since the last run")]
    assert out[0].metrics["corrected_growth"] == 1001


def test_no_previous_run_no_growth():
    [out] = evaluate(ecc(aggregate={"corrected": 5000}))
    assert out.severity.value == "PASS" and "corrected_growth" not in out.metrics


def test_previous_value_of_another_board_is_not_used():
    [out] = evaluate(ecc(aggregate={"corrected": 5000}), previous={"GPU-other": 0})
    assert "corrected_growth" not in out.metrics


def test_counter_that_went_down_counts_from_zero():
    [out] = evaluate(ecc(aggregate={"corrected": 7}), previous={"GPU-0": 9000})
    assert out.severity.value == "PASS" and out.metrics["corrected_growth"] == 7


def test_growth_metric_is_kept_on_a_gpu_with_ecc_disabled():
    out = evaluate(ecc(enabled=False, pending=False, aggregate={"corrected": 20}), previous={"GPU-0": 12})
    assert out[0].severity.value == "RESET" and out[0].metrics["corrected_growth"] == 8


# -- scenarios through the runner ------------------------------------------------------------------

def write(tmp_path, text, name="node.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def ecc_findings(report):
    return [(f.where(), f.severity.value) for f in report.findings if f.check == "ecc" and f.severity.value != "PASS"]


def test_healthy_node_passes_and_keeps_state(run_scenario):
    report = run_scenario("h100-healthy", checks=CHECKS)
    found = [f for f in report.findings if f.check == "ecc"]
    assert len(found) == 8 and all(f.severity.value == "PASS" for f in found) and report.overall.value == "PASS"


def test_bundled_xid48_scenario(run_scenario):
    # 2 uncorrectable since reset -> RESET; the same 2 over the GPU's life in DRAM -> MONITOR
    report = run_scenario("h100-xid48-ecc", checks=CHECKS)
    assert sorted(ecc_findings(report)) == [("GPU5", "MONITOR"), ("GPU5", "RESET")]
    assert report.overall.value == "RESET"


def test_ecc_disabled_on_a_dgx_node_is_reset(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n  1:\n    ecc: {enabled: false, pending: false}\n")
    report = run_scenario(path, checks=CHECKS)
    assert report.profile == "dgx-h100" and ecc_findings(report) == [("GPU1", "RESET")]
    assert report.overall.value == "RESET"


def test_sram_errors_beyond_the_limit_isolate_the_gpu(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n"
                           "  3:\n    ecc: {aggregate: {uncorrected: 6, uncorrected_sram: 6}}\n"
                           "  4:\n    ecc: {aggregate: {uncorrected: 4, uncorrected_sram: 4}}\n")
    report = run_scenario(path, checks=CHECKS)
    assert ecc_findings(report) == [("GPU3", "ISOLATE")] and report.overall.value == "ISOLATE"


def test_dram_errors_beyond_the_limit_isolate_the_gpu(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n"
                           "  0:\n    ecc: {aggregate: {uncorrected: 3, uncorrected_dram: 3}}\n"
                           "  6:\n    ecc: {aggregate: {uncorrected: 80, uncorrected_dram: 80}}\n")
    report = run_scenario(path, checks=CHECKS)
    assert ecc_findings(report) == [("GPU0", "MONITOR"), ("GPU6", "ISOLATE")]
    assert report.overall.value == "ISOLATE"


def test_corrected_growth_across_two_runs(run_scenario, tmp_path):
    # the same node and scenario file run twice; GPU 2's corrected count climbs between the runs
    path = write(tmp_path, "extends: h100-healthy\n")
    first = run_scenario(path, checks=CHECKS)
    assert all("corrected_growth" not in f.metrics for f in first.findings if f.check == "ecc")
    write(tmp_path, "extends: h100-healthy\ngpus:\n  2:\n    ecc: {aggregate: {corrected: 5012}}\n"
                    "  3:\n    ecc: {aggregate: {corrected: 112}}\n")
    second = run_scenario(path, checks=CHECKS)
    by_gpu = {f.gpu.index: f for f in second.findings if f.check == "ecc"}
    assert ecc_findings(second) == [("GPU2", "MONITOR")] and second.overall.value == "MONITOR"
    assert by_gpu[2].metrics["corrected_growth"] == 5000 and "5000 corrected" in by_gpu[2].message
    assert by_gpu[3].severity.value == "PASS" and by_gpu[3].metrics["corrected_growth"] == 100
    assert by_gpu[0].metrics["corrected_growth"] == 0


# -- lifetime uncorrectable errors ignored where NVML has no per-location counters ------------------
# An operator situation in which the lightweight checks let a bad GPU through (found by a review):
# lifetime ECC totals without per-location counts.


def _bad(findings, at_least="RESET"):
    order = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]
    return [(f.check, f.severity.value, f.message) for f in findings
            if f.severity.value in order and order.index(f.severity.value) >= order.index(at_least)]


def test_aggregate_uncorrectable_count_without_location_counters_is_not_within_limits():
    """NVML answers N/A for the per-location aggregate counters (they need InfoROM ECC 2.0;
    nvmlDeviceGetTotalEccErrors only needs 1.0) but gives the total: 500 uncorrectable errors over
    the GPU's life. gpuhc must apply the DRAM limit to the total, not call it 'within limits'."""
    value = {"enabled": True, "pending": True,
             "volatile": {"corrected": 0, "uncorrected": 0},
             "aggregate": {"corrected": 40000, "uncorrected": 500,
                           "uncorrected_sram": None, "uncorrected_dram": None}}
    out = E.evaluate({"gpus": [Entry(GpuRef(0, "GPU-0"), value)], "previous": {}}, None, C.defaults())
    assert [f.severity.value for f in out] != ["PASS"], [(f.severity.value, f.message) for f in out]
    assert _bad(out, "ISOLATE")
    # a few: recorded (MONITOR), not drained, as for DRAM errors
    value["aggregate"]["uncorrected"] = 3
    out = E.evaluate({"gpus": [Entry(GpuRef(0, "GPU-0"), value)], "previous": {}}, None, C.defaults())
    assert [(f.severity.value, f.message) for f in out] == [
        ("MONITOR", "3 uncorrectable ECC error(s) over the GPU's life (limit 64)")]
