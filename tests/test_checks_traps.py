"""Operator situations in which the lightweight checks drained a good node or let a bad GPU
through (found by a review): PCIe/NVL boards taken for an NVSwitch system, IB storage ports counted
as compute rails, lifetime ECC totals without per-location counts, counters compared across a
reboot, and a threshold compared with >= where it says "above"."""

import pytest

from gpuhc import config as C
from gpuhc import session
from gpuhc.checks import ecc as E
from gpuhc.checks import pcie as PC
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef


def _bad(findings, at_least="RESET"):
    order = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]
    return [(f.check, f.severity.value, f.message) for f in findings
            if f.severity.value in order and order.index(f.severity.value) >= order.index(at_least)]


# -- 1. PCIe / NVL boards auto-detected as the SXM NVSwitch profile ------------------------------

@pytest.mark.parametrize("name", ["NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100 80GB PCIe",
                                  "NVIDIA A100-PCIE-40GB", "NVIDIA H200 NVL"])
def test_pcie_gpu_server_is_not_taken_for_an_nvswitch_dgx(run_scenario, tmp_path, name):
    """An 8-GPU PCIe server (no NVLink bridge, no NVSwitch, no fabric manager, no InfiniBand) with
    no profile configured: detection by GPU model and count must not pick the DGX/HGX SXM profile
    (model="H100"/"A100"/"H200" is a substring of the PCIe board names), or every healthy node
    of this kind drains for NVLinks, fabric manager and IB ports it never had."""
    sc = tmp_path / "pcie.yaml"
    sc.write_text(
        "extends: h100-healthy\n"
        "gpu: {identity: {name: %s}, nvlink: [], fabric: null}\n"
        "files: null\n"
        "commands: {\"systemctl is-active nvidia-fabricmanager\": {rc: 3, stdout: \"inactive\\n\"}}\n" % name)
    report = run_scenario(str(sc), checks=["nvlink", "fabric", "network"])
    assert _bad(report.findings) == [], "profile %s: %s" % (report.profile, _bad(report.findings)[:3])


# -- 2. InfiniBand storage ports counted as compute ports -----------------------------------------

def _ib_storage(tmp_path, storage_rate, down=()):
    """DGX H100 with its two QSFP112 storage/in-band ConnectX-7 ports in InfiniBand mode (the
    storage fabric of a SuperPOD runs at NDR200), beside the eight 400G compute ports. The tests
    name the profile (`profile: dgx-h100`, as a DGX site does in config or by a Slurm node feature):
    detected from the GPUs alone it would expect no InfiniBand layout."""
    lines = ["extends: h100-healthy", "files:"]
    for dev in ("mlx5_8", "mlx5_9"):
        lines.append("  /sys/class/infiniband/%s/ports/1/link_layer: InfiniBand" % dev)
        lines.append("  /sys/class/infiniband/%s/ports/1/rate: \"%d Gb/sec (4X NDR)\"" % (dev, storage_rate))
        lines.append("  /sys/class/infiniband/%s/ports/1/counters/link_downed: \"0\"" % dev)
    for dev in down:
        lines.append("  /sys/class/infiniband/%s/ports/1/state: \"1: DOWN\"" % dev)
        lines.append("  /sys/class/infiniband/%s/ports/1/phys_state: \"3: Disabled\"" % dev)
    sc = tmp_path / "ib-storage.yaml"
    sc.write_text("\n".join(lines) + "\n")
    return str(sc)


def test_infiniband_storage_ports_at_their_own_rate_do_not_drain(run_scenario, tmp_path):
    """All eight compute ports ACTIVE at 400; the two storage ports ACTIVE at 200 on their own
    fabric. profile ib=8 ib_rate=400 describes the compute ports: nothing is degraded."""
    report = run_scenario(_ib_storage(tmp_path, 200), checks=["network"], profile="dgx-h100")
    assert report.profile == "dgx-h100"
    assert _bad(report.findings) == []


