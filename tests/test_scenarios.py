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
    # faults only load shows (deep checks, multi-node all-reduce): every lightweight check passes
    "h100-gpu-slow": ("PASS", "dgx-h100", []),
    "h100-gpu-miscompute": ("PASS", "dgx-h100", []),
    "h100-nccl-slow": ("PASS", "dgx-h100", []),
    "h100-nccl-hang": ("PASS", "dgx-h100", []),
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


# scenarios of a node whose profile the site names (config `profile:` or a Slurm node feature): a
# profile detected from the GPU model alone expects no network layout (profiles.without_network)
NAMED = {"dgx-h100-ib-degraded": "dgx-h100"}


def test_every_bundled_scenario_has_expectations():
    assert set(scenario.bundled_names()) == set(EXPECTED)
    assert {"h100-healthy", "a100-healthy", "a30-healthy", "h100-xid79"} <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_scenario(run_scenario, name):
    overall, profile, wanted = EXPECTED[name]
    named = {"profile": NAMED[name]} if name in NAMED else {}
    report = run_scenario(name, timeouts={"check": 0.5}, **named)
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
    ("gpu_count: eight\n", "gpu_count: expected a non-negative integer, got 'eight'"),
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


# Malformed values: each a one-line ScenarioError naming the file and the field, found at load
# (not an internal error, nor a check ERROR finding later).
H100 = "extends: h100-healthy\n"


@pytest.mark.parametrize("text,needle", [
    # were internal errors
    ("kernel_log: 42\n", "kernel_log: expected a list, a string or null, got 42"),
    ("extends: 5\n", "extends: expected a string or null, got 5"),
    ("extends: [a]\n", "extends: expected a string or null, got a list"),
    ("commands: [a]\n", "commands: expected a mapping or null, got a list"),
    ("files: [a]\n", "files: expected a mapping or null, got a list"),
    ("gpu_count: 1\ngpu: {identity: x}\n", "gpu.identity: expected a mapping, got 'x'"),
    ("gpu_count: 1\ngpu: {nvlink: {count: x}}\n", "gpu.nvlink.count: expected a non-negative integer, got 'x'"),
    ("gpu_count: 1\ngpu: {nvlink: {down: 3}}\n", "gpu.nvlink.down: expected a list, got 3"),
    ("gpu_count: 1\ngpu: {nvlink: {errors: [1]}}\n", "gpu.nvlink.errors: expected a mapping, got a list"),
    ("gpu_count: 2\npci_bus_ids: [1, 2]\n", "pci_bus_ids[0]: expected a string, got 1"),
    # were check ERROR findings
    (H100 + "gpus: {3: {pcie: {width_current: x8}}}\n", "gpus.3.pcie.width_current: expected an integer or null, got 'x8'"),
    (H100 + "gpu: {ecc: {volatile: {uncorrected: many}}}\n", "gpu.ecc.volatile.uncorrected: expected an integer or null"),
    (H100 + "gpu: {temperature: {gpu: hot}}\n", "gpu.temperature.gpu: expected an integer or null, got 'hot'"),
    (H100 + "gpu: {modes: x}\n", "gpu.modes: expected a mapping, got 'x'"),
    (H100 + "gpu: {processes: x}\n", "gpu.processes: expected a list, got 'x'"),
    (H100 + "gpu: {clock_event_reasons: lots}\n", "gpu.clock_event_reasons: expected a non-negative integer, got 'lots'"),
    (H100 + "faults: [{hang: forever}]\n", "faults[0].hang: expected a non-negative number of seconds, got 'forever'"),
    (H100 + "faults: [{hang: -5}]\n", "faults[0].hang: expected a non-negative number of seconds, got -5"),
    (H100 + "commands: {'systemctl is-active nvidia-fabricmanager': {rc: zero}}\n",
     "commands['systemctl is-active nvidia-fabricmanager'].rc: expected an integer, got 'zero'"),
    # were accepted silently
    (H100 + "faults: [{gpu: x, error: GPU_IS_LOST}]\n", "faults[0].gpu: expected a non-negative integer, got 'x'"),
    (H100 + "faults: [{gpu: 8, error: GPU_IS_LOST}]\n", "faults[0].gpu: index 8 out of range for 8 GPUs"),
    ("gpu_count: true\n", "gpu_count: expected a non-negative integer, got true"),
    ("kernel_log: {a: 1}\n", "kernel_log: expected a list, a string or null, got a mapping"),
    ("files: {/sys/x: null}\n", "files['/sys/x']: expected a string, got null"),
    (H100 + "gpus: {1: {nvlink: {down: [18]}}}\n", "gpus.1.nvlink.down: link 18 out of range for 18 links"),
    (H100 + "gpus: {3: {}, '3': {}}\n", "gpus: GPU 3 given twice"),
    # more of the same table
    (H100 + "gpu: {ecc: {volatile: null}}\n", "gpu.ecc.volatile: expected a mapping, got null"),
    (H100 + "gpu: {pcie: null}\n", "gpu.pcie: expected a mapping, got null"),
    (H100 + "gpu: {identity: {pci_bus_id: null}}\n", "gpu.identity.pci_bus_id: expected a string, got null"),
    (H100 + "gpu: {power: {usage_w: .nan}}\n", "gpu.power.usage_w: expected a number or null, got nan"),
    (H100 + "gpu: {modes: {persistence: 1}}\n", "gpu.modes.persistence: expected true/false or null, got 1"),
    (H100 + "gpu: {nvlink: [{link: 0}]}\n", "gpu.nvlink[0]: missing key 'active'"),
    (H100 + "gpu: {nvlink: {errors: {3: {bogus: 1}}}}\n", "gpu.nvlink.errors.3: unknown key 'bogus'"),
    (H100 + "gpu: {pcie: {width: 8}}\n", "gpu.pcie: unknown key 'width'"),
    (H100 + "node: {driver_version: 570.1}\n", "node.driver_version: expected a string, got 570.1"),
    (H100 + "kernel_log: ['ok', [12.3]]\n", "kernel_log[1]: expected a string, got a list"),
    (H100 + "gpus: {x: {}}\n", "gpus: key 'x': expected an index"),
])
def test_malformed_value_is_one_line_error_naming_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as exc:
        scenario.load(str(path))
    message = str(exc.value)
    assert message.startswith(str(path) + ": ") and needle in message and "\n" not in message, message


