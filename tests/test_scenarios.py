"""Every bundled scenario through the whole check path: the fault it describes is caught
on the right GPU with the right severity, and healthy nodes pass."""
import pytest

from gpuhc import scenario
from gpuhc.errors import ScenarioError
from gpuhc.model import Severity

# scenario -> (overall, profile, [(check, severity, gpu index or None, text in message)])
EXPECTED = {
    "h100-healthy": ("PASS", "dgx-h100", []),
    "a100-healthy": ("PASS", "dgx-a100", []),
    "a30-healthy": ("PASS", "a30-2gpu", [("nvlink", "PASS", 0, "no NVLink by design")]),
    "h100-xid79": ("REBOOT", "dgx-h100", [("xid", "REBOOT", 3, "Xid 79 on GPU3 0000:5d:00.0"),
                                          ("nvml", "REBOOT", 3, "GPU is lost")]),
    "h100-xid48-ecc": ("RESET", "dgx-h100", [("xid", "RESET", 5, "Xid 48"), ("ecc", "RESET", 5, "2 uncorrectable"),
                                             ("memory_remap", "RESET", 5, "pending"), ("xid", "MONITOR", 5, "Xid 45")]),
    "h100-row-remap-pending": ("RESET", "dgx-h100", [("memory_remap", "RESET", 2, "row remapping pending")]),
    "h100-row-remap-failure": ("ISOLATE", "dgx-h100", [("memory_remap", "ISOLATE", 6, "row remapping failed"),
                                                       ("xid", "RESET", 6, "Xid 64")]),
    "h100-pcie-x8": ("RESET", "dgx-h100", [("pcie", "RESET", 4, "x8, expected x16")]),
    "h100-nvlink-down": ("RESET", "dgx-h100", [("nvlink", "RESET", 1, "17 of 18 NVLinks active (down: 7)")]),
    "h100-fabricmanager-down": ("RESET", "dgx-h100", [("fabric", "RESET", None, "nvidia-fabricmanager is failed"),
                                                      ("fabric", "RESET", 0, "not_started")]),
    "h100-gpu-missing": ("REBOOT", "dgx-h100", [("gpu_count", "REBOOT", None, "0000:ab:00.0 is on PCI but NVML")]),
    "h100-thermal-slowdown": ("MONITOR", "dgx-h100", [("clocks", "MONITOR", 2, "hw_thermal_slowdown")]),
    "h100-nvml-hang": ("REBOOT", "generic", [("nvml", "REBOOT", None, "did not return")]),
    "h100-xid45-burst": ("MONITOR", "dgx-h100", [("xid", "MONITOR", 0, "Xid 45 on GPU0"), ("xid", "MONITOR", 0, "(x2)")]),
    "h100-driver-not-loaded": ("REBOOT", "p5.48xlarge", [("nvml", "REBOOT", None, "driver not loaded")]),
    "p5-efa-missing": ("REBOOT", "p5.48xlarge", [("network", "REBOOT", None, "31 of 32 EFA devices")]),
    "dgx-h100-ib-degraded": ("RESET", "dgx-h100", [("network", "RESET", None, "mlx5_6/1 is DOWN"),
                                                   ("network", "RESET", None, "mlx5_3/1 at 200 Gb/s")]),
    # DCGM is not in the lightweight suite: its fault shows with --check dcgm (tests/test_dcgm.py)
    "h100-dcgm-fail": ("PASS", "dgx-h100", []),
}


def test_every_bundled_scenario_has_expectations():
    assert set(scenario.bundled_names()) == set(EXPECTED)
    assert {"h100-healthy", "a100-healthy", "a30-healthy", "h100-xid79"} <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_scenario(run_scenario, name):
    overall, profile, wanted = EXPECTED[name]
    report = run_scenario(name, timeouts={"check": 0.5})
    assert report.overall.value == overall, [f.to_dict() for f in report.findings if f.severity is not Severity.PASS]
    assert report.profile == profile
    for check, sev, gpu, text in wanted:
        hits = [f for f in report.findings if f.check == check and f.severity.value == sev and text in f.message
                and (f.gpu.index if f.gpu else None) == gpu]
        assert hits, "no %s %s finding on GPU %s with %r in %s" % (
            check, sev, gpu, text, [(f.check, f.severity.value, f.where(), f.message) for f in report.findings])
    if overall == "PASS":
        assert report.gpus and all(g["uuid"].startswith("GPU-") and g["serial"] for g in report.gpus)


def test_percent_n_picks_a_scenario_per_node(tmp_path, make_cfg):
    from gpuhc import session
    (tmp_path / "gpu-001.yaml").write_text("extends: h100-healthy\n")
    (tmp_path / "gpu-002.yaml").write_text("extends: h100-pcie-x8\n")
    cfg = make_cfg(simulate=str(tmp_path / "%n.yaml"))
    r1, _, _ = session.run(cfg, "check", node="gpu-001")
    r2, _, _ = session.run(cfg, "check", node="gpu-002")
    assert (r1.overall, r2.overall) == (Severity.PASS, Severity.RESET)
    assert r1.gpus[0]["uuid"] != r2.gpus[0]["uuid"]          # each node its own GPUs
    with pytest.raises(ScenarioError, match="not found"):
        session.run(cfg, "check", node="gpu-404")


@pytest.mark.parametrize("text,needle", [
    ("gpu_count: eight\n", "gpu_count: must be a non-negative integer"),
    ("colour: red\n", "unknown key 'colour'"),
    ("gpu_count: 2\ngpu: {ecc_mode: 1}\n", "gpu: unknown key 'ecc_mode'"),
    ("gpu_count: 2\ngpus: {5: {ecc: {}}}\n", "index 5 out of range"),
    ("faults: [{call: ecc_mode, error: GPU_IS_LOST}]\n", "faults[0].call: unknown call 'ecc_mode'"),
    ("faults: [{call: ecc, error: ON_FIRE}]\n", "faults[0].error: unknown code 'ON_FIRE'"),
    ("faults: [{call: ecc}]\n", "needs 'error' or 'hang'"),
    ("extends: no-such-scenario\n", "unknown scenario 'no-such-scenario'"),
    ("gpu_count: [1\n", "invalid YAML"),
])
def test_bad_scenario_is_one_line_error_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as exc:
        scenario.load(str(path))
    assert str(path) in str(exc.value) and needle in str(exc.value) and "\n" not in str(exc.value)


def test_extends_loop_is_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ScenarioError, match="loops"):
        scenario.load(str(tmp_path / "a.yaml"))


def test_absent_gpu_stays_on_pci(tmp_path):
    sc = scenario.load("h100-gpu-missing")
    assert len(sc.gpus) == 8 and len(sc.nvml_gpus) == 7
