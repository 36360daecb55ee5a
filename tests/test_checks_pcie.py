"""pcie: link generation and width against the GPU's and the profile's, replay counter growth.
Operator situations in which the lightweight checks drained a good node or let a bad GPU through
(found by a review): counters compared across a reboot, and a
threshold compared with >= where it says "above"."""

from gpuhc import config as C
from gpuhc import session
from gpuhc.checks import pcie as PC
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef


def _bad(findings, at_least="RESET"):
    order = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]
    return [(f.check, f.severity.value, f.message) for f in findings
            if f.severity.value in order and order.index(f.severity.value) >= order.index(at_least)]


# -- deltas of volatile counters taken against a previous boot ------------------------------------

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


# -- pcie_loaded_utilization: "above which", compared with >= ----------------------------------------

def test_link_generation_at_exactly_the_loaded_utilization_is_not_a_drain():
    """config.THRESHOLDS documents pcie_loaded_utilization as the busy share *above which* a lower
    link generation is not power saving; a GPU sampled at exactly 50% is not above it."""
    link = {"gen_current": 4, "gen_max": 5, "gen_gpu_max": 5, "width_current": 16, "width_max": 16,
            "replay_counter": 0, "utilization": 50}
    out = PC.evaluate({"gpus": [Entry(GpuRef(0, "GPU-0"), link)], "previous": {}}, None, C.defaults())
    assert _bad(out) == []
