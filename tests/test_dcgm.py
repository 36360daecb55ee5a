"""dcgm: dcgmi diag JSON of DCGM 2.x, 3.x and 4.x into per-GPU findings; a diag that cannot run is ERROR."""
import json
import os

import pytest

from gpuhc import config as C
from gpuhc import dcgm as D
from gpuhc.backends.host import CommandResult, Host
from gpuhc.checks import dcgm as check
from gpuhc.checks.base import Context, Inventory
from gpuhc.model import GpuRef

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dcgm")
GPUS = [GpuRef(i, "GPU-%08d-0000-0000-0000-000000000000" % i, "0000:%02x:00.0" % (0x18 + i)) for i in range(8)]
DCGM = ["dcgm"]


def fixture(name):
    with open(os.path.join(DATA, name)) as fh:
        return fh.read()


def evaluate(stdout, level=2, rc=0, overrides=None, **data):
    cfg = C.validate({"dcgm": {"overrides": overrides or {}}})
    base = {"level": level, "gpus": GPUS, "required": False, "timeout": 900.0,
            "discovery": {"rc": 0, "stdout": "8 GPUs found.\n", "stderr": "", "timed_out": False},
            "diag": {"rc": rc, "stdout": stdout, "stderr": "", "timed_out": False}}
    base.update(data)
    return check.evaluate(base, None, cfg)


def run_text(run_scenario, tmp_path, text, **over):
    """A scenario written from text, run with the dcgm check: the report and its dcgm findings."""
    (tmp_path / "node.yaml").write_text(text)
    report = run_scenario(str(tmp_path / "node.yaml"), checks=DCGM, **over)
    return report, [f for f in report.findings if f.check == "dcgm"]


def verdicts(findings):
    """{(severity, GPU index or device)} of the findings that are not PASS."""
    return sorted((f.severity.value, f.gpu.index if f.gpu else f.device) for f in findings if f.severity.value != "PASS")


# -- the parser on every fixture -------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,version,results", [
    ("dcgm2-r2-pass.json", "2.x", None, 9 + 8 + 8),
    ("dcgm2-r2-fail-memory.json", "2.x", None, 9 + 8 + 8),
    ("dcgm3-r3-pass.json", "3.x", "3.3.5", 9 + 6 * 8),
    ("dcgm3-r3-fail.json", "3.x", "3.3.5", 9 + 6 * 8),
    ("dcgm4-r3-pass.json", "4.x", "4.2.3", 7 * 8),
    ("dcgm4-r2-fail.json", "4.x", "4.2.3", 3 * 8),
    ("dcgm4-gb10-r1-persistence.json", "4.x", "4.2.3", 1),
])
def test_every_fixture_parses(name, shape, version, results):
    diag = D.parse(fixture(name))
    assert (diag.shape, diag.version, len(diag.results)) == (shape, version, results)
    assert diag.runtime_error is None
    assert all(r.status in D.STATUSES for r in diag.results)


def test_parser_details_per_version():
    v2 = D.parse(fixture("dcgm2-r2-fail-memory.json"))
    mem = [r for r in v2.results if r.test == "GPU Memory" and r.status == "FAIL"]
    assert len(mem) == 1 and mem[0].gpus == [2] and mem[0].warnings[0].severity is None
    assert mem[0].warnings[0].text.startswith("Found 4 faulty memory elements on GPU 2")
    assert all(r.gpus is None for r in v2.results if r.category == "Deployment")      # software: node-wide
    v3 = D.parse(fixture("dcgm3-r3-fail.json"))
    remap = [r for r in v3.results if r.test == "Page Retirement/Row Remap"][0]
    assert remap.gpus == [2] and (remap.warnings[0].error_id, remap.warnings[0].severity) == (85, 6)
    assert "row remappings are pending" in remap.warnings[0].text          # 3.x keeps it under "warnings"
    v4 = D.parse(fixture("dcgm4-gb10-r1-persistence.json"))
    assert v4.driver == "580.82.09" and v4.results[0].gpus == [0] and v4.results[0].warnings[0].category == 8