def test_malformed_value_through_the_command_line_is_a_usage_error(tmp_path):
    from conftest import gpuhc

    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false}\n" % (tmp_path / "store", tmp_path / "state"))
    for n, text in enumerate(["gpu_count: 2\npci_bus_ids: [1, 2]\n",                  # crashed in SimHost
                              H100 + "gpus: {3: {pcie: {width_current: x8}}}\n"]):   # an ERROR finding
        path = tmp_path / ("bad%d.yaml" % n)
        path.write_text(text)
        res = gpuhc("--simulate", str(path), "check", env={"GPUHC_CONFIG": str(cfg)})
        assert res.returncode == 2 and res.stderr.startswith("gpuhc: error: %s: " % path), (res.returncode, res.stderr)
        assert "internal error" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bad_value_in_an_extended_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text(H100 + "gpus: {2: {temperature: {gpu: hot}}}\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(ScenarioError, match=r"base\.yaml: gpus\.2\.temperature\.gpu: expected an integer"):
        scenario.load(str(tmp_path / "top.yaml"))


def test_null_wherever_nvml_answers_none_is_accepted_and_checked_cleanly(run_scenario, tmp_path):
    """Every value NVML reports as None for an unsupported feature may be null in a scenario, and
    the checks take it in stride (no ERROR finding)."""
    path = tmp_path / "unsupported.yaml"
    path.write_text(H100 + """gpu:
  identity: {name: null, uuid: null, serial: null, board_part_number: null, vbios: null, architecture: null, minor_number: null}
  ecc: {enabled: null, pending: null, volatile: {corrected: null, uncorrected: null},
        aggregate: {corrected: null, uncorrected: null, uncorrected_sram: null, uncorrected_dram: null}}
  retired_pages: {single_bit: null, double_bit: null, pending: null}
  remapped_rows: {correctable: null, uncorrectable: null, pending: null, failure: null, banks_low: null, banks_none: null}
  pcie: {gen_current: null, gen_max: null, gen_gpu_max: null, width_current: null, width_max: null, replay_counter: null}
  nvlink: [{link: 0, active: true, replay: null, recovery: null, crc_flit: null, crc_data: null, remote_pci_bus_id: null}]
  temperature: {gpu: null, slowdown: null, shutdown: null, max_operating: null, memory: null}
  power: {usage_w: null, limit_w: null, default_limit_w: null, enforced_limit_w: null, min_limit_w: null, max_limit_w: null}
  modes: {persistence: null, mig_current: null, mig_pending: null, compute_mode: null}
  fabric: null
  processes: [{pid: 4242, used_memory_mib: null, name: null}]
  utilization: {gpu: null, memory: null}
""")
    report = run_scenario(str(path))
    assert not [f.to_dict() for f in report.findings if f.severity is Severity.ERROR]


def test_gpu_index_keys_given_as_strings_are_the_same_gpu(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text(H100 + "gpus: {'03': {pcie: {width_current: 8}}, 4: {pcie: {width_current: 4}}}\n")
    sc = scenario.load(str(path))
    assert [g["pcie"]["width_current"] for g in sc.gpus] == [16, 16, 16, 8, 4, 16, 16, 16]


def test_gpu_schema_follows_the_calls_of_the_gpu_interface():
    """The type table names exactly the fields each call of backends/gpu.py CALLS returns."""
    import re

    from gpuhc.backends.gpu import CALLS

    def fields(schema):
        if isinstance(schema, tuple):
            return set().union(*(fields(s) for s in schema if isinstance(s, (dict, list))))
        if isinstance(schema, list):
            return fields(schema[0])
        if isinstance(schema, dict):
            return set(schema).union(*(fields(v) for v in schema.values()))
        return set()

    assert set(scenario.GPU_SCHEMA) == set(CALLS) - {"driver_version", "device_count"} | {"absent"}
    for call, shape in CALLS.items():
        if call in scenario.GPU_SCHEMA and call != "nvlink":
            braces = re.search(r"[\[{].*[\]}]", shape)
            assert fields(scenario.GPU_SCHEMA[call]) == set(re.findall(r"\w+", braces.group() if braces else "")), call
    assert fields(scenario.GPU_SCHEMA["nvlink"][1]) == set(re.findall(r"\w+", CALLS["nvlink"]))
