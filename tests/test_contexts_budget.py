"""The Slurm contexts as slurmd runs them (separate processes), against stand-in Slurm tools:
the prolog's pass path asks Slurm nothing, and a hung Slurm or a hung GPU never holds the
prolog past its budget (timeouts.budget.prolog covers the checks, Slurm and the store); nor does
a blocked syslog, a hung GPU in the epilog's clean-up, the wrapper's logger, or config.yaml or
instance-profiles.conf on a hung mount."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, gpuhc

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
    assert res.returncode == 0 and ": skip (" in res.stdout        # the outcome line says why nothing was drained
    show = gpuhc("show", "gpu-001", "--json", env=env)
    assert show.returncode == 0 and '"REBOOT"' in show.stdout


def test_hung_gpu_and_hung_slurm_together_stay_within_budget(tmp_path):
    env, calls = fake_slurm(tmp_path, "scontrol*")
    t0 = time.monotonic()
    res = gpuhc("prolog", "--simulate", "h100-nvml-hang", env=env, timeout=30)
    wall = time.monotonic() - t0
    assert wall < 4 + 1.5, wall
    assert "REBOOT" in res.stdout


# == Hangs a review found on the prolog and epilog paths ============================================
# Calls that could block without bound where `timeouts.budget` did not protect the run (syslog()
# after the checks, the epilog's clean-up asking a hung GPU, the wrapper's logger, config.yaml or
# instance-profiles.conf on a hung mount). Each test stands for an operator's situation and
# measures the wall time of the whole run as slurmd starts it (a separate process), which must stay
# within the context's budget. All run on a simulated node (no Slurm, no GPU).

BUDGET = 4.0           # timeouts.budget of the context under test
SLACK = 1.5            # interpreter start, imports and the local spool write


def config(tmp_path, extra=""):
    """A config file isolating the run (store and state in tmp, no detection lookups, no Slurm)."""
    path = tmp_path / "config.yaml"
    path.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                    "slurm: {backend: none}\ntimeouts: {budget: {prolog: %g, epilog: %g, healthcheck: %g}, act: 2}\n"
                    % (tmp_path / "store", tmp_path / "state", BUDGET, BUDGET, BUDGET) + extra)
    return str(path)


def gpuhc_patched(patch, *args, cfg, timeout=30):
    """`gpuhc ARGS` as a separate process, after the Python statements ``patch`` (which stand in
    for a piece of the machine that blocks); (result, wall seconds). A run still going after
    ``timeout`` seconds fails the test: it is what slurmd would see as a hung prolog."""
    code = "%s\nimport runpy, sys\nsys.argv = ['gpuhc'] + %r\nrunpy.run_module('gpuhc', run_name='__main__')" \
        % (patch, list(args))
    env = dict(os.environ, GPUHC_CONFIG=cfg, SLURMD_NODENAME="gpu-001", SLURM_JOB_ID="42")
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("gpuhc %s still running after %d s (budget %g s)" % (" ".join(args), timeout, BUDGET))
    return res, time.monotonic() - t0


# -- syslog() blocks -----------------------------------------------------------------------------

SYSLOG_BLOCKS = "import syslog, time\nsyslog.syslog = lambda *args: time.sleep(3600)"


def test_a_syslog_daemon_that_stopped_reading_does_not_hold_the_prolog(tmp_path):
    """rsyslog forwards to a remote collector that is down: its queue fills, it stops reading
    /dev/log, and glibc's syslog() (a blocking send on a full datagram socket) waits for it. Every
    prolog then hung in its last step, after the checks, the drain and the store write, until
    Slurm's PrologEpilogTimeout killed it and drained a healthy node for a prolog error."""
    res, wall = gpuhc_patched(SYSLOG_BLOCKS, "prolog", "--simulate", "h100-healthy", cfg=config(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "gpuhc prolog PASS on gpu-001" in res.stdout
    assert wall < BUDGET + SLACK, wall


# -- the epilog's clean-up asks a hung GPU ---------------------------------------------------------

REAL_GPU = """from gpuhc import session
_open = session.open_backends
def _as_real(cfg, node, simulate=None):
    gpu, host = _open(cfg, node, simulate)
    gpu.kind = "nvml-like"        # treated as real hardware: kill_leftovers asks it for processes
    return gpu, host
session.open_backends = _as_real"""


def test_epilog_clean_up_does_not_wait_for_a_hung_gpu(tmp_path):
    """epilog.kill_leftover_processes on, and a quick epilog suite without the processes check.
    The job ended with a process stuck on its GPU, and the driver no longer answers the process
    list. The clean-up asked NVML for each GPU's processes on the main thread, with no time limit:
    the epilog hung there, before draining or recording anything, until Slurm's timeout killed it.
    It must give up like a check does (a REBOOT finding naming the call) and still drain/record."""
    scenario = tmp_path / "node.yaml"
    scenario.write_text("extends: h100-healthy\nfaults:\n  - {call: processes, gpu: 2, hang: 600}\n")
    cfg = config(tmp_path, "suites: {epilog: [gpu_count, xid, ecc]}\nepilog: {kill_leftover_processes: true}\n")
    res, wall = gpuhc_patched(REAL_GPU, "epilog", "--simulate", str(scenario), "--json", cfg=cfg)
    assert wall < BUDGET + SLACK, wall
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    hung = [f for f in out["findings"] if f["check"] == "processes"]
    assert hung and hung[0]["severity"] == "REBOOT" and "did not return" in hung[0]["message"], out["findings"]
    recorded = (tmp_path / "store" / "nodes" / "gpu-001" / "history.jsonl").read_text().splitlines()
    assert len(recorded) == 1 and json.loads(recorded[0])["overall"] == "REBOOT"


# -- the wrapper's logger blocks ------------------------------------------------------------------

WRAPPER = os.path.join(ROOT, "slurm", "prolog.d", "50-gpuhc")


@pytest.mark.skipif(os.path.exists("/etc/gpuhc/env"), reason="the wrapper would read this machine's /etc/gpuhc/env")
def test_wrapper_without_gpuhc_does_not_wait_for_a_stuck_syslog(tmp_path):
    """A node where gpuhc is not installed (yet, or GPUHC in /etc/gpuhc/env names a path that is
    gone), while rsyslog has stopped reading /dev/log (its forwarding queue is full). The wrapper
    logs "gpuhc not found" with logger(1), a blocking send to that socket, before its `exit 0` (a
    missing tool must not fail jobs): the prolog hung there until Slurm's PrologEpilogTimeout,
    which drained the node."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    logger = stubs / "logger"
    logger.write_text("#!/bin/sh\nexec sleep 3600\n")       # a send to a /dev/log nobody reads
    logger.chmod(0o755)
    env = {"PATH": "%s:/usr/bin:/bin" % stubs, "GPUHC": str(tmp_path / "missing" / "gpuhc"),
           "SLURMD_NODENAME": "gpu-001", "SLURM_JOB_ID": "42"}
    t0 = time.monotonic()
    try:
        res = subprocess.run(["/bin/sh", WRAPPER], capture_output=True, text=True, env=env, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the prolog wrapper still running after 20 s")
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert wall < BUDGET, wall


# -- config.yaml or instance-profiles.conf on a hung mount ------------------------------------------

READ_WAIT = "import gpuhc.yamlio\ngpuhc.yamlio.READ_WAIT = 1.0      # the test's patience, not 8 s"


@pytest.mark.parametrize("which", ["config", "profiles"])
def test_config_or_profiles_on_a_hung_mount_is_an_error_not_a_hung_prolog(tmp_path, which):
    """One config.yaml and one instance-profiles.conf for the fleet, next to the store on the
    shared filesystem (GPUHC_CONFIG=/shared/gpuhc/config.yaml in /etc/gpuhc/env, `profiles:
    /shared/gpuhc/instance-profiles.conf`), and the NFS server stops answering. The store's
    writes are bounded and spooled, but these files were read on the main thread with no time
    limit: every prolog hung before its budget started, until Slurm's PrologEpilogTimeout (by
    default none at all: the jobs stayed in CONFIGURING). A file that does not answer is a
    one-line error naming it, exit 2, as an unreadable one already was. (An os.open() that never
    returns for that file stands for the hung mount; a FIFO no longer does: it is refused at once,
    as not a regular file.)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    hung = shared / ("config.yaml" if which == "config" else "instance-profiles.conf")
    hung.write_text("")
    cfg = str(hung) if which == "config" else config(tmp_path, "profiles: %s\n" % hung)
    blocks = "import os, time\n_open = os.open\nos.open = lambda path, *a, **k: " \
        "time.sleep(3600) if str(path) == %r else _open(path, *a, **k)" % str(hung)
    res, wall = gpuhc_patched(READ_WAIT + "\n" + blocks, "prolog", "--simulate", "h100-healthy", cfg=cfg)
    assert wall < BUDGET + SLACK, wall
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(hung) in res.stderr and "no answer within 1 s" in res.stderr, res.stderr


# -- the budget is a wall, from exec to exit (issue 18) -------------------------------------------

def test_hung_gpu_hung_sinfo_and_hung_scontrol_end_inside_the_budget_from_exec_to_exit(tmp_path):
    """NVML hangs, and sinfo and scontrol hang too, with profile detection asking Slurm for the node's
    features: the whole process, from exec (interpreter start, imports, config load) to exit, ends
    inside timeouts.budget.prolog. It overran by 0.11-0.31 s: the deadline started after the
    interpreter and config load, detection's sinfo took its own 2 s inside the checks' share, and
    the syslog send and store write each had a 0.1 s floor past the deadline."""
    env, calls = fake_slurm(tmp_path, "s*")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cfg.read_text().replace("slurm_features: false", "slurm_features: true"))
    walls = []
    for _ in range(3):
        t0 = time.monotonic()
        res = gpuhc("prolog", "--simulate", "h100-nvml-hang", env=env, timeout=30)
        walls.append(time.monotonic() - t0)
        assert "REBOOT" in res.stdout, res.stdout + res.stderr
    assert any(c.startswith("sinfo") for c in calls_of(calls)), "detection asked Slurm"
    assert max(walls) < 4.0, walls          # budget 4 s, nothing added