def test_parser_tolerates_banners_gpu_id_lists_and_other_entities():
    text = "Successfully ran diagnostic for group.\n" + json.dumps({"DCGM GPU Diagnostic": {"test_categories": [
        {"category": "Deployment", "tests": [{"name": "Blacklist", "results": [{"gpu_ids": "0,1,2,3", "status": "PASS"}]}]},
        {"category": "Hardware", "tests": [{"name": "CPU EUD Test", "results": [{"cpu_id": "0", "status": "Fail"}]}]}]}})
    diag = D.parse(text)
    assert diag.results[0].gpus == [0, 1, 2, 3] and diag.results[0].status == "PASS"
    assert diag.results[1].entity == "CPU 0" and diag.results[1].gpus is None


@pytest.mark.parametrize("text", ["", "Error: unable to establish a connection to the specified host: localhost",
                                  "[1, 2]", '{"something": "else"}', "{not json"])
def test_parser_refuses_what_is_not_a_diagnostic(text):
    with pytest.raises(D.DiagParseError):
        D.parse(text)


# -- evaluate on the fixtures: pass and fail, two major versions and more --------------------------

@pytest.mark.parametrize("name,level", [("dcgm2-r2-pass.json", 2), ("dcgm3-r3-pass.json", 3), ("dcgm4-r3-pass.json", 3)])
def test_passing_diag_gives_a_pass_per_gpu(name, level):
    out = evaluate(fixture(name), level=level)
    assert verdicts(out) == []
    per_gpu = {f.gpu.index: f for f in out if f.gpu is not None}
    assert sorted(per_gpu) == list(range(8)) and per_gpu[3].gpu == GPUS[3]          # mapped to the inventory's GpuRef
    assert "level %d" % level in per_gpu[3].message and per_gpu[3].metrics["tests_passed"] >= 2


def test_dcgm2_failure_without_a_level_is_reset():
    out = evaluate(fixture("dcgm2-r2-fail-memory.json"), rc=226)
    assert verdicts(out) == [("RESET", 2)]
    bad = [f for f in out if f.severity.value == "RESET"][0]
    assert bad.gpu == GPUS[2] and bad.message.startswith("GPU Memory failed: Found 4 faulty memory elements")
    assert "dcgm_severity" not in bad.metrics and "reset the GPU" in bad.remediation


def test_dcgm3_failures_follow_dcgm_severity():
    out = evaluate(fixture("dcgm3-r3-fail.json"), level=3, rc=205)
    assert verdicts(out) == [("ISOLATE", 2), ("RESET", 2), ("RESET", 6)]
    isolate = [f for f in out if f.severity.value == "ISOLATE"][0]
    assert isolate.metrics == {"level": 3, "error_id": 52, "dcgm_severity": 2} and "replaced" in isolate.remediation
    assert any("Targeted Power failed" in f.message for f in out if f.gpu and f.gpu.index == 6)


def test_dcgm4_fail_and_warn():
    out = evaluate(fixture("dcgm4-r2-fail.json"), rc=205)
    assert verdicts(out) == [("ISOLATE", 2), ("MONITOR", 5)]
    warn = [f for f in out if f.severity.value == "MONITOR"][0]
    assert warn.message.startswith("pcie warn: GPU 5 host-side PCIe replay violation") and warn.metrics["error_id"] == 98


def test_real_dcgm4_capture_persistence_is_config_and_overridable():
    out = evaluate(fixture("dcgm4-gb10-r1-persistence.json"), level=1, rc=226)
    assert verdicts(out) == [("MONITOR", 0)] and "Persistence mode for GPU 0 is disabled" in out[0].message
    out = evaluate(fixture("dcgm4-gb10-r1-persistence.json"), level=1, overrides={29: "RESET"})
    assert verdicts(out) == [("RESET", 0)]


def one_result(status, severity=None, error_id=None):
    warning = {"warning": "GPU 1 trouble"}
    if severity is not None:
        warning["error_severity"] = severity
    if error_id is not None:
        warning["error_id"] = error_id
    row = {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 1, "status": status, "warnings": [warning]}
    return json.dumps({"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [
        {"name": "memory", "results": [row], "test_summary": {"status": status}}]}]}, "metadata": {"version": "4.1.1"}})


