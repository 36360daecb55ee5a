import json

import pytest

from gpuhc.model import (SCHEMA_VERSION, Finding, GpuRef, Report, Severity, exit_code, overall_severity)


def f(sev, check="c", gpu=None):
    return Finding(check, sev, "msg", gpu=gpu)


def test_tiers_are_ordered_and_outcomes_sit_outside():
    order = [Severity.PASS, Severity.MONITOR, Severity.RESET, Severity.REBOOT, Severity.ISOLATE]
    assert [s.rank for s in order] == sorted(s.rank for s in order)
    assert all(s.is_tier for s in order)
    assert not Severity.ERROR.is_tier and not Severity.SKIP.is_tier
    assert [s.unhealthy for s in order] == [False, False, True, True, True]


@pytest.mark.parametrize("sevs,overall,code", [
    ([], Severity.PASS, 0),
    ([Severity.PASS, Severity.SKIP], Severity.PASS, 0),
    ([Severity.PASS, Severity.MONITOR], Severity.MONITOR, 0),
    ([Severity.MONITOR, Severity.RESET, Severity.PASS], Severity.RESET, 1),
    ([Severity.REBOOT, Severity.ISOLATE, Severity.RESET], Severity.ISOLATE, 1),
    ([Severity.PASS, Severity.ERROR], Severity.ERROR, 3),
    ([Severity.MONITOR, Severity.ERROR], Severity.ERROR, 3),
    ([Severity.ERROR, Severity.REBOOT], Severity.REBOOT, 1),
    ([Severity.SKIP], Severity.PASS, 0),
])
def test_overall_and_exit_code(sevs, overall, code):
    got = overall_severity([f(s) for s in sevs])
    assert got is overall
    assert exit_code(got) == code


def test_parse_severity_names_the_bad_value():
    assert Severity.parse("reboot") is Severity.REBOOT
    with pytest.raises(ValueError, match="BROKEN"):
        Severity.parse("BROKEN")


def test_report_json_round_trip_carries_schema_version():
    gpu = GpuRef(3, "GPU-abc", "0000:5d:00.0")
    report = Report(node="gpu-001", context="prolog", profile="dgx-h100", started=1700000000.25, ended=1700000000.5,
                    findings=[Finding("xid", Severity.REBOOT, "Xid 79", gpu=gpu, remediation="reboot",
                                      metrics={"xid": 79}), f(Severity.PASS, "ecc")],
                    job_id="42", boot_id="b", suite="prolog")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["overall"] == "REBOOT"
    assert d["started"].startswith("2023-11-14T22:13:20.250")
    assert d["findings"][0]["gpu"] == {"index": 3, "uuid": "GPU-abc", "pci_bus_id": "0000:5d:00.0"}
    assert d["findings"][1]["gpu"] is None
    back = Report.from_dict(d)
    assert back.overall is Severity.REBOOT and back.findings[0].gpu == gpu and back.job_id == "42"
    assert abs(back.ended - report.ended) < 0.01


def test_report_from_future_schema_is_refused():
    with pytest.raises(ValueError, match="schema_version"):
        Report.from_dict({"schema_version": SCHEMA_VERSION + 1, "node": "n", "context": "c", "started_ts": 0})


def test_top_findings_most_severe_first():
    r = Report("n", "check", "p", 0, 1, [f(Severity.PASS), f(Severity.ERROR), f(Severity.MONITOR), f(Severity.ISOLATE)])
    assert [x.severity for x in r.top_findings()] == [Severity.ISOLATE, Severity.MONITOR, Severity.ERROR, Severity.PASS]
