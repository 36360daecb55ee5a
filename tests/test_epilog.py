"""Traps of the epilog path a review found: what it attributes to a job, how it routes by exit
status, what a GPU reset clears and what it kills. Each test states the operator scenario it stands
for; all run on a simulated node (no Slurm, no GPU). Tests gpuhc/contexts/epilog.py (was test_epilog_traps.py)."""
import os
import subprocess
import sys

import pytest

from gpuhc import contexts
from gpuhc.backends.slurm import SlurmError
from gpuhc.contexts import epilog as E
from gpuhc.contexts import pipeline
from gpuhc import config as C
from gpuhc import policy
from gpuhc.checks.base import Context, Inventory
from gpuhc.model import GpuRef, Severity
from gpuhc.store import Store

NODE = "gpu-001"
BOOT_LINE = "  - '[ 1.0] NVRM: loading NVIDIA'\n"


@pytest.fixture
def cfg(tmp_path):
    return C.validate({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                       "detect": {"slurm_features": False, "cloud_metadata": False},
                       "slurm": {"backend": "none"}}, "test-config")


def run(cfg, scenario, context, log_lines, **env):
    """One prolog/epilog on the simulated node, with the kernel log holding ``log_lines``."""
    scenario.write_text("extends: h100-healthy\nkernel_log:\n" + BOOT_LINE + "".join(log_lines))
    return contexts.run(cfg, context, node=NODE, simulate=str(scenario), env=dict(env))


def xid_findings(report, xid=None):
    return [f for f in report.findings if f.check == "xid" and f.severity is not Severity.PASS
            and (xid is None or f.metrics.get("xid") == xid)]


XID13 = "  - '[ 50.0] NVRM: Xid (PCI:0000:18:00): 13, pid=4242, name=python, Graphics Exception: ESR 0x4041b0=0x3f'\n"


def test_epilog_does_not_attribute_an_earlier_jobs_xid_to_this_job(cfg, tmp_path):
    """Job 1 hits an application fault (Xid 13) and its epilog never runs (slurmd restarted). Job 2
    then runs cleanly on the node: its epilog must not record job 1's Xid as something that happened
    during job 2 (the store record and the node comment would blame job 2's code)."""
    sc = tmp_path / "node.yaml"
    run(cfg, sc, "prolog", [], SLURM_JOB_ID="1")
    # Xid 13 during job 1; no epilog for job 1
    run(cfg, sc, "prolog", [XID13], SLURM_JOB_ID="2")            # job 2's prolog sees it (node state)
    out = run(cfg, sc, "epilog", [XID13], SLURM_JOB_ID="2")       # nothing new during job 2
    assert out.report.job_id == "2"
    recorded = [r for r in Store.from_config(cfg).history(NODE) if r.context == "epilog" and r.job_id == "2"]
    assert recorded, "the epilog of job 2 was recorded"
    assert xid_findings(recorded[0], 13) == [], \
        "Xid 13 logged before job 2's prolog is recorded as a finding of job 2's epilog"


def test_epilog_drain_reason_does_not_blame_a_job_for_another_jobs_gpu(cfg, tmp_path, monkeypatch):
    """Shared node: job 43 had GPUs 0,1 (SLURM_JOB_GPUS); job 42 on GPU3 is still running when
    GPU3 falls off the bus. Job 43's epilog sees the Xid first and drains the node (right), but the
    drain reason must not end with 'job 43': job 43 did not break GPU3."""
    from test_acting import FakeSlurm, view

    sc = tmp_path / "node.yaml"
    x79 = "  - '[ 50.0] NVRM: Xid (PCI:0000:5d:00): 79, pid=777, name=python, GPU has fallen off the bus.'\n"
    views = {NODE: view(NODE)}
    monkeypatch.setattr(pipeline, "slurm_backend", lambda cfg_, deadline=None: FakeSlurm(views, deadline=deadline))
    cfg["breaker"]["enabled"] = False
    out = run(cfg, sc, "epilog", [x79], SLURM_JOB_ID="43", SLURM_JOB_GPUS="0,1")
    top = xid_findings(out.report, 79)
    assert top and top[0].gpu is not None and top[0].gpu.index == 3 and top[0].severity is Severity.REBOOT
    assert out.action.kind == policy.DRAIN and views[NODE].drained
    assert views[NODE].reason.startswith("gpuhc: REBOOT xid: Xid 79 on GPU3") and "job 43" not in views[NODE].reason
    # the same Xid on one of job 43's own GPUs names the job
    views[NODE] = view(NODE)
    x79_own = x79.replace("PCI:0000:5d:00", "PCI:0000:18:00")
    out = run(cfg, tmp_path / "node2.yaml", "epilog", [x79_own], SLURM_JOB_ID="43", SLURM_JOB_GPUS="0,1")
    assert views[NODE].reason.endswith("job 43"), views[NODE].reason


