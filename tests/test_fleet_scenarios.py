"""A mixed fleet's healthy nodes, one scenario per common NVIDIA server type (tests/data/fleet/), run
through the prolog and lightweight suites with the profile detection picks and with `generic`: no
RESET or worse and no MONITOR a healthy node should not get. Then one test per false finding a
review of that fleet found (NVLinks unused by design taken for faults, MIG's disabled NVLinks
taken for dead ones, an optional EFA taken for a lost one, an OEM HGX held to a DGX's InfiniBand
rails), each with the real fault beside it still caught."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET = os.path.join(ROOT, "tests", "data", "fleet")
ORDER = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]

# scenario -> the profile detection picks (and how) on that node
DETECTED = {
    "dgx-a100-40gb.yaml": ("dgx-a100", "gpu-model"),
    "dgx-a100-80gb.yaml": ("dgx-a100", "gpu-model"),
    "a100-pcie-80gb-pair.yaml": ("generic", "fallback"),
    "h100-pcie-bridged.yaml": ("generic", "fallback"),
    "h100-nvl-8gpu.yaml": ("generic", "fallback"),
    "hgx-h200.yaml": ("dgx-h200", "gpu-model"),
    "hgx-h200-spectrumx.yaml": ("dgx-h200", "gpu-model"),
    "hgx-h100-ndr200.yaml": ("dgx-h100", "gpu-model"),
    "dgx-b200.yaml": ("hgx-b200", "gpu-model"),
    "gh200.yaml": ("gh200", "gpu-model"),
    "l40s-8gpu.yaml": ("generic", "fallback"),
    "g6e-48xlarge.yaml": ("g6e.48xlarge", "instance-type"),
    "g6-48xlarge.yaml": ("g6.48xlarge", "instance-type"),
    "g5-48xlarge.yaml": ("g5.48xlarge", "instance-type"),
    "g5-48xlarge-no-efa.yaml": ("g5.48xlarge", "instance-type"),
    "p4d-24xlarge.yaml": ("p4d.24xlarge", "instance-type"),
    "p5-48xlarge.yaml": ("p5.48xlarge", "instance-type"),
    "dgx1-v100-retired-pages.yaml": ("generic", "fallback"),
    "h100-idle-gen1.yaml": ("dgx-h100", "gpu-model"),
    "h100-idle-clock-reasons.yaml": ("dgx-h100", "gpu-model"),
    "h100-remaps-within-limits.yaml": ("dgx-h100", "gpu-model"),
    "h100-ecc-corrected-thousands.yaml": ("dgx-h100", "gpu-model"),
    "h100-persistence-off.yaml": ("dgx-h100", "gpu-model"),
}
# findings a healthy-hardware node still gets, by design: (scenario, check, severity)
EXPECTED = {("h100-persistence-off.yaml", "gpu_config", "MONITOR")}

# a site's own profile for a MIG partition (detection by model picks dgx-a100, which expects MIG off)
MIG_PROFILE = ('dgx-a100-mig  gpus=8 model="A100" nvlinks=12 nvswitch=yes ib=8 ib_rate=200 pcie_gen=4 '
               'pcie_width=16 mig=any auto=no description="site: DGX A100 partitioned with MIG"\n')


def _path(name):
    return os.path.join(FLEET, name)


def _findings(report, at_least="MONITOR"):
    return [(f.check, f.severity.value, f.gpu.index if f.gpu else f.device, f.message) for f in report.findings
            if f.severity.value in ORDER and ORDER.index(f.severity.value) >= ORDER.index(at_least)]


def _unexpected(name, report):
    """MONITOR and worse not listed in EXPECTED, and any ERROR (a check that could not run)."""
    errors = [(f.check, f.severity.value, f.where(), f.message) for f in report.findings if f.severity.value == "ERROR"]
    return [f for f in _findings(report) if (name, f[0], f[1]) not in EXPECTED] + errors


@pytest.fixture
def mig_profiles(tmp_path):
    with open(os.path.join(ROOT, "instance-profiles.conf")) as fh:
        bundled = fh.read()
    path = tmp_path / "profiles.conf"
    path.write_text(bundled + MIG_PROFILE)
    return str(path)


def test_every_fleet_scenario_is_listed():
    on_disk = {f for f in os.listdir(FLEET) if f.endswith(".yaml") and not f.startswith("_")}
    assert on_disk == set(DETECTED) | {"mig-a100.yaml"}


@pytest.mark.parametrize("suite", ["prolog", "lightweight"])
@pytest.mark.parametrize("name", sorted(DETECTED))
def test_healthy_node_of_each_type_passes_with_the_detected_profile(make_cfg, name, suite):
    """An operator's healthy node of this type, profile left to detection (Slurm features off, the
    scenario's instance type standing for IMDS): the profile named, nothing found."""
    from gpuhc import session

    report, detection, _ = session.run(make_cfg(), "check", suite=suite, node="fleet-001", simulate=_path(name))
    assert (report.profile, detection.how) == DETECTED[name]
    assert _unexpected(name, report) == []


