"""Checks that compare with the previous run on the node: counter growth and persistence."""
from gpuhc import session


def run_twice(tmp_path, make_cfg, first, second, checks):
    sc = tmp_path / "node.yaml"
    cfg = make_cfg(simulate=str(sc))
    out = []
    for text in (first, second):
        sc.write_text("extends: h100-healthy\n" + text)
        report, _, _ = session.run(cfg, "check", checks=checks, node="gpu-005")
        out.append([f for f in report.findings if f.check in checks])
    return out


def test_nvlink_error_growth_between_runs_is_monitor(tmp_path, make_cfg):
    first, second = run_twice(tmp_path, make_cfg,
                              "gpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 10, recovery: 0}}}}}\n",
                              "gpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 5000, recovery: 2}}}}}\n",
                              ["nvlink"])
    assert all(f.severity.value == "PASS" for f in first)
    bad = [f for f in second if f.severity.value != "PASS"]
    assert len(bad) == 1 and bad[0].gpu.index == 2 and bad[0].severity.value == "MONITOR"
    assert "NVLink 4" in bad[0].message and "crc_flit +4990" in bad[0].message and "recovery +2" in bad[0].message


def test_counter_reset_or_swapped_gpu_is_not_growth(tmp_path, make_cfg):
    first, second = run_twice(tmp_path, make_cfg,
                              "gpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 9000}}}}}\n",
                              "gpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 3}}}, identity: {uuid: GPU-new-board}}}\n",
                              ["nvlink"])
    assert all(f.severity.value == "PASS" for f in first + second)


def test_pcie_replay_growth(tmp_path, make_cfg):
    first, second = run_twice(tmp_path, make_cfg, "gpus: {1: {pcie: {replay_counter: 10}}}\n",
                              "gpus: {1: {pcie: {replay_counter: 900}}}\n", ["pcie"])
    assert all(f.severity.value == "PASS" for f in first)
    bad = [f for f in second if f.severity.value != "PASS"]
    assert [(f.gpu.index, f.severity.value) for f in bad] == [(1, "MONITOR")] and "890 PCIe replays" in bad[0].message


def test_hw_slowdown_persisting_across_runs_is_reset(tmp_path, make_cfg):
    hot = "gpus: {6: {clock_event_reasons: 64}}\n"
    first, second = run_twice(tmp_path, make_cfg, hot, hot, ["clocks"])
    assert [(f.gpu.index, f.severity.value) for f in first if f.severity.value != "PASS"] == [(6, "MONITOR")]
    assert [(f.gpu.index, f.severity.value) for f in second if f.severity.value != "PASS"] == [(6, "RESET")]
    # a single sample after a clean run stays MONITOR
    first, second = run_twice(tmp_path, make_cfg, "", hot, ["clocks"])
    assert [f.severity.value for f in second if f.severity.value != "PASS"] == ["MONITOR"]


def test_sw_power_cap_and_idle_are_normal(run_scenario, tmp_path):
    sc = tmp_path / "capped.yaml"
    sc.write_text("extends: h100-healthy\ngpu: {clock_event_reasons: 5}\n")   # idle | sw_power_cap
    report = run_scenario(str(sc), checks=["clocks"])
    assert report.overall.value == "PASS"


def test_idle_pcie_generation_is_not_a_fault(run_scenario, tmp_path):
    sc = tmp_path / "idle.yaml"
    sc.write_text("extends: h100-healthy\ngpus: {0: {pcie: {gen_current: 1}, utilization: {gpu: 0}},"
                  " 1: {pcie: {gen_current: 3}, utilization: {gpu: 95}}}\n")
    report = run_scenario(str(sc), checks=["pcie"])
    bad = [f for f in report.findings if f.severity.value != "PASS"]
    assert [(f.gpu.index, f.severity.value) for f in bad] == [(1, "RESET")] and "gen3 under load" in bad[0].message


def test_a_swapped_board_shows_once_in_history(tmp_path, make_cfg):
    """The board (UUID, serial) at each PCI address is kept between runs: a replaced GPU is a
    MONITOR finding on the run that first sees it, and only that run."""
    sc = tmp_path / "node.yaml"
    cfg = make_cfg(simulate=str(sc))
    swapped = "gpus: {3: {identity: {uuid: GPU-5e0c-new, serial: '1654923000123'}}}\n"
    seen = []
    for text in ("", "", swapped, swapped, ""):
        sc.write_text("extends: h100-healthy\n" + text)
        report, _, _ = session.run(cfg, "check", checks=["gpu_count"], node="gpu-006")
        seen.append([(f.severity.value, f.message) for f in report.findings if f.check == "gpu_count"])
    assert [s[0][0] for s in seen] == ["PASS", "PASS", "MONITOR", "PASS", "MONITOR"]
    assert "GPU3 0000:5d:00.0 is another board since the last run" in seen[2][0][1]
    assert "-> serial 1654923000123 (GPU-5e0c-new)" in seen[2][0][1]
    assert "(GPU-5e0c-new) -> serial" in seen[4][0][1]          # the old board back again


def test_a_simulated_run_on_a_real_node_is_not_a_board_swap(tmp_path, make_cfg, monkeypatch):
    """`gpuhc --simulate X check` on a GPU node must not leave simulated boards for the next real
    run to call swapped."""
    from gpuhc.backends.sim import SimHost
    sc = tmp_path / "node.yaml"
    sc.write_text("extends: h100-healthy\n")
    cfg = make_cfg(simulate=str(sc))

    def board_findings():
        report, _, _ = session.run(cfg, "check", checks=["gpu_count"], node="gpu-007")
        return [f.severity.value for f in report.findings if f.check == "gpu_count"]

    assert board_findings() == ["PASS"]
    monkeypatch.setattr(SimHost, "kind", "local")      # the same node, now as the real host
    sc.write_text("extends: h100-healthy\ngpu: {identity: {serial: '1999'}}\n"
                  + "".join("gpus: {%d: {identity: {uuid: GPU-real-%d}}}\n" % (i, i) for i in range(1)))
    assert board_findings() == ["PASS"]
    assert board_findings() == ["PASS"]
