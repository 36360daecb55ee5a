"""network: EFA devices and InfiniBand ports against the profile, RDMA host setup, link flapping."""
import pytest

from gpuhc import config as C
from gpuhc import session
from gpuhc.backends.host import LocalHost
from gpuhc.checks import network as N
from gpuhc.checks.base import Context
from gpuhc.profiles import Profile

DGX_H100 = Profile("dgx-h100", gpus=8, ib=8, ib_rate=400.0)
P5 = Profile("p5.48xlarge", gpus=8, efa=32)
GENERIC = Profile("generic")
UNLIMITED = "unlimited"
NETWORK = ["nvml", "network"]        # nvml gives the inventory the profile is detected from
RDMA_MODULES = ["efa", "ib_core", "ib_uverbs", "mlx5_ib"]


def port(state="4: ACTIVE", phys="5: LinkUp", rate="400 Gb/sec (4X NDR)", layer="InfiniBand", downed="0"):
    return {"state": state, "phys_state": phys, "rate": rate, "link_layer": layer, "link_downed": downed}


def hcas(n=8, over=None):
    """n single-port mlx5 devices; over: {index: port(...)}"""
    over = over or {}
    return {"mlx5_%d" % i: {"vendor": "0x15b3", "ports": {"1": over.get(i, port())}} for i in range(n)}


def efas(n, vendor="0x1d0f", prefix="rdmap", state="4: ACTIVE"):
    return {"%s%ds0" % (prefix, 16 + i): {"vendor": vendor, "ports": {"1": {"state": state}}} for i in range(n)}


def evaluate(devices, profile=DGX_H100, previous=None, modules=RDMA_MODULES, uverbs=None, limit=UNLIMITED, **conf):
    cfg = C.validate({"network": conf} if conf else {})
    data = {"devices": devices, "uverbs": ["uverbs%d" % i for i in range(len(devices))] if uverbs is None else uverbs,
            "modules": modules, "memlock": limit, "previous": previous or {}}
    return N.evaluate(data, profile, cfg)


def run_text(run_scenario, tmp_path, text):
    """A scenario written from text, run with the network check: the report and its network findings."""
    (tmp_path / "node.yaml").write_text(text)
    report = run_scenario(str(tmp_path / "node.yaml"), checks=NETWORK)
    return report, [f for f in report.findings if f.check == "network"]


def problems(findings):
    return [(f.severity.value, f.where(), f.message) for f in findings if f.severity.value != "PASS"]


def test_no_devices_and_no_expectation_is_skip():
    out = evaluate({}, GENERIC)
    assert [f.severity.value for f in out] == ["SKIP"] and "expects none" in out[0].message


def test_healthy_ib_node_passes_with_metrics():
    out = evaluate(hcas(8))
    assert problems(out) == []
    assert "8 InfiniBand ports active at 400 Gb/s" in out[0].message and out[0].metrics["ib_ports_active"] == 8


def test_missing_ib_devices_are_reset():
    out = evaluate({}, DGX_H100)
    assert [(s, w) for s, w, _ in problems(out)] == [("RESET", "ib")]
    assert "0 InfiniBand ports found, profile dgx-h100 expects 8" in out[0].message


def test_down_port_against_the_profile_is_reset():
    out = evaluate(hcas(8, {5: port(state="1: DOWN", phys="3: Disabled")}))
    assert problems(out) == [("RESET", "mlx5_5/1", "InfiniBand port mlx5_5/1 is DOWN, physical state Disabled "
                                                  "(7 of 8 expected ports active at 400 Gb/s)")]


def test_active_port_without_linkup_counts_as_down():
    out = evaluate(hcas(8, {2: port(phys="4: LinkErrorRecovery")}))
    assert [(s, w) for s, w, _ in problems(out)] == [("RESET", "mlx5_2/1")]


def test_inactive_port_without_expectation_is_monitor_only_beside_active_ones():
    out = evaluate(hcas(4, {3: port(state="1: DOWN", phys="2: Polling")}), GENERIC)
    assert [(s, w) for s, w, _ in problems(out)] == [("MONITOR", "mlx5_3/1")]
    assert "no expectation" in out[0].message
    # all ports down and nothing expects them: the node simply does not use IB
    out = evaluate(hcas(2, {0: port(state="1: DOWN"), 1: port(state="1: DOWN")}), GENERIC)
    assert problems(out) == [] and "none in use" in out[0].message


def test_extra_down_port_beyond_the_expectation_is_monitor():
    out = evaluate(hcas(9, {8: port(state="1: DOWN", phys="2: Polling")}))
    assert [(s, w) for s, w, _ in problems(out)] == [("MONITOR", "mlx5_8/1")]