@pytest.mark.parametrize("suite", ["prolog", "lightweight"])
@pytest.mark.parametrize("name", sorted(DETECTED) + ["mig-a100.yaml"])
def test_healthy_node_of_each_type_passes_with_generic(make_cfg, name, suite):
    """The same nodes with `profile: generic` (what a node no line describes gets): it checks what
    needs no expectation, and a healthy node has nothing to show for it."""
    from gpuhc import session

    report, _, _ = session.run(make_cfg(profile="generic"), "check", suite=suite, node="fleet-001",
                               simulate=_path(name))
    assert report.profile == "generic"
    assert _unexpected(name, report) == []


# -- 1. NVLinks a board has but does not use, taken for faults when the profile has no expectation --

@pytest.mark.parametrize("name", ["a100-pcie-80gb-pair.yaml", "h100-pcie-bridged.yaml", "h100-nvl-8gpu.yaml",
                                  "gh200.yaml"])
def test_nvlinks_unused_by_design_are_not_monitor_without_expectation(run_scenario, tmp_path, name):
    """A 2x A100 80GB PCIe server without a bridge (NVML lists 12 links per GPU, all down), H100
    PCIe / H100 NVL servers bridged in pairs (18 links listed, 12 wired by the three bridges), a
    GH200 node (18 NVLink ports for multi-node systems, none connected): no profile described them,
    so they ran under `generic`, and every GPU of every such node was commented "NVLinks ...
    inactive" at every prolog. Without an expectation, an inactive link is a finding only where the
    node's other GPUs show it could be up: a GPU with fewer active links than its peers."""
    report = run_scenario(_path(name), checks=["nvlink"], profile="generic")
    assert _findings(report) == []

    # still caught: a bridge link down shows on both GPUs of the pair, against the other pair's 12
    if name == "h100-pcie-bridged.yaml":
        down = tmp_path / "bridge-link-down.yaml"
        down.write_text("extends: %s\ngpus:\n" % _path(name) + "".join(
            "  %d: {nvlink: {count: 18, down: [0, 4, 5, 10, 11, 16, 17]}}\n" % i for i in (0, 1)))
        found = _findings(run_scenario(str(down), checks=["nvlink"], profile="generic"))
        assert [(f[1], f[2]) for f in found] == [("MONITOR", 0), ("MONITOR", 1)], found
        assert "11 of 18 NVLinks active" in found[0][3] and "12" in found[0][3]


def test_nvlink_down_on_one_gpu_without_expectation_is_still_monitor(run_scenario):
    """The same rule on an NVSwitch node no profile describes: GPU 1 has a link down that its seven
    peers have up."""
    report = run_scenario("h100-nvlink-down", checks=["nvlink"], profile="generic")
    found = _findings(report)
    assert [(f[1], f[2]) for f in found] == [("MONITOR", 1)], found


# -- 2. MIG: NVLinks are disabled while a GPU is in MIG mode ------------------------------------

def test_mig_gpus_with_a_mig_any_profile_are_not_drained_for_nvlinks(run_scenario, tmp_path, mig_profiles):
    """A DGX A100 partitioned with MIG on every GPU, with the site's profile saying mig=any (GPUs may
    be partitioned or whole) and nvlinks=12 (what a whole GPU has). NVIDIA disables a GPU's NVLinks
    while it is in MIG mode (Fabric Manager user guide, MIG interoperability), so NVML shows 0 of 12
    active: every node drained RESET "0 of 12 NVLinks active" at its first job. A GPU in MIG mode is
    not held to the profile's NVLink count."""
    report = run_scenario(_path("mig-a100.yaml"), profile="dgx-a100-mig", profiles=mig_profiles)
    assert report.profile == "dgx-a100-mig"
    assert _findings(report) == []

    # still caught: on the same profile, a whole GPU (MIG off) with a dead link
    mixed = tmp_path / "mig-mixed.yaml"
    mixed.write_text("extends: %s\ngpus:\n  5: {modes: {mig_current: false, mig_pending: false}, "
                     "nvlink: {count: 12, down: [7]}}\n" % _path("mig-a100.yaml"))
    found = _findings(run_scenario(str(mixed), checks=["nvlink"], profile="dgx-a100-mig", profiles=mig_profiles))
    assert [(f[0], f[1], f[2]) for f in found] == [("nvlink", "RESET", 5)], found
    # and MIG where the profile expects whole GPUs (the bundled dgx-a100: mig=no) is still RESET
    found = _findings(run_scenario(_path("mig-a100.yaml"), checks=["gpu_config", "nvlink"]), "RESET")
    assert {(f[0], f[1]) for f in found} == {("gpu_config", "RESET")}, found


