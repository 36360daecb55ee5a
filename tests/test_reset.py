"""gpuhc reset: the driver's GPU reset on a node without jobs, and the Xid events it resolves."""
import json

import pytest

from gpuhc import reset as R
from gpuhc import session
from gpuhc.backends.slurm import NodeView, SlurmError
from gpuhc.errors import GpuhcError

from conftest import gpuhc

X48 = "  - 'NVRM: Xid (PCI:0000:ab:00): 48, pid=1, name=p, An uncorrectable double bit error (DBE)'\n"
X79 = "  - 'NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=p, GPU has fallen off the bus.'\n"


@pytest.fixture
def node(tmp_path, make_cfg):
    """A simulated H100 node whose log has Xid 48 on GPU 5 and Xid 79 on GPU 0; Slurm off."""
    sc = tmp_path / "n.yaml"

    def write(log, extra=""):
        sc.write_text("extends: h100-healthy\n%skernel_log:\n%s" % (extra, log))

    write(X48 + X79)
    cfg = make_cfg(simulate=str(sc), slurm={"backend": "none"})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("store: %s\nstate_dir: %s\nsimulate: %s\nslurm: {backend: none}\n"
                        "detect: {slurm_features: false, cloud_metadata: false}\n"
                        % (cfg["store"], cfg["state_dir"], sc))

    def xids():
        report, _, _ = session.run(cfg, "check", checks=["xid"], node="gpu-020")
        return sorted((f.metrics.get("xid"), f.severity.value) for f in report.findings if f.check == "xid")

    def cli(*args):
        return gpuhc("reset", "--node", "gpu-020", *args, env={"GPUHC_CONFIG": str(cfg_file)})

    return type("Node", (), {"cfg": cfg, "write": staticmethod(write), "xids": staticmethod(xids),
                             "cli": staticmethod(cli)})


def test_reset_clears_what_a_reset_resolves_and_keeps_a_reboot(node):
    assert node.xids() == [(48, "RESET"), (79, "REBOOT")]
    res = node.cli("--json")                             # default: the GPUs with a RESET-tier Xid
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["gpu"], r["pci_bus_id"], r["result"]) for r in rows] == [("5", "0000:ab:00.0", "reset")]
    assert "1 Xid event(s) marked reset" in rows[0]["detail"]
    assert node.xids() == [(79, "REBOOT")]
    res = node.cli("--gpu", "0")                         # asked for: a reset does not fix a GPU off the bus
    assert res.returncode == 0 and "0000:18:00.0" in res.stdout
    assert "still needs more than a reset: Xid 79 (REBOOT)" in res.stdout, res.stdout
    assert node.xids() == [(79, "REBOOT")]
    report, _, _ = session.run(node.cfg, "check", checks=["xid"], node="gpu-020")
    assert "reset since does not clear a REBOOT event" in [f for f in report.findings if f.check == "xid"][0].message
    node.write(X48 + X79 + X48)                          # the fault comes back after the reset
    assert node.xids() == [(48, "RESET"), (79, "REBOOT")]


def test_an_xid_logged_while_the_reset_runs_still_counts(node, monkeypatch):
    """Events seen after the reset started are not the ones it resolved (a healthcheck running
    during the reset may read a recurrence)."""
    from gpuhc.backends import sim
    real_run = sim.SimHost.run

    def slow_reset(self, argv, timeout):
        if argv[:2] == ["nvidia-smi", "--gpu-reset"]:
            node.write(X48 + X79 + X48)
            node.xids()                                  # a concurrent healthcheck reads the recurrence
        return real_run(self, argv, timeout)

    monkeypatch.setattr(sim.SimHost, "run", slow_reset)
    rows = R.reset(node.cfg, node="gpu-020", wanted=["5"])
    assert rows[0].result == "reset"
    assert node.xids() == [(48, "RESET"), (79, "REBOOT")]


def test_only_the_named_gpu_is_reset(node):
    res = node.cli("--gpu", "5")
    assert res.returncode == 0 and "0000:ab:00.0" in res.stdout and "0000:18:00.0" not in res.stdout
    assert node.xids() == [(79, "REBOOT")]


def test_a_reset_the_driver_refuses_changes_nothing(node):
    node.write(X48, extra="commands:\n  'nvidia-smi --gpu-reset -i *': {rc: 255, stdout: "
                          "'The following GPUs could not be reset:\\n  GPU 00000000:AB:00.0: In use by another client\\n'}\n")
    res = node.cli("--gpu", "0000:AB:00.0")
    assert res.returncode == 1 and "failed" in res.stdout and "In use by another client" in res.stdout
    assert node.xids() == [(48, "RESET")]


