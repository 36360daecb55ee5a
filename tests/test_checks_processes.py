"""processes: leftover compute processes in the prolog and epilog, and on a node shared by
several jobs only on the GPUs of the job the context runs for (SLURM_JOB_GPUS)."""
from gpuhc import session
from gpuhc.contexts.pipeline import job_gpus

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
