"""memory_remap: on Ampere and later, row remapping (pending -> RESET, failure or a bank with no
spare rows left -> ISOLATE, banks low on spare rows -> MONITOR); on earlier GPUs, page retirement
(pending -> RESET, the 64-entry retirement table nearly full -> ISOLATE).
Pure evaluate on fixtures, then scenarios through the runner, including a pre-Ampere node."""
import pytest

from gpuhc import config as C
from gpuhc.checks import memory_remap as M
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

CHECKS = ["memory_remap"]
# what the NVML backend returns on each generation
AMPERE_ROWS = {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False, "banks_low": 0, "banks_none": 0}
AMPERE_PAGES = {"single_bit": None, "double_bit": None, "pending": None}
VOLTA_ROWS = {"correctable": None, "uncorrectable": None, "pending": None, "failure": None}   # NOT_SUPPORTED
VOLTA_PAGES = {"single_bit": 0, "double_bit": 0, "pending": False}


def ampere(**rows):
    return {"rows": dict(AMPERE_ROWS, **rows), "pages": dict(AMPERE_PAGES)}


def volta(**pages):
    return {"rows": dict(VOLTA_ROWS), "pages": dict(VOLTA_PAGES, **pages)}


def evaluate(*values, thresholds=None):
    entries = [Entry(GpuRef(i, "GPU-%d" % i), v) for i, v in enumerate(values)]
    return M.evaluate({"gpus": entries}, None, C.validate({"thresholds": thresholds} if thresholds else {}))


def sev(findings):
    return [f.severity.value for f in findings]


# -- Ampere and later: row remapping -----------------------------------------------------------------

def test_healthy_ampere_gpu_passes_with_metrics():
    [out] = evaluate(ampere(correctable=2))
    assert out.severity.value == "PASS"
    assert out.metrics == {"remapped_rows_correctable": 2, "remapped_rows_uncorrectable": 0,
                           "remap_banks_low": 0, "remap_banks_none": 0}


def test_pending_remap_is_reset():
    [out] = evaluate(ampere(uncorrectable=1, pending=True))
    assert (out.severity.value, out.message) == ("RESET", "row remapping pending (1 uncorrectable rows)")


def test_remap_failure_is_isolate_and_outranks_pending():
    assert sev(evaluate(ampere(failure=True, uncorrectable=9, banks_none=1, pending=True))) == ["ISOLATE"]
    [out] = evaluate(ampere(failure=True))
    assert "row remapping failed" in out.message and "RMA" in out.remediation


def test_bank_with_no_spare_rows_left_is_isolate_without_the_failure_flag():
    # eight uncorrectable rows remapped in one bank: the next error there cannot be remapped
    [out] = evaluate(ampere(uncorrectable=8, banks_none=1))
    assert out.severity.value == "ISOLATE"
    assert out.message.startswith("1 memory bank(s) have no spare rows left")
    assert out.metrics["remap_banks_none"] == 1


def test_banks_low_on_spare_rows_is_monitor():
    [out] = evaluate(ampere(uncorrectable=3, banks_low=2))
    assert (out.severity.value, out.message) == ("MONITOR", "2 memory bank(s) are low on spare rows")


def test_banks_low_beside_a_pending_remap_is_the_reset_only():
    assert sev(evaluate(ampere(pending=True, banks_low=1))) == ["RESET"]


def test_ampere_ignores_page_retirement_fields():
    # row remapping replaces page retirement; stale retirement data must not add a finding
    value = ampere()
    value["pages"] = {"single_bit": 64, "double_bit": 0, "pending": True}
    assert sev(evaluate(value)) == ["PASS"]


# -- before Ampere: page retirement ------------------------------------------------------------------

def test_healthy_pre_ampere_gpu_passes():
    [out] = evaluate(volta(single_bit=3, double_bit=1))
    assert out.severity.value == "PASS"
    assert out.metrics == {"retired_pages_sbe": 3, "retired_pages_dbe": 1}


def test_retirement_pending_is_reset():
    [out] = evaluate(volta(double_bit=1, pending=True))
    assert (out.severity.value, out.message) == ("RESET", "page retirement pending")
    assert "reset" in out.remediation


