"""Hangs a review found on the prolog and epilog paths: calls that could block without bound where
`timeouts.budget` did not protect the run (syslog() after the checks, the epilog's clean-up asking
a hung GPU, the wrapper's logger, config.yaml or instance-profiles.conf on a hung mount). Each test
stands for an operator's situation and measures the wall time of the whole run as slurmd starts it
(a separate process), which must stay within the context's budget. All run on a simulated node
(no Slurm, no GPU)."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

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


# -- 1. syslog() blocks -----------------------------------------------------------------------------

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


# -- 2. the epilog's clean-up asks a hung GPU ---------------------------------------------------------

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


# -- 3. the wrapper's logger blocks ------------------------------------------------------------------

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


# -- 4. config.yaml or instance-profiles.conf on a hung mount ------------------------------------------

READ_WAIT = "import gpuhc.yamlio\ngpuhc.yamlio.READ_WAIT = 1.0      # the test's patience, not 8 s"


@pytest.mark.parametrize("which", ["config", "profiles"])
def test_config_or_profiles_on_a_hung_mount_is_an_error_not_a_hung_prolog(tmp_path, which):
    """One config.yaml and one instance-profiles.conf for the fleet, next to the store on the
    shared filesystem (GPUHC_CONFIG=/shared/gpuhc/config.yaml in /etc/gpuhc/env, `profiles:
    /shared/gpuhc/instance-profiles.conf`), and the NFS server stops answering. The store's
    writes are bounded and spooled, but these files were read on the main thread with no time
    limit: every prolog hung before its budget started, until Slurm's PrologEpilogTimeout (by
    default none at all: the jobs stayed in CONFIGURING). A file that does not answer is a
    one-line error naming it, exit 2, as an unreadable one already was. (A FIFO with no writer
    stands for the hung mount: its open() blocks in the kernel the same way.)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    hung = shared / ("config.yaml" if which == "config" else "instance-profiles.conf")
    os.mkfifo(str(hung))
    cfg = str(hung) if which == "config" else config(tmp_path, "profiles: %s\n" % hung)
    res, wall = gpuhc_patched(READ_WAIT, "prolog", "--simulate", "h100-healthy", cfg=cfg)
    assert wall < BUDGET + SLACK, wall
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(hung) in res.stderr and "no answer within 1 s" in res.stderr, res.stderr
