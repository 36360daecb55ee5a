"""fabric: on NVSwitch systems each GPU's fabric registration completed with success (RESET when
not started, in progress, or completed with an error) and nvidia-fabricmanager is active (RESET
otherwise, on the service); a node without an NVSwitch fabric is SKIP. Pure evaluate on hand-built
entries, then gather -> evaluate on simulated nodes (systemctl answered by the scenario), then the
runner, and a PCIe server not taken for an NVSwitch system."""
import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import FABRIC_COMPLETED, FABRIC_IN_PROGRESS, FABRIC_NOT_STARTED, GpuError
from gpuhc.checks import fabric as FA
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

from test_checks_nvml import sim_context, summary

PROFILES = P.load()
DGX_H100, A30, GENERIC = PROFILES["dgx-h100"], PROFILES["a30-2gpu"], PROFILES["generic"]
REGISTERED = {"state": FABRIC_COMPLETED, "status": 0, "clique_id": 0, "cluster_uuid": None}


def _bad(findings, at_least="RESET"):
    order = ["PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE"]
    return [(f.check, f.severity.value, f.message) for f in findings
            if f.severity.value in order and order.index(f.severity.value) >= order.index(at_least)]


def fabric(state=FABRIC_COMPLETED, status=0):
    return dict(REGISTERED, state=state, status=status)


def evaluate(*values, profile=DGX_H100, service="active"):
    """One entry per value (GPU 0, 1, ...); a GpuError in place of a value is that GPU's error."""
    entries = [Entry(GpuRef(i, "GPU-%d" % i), error=v) if isinstance(v, GpuError) else Entry(GpuRef(i, "GPU-%d" % i), v)
               for i, v in enumerate(values)]
    return FA.evaluate({"gpus": entries, "service": service}, profile, C.defaults())


# -- evaluate on fixtures ----------------------------------------------------------------------------

def test_nvswitch_node_registered_with_the_service_active_passes():
    assert summary(evaluate(fabric(), fabric())) == [
        ("PASS", None, "fabric registered on every GPU, nvidia-fabricmanager active")]


@pytest.mark.parametrize("state,name", [(FABRIC_NOT_STARTED, "not_started"), (FABRIC_IN_PROGRESS, "in_progress"),
                                        (0, "not_supported"), (9, "9")])
def test_registration_not_completed_is_reset_on_its_gpu(state, name):
    out = evaluate(fabric(), fabric(state=state))
    assert summary(out) == [("RESET", 1, "GPU fabric registration %s" % name)]
    assert "nvidia-fabricmanager" in out[0].remediation


def test_registration_completed_with_an_error_is_reset():
    out = evaluate(fabric(status=5), fabric())
    assert summary(out) == [("RESET", 0, "GPU fabric registration completed with error 5")]


def test_registration_status_none_counts_as_success():
    """Older pynvml structs carry no status: a completed registration without one is not an error."""
    assert [f.severity.value for f in evaluate(fabric(status=None))] == ["PASS"]


@pytest.mark.parametrize("service", ["failed", "inactive", "activating", "timed out", "unknown (rc 127)", None])
def test_fabric_manager_not_active_is_reset_on_the_service(service):
    out = evaluate(fabric(), fabric(), service=service)
    assert summary(out) == [("RESET", "nvidia-fabricmanager", "nvidia-fabricmanager is %s" % service)]
    assert out[0].gpu is None and out[0].remediation.startswith("systemctl restart nvidia-fabricmanager")


def test_service_down_and_gpus_unregistered_are_each_reported():
    out = evaluate(fabric(state=FABRIC_NOT_STARTED), fabric(state=FABRIC_NOT_STARTED), service="failed")
    assert [(f.severity.value, f.gpu.index if f.gpu else f.device) for f in out] == [
        ("RESET", 0), ("RESET", 1), ("RESET", "nvidia-fabricmanager")]


@pytest.mark.parametrize("profile", [A30, GENERIC, None])
def test_no_nvswitch_expected_and_no_fabric_reported_is_skip(profile):
    out = evaluate(None, None, profile=profile, service=None)
    assert summary(out) == [("SKIP", None, "no NVSwitch fabric on this node")]


def test_without_the_expectation_the_gpus_own_fabric_state_is_still_judged():
    """A profile that says nothing of NVSwitch (generic) on a node whose GPUs report a fabric: an
    unregistered GPU is still RESET; the service is not asked of such a node."""
    assert summary(evaluate(fabric(), fabric(state=FABRIC_NOT_STARTED), profile=GENERIC, service=None)) == [
        ("RESET", 1, "GPU fabric registration not_started")]
    assert summary(evaluate(fabric(), fabric(), profile=GENERIC, service=None)) == [
        ("PASS", None, "fabric registered on every GPU")]