def test_degraded_rate_against_the_profile_is_reset():
    out = evaluate(hcas(8, {3: port(rate="200 Gb/sec (4X HDR)")}))
    assert problems(out) == [("RESET", "mlx5_3/1", "InfiniBand port mlx5_3/1 at 200 Gb/s, profile expects 8 ports at 400, 7 are (degraded link)")]
    assert out[0].metrics["rate"] == 200.0


def test_slower_port_without_profile_rate_is_monitor_against_peers():
    out = evaluate(hcas(4, {1: port(rate="100 Gb/sec (4X EDR)")}), Profile("ib-only", ib=4))
    assert problems(out) == [("MONITOR", "mlx5_1/1", "InfiniBand port mlx5_1/1 at 100 Gb/s, other ports run at 400 (degraded link)")]


def test_ethernet_ports_are_not_counted_as_infiniband():
    devices = hcas(8)
    devices["mlx5_8"] = {"vendor": "0x15b3", "ports": {"1": port(state="1: DOWN", layer="Ethernet")}}
    assert problems(evaluate(devices)) == []


def test_efa_count_against_the_profile():
    assert problems(evaluate(efas(32), P5)) == []
    out = evaluate(efas(31), P5)
    assert problems(out) == [("REBOOT", "efa", "31 of 32 EFA devices, profile p5.48xlarge")]
    assert out[0].metrics == {"efa_devices": 31} and "stop and start" in out[0].remediation


def test_efa_recognised_by_vendor_and_an_inactive_one_is_named():
    devices = efas(31)
    devices["efa_7"] = {"vendor": "0x1d0f", "ports": {"1": {"state": "1: DOWN"}}}
    out = evaluate(devices, P5)
    assert problems(out) == [("REBOOT", "efa", "31 of 32 EFA devices (not active: efa_7), profile p5.48xlarge")]
    named_by_vendor = {"ena0x": {"vendor": "0x1d0f", "ports": {"1": {"state": "4: ACTIVE"}}}}
    assert N.is_efa("ena0x", named_by_vendor["ena0x"]) and not N.is_efa("mlx5_0", {"vendor": "0x15b3"})


def test_missing_kernel_module_and_uverbs_nodes_are_reset():
    out = evaluate(efas(32), P5, modules=["ib_core", "ib_uverbs"], uverbs=["uverbs%d" % i for i in range(30)])
    assert sorted(problems(out)) == [("RESET", "modules", "kernel modules not loaded: efa"),
                                     ("RESET", "uverbs", "30 uverbs device nodes in /dev/infiniband for 32 RDMA devices")]
    # /proc/modules unreadable: no verdict on modules
    assert problems(evaluate(efas(32), P5, modules=None)) == []


def test_memlock_limited_is_monitor():
    out = evaluate(hcas(8), limit="65536")
    assert problems(out) == [("MONITOR", "memlock", "max locked memory is 64 KiB, RDMA jobs need unlimited")]
    assert "LimitMEMLOCK=infinity" in out[0].remediation
    assert problems(evaluate(hcas(8), limit="65536", memlock=False)) == []      # check turned off in config


def test_proc_parsers_on_real_text():
    limits = ("Limit                     Soft Limit           Hard Limit           Units     \n"
              "Max stack size            8388608              unlimited            bytes     \n"
              "Max locked memory         8388608              8388608              bytes     \n"
              "Max address space         unlimited            unlimited            bytes     \n")
    assert N.memlock_limit(limits) == "8388608" and N.memlock_limit("") is None
    assert N.memlock_limit(limits.replace("8388608              8388608", "unlimited            unlimited")) == UNLIMITED
    modules = ("efa 135168 0 - Live 0xffffffffc0a3d000\n"
               "ib_uverbs 184320 2 rdma_ucm,efa, Live 0xffffffffc09c5000\n")
    assert N.modules_loaded(modules) == ["efa", "ib_uverbs"] and N.modules_loaded(None) is None


def test_link_downed_growth_since_last_run_is_flapping():
    now = hcas(8, {4: port(downed="7")})
    out = evaluate(now, previous={"mlx5_4/1": 2, "mlx5_0/1": 0})
    assert problems(out) == [("MONITOR", "mlx5_4/1", "InfiniBand port mlx5_4/1 went down 5 times since the last run (flapping)")]
    assert out[0].metrics["link_downed"] == 7 and out[0].metrics["link_downed_delta"] == 5
    # first run (no previous value), and a counter that went back to zero: no flapping
    assert problems(evaluate(now)) == []
    assert problems(evaluate(hcas(8), previous={"mlx5_4/1": 9})) == []
    assert problems(evaluate(now, previous={"mlx5_4/1": 2}, flap_threshold=10)) == []


# -- through the whole path ------------------------------------------------------------------------