def test_compute_port_down_is_not_hidden_by_storage_ports(run_scenario, tmp_path):
    """Compute rail mlx5_3 is DOWN: 7 of the 8 compute ports the profile expects. The two
    storage ports make 9 ACTIVE InfiniBand ports, which must not turn the lost rail into MONITOR."""
    report = run_scenario(_ib_storage(tmp_path, 200, down=["mlx5_3"]), checks=["network"], profile="dgx-h100")
    rail = [f for f in report.findings if f.device == "mlx5_3/1"]
    assert rail and rail[0].severity.value == "RESET", [(f.severity.value, f.message) for f in rail]
    # the storage ports are not blamed: the down rail explains the shortfall
    assert not [f for f in report.findings if f.device in ("mlx5_8/1", "mlx5_9/1")]


def test_compute_port_trained_slow_beside_storage_ports_is_reset(run_scenario, tmp_path):
    """A compute rail trained at 200 beside the two 200 storage ports: 7 ports at 400 for the 8 the
    profile expects, nothing down to explain it, so the slow ports are degraded links (RESET)."""
    sc = _ib_storage(tmp_path, 200)
    with open(sc, "a") as f:
        f.write("  /sys/class/infiniband/mlx5_3/ports/1/rate: \"200 Gb/sec (4X NDR)\"\n")
    report = run_scenario(sc, checks=["network"], profile="dgx-h100")
    slow = sorted(f.device for f in report.findings if f.severity.value == "RESET")
    assert slow == ["mlx5_3/1", "mlx5_8/1", "mlx5_9/1"], [(f.severity.value, f.message) for f in report.findings]
    assert all("profile expects 8 ports at 400, 7 are" in f.message for f in report.findings if f.severity.value == "RESET")


# -- 3. ECC: lifetime uncorrectable errors ignored where NVML has no per-location counters --------

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


# -- 4. Deltas of volatile counters taken against a previous boot ----------------------------------

def test_pcie_replays_after_a_reboot_are_counted_from_the_boot(tmp_path, make_cfg):
    """The PCIe replay counter starts again at 0 with each boot (driver load). Last run before the
    reboot read 500; the first run after it reads 560: 560 replays in this boot, a marginal link
    (limit 100). Subtracting the old boot's 500 reports 60 and hides it."""
    sc = tmp_path / "node.yaml"
    cfg = make_cfg(simulate=str(sc))
    runs = []
    for boot, replays in (("11111111-0000-4000-8000-000000000001", 500),
                          ("22222222-0000-4000-8000-000000000002", 560)):
        sc.write_text("extends: h100-healthy\nnode: {boot_id: %s}\ngpus: {1: {pcie: {replay_counter: %d}}}\n"
                      % (boot, replays))
        report, _, _ = session.run(cfg, "check", checks=["pcie"], node="gpu-005")
        runs.append([f for f in report.findings if f.check == "pcie" and f.gpu and f.gpu.index == 1])
    [after] = runs[1]
    assert after.metrics.get("replay_delta") == 560, after.metrics
    assert after.severity.value == "MONITOR"
    # a second run in the same boot counts from the last one again
    sc.write_text("extends: h100-healthy\nnode: {boot_id: 22222222-0000-4000-8000-000000000002}\n"
                  "gpus: {1: {pcie: {replay_counter: 570}}}\n")
    report, _, _ = session.run(cfg, "check", checks=["pcie"], node="gpu-005")
    [same] = [f for f in report.findings if f.check == "pcie" and f.gpu and f.gpu.index == 1]
    assert same.metrics.get("replay_delta") == 10 and same.severity.value == "PASS", same.metrics


# -- 5. pcie_loaded_utilization: "above which", compared with >= -------------------------------------

def test_link_generation_at_exactly_the_loaded_utilization_is_not_a_drain():
    """config.THRESHOLDS documents pcie_loaded_utilization as the busy share *above which* a lower
    link generation is not power saving; a GPU sampled at exactly 50% is not above it."""
    link = {"gen_current": 4, "gen_max": 5, "gen_gpu_max": 5, "width_current": 16, "width_max": 16,
            "replay_counter": 0, "utilization": 50}
    out = PC.evaluate({"gpus": [Entry(GpuRef(0, "GPU-0"), link)], "previous": {}}, None, C.defaults())
    assert _bad(out) == []
