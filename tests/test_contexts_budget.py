"""The Slurm contexts as slurmd runs them (separate processes), against stand-in Slurm tools:
the prolog's pass path asks Slurm nothing, and a hung Slurm or a hung GPU never holds the
prolog past its budget (timeouts.budget.prolog covers the checks, Slurm and the store)."""
import os
import time

import pytest

from conftest import gpuhc

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> {calls}
case "$(basename "$0") $*" in
  {hang}) sleep 60 ;;
esac
case "$(basename "$0")" in
  sinfo) cat {sinfo} ;;
esac
exit 0
"""

SINFO = """{"nodes": [{"name": "gpu-001", "state": "idle", "state_flags": [], "reason": "", "partitions": ["gpu"]},
 {"name": "gpu-002", "state": "idle", "state_flags": [], "reason": "", "partitions": ["gpu"]}]}"""


def fake_slurm(tmp_path, hang="__none__"):
    """scontrol and sinfo stand-ins that log each call (and hang on the calls matching `hang`,
    a shell case pattern); env for gpuhc with Slurm configured."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, sinfo = tmp_path / "calls.log", tmp_path / "sinfo.json"
    sinfo.write_text(SINFO)
    for tool in ("scontrol", "sinfo"):
        path = bin_dir / tool
        path.write_text(STUB.format(calls=calls, hang=hang, sinfo=sinfo))
        path.chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=fake\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                   "timeouts: {budget: {prolog: 4}, act: 2, check: 1}\nslurm: {timeout: 10}\n"
                   % (tmp_path / "store", tmp_path / "state"))
    env = {"PATH": "%s:%s" % (bin_dir, os.environ["PATH"]), "SLURM_CONF": str(conf), "GPUHC_CONFIG": str(cfg),
           "SLURMD_NODENAME": "gpu-001", "SLURM_JOB_ID": "42"}
    return env, calls


def calls_of(calls):
    return calls.read_text().splitlines() if calls.exists() else []


def test_healthy_prolog_makes_no_slurm_call(tmp_path):
    env, calls = fake_slurm(tmp_path)
    res = gpuhc("prolog", "--simulate", "h100-healthy", env=env)
    assert res.returncode == 0, res.stderr
    assert calls_of(calls) == []
    # the stand-ins do answer: an unhealthy prolog asks about the node, then drains it
    res = gpuhc("prolog", "--simulate", "h100-xid79", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    made = calls_of(calls)
    assert made[0].startswith("sinfo --json --Node --nodes gpu-001")
    assert any(c.startswith("scontrol update NodeName=gpu-001 State=DRAIN Reason=gpuhc: REBOOT xid:") for c in made)


@pytest.mark.parametrize("hang", ["sinfo*", "scontrol*"])
def test_hung_slurm_never_holds_the_prolog_past_its_budget(tmp_path, hang):
    env, calls = fake_slurm(tmp_path, hang)
    t0 = time.monotonic()
    res = gpuhc("prolog", "--simulate", "h100-xid79", env=env, timeout=30)
    wall = time.monotonic() - t0
    assert wall < 4 + 1.5, wall              # budget 4 s, plus interpreter start and the spool write
    assert "gpuhc prolog REBOOT xid" in res.stdout
    assert calls_of(calls), "Slurm was asked"
    # the drain did not happen, so the job is not requeued by gpuhc, and the result is kept
    assert res.returncode == 0 and "Slurm" in res.stdout + res.stderr
    show = gpuhc("show", "gpu-001", "--json", env=env)
    assert show.returncode == 0 and '"REBOOT"' in show.stdout


def test_hung_gpu_and_hung_slurm_together_stay_within_budget(tmp_path):
    env, calls = fake_slurm(tmp_path, "scontrol*")
    t0 = time.monotonic()
    res = gpuhc("prolog", "--simulate", "h100-nvml-hang", env=env, timeout=30)
    wall = time.monotonic() - t0
    assert wall < 4 + 1.5, wall
    assert "REBOOT" in res.stdout