def test_a_crashed_step_gets_the_failure_suite_even_when_the_script_exits_0(cfg):
    """`srun ./train` dies by SIGSEGV (after an Xid), then the batch script copies results and exits 0.
    Slurm's Epilog gets SLURM_JOB_EXIT_CODE2=0:0 and SLURM_JOB_DERIVED_EC (the highest exit code of all
    job steps, slurm.conf(5): available in Epilog) = 11, the step's wait status. The crash must get the
    failure suite, not the quick one."""
    env = {"SLURM_JOB_ID": "44", "SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0:0",
           "SLURM_JOB_DERIVED_EC": "11"}
    assert E.suite_for(cfg, env) == cfg["epilog"]["failure_suite"]
    # a step that exited 1 (wait status 256) is a failure too
    env["SLURM_JOB_DERIVED_EC"] = "256"
    assert E.suite_for(cfg, env) == cfg["epilog"]["failure_suite"]
    # and a job whose steps all succeeded stays on the quick suite
    env["SLURM_JOB_DERIVED_EC"] = "0"
    assert E.suite_for(cfg, env) == cfg["context_suites"]["epilog"]


def test_xid154_back_to_none_does_not_clear_an_isolate_event(cfg, tmp_path):
    """GPU1 logs Xid 54 (auxiliary power not connected: ISOLATE, a mechanical fault) and a DBE (Xid 48,
    RESET). The operator resets the GPU; the driver logs Xid 154 'recovery action ... to 0x0 (None)'.
    The reset resolves the DBE, not the missing power cable: the xid check's own rule for a reset
    (`gpuhc reset`) keeps REBOOT and ISOLATE events, the Xid 154 path must too."""
    sc = tmp_path / "node.yaml"
    lines = ["  - '[ 50.0] NVRM: Xid (PCI:0000:2a:00): 54, pid=1, name=p, Auxiliary power is not connected to the GPU board'\n",
             "  - '[ 51.0] NVRM: Xid (PCI:0000:2a:00): 48, pid=1, name=p, An uncorrectable double bit error'\n",
             "  - '[ 90.0] NVRM: Xid (PCI:0000:2a:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)'\n"]
    out = run(cfg, sc, "epilog", lines, SLURM_JOB_ID="45")
    assert xid_findings(out.report, 48) == []                      # the reset resolved the DBE
    isolate = xid_findings(out.report, 54)
    assert isolate and isolate[0].severity is Severity.ISOLATE, \
        "Xid 54 (ISOLATE) was cleared by a GPU reset: %s" % [(f.metrics, f.severity) for f in out.report.findings
                                                             if f.check == "xid"]


class _FakeNvml:
    """A real-GPU stand-in (kill_leftovers refuses simulated GPUs): GPU0 runs ``pid``."""
    kind = "nvml"
    hung = None

    def __init__(self, pid):
        self.pid = pid

    def processes(self, index):
        return [{"pid": self.pid, "name": "python"}] if index == 0 else []


