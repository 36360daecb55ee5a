"""gpu_count: the GPUs NVML lists against the NVIDIA GPUs on PCI (REBOOT for one on PCI that NVML
does not list) and against the profile (REBOOT for fewer than expected, MONITOR for more, MONITOR
for another GPU model); and the board at each PCI address kept between runs (MONITOR once for a
swapped board). Pure evaluate on hand-built data, then gather -> evaluate on simulated nodes,
then the runner."""
import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc.checks import gpu_count as GC

from test_checks_nvml import H100_BUS, sim_context, summary

PROFILES = P.load()
DGX_H100, GENERIC = PROFILES["dgx-h100"], PROFILES["generic"]
H100 = "NVIDIA H100 80GB HBM3"


def data(nvml=8, pci=8, names=None, boards=None, previous=None):
    """``nvml``/``pci``: a count (the first n of H100_BUS) or a list of bus ids."""
    nvml = H100_BUS[:nvml] if isinstance(nvml, int) else nvml
    pci = H100_BUS[:pci] if isinstance(pci, int) else pci
    return {"nvml": list(enumerate(nvml)), "names": names if names is not None else [H100] * len(nvml),
            "pci": list(pci), "boards": boards or {}, "previous": previous or {}}


def evaluate(d, profile=DGX_H100):
    return GC.evaluate(d, profile, C.defaults())


# -- evaluate on fixtures ----------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [DGX_H100, GENERIC, None])
def test_every_gpu_present_passes_with_the_counts(profile):
    [out] = evaluate(data(), profile)
    assert (out.severity.value, out.gpu, out.device, out.message) == ("PASS", None, None, "8 GPUs in NVML, 8 on PCI")
    assert out.metrics == {"gpus": 8, "pci_gpus": 8}


@pytest.mark.parametrize("profile", [DGX_H100, GENERIC, None])
def test_gpu_on_pci_but_not_in_nvml_is_reboot_on_its_address(profile):
    """Whatever the profile says: the kernel sees the board, the driver did not bring it up."""
    nvml = [b for b in H100_BUS if b != "0000:ab:00.0"]
    out = evaluate(data(nvml=nvml), profile)
    assert summary(out) == [("REBOOT", "0000:ab:00.0", "GPU 0000:ab:00.0 is on PCI but NVML does not list it")]
    assert "reboot" in out[0].remediation


def test_fewer_gpus_than_the_profile_expects_is_reboot():
    """Seven on PCI and seven in NVML: the eighth is gone from the bus altogether."""
    assert summary(evaluate(data(nvml=7, pci=7))) == [
        ("REBOOT", None, "7 GPUs on PCI and 7 in NVML, profile dgx-h100 expects 8")]


def test_pci_unreadable_falls_back_to_the_nvml_count():
    """No NVIDIA GPU readable on sysfs (a container without /sys/bus/pci): NVML's count is held
    to the profile alone."""
    assert [f.severity.value for f in evaluate(data(pci=0))] == ["PASS"]
    assert summary(evaluate(data(nvml=6, pci=0))) == [
        ("REBOOT", None, "0 GPUs on PCI and 6 in NVML, profile dgx-h100 expects 8")]


def test_missing_gpu_and_a_shortfall_are_both_reported():
    nvml = H100_BUS[:5]
    out = evaluate(data(nvml=nvml, pci=7))
    assert [(f.severity.value, f.device) for f in out] == [
        ("REBOOT", "0000:ab:00.0"), ("REBOOT", "0000:ba:00.0"), ("REBOOT", None)]
    assert out[2].message == "7 GPUs on PCI and 5 in NVML, profile dgx-h100 expects 8"


def test_more_gpus_than_the_profile_expects_is_monitor():
    four = P.parse('quad gpus=4 model="H100"\n')["quad"]
    assert summary(evaluate(data(), four)) == [
        ("MONITOR", None, "NVML lists 8 GPUs, profile quad expects 4: is the profile right?")]


def test_another_gpu_model_than_the_profile_is_monitor():
    names = [H100] * 7 + ["NVIDIA A100-SXM4-80GB"]
    out = evaluate(data(names=names))
    assert summary(out) == [("MONITOR", None, "GPU model NVIDIA A100-SXM4-80GB is not the profile's H100")]
    # the model is a case-insensitive part of the name; a profile without one checks none
    assert [f.severity.value for f in evaluate(data(names=["nvidia h100 nvl"] * 8))] == ["PASS"]
    assert [f.severity.value for f in evaluate(data(names=names), GENERIC)] == ["PASS"]


@pytest.mark.parametrize("model,name", [("H100", "NVIDIA H100 80GB HBM3"), ("A10G", "NVIDIA A10G"), ("L4", "NVIDIA L4"),
                                        ("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"), ("B200", "NVIDIA B200")])
def test_the_profiles_model_in_the_gpu_name_passes(model, name):
    profile = P.parse('p gpus=8 model="%s"\n' % model)["p"]
    assert [f.severity.value for f in evaluate(data(names=[name] * 8), profile)] == ["PASS"]


@pytest.mark.parametrize("model,name", [("L4", "NVIDIA L40S"), ("L4", "NVIDIA L40"), ("B200", "NVIDIA GB200"),
                                        ("H200", "NVIDIA GH200 480GB"), ("A10", "NVIDIA A100 80GB PCIe")])
def test_a_model_whose_name_is_part_of_another_models_is_not_that_model(model, name):
    """A g6.48xlarge line (model="L4") given, by a Slurm node feature, to a g6e node of L40S GPUs;
    an 8-GPU B200 or H200 line on a Grace Blackwell or Grace Hopper node: the GPUs are another model,
    which this check exists to say (MONITOR: is the profile right?)."""
    profile = P.parse('p gpus=8 model="%s"\n' % model)["p"]
    out = evaluate(data(names=[name] * 8), profile)
    assert summary(out) == [("MONITOR", None, "GPU model %s is not the profile's %s" % (name, model))]


