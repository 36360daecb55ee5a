import sys
import time
import types

import pytest

from gpuhc.checks.meta import CheckMeta

from gpuhc import checks as catalogue
from gpuhc.errors import ConfigError
from gpuhc.model import Severity


def by_check(report):
    out = {}
    for f in report.findings:
        out.setdefault(f.check, []).append(f)
    return out


def test_hung_nvml_call_ends_within_its_timeout(run_scenario):
    t0 = time.monotonic()
    report = run_scenario("h100-nvml-hang", timeouts={"check": 0.5})
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    found = by_check(report)
    assert found["nvml"][0].severity is Severity.REBOOT
    assert "device_count did not return within 0.5s" in found["nvml"][0].message
    assert report.overall is Severity.REBOOT
    # later GPU checks do not queue behind the hung call
    assert all(f.severity is Severity.SKIP for f in found["ecc"])


def test_hang_inside_a_per_gpu_call_names_the_gpu(run_scenario, tmp_path):
    sc = tmp_path / "ecc-hang.yaml"
    sc.write_text("extends: h100-healthy\nfaults:\n  - {call: ecc, gpu: 3, hang: 30}\n")
    t0 = time.monotonic()
    report = run_scenario(str(sc), timeouts={"check": 0.4})
    assert time.monotonic() - t0 < 2.0
    ecc = by_check(report)["ecc"]
    assert ecc[0].severity is Severity.REBOOT and ecc[0].gpu.index == 3
    assert ecc[0].gpu.pci_bus_id == "0000:5d:00.0"
    assert by_check(report)["pcie"][0].severity is Severity.SKIP
    assert by_check(report)["xid"][0].severity is Severity.PASS     # non-GPU checks still run


def test_budget_bounds_the_whole_run(run_scenario, tmp_path):
    sc = tmp_path / "slow.yaml"
    sc.write_text("extends: h100-healthy\ncommands:\n  'systemctl is-active nvidia-fabricmanager': {hang: 30}\n")
    t0 = time.monotonic()
    report = run_scenario(str(sc), timeouts={"check": 5, "command": 30, "budget": {"check": 0.6}})
    assert time.monotonic() - t0 < 2.0
    fabric = by_check(report)["fabric"][0]
    assert fabric.severity is Severity.ERROR and "did not finish" in fabric.message
    assert by_check(report)["processes"][0].severity is Severity.ERROR
    assert "budget" in by_check(report)["processes"][0].message


@pytest.fixture
def extra_checks(monkeypatch):
    def add(name, gather, evaluate, needs_gpu=False):
        mod = types.ModuleType("gpuhc.checks." + name)
        mod.NAME, mod.gather, mod.evaluate = name, gather, evaluate
        mod.META = CheckMeta(description="test check " + name, suites=(), needs_gpu=needs_gpu)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(catalogue.CHECKS, name, name)
    return add


def test_a_check_that_raises_is_an_error_and_the_run_goes_on(run_scenario, extra_checks):
    def gather(ctx):
        raise RuntimeError("sensor read exploded")
    extra_checks("boom", gather, lambda d, p, c: [])
    extra_checks("badeval", lambda ctx: 1, lambda d, p, c: 1 / 0)
    report = run_scenario("h100-healthy", checks=["boom", "badeval", "ecc"])
    found = by_check(report)
    assert found["boom"][0].severity is Severity.ERROR and "sensor read exploded" in found["boom"][0].message
    assert found["badeval"][0].severity is Severity.ERROR and "ZeroDivisionError" in found["badeval"][0].message
    assert all(f.severity is Severity.PASS for f in found["ecc"])
    assert report.overall is Severity.ERROR and report.exit_code == 3


def test_unknown_check_or_suite_is_a_config_error(run_scenario):
    with pytest.raises(ConfigError, match="--check\\[0\\]: unknown check 'nope'"):
        run_scenario("h100-healthy", checks=["nope"])
    with pytest.raises(ConfigError, match="unknown suite 'deeper'"):
        run_scenario("h100-healthy", suite="deeper")
    with pytest.raises(ConfigError, match="suites.prolog\\[1\\]: unknown check 'ecc_typo'"):
        run_scenario("h100-healthy", context="prolog", suites={"prolog": ["nvml", "ecc_typo"]})


def test_suite_from_context_and_explicit_checks(run_scenario):
    report = run_scenario("h100-healthy", context="prolog", suites={"prolog": ["ecc", "pcie"]})
    assert report.suite == "prolog"
    assert {f.check for f in report.findings} == {"nvml", "ecc", "pcie"}
    report = run_scenario("h100-healthy", checks=["xid"])
    assert {f.check for f in report.findings} == {"nvml", "xid"}


def test_driver_missing_maps_by_profile_expectation(run_scenario, tmp_path):
    sc = tmp_path / "nodrv.yaml"
    sc.write_text("extends: h100-healthy\nfaults:\n  - {call: '*', error: LIBRARY_NOT_FOUND}\n")
    profiles = tmp_path / "p.conf"
    profiles.write_text("cpu gpus=0\ngpu8 gpus=8 model=H100\n")
    r = run_scenario(str(sc), profiles=str(profiles), profile="cpu")
    assert r.overall is Severity.PASS and r.findings[0].severity is Severity.SKIP
    r = run_scenario(str(sc), profiles=str(profiles), profile="gpu8")
    assert r.overall is Severity.REBOOT and "expects 8 GPUs" in r.findings[0].message
    r = run_scenario(str(sc))
    assert r.overall is Severity.ERROR and r.exit_code == 3


def test_epilog_kills_leftover_gpu_processes_when_configured(make_cfg, monkeypatch):
    """A real process standing in for a job's leftover: the epilog kills it only when asked to."""
    import subprocess
    from gpuhc import contexts, session

    victim = subprocess.Popen(["sleep", "60"])
    try:
        real_open = session.open_backends

        def with_leftover(cfg, node, simulate=None):
            gpu, host = real_open(cfg, node, simulate)
            gpu.kind = "nvml-like"            # treated as real hardware: kill is allowed
            gpu._gpus[2]["processes"] = [{"pid": victim.pid, "used_memory_mib": 1024, "name": "sleep"}]
            return gpu, host

        monkeypatch.setattr(session, "open_backends", with_leftover)
        cfg = make_cfg(simulate="h100-healthy", slurm={"backend": "none"})
        out = contexts.run(cfg, "epilog", node="gpu-001", env={"SLURM_JOB_ID": "5"})
        assert victim.poll() is None                      # not configured: reported only
        assert any(f.check == "processes" and "leftover" in f.message for f in out.report.findings)
        cfg = make_cfg(simulate="h100-healthy", slurm={"backend": "none"}, epilog={"kill_leftover_processes": True})
        # the job's GPUs unknown and the process not of the job's user (root's): not a leftover
        contexts.run(cfg, "epilog", node="gpu-001", env={"SLURM_JOB_ID": "6", "SLURM_JOB_UID": "0"})
        assert victim.poll() is None
        # another job's GPU: not touched
        contexts.run(cfg, "epilog", node="gpu-001", env={"SLURM_JOB_ID": "6", "SLURM_JOB_GPUS": "0,1"})
        assert victim.poll() is None
        out = contexts.run(cfg, "epilog", node="gpu-001", env={"SLURM_JOB_ID": "6", "SLURM_JOB_GPUS": "2"})
        assert victim.wait(timeout=5) == -9
        killed = [f for f in out.report.findings if "killed 1 leftover" in f.message]
        assert killed and killed[0].gpu.index == 2
    finally:
        if victim.poll() is None:
            victim.kill()