@pytest.mark.parametrize("status,severity,expected", [
    ("Fail", 2, "ISOLATE"),    # DCGM_ERROR_ISOLATE
    ("Fail", 6, "RESET"),      # DCGM_ERROR_RESET
    ("Fail", 4, "RESET"),      # DCGM_ERROR_TRIAGE
    ("Fail", 3, "RESET"),      # DCGM_ERROR_UNKNOWN
    ("Fail", 1, "MONITOR"),    # DCGM_ERROR_MONITOR
    ("Fail", 5, "MONITOR"),    # DCGM_ERROR_CONFIG
    ("Fail", None, "RESET"),   # no level in the JSON
    ("Fail", 99, "RESET"),     # a severity DCGM did not have when this was written
    ("Warn", None, "MONITOR"),
    ("Skip", None, "SKIP"),
    ("Pass", None, "PASS"),
])
def test_level_mapping(status, severity, expected):
    out = [f for f in evaluate(one_result(status, severity)) if f.gpu and f.gpu.index == 1]
    assert [f.severity.value for f in out] == [expected]


def test_worst_warning_decides_and_override_by_error_id():
    text = json.dumps({"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [{"name": "memory", "results": [
        {"entity_group": "GPU", "entity_id": 4, "status": "Fail", "warnings": [
            {"warning": "a", "error_id": 5, "error_severity": 1}, {"warning": "b", "error_id": 80, "error_severity": 2}]}]}]}]}})
    assert verdicts(evaluate(text)) == [("ISOLATE", 4)]
    assert verdicts(evaluate(text, overrides={"80": "MONITOR"})) == [("MONITOR", 4)]


# -- a diag that cannot run is ERROR, never a node fault ------------------------------------------

def test_invalid_or_runtime_error_output_is_error():
    out = evaluate("Error: Unable to complete diagnostic for group 0. Return: (-30) The NVVS returned an error.", rc=226)
    assert verdicts(out) == [("ERROR", "dcgm")] and "gave no diagnostic (rc 226" in out[0].message
    err = json.dumps({"DCGM GPU Diagnostic": {"runtime_error": "Error: Diagnostic could not be run while DCGM is paused."}})
    out = evaluate(err, rc=1)
    assert verdicts(out) == [("ERROR", "dcgm")] and "while DCGM is paused" in out[0].message
    out = evaluate(json.dumps({"DCGM Diagnostic": {"test_categories": []}}))
    assert verdicts(out) == [("ERROR", "dcgm")] and "no test results" in out[0].message


def test_dcgmi_missing_is_skip_unless_required(run_scenario):
    report = run_scenario("h100-healthy", checks=DCGM)
    dcgm = [f for f in report.findings if f.check == "dcgm"]
    assert [(f.severity.value, f.message) for f in dcgm] == [("SKIP", "DCGM not installed (dcgmi not found)")]
    report = run_scenario("h100-healthy", checks=DCGM, dcgm={"required": True})
    assert [f.severity.value for f in report.findings if f.check == "dcgm"] == ["ERROR"] and report.overall.value == "ERROR"


def test_dcgmi_timeout_is_error(run_scenario, tmp_path):
    report, dcgm = run_text(run_scenario, tmp_path, 'extends: h100-dcgm-fail\ncommands:\n  "dcgmi diag -r * -j": {hang: 30}\n',
                            dcgm={"timeout": 0.2})
    assert [f.severity.value for f in dcgm] == ["ERROR"] and "did not finish within 0.2s" in dcgm[0].message
    assert report.overall.value == "ERROR"


def test_unreachable_host_engine_is_error(run_scenario, tmp_path):
    _, dcgm = run_text(run_scenario, tmp_path, 'extends: h100-dcgm-fail\ncommands:\n'
                       '  "dcgmi discovery -l": {rc: 237, stdout: "Error: unable to establish a connection to the specified host: localhost\\n"}\n'
                       '  "nv-hostengine": {rc: 1, stderr: "Err: Failed to start DCGM Server: -7\\n"}\n')
    assert [f.severity.value for f in dcgm] == ["ERROR"]
    assert "cannot reach the DCGM host engine: Error: unable to establish" in dcgm[0].message
    assert "nv-hostengine start: rc 1" in dcgm[0].message


