"""The declared interfaces hold: every check module keeps the contract of checks/meta.py, and the
GPU and host backends implement every call of theirs.

The purity test replays each check's evaluate on data its own gather produced from a simulated node,
with the world out of reach (files, commands, sockets raise), twice: an evaluate that reads
anything or answers differently the second time fails here."""
import builtins
import inspect
import io
import os
import socket
import subprocess

import pytest

from gpuhc import checks as registry
from gpuhc import session
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu_nvml import NvmlBackend
from gpuhc.backends.host import Host, LocalHost
from gpuhc.backends.sim import SimGpu, SimHost
from gpuhc.checks.meta import CONTEXTS, SUITES, CheckMeta

NAMES = registry.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_check_declares_its_metadata_and_its_two_steps(name):
    module = registry.load(name)
    assert module.NAME == name
    meta = module.META
    assert isinstance(meta, CheckMeta) and meta.description.strip()
    assert set(meta.contexts) <= set(CONTEXTS) and set(meta.suites) <= set(SUITES)
    assert callable(module.gather) and list(inspect.signature(module.gather).parameters) == ["ctx"]
    assert len(inspect.signature(module.evaluate).parameters) == 3        # (data, profile, config)
    for key, threshold in meta.thresholds.items():
        assert threshold.source.strip(), key


def test_metadata_rejects_a_threshold_without_source_and_an_exclusive_check_in_the_prolog():
    from gpuhc.checks.meta import Threshold

    with pytest.raises(ValueError, match="no source"):
        CheckMeta("x", (), thresholds={"t": Threshold(1, " ")})
    with pytest.raises(ValueError, match="exclusive"):
        CheckMeta("x", (), exclusive=True, contexts=("prolog", "quarantine"))


def test_default_suites_and_thresholds_come_from_the_metadata():
    from gpuhc import config as C

    suites = C.defaults()["suites"]
    for name in NAMES:
        for suite in registry.metadata(name).suites:
            assert name in suites[suite]
    assert "dcgm" not in suites["prolog"] and "dcgm" in suites["intensive"]
    assert set(C.THRESHOLDS) == set(registry.default_thresholds())


class _NoWorld(Exception):
    pass


def _refuse(*args, **kwargs):
    raise _NoWorld("evaluate touched the world: %r" % (args[:1],))


@pytest.mark.parametrize("scenario", ["h100-healthy", "h100-xid79", "h100-dcgm-fail", "p5-efa-missing",
                                      "h100-nvlink-down"])
def test_every_evaluate_is_pure(scenario, make_cfg, monkeypatch):
    real = {name: registry.load(name).evaluate for name in NAMES}
    captured = {}
    for name in NAMES:
        def spy(data, profile, config, _name=name):
            captured[_name] = (data, profile, config)
            return real[_name](data, profile, config)
        monkeypatch.setattr(registry.load(name), "evaluate", spy)
    cfg = make_cfg(dcgm={"required": True})
    session.run(cfg, "quarantine", checks=NAMES, node="gpu-001", simulate=scenario)
    assert set(captured) == set(NAMES), "every check's evaluate ran on the simulated node"
    with monkeypatch.context() as m:
        for target, attr in ((builtins, "open"), (io, "open"), (os, "open"), (os, "listdir"), (os, "scandir"),
                             (os, "stat"), (subprocess, "Popen"), (socket, "socket")):
            m.setattr(target, attr, _refuse)
        for name, (data, profile, config) in captured.items():
            first = [f.to_dict() for f in real[name](data, profile, config)]
            second = [f.to_dict() for f in real[name](data, profile, config)]
            assert first and first == second, name


def test_gpu_backends_implement_every_call():
    for call in G.CALLS:
        assert callable(getattr(G.GpuBackend, call)), call
        assert callable(getattr(NvmlBackend, "_" + call, None)), "NvmlBackend lacks _%s" % call
    assert isinstance(NvmlBackend(), G.GpuInterface)


def test_sim_backend_answers_every_call():
    from gpuhc import scenario

    sim = SimGpu(scenario.load("h100-healthy", "gpu-001"))
    assert isinstance(sim, G.GpuInterface)
    assert sim.device_count() == 8
    for call in G.CALLS:
        if call in ("driver_version", "device_count"):
            getattr(sim, call)()
        else:
            try:
                getattr(sim, call)(0)
            except G.GpuError as err:        # a scenario may leave a call unsupported
                assert err.code == G.NOT_SUPPORTED, call


def test_host_is_abstract_and_both_hosts_implement_it():
    with pytest.raises(TypeError):
        Host()
    from gpuhc import scenario

    assert isinstance(LocalHost(), Host)
    assert isinstance(SimHost(scenario.load("h100-healthy", "gpu-001")), Host)