def test_cpu_only_job_epilog_does_not_kill_another_jobs_gpu_processes(cfg):
    """Shared node: job 50 (a GPU job) trains on GPU0; job 51, a CPU-only job on the same node, ends.
    Slurm sets SLURM_JOB_GPUS only for a job with GPUs, so job 51's epilog has none. With
    epilog.kill_leftover_processes on, job 51's epilog must not SIGKILL job 50's training."""
    other_job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = Context(node=NODE, context="epilog", gpu=_FakeNvml(other_job.pid), host=None, config=cfg,
                      job_id="51", job_gpus=pipeline.job_gpus({"SLURM_JOB_ID": "51"}),
                      inventory=Inventory(gpus=[GpuRef(0, "GPU-0", "0000:18:00.0"), GpuRef(1, "GPU-1", "0000:2a:00.0")],
                                          minors={0: 0, 1: 1}))
        killed = E.kill_leftovers(ctx)
        try:
            other_job.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        assert other_job.poll() is None, "job 51's epilog killed job 50's process: %s" % [f.message for f in killed]
        assert killed == []
        # job 50 is another user's: job 51's epilog with SLURM_JOB_UID of job 51's user leaves it
        assert E.kill_leftovers(ctx, job_uid=os.getuid() + 4242) == [] and other_job.poll() is None
    finally:
        if other_job.poll() is None:
            other_job.kill()
            other_job.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process as another user")
def test_leftover_of_the_jobs_own_user_is_killed_when_its_gpus_are_unknown(cfg):
    """No SLURM_JOB_GPUS (GPUs not a GRES): a process of the job's own user still on a GPU after
    the job is a leftover, and kill_leftover_processes kills it."""
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    left = subprocess.Popen(["sleep", "60"], user=nobody, cwd="/")
    try:
        ctx = Context(node=NODE, context="epilog", gpu=_FakeNvml(left.pid), host=None, config=cfg,
                      job_id="52", job_gpus=None,
                      inventory=Inventory(gpus=[GpuRef(0, "GPU-0", "0000:18:00.0")], minors={0: 0}))
        killed = E.kill_leftovers(ctx, job_uid=nobody)
        left.wait(timeout=5)
        assert left.returncode == -9 and "killed 1 leftover" in killed[0].message
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()


SCONTROL_TIMEOUT = os.path.join(os.path.dirname(__file__), "data", "scontrol-show-job-timeout-in-epilog.txt")


def test_a_job_the_controller_ended_counts_as_failed_when_slurm_is_asked(cfg, monkeypatch):
    """A job that hit its time limit (a hung NCCL ring on a bad GPU, often) or that the user
    cancelled because it hung: Slurm 22.05 gives its epilog SLURM_JOB_EXIT_CODE2=0:0 and
    DERIVED_EC=0 (seen on the test cluster), so the epilog ran the quick suite. With
    epilog.ask_slurm_exit_code the epilog asks slurmctld, whose ExitCode is already 0:15 then
    (output captured in that epilog), and runs the failure suite. Off by default: it is one
    slurmctld call per node per job end, which Slurm advises against at scale."""
    from gpuhc.backends.slurm_cli import SlurmCli

    with open(SCONTROL_TIMEOUT) as f:
        captured = f.read()
    calls = []

    def fake_run(self, argv, timeout=None):
        calls.append(argv)
        return captured

    monkeypatch.setattr(SlurmCli, "_run", fake_run)
    slurm = SlurmCli()
    job = slurm.job("2")
    assert (job.exit_code, job.derived_exit_code, job.comment) == ("0:15", "", "")
    env = {"SLURM_JOB_ID": "2", "SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_DERIVED_EC": "0"}
    calls.clear()
    assert E.suite_for(cfg, env, slurm) == "epilog"
    assert calls == []                                   # off: no Slurm call on a clean-looking epilog
    cfg["epilog"]["ask_slurm_exit_code"] = True
    assert E.suite_for(cfg, env, slurm) == "epilog_failure"
    assert calls == [["scontrol", "show", "job", "--oneliner", "2"]]
    # a job Slurm also shows clean stays on the quick suite; Slurm not answering: the quick suite
    monkeypatch.setattr(SlurmCli, "_run", lambda self, argv, timeout=None: captured.replace("ExitCode=0:15", "ExitCode=0:0"))
    assert E.suite_for(cfg, env, slurm) == "epilog"

    def hung(self, argv, timeout=None):
        raise SlurmError("scontrol show job timed out after 5s")
    monkeypatch.setattr(SlurmCli, "_run", hung)
    assert E.suite_for(cfg, env, slurm) == "epilog"
    # the environment already says failed: no need to ask
    calls.clear()
    monkeypatch.setattr(SlurmCli, "_run", fake_run)
    assert E.suite_for(cfg, dict(env, SLURM_JOB_EXIT_CODE2="3:0"), slurm) == "epilog_failure"
    assert calls == []
