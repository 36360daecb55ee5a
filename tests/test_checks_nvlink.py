"""nvlink: active links per GPU against the profile (RESET below its count, PASS where it expects
none), against the node's other GPUs where the profile has no count (MONITOR below the best peer),
GPUs in MIG mode exempt (their NVLinks are disabled by the driver), and error counter growth since
the previous run (MONITOR at its threshold, counted from zero after a reboot). Pure evaluate on
hand-built links, then gather -> evaluate on simulated nodes, then the runner."""
import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import GpuError
from gpuhc.checks import nvlink as NL
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

from test_checks_nvml import sim_context, summary

PROFILES = P.load()
DGX_H100, A30, GENERIC = PROFILES["dgx-h100"], PROFILES["a30-2gpu"], PROFILES["generic"]


def links(n=18, down=(), **errors):
    """n links, those in ``down`` inactive; errors: {counter: {link: value}}."""
    return [dict({c: (errors.get(c) or {}).get(i, 0) for c in NL.COUNTERS}, link=i, active=i not in down)
            for i in range(n)]


def evaluate(*values, profile=DGX_H100, previous=None, booted=False, mig=(), thresholds=None):
    """One entry per value (GPU 0, 1, ...); a GpuError in place of links is that GPU's error."""
    entries = [Entry(GpuRef(i, "GPU-%d" % i), error=v) if isinstance(v, GpuError) else Entry(GpuRef(i, "GPU-%d" % i), v)
               for i, v in enumerate(values)]
    cfg = C.validate({"thresholds": thresholds} if thresholds else {})
    return NL.evaluate({"gpus": entries, "previous": previous or {}, "booted": booted, "mig": list(mig)}, profile, cfg)


def bad(findings):
    return [(f.severity.value, f.gpu.index, f.message) for f in findings if f.severity.value != "PASS"]


# -- link state against the profile ----------------------------------------------------------------

def test_every_link_the_profile_expects_active_passes_with_metrics():
    out = evaluate(links(), links())
    assert summary(out) == [("PASS", 0, "18 NVLinks active"), ("PASS", 1, "18 NVLinks active")]
    assert out[0].metrics == {"active_links": 18, "replay_errors": 0, "recovery_errors": 0,
                              "crc_flit_errors": 0, "crc_data_errors": 0}


def test_a_link_down_below_the_profiles_count_is_reset():
    out = evaluate(links(), links(down=[7]), links(down=[0, 17]))
    assert bad(out) == [("RESET", 1, "17 of 18 NVLinks active (down: 7)"),
                        ("RESET", 2, "16 of 18 NVLinks active (down: 0,17)")]
    assert out[1].metrics["active_links"] == 17 and "reset the GPUs" in out[1].remediation


def test_fewer_links_listed_than_expected_is_reset_with_unknown_down():
    """NVML lists 12 links, all up, where the profile expects 18: six are missing altogether."""
    assert bad(evaluate(links(12))) == [("RESET", 0, "12 of 18 NVLinks active (down: ?)")]


def test_error_counters_are_summed_into_metrics():
    out = evaluate(links(replay={3: 5, 4: 6}, crc_flit={0: 2}))
    assert out[0].metrics["replay_errors"] == 11 and out[0].metrics["crc_flit_errors"] == 2
    # a counter NVML does not give is not a metric
    none = [dict(link, crc_data=None) for link in links()]
    assert "crc_data_errors" not in evaluate(none)[0].metrics


@pytest.mark.parametrize("listed", [0, 4])
def test_no_nvlink_by_design_passes(listed):
    """a30-2gpu says nvlinks=0: the links a chip lists without a bridge are not faults."""
    out = evaluate(links(listed, down=range(listed)), profile=A30)
    assert summary(out) == [("PASS", 0, "no NVLink by design (%d links present)" % listed)]


def test_gpu_in_mig_mode_is_not_held_to_the_count():
    """dgx-a100 expects 12 links; GPU 1 is in MIG mode with all 12 down, GPU 2 is whole with one down."""
    out = evaluate(links(12), links(12, down=range(12)), links(12, down=[3]), profile=PROFILES["dgx-a100"], mig=[1])
    assert summary(out) == [("PASS", 0, "12 NVLinks active"),
                            ("PASS", 1, "MIG mode: NVLinks disabled by the driver (0 of 12 active)"),
                            ("RESET", 2, "11 of 12 NVLinks active (down: 3)")]