def test_a_hung_reset_is_cut_at_its_timeout(node, tmp_path):
    node.write(X48, extra="commands:\n  'nvidia-smi --gpu-reset -i *': {hang: 30}\n")
    cfg = dict(node.cfg, timeouts=dict(node.cfg["timeouts"], reset=0.5))
    rows = R.reset(cfg, node="gpu-020")
    assert [(r.result, "timed out" in r.detail) for r in rows] == [("failed", True)]


def test_usage_errors_are_one_line(node):
    node.write("  - '[ 1.0] NVRM: loading NVIDIA'\n")
    res = node.cli()
    assert res.returncode == 2 and "no GPU has an active Xid that a reset resolves" in res.stderr and "Traceback" not in res.stderr
    res = node.cli("--gpu", "12")
    assert res.returncode == 2 and "--gpu 12: no GPU with that index (NVML lists 8)" in res.stderr
    res = node.cli("--gpu", "first")
    assert res.returncode == 2 and "expected an NVML index or a PCI bus id" in res.stderr
    res = node.cli("--all")
    assert res.returncode == 0 and res.stdout.count(" reset ") == 8


class FakeSlurm:
    def __init__(self, states=None, error=None, unknown=False):
        self.states, self.error, self.unknown = states, error, unknown

    def node(self, name):
        if self.error:
            raise SlurmError(self.error)
        return None if self.unknown else NodeView(name=name, states=set(self.states))


@pytest.mark.parametrize("fake, refused", [
    (FakeSlurm({"ALLOCATED"}), "Slurm shows gpu-020 ALLOCATED"),
    (FakeSlurm({"MIXED", "DRAIN"}), "Slurm shows gpu-020 MIXED"),
    (FakeSlurm({"IDLE", "DRAIN", "COMPLETING"}), "COMPLETING"),
    (FakeSlurm({"IDLE"}), "gpu-020 is not drained, so a job may start during the reset"),
    (FakeSlurm(error="sinfo: timed out after 5s"), "Slurm cannot say whether gpu-020 runs a job"),
    (FakeSlurm(unknown=True), "Slurm knows no node gpu-020: give Slurm's name with --node"),
    (None, "Slurm is not configured on this host"),
    (FakeSlurm({"IDLE", "DRAIN"}), None),
    (FakeSlurm({"DOWN", "DRAIN"}), None),
])
def test_no_reset_unless_slurm_shows_the_node_drained_and_idle(node, monkeypatch, fake, refused):
    from gpuhc import acting
    monkeypatch.setattr(acting, "slurm_backend", lambda cfg, deadline=None: fake)
    cfg = dict(node.cfg, slurm=dict(node.cfg["slurm"], backend="cli"))
    rows = R.reset(cfg, node="gpu-020", wanted=["5"])
    if refused:
        assert rows[0].result == "refused" and refused in rows[0].detail and "--force" in rows[0].detail
        assert node.xids() == [(48, "RESET"), (79, "REBOOT")]
        rows = R.reset(cfg, node="gpu-020", wanted=["5"], force=True)
    assert rows[0].result == "reset"
    assert node.xids() == [(79, "REBOOT")]


def test_choose():
    listed = {"0000:18:00.0": 0, "0000:ab:00.0": 5}
    assert R.choose(["5", "0000:AB:00.0", "00000000:18:00.0"], False, listed, []) == ["0000:ab:00.0", "0000:18:00.0"]
    assert R.choose([], False, {}, ["0000:3b:00.0"]) == ["0000:3b:00.0"]     # off the bus: by bus id
    assert R.choose([], True, listed, []) == ["0000:18:00.0", "0000:ab:00.0"]
    with pytest.raises(GpuhcError):
        R.choose([], True, {}, [])


def test_a_check_run_overlapping_the_reset_keeps_its_marks(node, monkeypatch):
    """A healthcheck that read the node's state before `gpuhc reset` marked it, and writes after,
    must not undo the marks (the node would stay drained though the reset said it worked)."""
    import time
    from gpuhc.checks import xid as XC
    assert node.xids() == [(48, "RESET"), (79, "REBOOT")]
    real = XC.gather

    def gather_while_reset(ctx):
        data = real(ctx)
        assert XC.mark_reset(node.cfg["state_dir"], "gpu-020", "0000:ab:00.0", time.time()) == 1
        return data

    monkeypatch.setattr(XC, "gather", gather_while_reset)
    node.xids()
    monkeypatch.setattr(XC, "gather", real)
    assert node.xids() == [(79, "REBOOT")]
    # an event this run saw again is not covered by a mark made meanwhile
    node.write(X48 + X79 + X48)

    def recur_while_marking(ctx):
        data = real(ctx)
        XC.acknowledge(node.cfg["state_dir"], "gpu-020", xid=48)
        return data

    monkeypatch.setattr(XC, "gather", recur_while_marking)
    node.xids()
    monkeypatch.setattr(XC, "gather", real)
    assert node.xids() == [(48, "RESET"), (79, "REBOOT")]
