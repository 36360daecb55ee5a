"""processes: leftover compute processes in the prolog and epilog, and on a node shared by
several jobs only on the GPUs of the job the context runs for (SLURM_JOB_GPUS).
Scenarios through the runner, then pure evaluate on hand-built entries (MONITOR for a leftover
where no job owns the GPU, PASS for another job's GPU or while a job may run, a GPU error mapped
once), then gather on simulated nodes."""
import pytest

from gpuhc import config as C
from gpuhc import session
from gpuhc.backends import gpu as G
from gpuhc.backends.gpu import GpuError
from gpuhc.checks import processes as PR
from gpuhc.checks.base import Entry
from gpuhc.contexts.pipeline import job_gpus
from gpuhc.model import GpuRef

from test_checks_nvml import sim_context, summary

SHARED = """extends: h100-healthy
gpus:
  2:
    processes: [{pid: 4242, name: python3, used_memory_mib: 70000}]
  5:
    processes: [{pid: 5151, name: vllm, used_memory_mib: 60000}]
"""


def run(tmp_path, make_cfg, context, job_gpus=None, text=SHARED):
    path = tmp_path / "shared.yaml"
    path.write_text(text)
    report, _, _ = session.run(make_cfg(), context, checks=["processes"], node="gpu-001", simulate=str(path),
                               job_gpus=job_gpus)
    return {(f.gpu.index if f.gpu else None): f for f in report.findings if f.check == "processes"}


def test_leftovers_in_the_prolog_and_epilog_are_monitor(tmp_path, make_cfg):
    for context in ("prolog", "epilog"):
        found = run(tmp_path, make_cfg, context)
        assert found[2].severity.value == "MONITOR" and "python3[4242]" in found[2].message
        assert found[5].severity.value == "MONITOR" and found[5].metrics["processes"] == 1


def test_processes_while_jobs_run_are_normal(tmp_path, make_cfg):
    found = run(tmp_path, make_cfg, "healthcheck")
    assert {f.severity.value for f in found.values()} == {"PASS"}


def test_a_shared_node_counts_only_the_jobs_own_gpus(tmp_path, make_cfg):
    found = run(tmp_path, make_cfg, "prolog", job_gpus={2, 3})
    assert found[2].severity.value == "MONITOR"
    assert found[5].severity.value == "PASS" and "another job" in found[5].message
    found = run(tmp_path, make_cfg, "epilog", job_gpus={0, 1})
    assert {i: f.severity.value for i, f in found.items()} == {2: "PASS", 5: "PASS"}


def test_slurm_ids_are_device_minor_numbers_not_nvml_indexes(tmp_path, make_cfg):
    """Slurm's GPU ids are /dev/nvidiaN numbers; where they differ from NVML's order, the minor
    number decides which GPU is the job's."""
    text = SHARED + "  0: {identity: {minor_number: 2}}\n"
    text = text.replace("  2:\n", "  2:\n    identity: {minor_number: 0}\n")
    found = run(tmp_path, make_cfg, "prolog", job_gpus={2}, text=text)
    assert found[2].severity.value == "PASS" and "another job" in found[2].message


def test_job_gpus_from_the_environment():
    assert job_gpus({"SLURM_JOB_GPUS": "0,1,4"}) == {0, 1, 4}
    assert job_gpus({"SLURM_JOB_GPUS": "0-3,6"}) == {0, 1, 2, 3, 6}
    assert job_gpus({"SLURM_JOB_GPUS": ""}) is None and job_gpus({}) is None
    assert job_gpus({"SLURM_JOB_GPUS": "gpu:a100"}) is None


# -- evaluate on fixtures ----------------------------------------------------------------------------

PYTHON = {"pid": 4242, "name": "python3", "used_memory_mib": 70000}
VLLM = {"pid": 5151, "name": "vllm", "used_memory_mib": 60000}


def evaluate(*procs, context="prolog", others=()):
    """One entry per process list (GPU 0, 1, ...); a GpuError in place of a list is that GPU's error."""
    entries = [Entry(GpuRef(i, "GPU-%d" % i), error=p) if isinstance(p, GpuError) else Entry(GpuRef(i, "GPU-%d" % i), p)
               for i, p in enumerate(procs)]
    return PR.evaluate({"gpus": entries, "context": context, "other_jobs": list(others)}, None, C.defaults())


@pytest.mark.parametrize("context", ["prolog", "epilog", "check", "healthcheck"])
def test_no_process_anywhere_is_one_pass(context):
    assert summary(evaluate([], [], context=context)) == [("PASS", None, "no compute processes")]


