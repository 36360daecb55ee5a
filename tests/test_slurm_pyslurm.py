"""The pyslurm backend (gpuhc/backends/slurm_pyslurm.py) against a fake pyslurm.

No real pyslurm builds against this machine's Debian Slurm 22.05 (PyPI's follows 25.11), so the
tests import tests/fake_pyslurm/pyslurm, modelled on PySlurm/pyslurm's object API as of pyslurm
23.02-25.x: pyslurm/core/node.pyx (f86866886105315b13b2cf2da117663d568a0a7a: Nodes.load(),
Node.load(name), Node.state from slurm_node_state_string_complete, node.modify(Node(state=...,
reason=...))), pyslurm/core/job/job.pyx (b7369e31: Job.load(id).comment),
pyslurm/core/reservation.pyx (a8d27913, 25.x: Reservations.load()), pyslurm/version.py
("25.5.0": Slurm major.minor, then pyslurm's patch). `scontrol` and `sinfo` are small scripts
on PATH, so the version check and the comment-clearing path run real subprocesses.
"""
import importlib
import os
import sys
import time

import pytest

from gpuhc import acting, contexts
from gpuhc import policy as P
from gpuhc.backends.slurm_cli import SlurmCli, SlurmError
from gpuhc.backends.slurm_pyslurm import SlurmPyslurm, major_minor
from gpuhc.model import Finding, GpuRef, Report, Severity

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_pyslurm")