@pytest.mark.parametrize("sbe, dbe, expected", [
    (59, 0, "PASS"),
    (60, 0, "ISOLATE"),      # the limit: 60 of the table's 64 entries
    (30, 30, "ISOLATE"),     # single- and double-bit retirements count together
    (0, 64, "ISOLATE"),      # table full
    (40, 19, "PASS"),
])
def test_retirement_table_nearly_full_is_isolate(sbe, dbe, expected):
    out = evaluate(volta(single_bit=sbe, double_bit=dbe))
    assert sev(out) == [expected]
    if expected == "ISOLATE":
        assert out[0].message == "%d retired pages: the retirement table is nearly full" % (sbe + dbe)


def test_full_table_with_a_pending_retirement_is_isolate_only():
    assert sev(evaluate(volta(single_bit=62, pending=True))) == ["ISOLATE"]


def test_retired_pages_limit_is_configurable():
    assert sev(evaluate(volta(double_bit=10), thresholds={"retired_pages": 10})) == ["ISOLATE"]
    assert sev(evaluate(volta(double_bit=9), thresholds={"retired_pages": 10})) == ["PASS"]


def test_gpu_without_either_mechanism_is_skipped_not_passed():
    """Nothing readable (a GPU with neither mechanism, or an A100/H100 with MIG instances active,
    where NVML does not answer remapped rows): not a pass, nothing to drain either."""
    out = evaluate({"rows": dict(VOLTA_ROWS), "pages": {"single_bit": None, "double_bit": None, "pending": None}})
    assert sev(out) == ["SKIP"] and "not readable" in out[0].message


# -- scenarios through the runner ------------------------------------------------------------------

def write(tmp_path, text, name="node.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def remap(report):
    return [(f.where(), f.severity.value) for f in report.findings
            if f.check == "memory_remap" and f.severity.value != "PASS"]


# a DGX-1 with 8 V100s: NVML answers NOT_SUPPORTED for row remapping, and reports retired pages
DGX1 = """\
description: 8x V100 SXM2 (pre-Ampere, page retirement)
node: {driver_version: "535.216.01"}
gpu_count: 8
gpu:
  identity: {name: Tesla V100-SXM2-32GB, architecture: volta}
  ecc:
    enabled: true
    pending: true
    volatile: {corrected: 0, uncorrected: 0}
    aggregate: {corrected: 0, uncorrected: 0, uncorrected_sram: null, uncorrected_dram: null}
  retired_pages: {single_bit: 0, double_bit: 0, pending: false}
  remapped_rows: {correctable: null, uncorrectable: null, pending: null, failure: null}
"""


def test_healthy_pre_ampere_node_passes(run_scenario, tmp_path):
    report = run_scenario(write(tmp_path, DGX1), checks=CHECKS)
    found = [f for f in report.findings if f.check == "memory_remap"]
    assert len(found) == 8 and all(f.severity.value == "PASS" for f in found)
    assert found[0].metrics == {"retired_pages_sbe": 0, "retired_pages_dbe": 0}
    assert report.overall.value == "PASS"


def test_pre_ampere_node_pending_and_full_table(run_scenario, tmp_path):
    text = DGX1 + ("gpus:\n"
                   "  2:\n    retired_pages: {double_bit: 1, pending: true}\n"
                   "  5:\n    retired_pages: {single_bit: 48, double_bit: 13}\n"
                   "  6:\n    retired_pages: {single_bit: 20, double_bit: 2}\n")
    report = run_scenario(write(tmp_path, text), checks=CHECKS)
    assert remap(report) == [("GPU2", "RESET"), ("GPU5", "ISOLATE")] and report.overall.value == "ISOLATE"


def test_healthy_ampere_and_hopper_nodes_pass(run_scenario):
    for name in ("h100-healthy", "a100-healthy"):
        report = run_scenario(name, checks=CHECKS)
        assert remap(report) == [] and report.overall.value == "PASS", name


def test_bank_without_spare_rows_on_an_h100_node(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n"
                           "  4:\n    remapped_rows: {uncorrectable: 8, banks_none: 1, banks_low: 1}\n"
                           "  7:\n    remapped_rows: {uncorrectable: 5, banks_low: 1}\n")
    report = run_scenario(path, checks=CHECKS)
    assert remap(report) == [("GPU4", "ISOLATE"), ("GPU7", "MONITOR")] and report.overall.value == "ISOLATE"


def test_bundled_remap_scenarios(run_scenario):
    assert remap(run_scenario("h100-row-remap-pending", checks=CHECKS)) == [("GPU2", "RESET")]
    assert remap(run_scenario("h100-row-remap-failure", checks=CHECKS)) == [("GPU6", "ISOLATE")]