# -- no expectation: GPUs held to their peers ----------------------------------------------------------

@pytest.mark.parametrize("profile", [GENERIC, None])
def test_without_a_count_a_gpu_below_its_peers_is_monitor(profile):
    out = evaluate(links(), links(down=[7]), links(), profile=profile)
    name = profile.name if profile else "?"
    assert bad(out) == [("MONITOR", 1, "17 of 18 NVLinks active, another GPU of this node has 18 (down: 7; "
                                       "no expectation in profile %s)" % name)]


def test_without_a_count_links_down_everywhere_are_by_design():
    """A PCIe board lists links nobody wired: all down on every GPU is PASS, as is a bridged pair
    whose every GPU has the same number up."""
    out = evaluate(links(12, down=range(12)), links(12, down=range(12)), profile=GENERIC)
    assert summary(out) == [("PASS", 0, "no NVLink in use (12 links present)"),
                            ("PASS", 1, "no NVLink in use (12 links present)")]
    pair = links(down=[0, 4, 5, 10, 11, 16])
    assert [f.severity.value for f in evaluate(pair, pair, profile=GENERIC)] == ["PASS", "PASS"]
    assert evaluate(pair, profile=GENERIC)[0].message == "12 NVLinks active"


def test_peers_leave_out_gpus_in_mig_mode_and_gpus_in_error():
    """A MIG GPU's disabled links are not a peer's, and a GPU that did not answer has none to count."""
    out = evaluate(links(down=[7]), links(down=range(18)), GpuError(G.GPU_IS_LOST, "nvlink", 2),
                   profile=GENERIC, mig=[1])
    assert [(f.severity.value, f.gpu.index) for f in out] == [("PASS", 0), ("PASS", 1), ("REBOOT", 2)]
    assert "GPU is lost" in out[2].message


# -- error counter growth since the last run -------------------------------------------------------------

def test_counter_growth_at_the_threshold_is_monitor():
    before = {"GPU-0": {"4": {"replay": 10, "recovery": 0, "crc_flit": 0, "crc_data": 0}}}
    out = evaluate(links(replay={4: 1010}, recovery={4: 1}), previous=before)
    assert summary(out) == [("MONITOR", 0, "NVLink 4 errors since the last run: replay +1000, recovery +1")]
    assert out[0].metrics == {"link": 4, "replay_delta": 1000, "recovery_delta": 1}
    # just under every threshold: the state of the links alone
    out = evaluate(links(replay={4: 1009}, crc_flit={4: 999}, crc_data={4: 99}),
                   previous={"GPU-0": {"4": {"replay": 10, "recovery": 0, "crc_flit": 0, "crc_data": 0}}})
    assert summary(out) == [("PASS", 0, "18 NVLinks active")]


def test_growth_thresholds_come_from_config():
    before = {"GPU-0": {"2": {"crc_data": 0}}}
    assert bad(evaluate(links(crc_data={2: 5}), previous=before)) == []
    assert bad(evaluate(links(crc_data={2: 5}), previous=before, thresholds={"nvlink_crc_data_growth": 5})) == [
        ("MONITOR", 0, "NVLink 2 errors since the last run: crc_data +5")]


def test_no_previous_run_or_another_board_is_no_growth():
    high = links(recovery={0: 50})
    assert bad(evaluate(high)) == []
    assert bad(evaluate(high, previous={"GPU-other": {"0": {"recovery": 0}}})) == []


def test_a_counter_that_went_down_counts_from_zero_and_a_reboot_counts_from_the_boot():
    before = {"GPU-0": {"1": {"recovery": 9}}}
    assert bad(evaluate(links(recovery={1: 2}), previous=before)) == [
        ("MONITOR", 0, "NVLink 1 errors since the last run: recovery +2")]
    before = {"GPU-0": {"1": {"recovery": 3}}}
    assert bad(evaluate(links(recovery={1: 3}), previous=before)) == []
    assert bad(evaluate(links(recovery={1: 3}), previous=before, booted=True)) == [
        ("MONITOR", 0, "NVLink 1 errors since the last run: recovery +3")]