# -- 3. an optional EFA interface taken for a lost one ---------------------------------------------

def test_g5_launched_without_efa_is_not_drained(run_scenario):
    """A g5.48xlarge queue in AWS ParallelCluster, which attaches EFA only when the queue sets
    Efa.Enabled (default false): the instance has no EFA device, by the launch's choice. The
    g5.48xlarge profile said efa=1, so every node was drained REBOOT "0 of 1 EFA devices" and a
    reboot could not bring it back. EFA is optional on g5 (it is the whole point of p4d/p5/p6, whose
    lines keep their counts)."""
    report = run_scenario(_path("g5-48xlarge-no-efa.yaml"))
    assert report.profile == "g5.48xlarge"
    assert _findings(report) == []


def test_g5_attached_efa_down_is_still_found(run_scenario, tmp_path):
    """What the g5 line still catches without an EFA count (an attached EFA device that is not
    ACTIVE), and what p5, whose line keeps its count, still drains (a missing device)."""
    with open(_path("g5-48xlarge.yaml")) as fh:
        text = fh.read().replace('rdmap0s26/ports/1/state: "4: ACTIVE"', 'rdmap0s26/ports/1/state: "1: DOWN"')
    down = tmp_path / "g5-efa-down.yaml"
    down.write_text(text)
    found = _findings(run_scenario(str(down), checks=["network"]))
    assert [(f[0], f[1], f[2]) for f in found] == [("network", "MONITOR", "rdmap0s26")], found
    found = _findings(run_scenario("p5-efa-missing", checks=["network"]), "REBOOT")
    assert [(f[0], f[1]) for f in found] == [("network", "REBOOT")], found


# -- 4. an OEM HGX held to the DGX's InfiniBand layout because its GPUs match ----------------------

@pytest.mark.parametrize("name", ["hgx-h200-spectrumx.yaml", "hgx-h100-ndr200.yaml"])
def test_oem_hgx_on_its_own_fabric_is_not_held_to_the_dgx_rails(run_scenario, name):
    """An OEM HGX H200 on NVIDIA's Spectrum-X Ethernet fabric (eight BlueField-3 SuperNICs, RoCE,
    no InfiniBand) and an HGX H100 whose eight ConnectX-7 rails run NDR200: the same GPU baseboard
    as a DGX, so detection by GPU model and count picked dgx-h200 / dgx-h100, whose ib=8 ib_rate=400
    describe a DGX's network. Every node drained RESET ("0 InfiniBand ports found, profile dgx-h200
    expects 8"; "port at 200 Gb/s, profile expects 8 ports at 400"). The GPUs do not say how a node
    is networked: a profile picked from them expects no network layout."""
    report = run_scenario(_path(name))
    assert report.profile in ("dgx-h200", "dgx-h100")
    assert _findings(report) == []


def test_dgx_rail_faults_are_still_found(run_scenario):
    """The bundled DGX H100 with a rail down (mlx5_6) and one trained at HDR (mlx5_3): detected from
    its GPUs, both are still shown (MONITOR: a port down beside active ones, one slower than its
    peers); with the profile named, as a DGX site does, both drain (RESET)."""
    found = _findings(run_scenario("dgx-h100-ib-degraded", checks=["network"]))
    assert sorted((f[1], f[2]) for f in found) == [("MONITOR", "mlx5_3/1"), ("MONITOR", "mlx5_6/1")], found
    found = _findings(run_scenario("dgx-h100-ib-degraded", checks=["network"], profile="dgx-h100"))
    assert sorted((f[1], f[2]) for f in found) == [("RESET", "mlx5_3/1"), ("RESET", "mlx5_6/1")], found