class ScriptedHost(Host):
    """Answers commands from a list of (argv, result) in order, recording what ran."""
    kind = "sim"

    def __init__(self, answers):
        self.answers, self.ran = list(answers), []

    def run(self, argv, timeout):
        self.ran.append((" ".join(argv), timeout))
        expected, result = self.answers.pop(0)
        assert " ".join(argv) == expected
        return result

    def read_text(self, path):          # the dcgm check reads no file, lists no directory, no log
        raise AssertionError("dcgm read %s" % path)

    def listdir(self, path):
        raise AssertionError("dcgm listed %s" % path)

    def kernel_log_since(self, cursor):
        raise AssertionError("dcgm read the kernel log")


class ModesGpu:
    def __init__(self, mig_on=()):
        self.mig_on = set(mig_on)

    def modes(self, i):
        return {"mig_current": i in self.mig_on}


def context(host, context_name="check", mig_on=(), **dcgm):
    cfg = C.validate({"dcgm": dcgm} if dcgm else {})
    return Context(node="n1", context=context_name, gpu=ModesGpu(mig_on), host=host, config=cfg,
                   inventory=Inventory(gpus=list(GPUS)))


def test_gather_starts_the_host_engine_when_discovery_cannot_connect():
    down = CommandResult(237, "Error: unable to establish a connection to the specified host: localhost\n")
    host = ScriptedHost([("dcgmi discovery -l", down), ("nv-hostengine", CommandResult(0, "Started host engine version 4.2.3\n")),
                         ("dcgmi discovery -l", CommandResult(0, "8 GPUs found.\n")),
                         ("dcgmi diag -r 2 -j", CommandResult(0, fixture("dcgm4-r3-pass.json")))])
    data = check.gather(context(host, level=2, timeout=600))
    assert [cmd for cmd, _ in host.ran][1] == "nv-hostengine" and host.ran[-1] == ("dcgmi diag -r 2 -j", 600.0)
    assert verdicts(check.evaluate(data, None, C.defaults())) == []


def test_gather_does_not_start_the_host_engine_when_told_not_to():
    host = ScriptedHost([("dcgmi discovery -l", CommandResult(237, "Error: unable to establish a connection\n"))])
    data = check.gather(context(host, start_hostengine=False))
    assert len(host.ran) == 1 and "hostengine" not in data
    assert verdicts(check.evaluate(data, None, C.defaults())) == [("ERROR", "dcgm")]


@pytest.mark.parametrize("context_name,conf,mig_on,refused", [
    ("prolog", {"level": 3}, (), "needs the node exclusive and this is a prolog run"),
    ("check", {"level": 4}, (), "needs the node exclusive and this is a check run"),
    ("quarantine", {}, (), None),                             # levels: {quarantine: 3} by default
    ("sweep", {"level": 3}, (), None),
    ("check", {"level": 3, "exclusive": True}, (), None),     # the operator says the node is exclusive
    ("quarantine", {}, (5,), "cannot run with MIG enabled (GPU 5)"),
    ("prolog", {"level": 2}, (), None),
])
def test_levels_3_and_4_only_on_an_exclusive_node_without_mig(context_name, conf, mig_on, refused):
    level = check.level_for(C.validate({"dcgm": conf})["dcgm"], context_name)
    answers = [("dcgmi discovery -l", CommandResult(0, "8 GPUs found.\n")),
               ("dcgmi diag -r %d -j" % level, CommandResult(0, fixture("dcgm4-r3-pass.json")))]
    host = ScriptedHost([] if refused else answers)
    data = check.gather(context(host, context_name, mig_on, **conf))
    out = check.evaluate(data, None, C.defaults())
    if refused:
        assert host.ran == [] and verdicts(out) == [("ERROR", "dcgm")]      # nothing ran at all
        assert refused in out[0].message and "lower dcgm.level" in out[0].remediation and ("MIG" in refused) == ("mig 0" in out[0].remediation)
    else:
        assert verdicts(out) == []


def test_l3_refused_in_prolog_through_the_runner(run_scenario):
    report = run_scenario("h100-dcgm-fail", context="prolog", checks=DCGM, dcgm={"level": 3})
    dcgm = [f for f in report.findings if f.check == "dcgm"]
    assert [f.severity.value for f in dcgm] == ["ERROR"] and "dcgmi diag -r 3 refused" in dcgm[0].message