def test_growth_beside_a_link_down_keeps_both():
    before = {"GPU-0": {"7": {"recovery": 0}}}
    out = evaluate(links(down=[7], recovery={7: 4}), previous=before)
    assert [(f.severity.value, f.message) for f in out] == [
        ("RESET", "17 of 18 NVLinks active (down: 7)"), ("MONITOR", "NVLink 7 errors since the last run: recovery +4")]


# -- gather -> evaluate on simulated nodes -------------------------------------------------------------

def test_healthy_node():
    ctx = sim_context("h100-healthy", profile=DGX_H100)
    data = NL.gather(ctx)
    assert [len(e.value) for e in data["gpus"]] == [18] * 8 and data["mig"] == [] and data["booted"] is False
    assert set(data["_state"]) == {g.uuid for g in ctx.inventory.gpus}
    assert data["_state"][ctx.inventory.gpus[0].uuid]["17"] == {"replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0}
    out = NL.evaluate(data, DGX_H100, C.defaults())
    assert {(f.severity.value, f.message) for f in out} == {("PASS", "18 NVLinks active")} and len(out) == 8


def test_nvlink_down_scenario_with_and_without_the_count():
    """h100-nvlink-down: link 7 of GPU 1 inactive. dgx-h100 (nvlinks=18) resets; generic holds
    the GPU to its seven peers (MONITOR)."""
    data = NL.gather(sim_context("h100-nvlink-down", profile=DGX_H100))
    assert bad(NL.evaluate(data, DGX_H100, C.defaults())) == [("RESET", 1, "17 of 18 NVLinks active (down: 7)")]
    out = bad(NL.evaluate(data, GENERIC, C.defaults()))
    assert [(s, i) for s, i, _ in out] == [("MONITOR", 1)] and "another GPU of this node has 18" in out[0][2]


def test_mig_mode_is_asked_only_of_a_gpu_with_a_link_down(tmp_path):
    sc = tmp_path / "mig.yaml"
    sc.write_text("extends: h100-healthy\ngpus:\n  2: {modes: {mig_current: true}, nvlink: {count: 18, active: false}}\n"
                  "  5: {modes: {mig_current: true}}\n")
    data = NL.gather(sim_context(sc, profile=DGX_H100))
    assert data["mig"] == [2]                     # GPU 5 is in MIG mode but has every link up
    assert summary(NL.evaluate(data, DGX_H100, C.defaults()))[2] == (
        "PASS", 2, "MIG mode: NVLinks disabled by the driver (0 of 18 active)")


def test_growth_between_two_gathers_and_after_a_reboot(tmp_path):
    sc = tmp_path / "node.yaml"
    sc.write_text("extends: h100-healthy\ngpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 10}}}}}\n")
    first = NL.gather(sim_context(sc, profile=DGX_H100))
    state = {"nvlink": first["_state"], "_boots": {"nvlink": "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"}}
    sc.write_text("extends: h100-healthy\ngpus: {2: {nvlink: {count: 18, errors: {4: {crc_flit: 5000}}}}}\n")
    ctx = sim_context(sc, profile=DGX_H100, previous=state)
    ctx.boot_id = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
    second = NL.gather(ctx)
    assert second["booted"] is False
    assert bad(NL.evaluate(second, DGX_H100, C.defaults())) == [
        ("MONITOR", 2, "NVLink 4 errors since the last run: crc_flit +4990")]
    # the same reading in a new boot counts from zero: 5000 since the boot
    ctx = sim_context(sc, profile=DGX_H100, previous=state)
    ctx.boot_id = "22222222-0000-4000-8000-000000000002"
    third = NL.gather(ctx)
    assert third["booted"] is True
    assert bad(NL.evaluate(third, DGX_H100, C.defaults())) == [
        ("MONITOR", 2, "NVLink 4 errors since the last run: crc_flit +5000")]


def test_through_the_runner(run_scenario):
    report = run_scenario("h100-nvlink-down", checks=["nvlink"])
    found = [(f.severity.value, f.gpu.index) for f in report.findings if f.check == "nvlink" and f.severity.value != "PASS"]
    assert found == [("RESET", 1)] and report.overall.value == "RESET"