def test_a_board_swapped_since_the_last_run_is_monitor_on_its_address():
    bus = "0000:5d:00.0"
    before = {bus: {"uuid": "GPU-old", "serial": "1650000000001", "index": 3}}
    now = {bus: {"uuid": "GPU-new", "serial": "1650000000002", "index": 3}}
    out = evaluate(data(boards=now, previous=before))
    assert summary(out) == [("MONITOR", bus, "GPU3 0000:5d:00.0 is another board since the last run: "
                                             "serial 1650000000001 (GPU-old) -> serial 1650000000002 (GPU-new)")]
    assert out[0].metrics == {"gpu": 3} and "replaced GPU" in out[0].remediation
    # the same board, a board with no record, or a record without a UUID: nothing to say
    for prev in (now, {}, {bus: {"uuid": None, "index": 3}}, {bus: "garbage"}):
        assert [f.severity.value for f in evaluate(data(boards=now, previous=prev))] == ["PASS"]


def test_a_swapped_board_without_serials_says_so():
    bus = "0000:18:00.0"
    out = evaluate(data(boards={bus: {"uuid": "GPU-b", "serial": None, "index": 0}},
                        previous={bus: {"uuid": "GPU-a", "index": 0}}))
    assert summary(out) == [("MONITOR", bus, "GPU0 0000:18:00.0 is another board since the last run: "
                                             "serial ? (GPU-a) -> serial ? (GPU-b)")]


# -- gather -> evaluate on simulated nodes ---------------------------------------------------------

def test_healthy_node():
    ctx = sim_context("h100-healthy", profile=DGX_H100)
    d = GC.gather(ctx)
    assert d["pci"] == H100_BUS and [bus for _, bus in d["nvml"]] == H100_BUS and d["names"] == [H100] * 8
    assert d["previous"] == {} and sorted(d["boards"]) == H100_BUS
    assert d["boards"]["0000:5d:00.0"]["uuid"] == ctx.inventory.gpus[3].uuid
    assert d["_state"] == {"host": "sim", "boards": d["boards"]}
    assert summary(GC.evaluate(d, DGX_H100, C.defaults())) == [("PASS", None, "8 GPUs in NVML, 8 on PCI")]


def test_gpu_missing_scenario():
    """h100-gpu-missing: the GPU at 0000:ab:00.0 is on PCI, NVML lists the other seven."""
    d = GC.gather(sim_context("h100-gpu-missing", profile=DGX_H100))
    assert len(d["nvml"]) == 7 and len(d["pci"]) == 8
    assert summary(GC.evaluate(d, DGX_H100, C.defaults())) == [
        ("REBOOT", "0000:ab:00.0", "GPU 0000:ab:00.0 is on PCI but NVML does not list it")]


def test_node_short_of_gpus_on_every_bus(tmp_path):
    sc = tmp_path / "six.yaml"
    sc.write_text("extends: h100-healthy\ngpu_count: 6\npci_bus_ids: %s\n" % H100_BUS[:6])
    d = GC.gather(sim_context(sc, profile=DGX_H100))
    assert summary(GC.evaluate(d, DGX_H100, C.defaults())) == [
        ("REBOOT", None, "6 GPUs on PCI and 6 in NVML, profile dgx-h100 expects 8")]


def test_other_model_than_the_profile():
    d = GC.gather(sim_context("a100-healthy", profile=DGX_H100))
    out = GC.evaluate(d, DGX_H100, C.defaults())
    assert [(f.severity.value, f.device) for f in out] == [("MONITOR", None)]
    assert "is not the profile's H100" in out[0].message and "A100" in out[0].message


def test_board_swap_between_two_gathers_and_boards_of_another_host_kind(tmp_path):
    first = GC.gather(sim_context("h100-healthy"))
    sc = tmp_path / "swapped.yaml"
    sc.write_text("extends: h100-healthy\ngpus: {3: {identity: {uuid: GPU-5e0c-new, serial: '1654923000123'}}}\n")
    second = GC.gather(sim_context(sc, previous={"gpu_count": first["_state"]}))
    out = GC.evaluate(second, DGX_H100, C.defaults())
    assert [(f.severity.value, f.device, f.metrics) for f in out] == [("MONITOR", "0000:5d:00.0", {"gpu": 3})]
    assert out[0].message.endswith("-> serial 1654923000123 (GPU-5e0c-new)")
    # boards a real run kept are not compared with simulated ones
    kept = dict(first["_state"], host="local")
    third = GC.gather(sim_context(sc, previous={"gpu_count": kept}))
    assert third["previous"] == {} and [f.severity.value for f in GC.evaluate(third, DGX_H100, C.defaults())] == ["PASS"]


def test_a_gpu_missing_this_run_keeps_its_last_board():
    first = GC.gather(sim_context("h100-healthy"))
    second = GC.gather(sim_context("h100-gpu-missing", previous={"gpu_count": first["_state"]}))
    assert "0000:ab:00.0" not in second["boards"]
    assert second["_state"]["boards"]["0000:ab:00.0"] == first["boards"]["0000:ab:00.0"]


def test_through_the_runner(run_scenario):
    report = run_scenario("h100-gpu-missing", checks=["gpu_count"])
    found = [(f.severity.value, f.device) for f in report.findings if f.check == "gpu_count"]
    assert found == [("REBOOT", "0000:ab:00.0")] and report.overall.value == "REBOOT"