@pytest.mark.parametrize("context", ["prolog", "epilog", "sweep", "quarantine"])
def test_a_process_where_no_job_owns_the_gpu_is_a_monitor_leftover(context):
    out = evaluate([], [PYTHON], context=context)
    assert summary(out) == [("MONITOR", 1, "1 leftover compute process(es): python3[4242]")]
    assert out[0].metrics == {"processes": 1} and out[0].remediation == "kill the leftover processes"


@pytest.mark.parametrize("context", ["check", "healthcheck", None])
def test_a_process_while_a_job_may_run_is_normal(context):
    out = evaluate([PYTHON, VLLM], [], context=context)
    assert summary(out) == [("PASS", 0, "2 compute process(es): python3[4242], vllm[5151]")]
    assert out[0].metrics == {"processes": 2}


def test_a_process_on_another_jobs_gpu_is_normal():
    out = evaluate([PYTHON], [VLLM], context="epilog", others=[1])
    assert summary(out) == [("MONITOR", 0, "1 leftover compute process(es): python3[4242]"),
                            ("PASS", 1, "1 compute process(es) of another job: vllm[5151]")]
    # outside the prolog and epilog every process is normal, whichever job it belongs to
    assert summary(evaluate([PYTHON], context="check", others=[0])) == [
        ("PASS", 0, "1 compute process(es): python3[4242]")]


def test_the_message_names_at_most_four_processes_and_counts_all():
    procs = [{"pid": 100 + i, "name": "rank%d" % i} for i in range(6)] + [{"pid": 7, "name": None}]
    [out] = evaluate(procs)
    assert out.message == "7 leftover compute process(es): rank0[100], rank1[101], rank2[102], rank3[103]"
    assert out.metrics == {"processes": 7}
    [out] = evaluate([{"pid": 9, "name": None}])
    assert out.message == "1 leftover compute process(es): ?[9]"


def test_a_gpu_error_is_mapped_on_its_gpu():
    out = evaluate([], GpuError(G.GPU_IS_LOST, "processes", 1))
    assert [(f.severity.value, f.gpu.index) for f in out] == [("REBOOT", 1)]
    assert "(GPU_IS_LOST in processes" in out[0].message


# -- gather -> evaluate on simulated nodes ---------------------------------------------------------

def test_gather_on_a_healthy_node():
    data = PR.gather(sim_context("h100-healthy", context="prolog"))
    assert data["context"] == "prolog" and data["other_jobs"] == []
    assert [e.value for e in data["gpus"]] == [[]] * 8
    assert summary(PR.evaluate(data, None, C.defaults())) == [("PASS", None, "no compute processes")]


def test_gather_names_the_gpus_of_other_jobs(tmp_path):
    sc = tmp_path / "shared.yaml"
    sc.write_text(SHARED)
    data = PR.gather(sim_context(sc, context="epilog", job_gpus={2, 3}))
    assert data["other_jobs"] == [0, 1, 4, 5, 6, 7]
    assert [(e.gpu.index, [p["pid"] for p in e.value]) for e in data["gpus"] if e.value] == [(2, [4242]), (5, [5151])]
    out = PR.evaluate(data, None, C.defaults())
    assert [(f.severity.value, f.gpu.index) for f in out] == [("MONITOR", 2), ("PASS", 5)]
    # without SLURM_JOB_GPUS every GPU is taken as the job's
    assert PR.gather(sim_context(sc, context="epilog"))["other_jobs"] == []


def test_gather_matches_job_gpus_by_device_minor(tmp_path):
    """NVML GPU 0 is /dev/nvidia2 and GPU 2 is /dev/nvidia0: SLURM_JOB_GPUS=2 is NVML GPU 0."""
    sc = tmp_path / "minors.yaml"
    sc.write_text(SHARED.replace("  2:\n", "  2:\n    identity: {minor_number: 0}\n")
                  + "  0: {identity: {minor_number: 2}}\n")
    data = PR.gather(sim_context(sc, context="prolog", job_gpus={2}))
    assert data["other_jobs"] == [1, 2, 3, 4, 5, 6, 7]


def test_gather_asks_only_gpus_that_answered_the_inventory():
    data = PR.gather(sim_context("h100-xid79", context="epilog", job_gpus={3}))
    assert [e.gpu.index for e in data["gpus"]] == [0, 1, 2, 4, 5, 6, 7]
    assert data["other_jobs"] == [0, 1, 2, 4, 5, 6, 7]