SCONTROL = """#!/bin/sh
if [ "$1" = "--version" ]; then cat "%(dir)s/version"; exit 0; fi
echo "scontrol $*" >> "%(dir)s/calls"
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A Slurm host: slurm.conf, and scontrol/sinfo that log their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("scontrol", "sinfo"):
        path = bin_dir / tool
        path.write_text(SCONTROL % {"dir": tmp_path})
        path.chmod(0o755)
    (tmp_path / "version").write_text("slurm 25.11.1\n")
    (tmp_path / "slurm.conf").write_text("ClusterName=test\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setenv("PATH", "%s%s%s" % (bin_dir, os.pathsep, os.environ.get("PATH", "")))

    class Host:
        def set_version(self, text):
            (tmp_path / "version").write_text(text + "\n")

        def calls(self):
            path = tmp_path / "calls"
            return path.read_text().splitlines() if path.exists() else []
    return Host()


@pytest.fixture
def no_pyslurm(monkeypatch):
    """pyslurm not importable (whatever is installed)."""
    monkeypatch.setitem(sys.modules, "pyslurm", None)


@pytest.fixture
def fake(monkeypatch):
    """The fake pyslurm, importable as `pyslurm`; its _controller is a fresh slurmctld."""
    monkeypatch.syspath_prepend(FAKE)
    sys.modules.pop("pyslurm", None)
    mod = importlib.import_module("pyslurm")
    ctl = mod._reset()
    ctl.add_node("gpu-001", "IDLE", partitions=("gpu", "all"), features=("h100", "ib"))
    ctl.add_node("gpu-002", "IDLE+DRAIN", reason="gpuhc: REBOOT xid: Xid 79 on GPU3", reason_time=1700000100)
    ctl.add_node("gpu-003", "ALLOCATED+DRAIN", reason="bad fan, ticket 12", reason_time=1700000200)
    ctl.add_node("gpu-004", "DOWN+NOT_RESPONDING", reason="Not responding", reason_time=1700000300)
    ctl.add_node("gpu-005", "IDLE+MAINTENANCE+RESERVED", comment="gpuhc: MONITOR thermal: GPU2 warm")
    ctl.add_node("gpu-006", "MIXED+REBOOT_REQUESTED")
    yield mod
    mod._controller.release()       # let any thread left hanging finish
    sys.modules.pop("pyslurm", None)


def backend(timeout=5.0, deadline=None):
    return SlurmPyslurm(timeout=timeout, deadline=deadline)


# -- node views -------------------------------------------------------------------------------

def test_node_views_use_the_cli_words(host, fake):
    views = backend().nodes()
    assert set(views) == {"gpu-00%d" % i for i in range(1, 7)}
    v1 = views["gpu-001"]
    assert v1.states == {"IDLE"} and not v1.drained and v1.partitions == ["gpu", "all"]
    assert v1.features == ["h100", "ib"] and v1.reason == "" and v1.reason_time is None and v1.boot_time == 1700000000
    v2 = views["gpu-002"]
    assert v2.states == {"IDLE", "DRAIN"} and v2.drained and v2.owned_by_gpuhc and v2.reason_time == 1700000100
    v3 = views["gpu-003"]
    assert v3.states == {"ALLOCATED", "DRAIN"} and v3.drained and not v3.owned_by_gpuhc
    v4 = views["gpu-004"]
    assert v4.states == {"DOWN", "NOT_RESPONDING"} and v4.down
    v5 = views["gpu-005"]
    assert v5.states == {"IDLE", "MAINTENANCE", "RESERVED"} and v5.comment.startswith("gpuhc: MONITOR")
    assert views["gpu-006"].states == {"MIXED", "REBOOT_REQUESTED"}
    # policy reads them as it reads sinfo's
    assert P.hands_off(v1) is None
    assert "drained by someone else" in P.hands_off(v3)
    assert P.hands_off(v4) == "node is down,not_responding"
    assert P.hands_off(v5) == "node is maintenance"
    assert P.hands_off(views["gpu-006"]) == "node is reboot_requested"


def test_single_node_and_missing_node(host, fake):
    b = backend()
    assert b.node("gpu-002").reason.startswith("gpuhc: REBOOT")
    assert b.node("gpu-999") is None
    assert b.nodes(["gpu-999"]) == {}
    assert set(b.nodes(["gpu-001", "gpu-004", "gpu-999"])) == {"gpu-001", "gpu-004"}
    assert b.features("gpu-001") == ["h100", "ib"] and b.features("gpu-999") == []
    assert fake._controller.calls == []          # reads only


# -- updates ----------------------------------------------------------------------------------

def test_drain_resume_and_comment_call_modify(host, fake):
    b = backend()
    ctl = fake._controller
    b.drain("gpu-001", "gpuhc: RESET ecc: GPU1 uncorrectable")
    assert ctl.calls[-1] == ("slurm_update_node", "gpu-001",
                             {"state": "DRAIN", "reason": "gpuhc: RESET ecc: GPU1 uncorrectable"})
    view = b.node("gpu-001")
    assert view.states == {"IDLE", "DRAIN"} and view.reason == "gpuhc: RESET ecc: GPU1 uncorrectable"
    assert view.reason_time and abs(view.reason_time - time.time()) < 60

    b.set_comment("gpu-001", "gpuhc: MONITOR thermal: GPU2 72C")
    assert ctl.calls[-1] == ("slurm_update_node", "gpu-001", {"comment": "gpuhc: MONITOR thermal: GPU2 72C"})
    assert b.node("gpu-001").comment == "gpuhc: MONITOR thermal: GPU2 72C"

    b.resume("gpu-001")
    assert ctl.calls[-1] == ("slurm_update_node", "gpu-001", {"state": "RESUME"})
    view = b.node("gpu-001")
    assert view.states == {"IDLE"} and view.reason == ""

    # pyslurm sends "" as "no change": clearing goes through scontrol
    b.set_comment("gpu-001", "")
    assert len(ctl.calls) == 3
    assert host.calls() == ["scontrol update NodeName=gpu-001 Comment="]


def test_refused_update_is_a_slurm_error(host, fake):
    with pytest.raises(SlurmError, match="Invalid node state specified"):
        backend().resume("gpu-001")          # not drained: slurmctld refuses
    with pytest.raises(SlurmError, match="cannot set Gres"):
        backend().update_node("gpu-001", Gres="gpu:8")
    backend().update_node("gpu-001", state="DRAIN", reason="x")      # scontrol's keys, any case
    assert fake._controller.calls[-1][2] == {"state": "DRAIN", "reason": "x"}


def test_job_comment(host, fake):
    fake._controller.jobs[42] = {"comment": "train gpuhc:skip-slow"}
    fake._controller.jobs[43] = {"comment": None}
    b = backend()
    assert b.job_comment("42") == "train gpuhc:skip-slow"
    assert b.job_comment("43") == ""
    with pytest.raises(SlurmError, match="Invalid job id"):
        b.job_comment("44")
    with pytest.raises(SlurmError, match="not a job id"):
        b.job_comment("abc")


def test_job_exit_codes(host, fake):
    """pyslurm gives exit code and signal apart, None where the status was not of that kind."""
    fake._controller.jobs[50] = {"comment": "x", "exit_code": None, "exit_code_signal": 15,
                                 "derived_exit_code": 0, "derived_exit_code_signal": None}
    fake._controller.jobs[51] = {"comment": None, "exit_code": 0, "exit_code_signal": None}
    job = backend().job("50")
    assert (job.job_id, job.comment, job.exit_code, job.derived_exit_code) == ("50", "x", "0:15", "0:0")
    assert backend().job(" 51").exit_code == "0:0"


def test_reservations(host, fake):
    now = time.time()
    fake._controller.reservations += [
        {"name": "gpuhc-q-gpu-005", "nodes": "gpu-[005-006]", "start_time": now - 60, "end_time": now + 3600},
        {"name": "later", "nodes": "gpu-001", "start_time": now + 3600, "end_time": now + 7200},
        {"name": "overlap", "nodes": "gpu-006", "start_time": now - 60, "end_time": now + 60},
        {"name": "empty", "nodes": "", "start_time": now - 60, "end_time": now + 60},
    ]
    assert backend().reservations() == {"gpu-005": "gpuhc-q-gpu-005", "gpu-006": "gpuhc-q-gpu-005"}


# -- availability -----------------------------------------------------------------------------

def test_available_when_versions_match(host, fake):
    b = backend()
    assert b.available() and b.why_not == "" and b.kind == "pyslurm"


@pytest.mark.parametrize("installed", ["slurm-wlm 22.05.8", "slurm 24.05.4", "slurm 25.05.0"])
def test_version_mismatch_is_not_available(host, fake, installed):
    host.set_version(installed)
    b = backend()
    assert not b.available()
    assert "built for Slurm 25.11" in b.why_not and major_minor(installed) is not None


def test_versions_compare_as_numbers(host, fake, monkeypatch):
    monkeypatch.setattr(fake, "__version__", "24.5.1")       # pyslurm's spelling of Slurm 24.05
    host.set_version("slurm 24.05.4")
    assert backend().available()
    assert major_minor("22.05.8") == major_minor("22.5.0") == (22, 5)


def test_not_available_without_pyslurm_old_api_or_slurm(host, fake, monkeypatch, tmp_path):
    monkeypatch.delattr(fake, "Node")                        # pyslurm 22.05: the old dict API only
    b = backend()
    assert not b.available() and "object API" in b.why_not
    monkeypatch.setitem(sys.modules, "pyslurm", None)        # not importable
    b = backend()
    assert not b.available() and "import" in b.why_not
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))    # no Slurm on this host
    b = backend()
    assert not b.available() and b.why_not == "Slurm is not configured on this host"


# -- time limits ------------------------------------------------------------------------------

def test_a_hung_call_ends_within_the_timeout(host, fake):
    b = backend(timeout=0.3)
    assert b.available()
    fake._controller.hang()
    for call in (lambda: b.node("gpu-001"), b.nodes, lambda: b.drain("gpu-001", "gpuhc: x"),
                 lambda: b.job_comment("1"), b.reservations):
        t0 = time.monotonic()
        with pytest.raises(SlurmError, match="no answer within 0.3 s"):
            call()
        assert 0.25 < time.monotonic() - t0 < 0.6


def test_a_hung_call_ends_at_the_deadline(host, fake):
    b = backend(timeout=5.0, deadline=time.monotonic() + 0.4)
    assert b.available()
    fake._controller.hang()
    t0 = time.monotonic()
    with pytest.raises(SlurmError, match="no answer within"):
        b.node("gpu-001")
    assert time.monotonic() - t0 < 0.7
    t0 = time.monotonic()
    with pytest.raises(SlurmError, match="budget is used up"):
        b.drain("gpu-001", "gpuhc: x")
    assert time.monotonic() - t0 < 0.05
    assert fake._controller.calls == []


def test_a_hung_import_ends_within_the_timeout(host, fake, monkeypatch):
    import threading

    gate = threading.Event()
    monkeypatch.setattr(importlib, "import_module", lambda name: gate.wait(10))
    b = backend(timeout=0.3)
    t0 = time.monotonic()
    assert not b.available()
    assert time.monotonic() - t0 < 0.6 and "import: no answer within 0.3 s" in b.why_not
    gate.set()


# -- choosing the backend ---------------------------------------------------------------------

@pytest.mark.parametrize("choice,versions_match,kind,warned", [
    ("cli", True, "cli", False),
    ("pyslurm", True, "pyslurm", False),
    ("pyslurm", False, "cli", True),
    ("auto", True, "pyslurm", False),
    ("auto", False, "cli", False),
    ("none", True, None, False),
])
def test_slurm_backend_choice(host, fake, make_cfg, capsys, choice, versions_match, kind, warned):
    if not versions_match:
        host.set_version("slurm-wlm 22.05.8")
    sys.modules.pop("pyslurm", None)
    slurm = acting.slurm_backend(make_cfg(slurm={"backend": choice}), deadline=time.monotonic() + 5)
    assert (slurm.kind if slurm else None) == kind
    if kind == "cli":
        assert isinstance(slurm, SlurmCli)
    err = capsys.readouterr().err
    if warned:
        assert err.count("\n") == 1 and "warning: slurm.backend pyslurm" in err and "22.05" in err
    else:
        assert err == ""
    # `cli` and `none` never import pyslurm
    assert ("pyslurm" in sys.modules) == (choice in ("pyslurm", "auto"))


def test_pyslurm_not_importable_falls_back_with_one_warning(host, no_pyslurm, make_cfg, capsys):
    slurm = acting.slurm_backend(make_cfg(slurm={"backend": "pyslurm"}))
    assert isinstance(slurm, SlurmCli)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pyslurm" in err and "command-line tools" in err


def test_no_slurm_on_this_host_is_none_without_warning(fake, make_cfg, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    for choice in ("cli", "pyslurm", "auto"):
        assert acting.slurm_backend(make_cfg(slurm={"backend": choice})) is None
    assert capsys.readouterr().err == ""


# -- policy end to end ------------------------------------------------------------------------

def _report(sev, node="gpu-001"):
    return Report(node, "prolog", "dgx-h100", 1000.0, 1001.0,
                  [Finding("xid", sev, "Xid 79 on GPU3 0000:5d:00.0: GPU has fallen off the bus.", gpu=GpuRef(3))],
                  suite="prolog")


def test_unhealthy_report_drains_through_pyslurm(host, fake, make_cfg):
    cfg = make_cfg(slurm={"backend": "pyslurm"})
    slurm = acting.slurm_backend(cfg, deadline=time.monotonic() + 5)
    assert slurm.kind == "pyslurm"
    action = acting.decide_and_act(cfg, _report(Severity.REBOOT), slurm)
    assert action.kind == P.DRAIN and action.reason.startswith("gpuhc: REBOOT xid: Xid 79 on GPU3")
    rpc, names, fields = fake._controller.calls[-1]
    assert (rpc, names, fields["state"]) == ("slurm_update_node", "gpu-001", "DRAIN")
    assert fields["reason"] == action.reason
    assert slurm.node("gpu-001").drained
    # again: already drained by gpuhc for as much, the reason is kept
    assert acting.decide_and_act(cfg, _report(Severity.REBOOT), slurm).kind == P.HELD
    # an administrator's drain is left alone
    assert acting.decide_and_act(cfg, _report(Severity.REBOOT, "gpu-003"), slurm).kind == P.SKIP
    assert len(fake._controller.calls) == 1


def test_prolog_on_a_faulty_node_drains_through_pyslurm(host, fake, make_cfg):
    cfg = make_cfg(slurm={"backend": "pyslurm"})
    out = contexts.run(cfg, "prolog", node="gpu-001", simulate="h100-xid79", env={"SLURM_JOB_ID": "7"})
    assert out.exit_code == 1 and out.action.kind == P.DRAIN
    assert fake._controller.nodes["gpu-001"]["flags"] == {"DRAIN"}
    assert fake._controller.nodes["gpu-001"]["reason"].startswith("gpuhc: REBOOT xid:")


def test_prolog_pass_path_imports_neither_pyslurm_nor_the_backend(tmp_path):
    """Default config (slurm.backend: cli), healthy node: no pyslurm, not even this module."""
    import subprocess

    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s/store\nstate_dir: %s/state\n" % (tmp_path, tmp_path))
    # the prolog leaves through os._exit: report the loaded modules on the way out
    probe = ("import os, sys\nsys.path.insert(0, %r)\nsys.argv = ['gpuhc', '--simulate', 'h100-healthy', 'prolog']\n"
             "real_exit = os._exit\n"
             "def report(code=0):\n"
             "    print('LOADED', sorted(m for m in sys.modules if 'pyslurm' in m), flush=True)\n"
             "    real_exit(code)\n"
             "os._exit = report\n"
             "from gpuhc.cli import main\ntry:\n    main()\nexcept SystemExit as exc:\n    report(exc.code or 0)\n"
             % FAKE)
    env = dict(os.environ, GPUHC_CONFIG=str(cfg), SLURMD_NODENAME="gpu-001")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert "PASS" in out.stdout and "LOADED []" in out.stdout, out.stdout + out.stderr