def test_a_gpu_error_is_mapped_on_its_gpu():
    out = evaluate(fabric(), GpuError(G.GPU_IS_LOST, "fabric", 1))
    assert [(f.severity.value, f.gpu.index) for f in out] == [("REBOOT", 1)]
    assert "GPU is lost" in out[0].message and "(GPU_IS_LOST in fabric" in out[0].message
    # an error on a node that expects no NVSwitch is reported, not hidden behind SKIP
    out = evaluate(None, GpuError(G.RESET_REQUIRED, "fabric", 1), profile=A30, service=None)
    assert [(f.severity.value, f.gpu.index) for f in out] == [("RESET", 1)]


# -- gather -> evaluate on simulated nodes ---------------------------------------------------------

def test_healthy_nvswitch_node():
    data = FA.gather(sim_context("h100-healthy", profile=DGX_H100))
    assert data["service"] == "active" and [e.value["state"] for e in data["gpus"]] == [FABRIC_COMPLETED] * 8
    assert summary(FA.evaluate(data, DGX_H100, C.defaults())) == [
        ("PASS", None, "fabric registered on every GPU, nvidia-fabricmanager active")]


def test_fabric_manager_down_scenario():
    """h100-fabricmanager-down: the service failed and no GPU's registration started."""
    data = FA.gather(sim_context("h100-fabricmanager-down", profile=DGX_H100))
    assert data["service"] == "failed"
    out = FA.evaluate(data, DGX_H100, C.defaults())
    assert [(f.severity.value, f.gpu.index if f.gpu else f.device) for f in out] == \
        [("RESET", i) for i in range(8)] + [("RESET", "nvidia-fabricmanager")]
    assert {f.message for f in out if f.gpu} == {"GPU fabric registration not_started"}
    assert out[-1].message == "nvidia-fabricmanager is failed"


def test_service_is_asked_only_where_the_profile_has_nvswitch():
    data = FA.gather(sim_context("h100-fabricmanager-down", profile=GENERIC))
    assert data["service"] is None
    out = FA.evaluate(data, GENERIC, C.defaults())
    assert {(f.severity.value, f.message) for f in out} == {("RESET", "GPU fabric registration not_started")}
    assert len(out) == 8


def test_pcie_server_without_fabric_is_skip():
    data = FA.gather(sim_context("a30-healthy", profile=A30))
    assert data["service"] is None and [e.value for e in data["gpus"]] == [None, None]
    assert summary(FA.evaluate(data, A30, C.defaults())) == [("SKIP", None, "no NVSwitch fabric on this node")]


def test_systemctl_missing_or_hanging_is_not_active(tmp_path):
    """No systemctl answer is no evidence the fabric manager runs: the service is RESET with what
    happened (the command's return code, or that it timed out within timeouts.command)."""
    sc = tmp_path / "no-systemctl.yaml"
    sc.write_text("extends: h100-healthy\ncommands: null\n")
    data = FA.gather(sim_context(sc, profile=DGX_H100))
    assert summary(FA.evaluate(data, DGX_H100, C.defaults())) == [
        ("RESET", "nvidia-fabricmanager", "nvidia-fabricmanager is unknown (rc 127)")]
    sc = tmp_path / "hung-systemctl.yaml"
    sc.write_text("extends: h100-healthy\ncommands: {'systemctl is-active nvidia-fabricmanager': {hang: 30}}\n")
    cfg = C.validate({"timeouts": {"command": 0.2}})
    data = FA.gather(sim_context(sc, profile=DGX_H100, config=cfg))
    assert summary(FA.evaluate(data, DGX_H100, cfg)) == [
        ("RESET", "nvidia-fabricmanager", "nvidia-fabricmanager is timed out")]


def test_through_the_runner(run_scenario):
    report = run_scenario("h100-fabricmanager-down", checks=["fabric"])
    assert report.profile == "dgx-h100" and report.overall.value == "RESET"
    service = [f for f in report.findings if f.check == "fabric" and f.device == "nvidia-fabricmanager"]
    assert [(f.severity.value, f.message) for f in service] == [("RESET", "nvidia-fabricmanager is failed")]


# -- PCIe / NVL boards auto-detected as the SXM NVSwitch profile -----------------------------------
# An operator situation in which the lightweight checks drained a good node (found by a review):
# PCIe/NVL boards taken for an NVSwitch system. It spans the checks such a profile gets wrong
# (nvlink, fabric, network); the NVSwitch expectation is this check's.

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