def test_healthy_scenarios_pass_and_a_node_without_rdma_skips(run_scenario):
    for name, text in (("h100-healthy", "8 InfiniBand ports active at 400 Gb/s"),
                       ("a100-healthy", "8 InfiniBand ports active at 200 Gb/s")):
        report = run_scenario(name, checks=NETWORK)
        net = [f for f in report.findings if f.check == "network"]
        assert [f.severity.value for f in net] == ["PASS"] and text in net[0].message, name
    report = run_scenario("a30-healthy", checks=NETWORK)
    assert [f.severity.value for f in report.findings if f.check == "network"] == ["SKIP"]


def test_p5_missing_efa_device_is_reboot(run_scenario, tmp_path):
    report = run_scenario("p5-efa-missing", checks=NETWORK)
    assert report.profile == "p5.48xlarge" and report.overall.value == "REBOOT"
    # the same node with its 32nd device back passes
    report, net = run_text(run_scenario, tmp_path, 'extends: p5-efa-missing\nfiles:\n'
                           '  /sys/class/infiniband/rdmap49s0/ports/1/state: "4: ACTIVE"\n  /dev/infiniband/uverbs99: ""\n')
    assert report.overall.value == "PASS" and "32 EFA devices" in net[0].message, [f.message for f in net]


def test_ib_degraded_scenario(run_scenario):
    # the DGX named (config or Slurm feature): a profile detected from the GPUs alone expects no IB layout
    report = run_scenario("dgx-h100-ib-degraded", checks=NETWORK, profile="dgx-h100")
    got = sorted((f.severity.value, f.where()) for f in report.findings if f.check == "network")
    assert got == [("RESET", "mlx5_3/1"), ("RESET", "mlx5_6/1")]


def test_link_flapping_across_two_runs(tmp_path, make_cfg):
    sc = tmp_path / "node.yaml"
    cfg = make_cfg(simulate=str(sc))
    base = "extends: h100-healthy\nfiles:\n  /sys/class/infiniband/mlx5_2/ports/1/counters/link_downed: \"%d\"\n"
    out = []
    for downed in (1, 4):
        sc.write_text(base % downed)
        report, _, _ = session.run(cfg, "check", checks=NETWORK, node="gpu-009")
        out.append([f for f in report.findings if f.check == "network"])
    assert [f.severity.value for f in out[0]] == ["PASS"] and out[0][0].metrics["link_downed"] == 1
    assert [(f.severity.value, f.where()) for f in out[1]] == [("MONITOR", "mlx5_2/1")]
    assert "went down 3 times" in out[1][0].message


def test_memlock_from_the_scenario(run_scenario, tmp_path):
    _, net = run_text(run_scenario, tmp_path, "extends: h100-healthy\nfiles:\n  /proc/self/limits: |\n"
                      "    Limit                     Soft Limit           Hard Limit           Units\n"
                      "    Max locked memory         65536                65536                bytes\n")
    assert [(f.severity.value, f.where()) for f in net] == [("MONITOR", "memlock")]


def test_gather_reads_a_real_sysfs_tree(tmp_path):
    """LocalHost under a root: the same paths on a real filesystem."""
    def put(rel, text):
        path = tmp_path / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for i in range(2):
        base = "/sys/class/infiniband/mlx5_%d/ports/1/" % i
        put(base + "state", "4: ACTIVE\n")
        put(base + "phys_state", "5: LinkUp\n")
        put(base + "rate", "400 Gb/sec (4X NDR)\n")
        put(base + "link_layer", "InfiniBand\n")
        put(base + "counters/link_downed", "%d\n" % i)
        put("/dev/infiniband/uverbs%d" % i, "")
    put("/proc/modules", "ib_uverbs 184320 2 - Live 0x0\nib_core 458752 8 - Live 0x0\n")
    put("/proc/self/limits", "Max locked memory         unlimited            unlimited            bytes\n")
    ctx = Context(node="n1", context="check", gpu=None, host=LocalHost(root=str(tmp_path)), config=C.defaults())
    data = N.gather(ctx)
    assert data["_state"] == {"mlx5_0/1": 0, "mlx5_1/1": 1} and data["memlock"] == UNLIMITED
    assert data["uverbs"] == ["uverbs0", "uverbs1"] and data["modules"] == ["ib_uverbs", "ib_core"]
    out = N.evaluate(data, Profile("two", ib=2, ib_rate=400.0), C.defaults())
    assert problems(out) == [] and "2 InfiniBand ports active at 400 Gb/s" in out[0].message


@pytest.mark.parametrize("suite", ["prolog", "epilog", "healthcheck", "lightweight"])
def test_network_is_lightweight(suite):
    assert "network" in C.defaults()["suites"][suite]


# -- InfiniBand storage ports counted as compute ports ---------------------------------------------
# Operator situations in which the lightweight checks drained a good node or let a bad GPU through
# (found by a review): IB storage ports counted as compute rails.


def _bad(findings, at_least="RESET"):
    order = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]
    return [(f.check, f.severity.value, f.message) for f in findings
            if f.severity.value in order and order.index(f.severity.value) >= order.index(at_least)]


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