def test_bad_level_is_error():
    out = check.evaluate({"level": 7, "gpus": GPUS, "required": False, "timeout": 1.0}, None, C.defaults())
    assert verdicts(out) == [("ERROR", "dcgm")] and "not a DCGM run level" in out[0].message


# -- the scenario and the suites -------------------------------------------------------------------

def test_dcgm_fail_scenario_isolates_gpu2(run_scenario):
    report = run_scenario("h100-dcgm-fail", checks=DCGM)
    bad = [f for f in report.findings if f.check == "dcgm" and f.severity.value != "PASS"]
    assert [(f.severity.value, f.gpu.index, f.gpu.pci_bus_id) for f in bad] == [("ISOLATE", 2, "0000:3a:00.0")]
    assert "memory failed: A memory mismatch was detected on GPU 2" in bad[0].message
    assert report.overall.value == "ISOLATE"
    # the dcgm suite in quarantine runs level 3 on the same node
    report = run_scenario("h100-dcgm-fail", context="quarantine", suite="dcgm")
    assert report.overall.value == "ISOLATE" and any("level 3" in f.message for f in report.findings if f.check == "dcgm")


def test_dcgm_stays_out_of_the_quick_suites_and_gets_its_time():
    cfg = C.defaults()
    for suite in ("prolog", "epilog", "healthcheck", "lightweight"):
        assert "dcgm" not in cfg["suites"][suite]
    assert "dcgm" in cfg["suites"]["intensive"] and cfg["suites"]["dcgm"] == ["dcgm"]
    assert C.check_timeout(cfg, "dcgm") == 900.0 + C.COMMAND_MARGIN
    assert C.check_timeout(C.validate({"timeouts": {"checks": {"dcgm": 30}}}), "dcgm") == 30.0
    assert C.check_timeout(cfg, "ecc") == cfg["timeouts"]["check"]


def test_dcgm_config_is_validated(tmp_path):
    from gpuhc.errors import ConfigError
    with pytest.raises(ConfigError, match="dcgm.overrides.29: unknown tier .PANIC. \\(one of: MONITOR"):
        C.validate({"dcgm": {"overrides": {29: "PANIC"}}}, "c")
    with pytest.raises(ConfigError, match="dcgm: unknown key .levl."):
        C.validate({"dcgm": {"levl": 3}}, "c")


# == A trap a fleet operator hit (found by a review) ================================================

# -- DCGM 4: a test that failed only in its summary -------------------------------------------

def test_dcgm4_failure_reported_only_in_test_summary_is_not_a_pass():
    """DCGM 4 writes an error that belongs to no GPU (entity NONE: the plugin could not run its
    test, a system-level fault) only in the test's `test_summary`, while every per-GPU result of
    that test says Pass. gpuhc read the summary only when a test had no per-GPU results, so the
    failed diagnostic came out as "tests passed" on every GPU."""
    doc = {"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [{
        "name": "memory",
        "results": [{"entity_group": "GPU", "entity_group_id": 1, "entity_id": i, "status": "Pass"} for i in range(8)],
        "test_summary": {"status": "Fail", "warnings": [{
            "warning": "Unable to create a CUDA context: CUDA_ERROR_OUT_OF_MEMORY", "error_id": 21,
            "error_category": 6, "error_severity": 4}]}}]}]},
        "metadata": {"version": "4.2.3", "Driver Version Detected": "570.148.08"}}
    out = evaluate(json.dumps(doc), rc=226)
    assert verdicts(out) == [("RESET", "dcgm")]
    bad = [f for f in out if f.severity.value == "RESET"][0]
    assert bad.message.startswith("memory failed: Unable to create a CUDA context") and bad.metrics["error_id"] == 21
    # a summary that only repeats a GPU's failure adds nothing of its own
    doc["DCGM Diagnostic"]["test_categories"][0]["tests"][0]["results"][3].update(
        status="Fail", warnings=[{"warning": "A memory mismatch was detected on GPU 3", "error_id": 58,
                                  "error_category": 10, "error_severity": 2}])
    doc["DCGM Diagnostic"]["test_categories"][0]["tests"][0]["test_summary"] = {"status": "Fail"}
    assert verdicts(evaluate(json.dumps(doc), rc=205)) == [("ISOLATE", 3)]
