"""The multi-node all-reduce without Slurm: thresholds and the judgement of a run (controller/nccl.py), the
pair history (store/pairs.py), a rank's layout from Slurm's environment (contexts/nccl.py), the job's
driver over a fake step runner (contexts/nccl_job.py), the pairwise mode over a fake Slurm
(controller/nccl_pairs.py), and real gloo ranks on this machine slowed or hung by their scenario.
The same paths on the real test cluster: tests/test_slurm_nccl.py."""
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_acting import FakeSlurm, view

from gpuhc.backends.slurm import JobInfo
from gpuhc.backends.slurm_steps import srun_argv
from gpuhc.contexts import nccl as R
from gpuhc.contexts import nccl_job as J
from gpuhc.controller import nccl as N
from gpuhc.controller import nccl_pairs as P
from gpuhc.controller.blame import GroupResult, convict
from gpuhc.errors import GpuhcError
from gpuhc.model import Severity
from gpuhc.profiles import load as load_profiles
from gpuhc.store import PairHistory, Store, StoreError

GIB = 1 << 30
NODES = ["gpu-001", "gpu-002", "gpu-003", "gpu-004"]


def sizes(*pairs):
    return [{"size_bytes": n, "count": n // 4, "time_us": 1.0, "algbw_gbps": bw / 1.5, "busbw_gbps": bw, "wrong": 0}
            for n, bw in pairs]


def cfg_with(make_cfg, **nccl):
    base = {"sizes": [4096, 65536], "warmup": 1, "iters": 2, "timeout": 5.0, "device": "cpu"}
    base.update(nccl)
    return make_cfg(nccl=base, slurm={"backend": "none"}, breaker={"settle": 0.0})


# ---- thresholds and judgement ----------------------------------------------------------------------

def test_expected_busbw_config_then_profile_by_node_count(make_cfg):
    p5 = load_profiles()["p5.48xlarge"]
    cfg = make_cfg()
    assert N.expected_busbw(cfg, p5, 1, True)[0] == 460.0           # one node: busbw_gbps
    value, source = N.expected_busbw(cfg, p5, 2, True)
    assert value == 440.0 and "internode_busbw_gbps" in source and "2 nodes" in source
    assert N.expected_busbw(cfg, p5, 4, False)[0] is None             # a GPU figure never judges a CPU run
    assert N.expected_busbw(cfg, load_profiles()["dgx-h100"], 2, True)[0] is None   # no internode figure
    assert N.expected_busbw(make_cfg(nccl={"expect_busbw_gbps": 0.5}), p5, 2, False) == (
        0.5, "config nccl.expect_busbw_gbps")


def test_judge_at_sizes_of_a_gib_and_more_on_gpus_and_the_largest_on_the_cpu():
    curve = sizes((1 << 20, 30.0), (GIB, 400.0), (2 * GIB, 443.0), (16 * GIB, 487.0))
    j = N.judge(curve, True, None, 440.0, 0.9, on_gpu=True)
    assert j.passed and j.busbw == 487.0 and j.size == 16 * GIB and "expected >= 396" in j.why
    low = N.judge(sizes((1 << 20, 300.0), (GIB, 100.0), (2 * GIB, 380.0)), True, None, 440.0, 0.9, on_gpu=True)
    assert not low.passed and low.busbw == 380.0 and "below 90% of the expected 440" in low.why
    # the 1 MiB figure is never what a GPU run is judged by
    assert not N.judge(sizes((1 << 20, 500.0), (GIB, 100.0)), True, None, 440.0, 0.9, on_gpu=True).passed
    cpu = N.judge(sizes((4096, 0.5), (1 << 20, 0.02)), True, None, 0.06, 0.9, on_gpu=False)
    assert not cpu.passed and cpu.size == 1 << 20
    bad = sizes((4096, 0.5))
    bad[0]["wrong"] = 3
    assert not N.judge(bad, True, None, None, 0.9, False).passed
    hung = N.judge([], False, "RuntimeError: Timed out waiting 4000ms", 0.06, 0.9, False)
    assert not hung.passed and hung.busbw is None and "Timed out" in hung.why
    assert N.judge(sizes((4096, 0.001)), True, None, None, 0.9, False).passed      # no expectation: completion


def test_record_round_trips_into_a_group_result():
    j = N.judge(sizes((4096, 0.1)), True, None, 0.06, 0.9, False)
    rec = N.group_record(["gpu-002", "gpu-001"], j, job_id="7.1", ranks=2, backend="gloo", device="cpu",
                         sizes=sizes((4096, 0.1)), algo="Ring", purpose="pair", when=123.0)
    assert rec["nodes"] == ["gpu-001", "gpu-002"] and rec["nodelist"] == "gpu-[001-002]" and rec["algo"] == "Ring"
    res = N.to_result(json.loads(json.dumps(rec)))
    assert res == GroupResult(frozenset(["gpu-001", "gpu-002"]), True, 0.1, 4096, "7.1", 123.0)


def test_drain_message_and_node_reports_from_a_verdict():
    def rec(nodes, passed, bw):
        j = N.Judgement(passed, bw, 1 << 20, 0.06, 0.9, "x")
        return N.group_record(nodes, j, job_id="9.0", ranks=len(nodes), backend="gloo", device="cpu",
                              sizes=sizes((1 << 20, bw)) if bw else [], algo=None)
    records = [rec(NODES, False, 0.03), rec(["gpu-001", "gpu-002"], True, 0.4), rec(["gpu-003", "gpu-004"], False, 0.02),
               rec(["gpu-001", "gpu-003"], False, 0.021), rec(["gpu-002", "gpu-004"], True, 0.3),
               rec(["gpu-002", "gpu-003"], False, 0.019), rec(["gpu-001", "gpu-003"], False, 0.02),
               rec(["gpu-002", "gpu-003"], False, 0.02)]
    verdict = convict([N.to_result(r) for r in records])
    assert list(verdict.convicted) == ["gpu-003"]
    reports = N.node_reports(NODES, verdict, records, job_id="9", started=100.0, ended=101.0)
    bad = reports["gpu-003"].findings[0]
    assert bad.severity is Severity.RESET and bad.check == "nccl"
    assert bad.message == "0.019 GB/s with gpu-[001-002,004] (expected >= 0.054 GB/s)"
    assert reports["gpu-003"].suite == "nccl" and reports["gpu-003"].context == "nccl"
    ok = reports["gpu-001"].findings[0]
    assert ok.severity is Severity.PASS and "with gpu-002" in ok.message and "busbw_gbps@1048576" in ok.metrics
    # a run that failed alone decides nothing: undecided, ERROR (never drains)
    lone = N.node_reports(NODES, convict([N.to_result(records[0])]), records[:1], job_id="9", started=1.0,
                          bisected=False)
    assert all(r.overall is Severity.ERROR and "not bisected" in r.findings[0].message for r in lone.values())
    assert N.drain_message(None, ["gpu-002"], None) == "no result (hung or failed) with gpu-002 (no expected figure)"
    assert N.drain_message(12.5, [], 414.0) == "12.5 GB/s on one node (expected >= 414 GB/s)"


def test_conclude_drains_the_convicted_node_with_the_gpuhc_reason_and_records_every_node(make_cfg):
    cfg = make_cfg(breaker={"settle": 0.0, "max_fraction": 0.5})
    fake = FakeSlurm({n: view(n) for n in NODES})
    fake.views["gpu-004"] = view("gpu-004", states=("IDLE", "DRAIN"), reason="fan, ticket 7")
    results = []
    for group, passed in ((NODES, False), (["gpu-001", "gpu-002"], True), (["gpu-003", "gpu-004"], False),
                          (["gpu-001", "gpu-003"], False), (["gpu-002", "gpu-004"], True),
                          (["gpu-002", "gpu-003"], False), (["gpu-001", "gpu-003"], False),
                          (["gpu-002", "gpu-003"], False)):
        j = N.Judgement(passed, 0.4 if passed else 0.02, 1 << 20, 0.06, 0.9, "x")
        results.append(N.group_record(group, j, job_id="5.0", ranks=len(group), backend="gloo", device="cpu",
                                      sizes=[], algo=None))
    verdict = convict([N.to_result(r) for r in results])
    reports, done, notes = N.conclude(cfg, NODES, verdict, results, job_id="5", started=time.time() - 5,
                                      slurm=fake)
    assert notes == [] and done == {"gpu-003": "drain"}
    assert fake.views["gpu-003"].reason == "gpuhc: RESET nccl: 0.02 GB/s with gpu-[001-002,004] (expected >= 0.054 GB/s)"
    assert fake.views["gpu-004"].reason == "fan, ticket 7"       # an operator's drain is never touched
    assert [n for n, _ in fake.updates] == ["gpu-003"]
    store = Store.from_config(cfg)
    assert store.latest("gpu-003").action == "drain" and store.latest("gpu-003").overall is Severity.RESET
    assert all(store.latest(n).overall is Severity.PASS for n in ("gpu-001", "gpu-002", "gpu-004"))


# ---- the pair history --------------------------------------------------------------------------------

def record(nodes, passed=True, job="1.0", when=None, bw=0.1):
    j = N.Judgement(passed, bw, 4096, 0.06, 0.9, "x")
    return N.group_record(nodes, j, job_id=job, ranks=len(nodes), backend="gloo", device="cpu",
                          sizes=sizes((4096, bw)), algo=None, when=when)


def test_pair_history_appends_filters_and_skips_a_bad_line(make_cfg):
    cfg = make_cfg()
    h = PairHistory.from_config(cfg)
    assert h.read() == []
    t = time.time() - 1000
    h.append(record(["gpu-001", "gpu-002"], job="12.0", when=t))
    h.append(record(["gpu-003", "gpu-004"], False, job="12.1", when=t + 1))
    h.append(record(["gpu-001", "gpu-003"], job="13", when=t + 2))
    with open(h.path, "ab") as fh:
        fh.write(b'{"nodes": "gpu-001", "passed": true, "time": 1}\nnot json\n')
    h.append(record(["gpu-002", "gpu-004"], job="14.0", when=t + 3))
    every = h.read()
    assert [r["job_id"] for r in every] == ["12.0", "12.1", "13", "14.0"]
    assert [r["job_id"] for r in h.read(job_ids=["12"])] == ["12.0", "12.1"]
    assert [r["job_id"] for r in h.read(nodes=["gpu-004"], since=t + 1.5)] == ["14.0"]
    assert [r["job_id"] for r in h.read(limit=1)] == ["14.0"]
    with pytest.raises(StoreError):
        h.append({"nodes": [], "passed": True, "time": 1.0})
    assert os.stat(h.path).st_mode & 0o777 == 0o644


def test_pair_history_compacts_by_count_and_age(make_cfg):
    cfg = make_cfg(history={"max_records": 1, "max_age_days": 1})      # pairs keep 100x the node history's count
    h = PairHistory.from_config(cfg)
    now = time.time()
    h.append(record(["a", "b"], when=now - 3 * 86400))                   # older than the age limit
    for i in range(109):
        h.append(record(["a", "b"], job=str(i), when=now - 100 + i))
    kept = h.read()
    assert len(kept) <= 110 and all(r["time"] > now - 86400 for r in kept), len(kept)
    assert h.compact() == (100, len(kept) - 100)
    assert len(h.read()) == 100 and h.read()[-1]["job_id"] == "108"


def _append_many(args):
    store, state, first = args
    from gpuhc import config as C

    cfg = C.validate({"store": store, "state_dir": state}, "t")
    h = PairHistory.from_config(cfg)
    for i in range(first, first + 10):
        h.append(record(["n%d" % i, "m%d" % i], job=str(i), when=time.time()))


def test_concurrent_appends_lose_nothing(make_cfg, tmp_path):
    cfg = make_cfg()
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_append_many, [(cfg["store"], cfg["state_dir"], 100 * k) for k in range(8)])
    got = PairHistory.from_config(cfg).read()
    assert len(got) == 80 and len({r["job_id"] for r in got}) == 80


# ---- a rank's layout, the driver's steps ---------------------------------------------------------------

def test_layout_from_slurm_environment():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_STEP_ID": "2", "SLURM_STEP_NODELIST": "gpu-[007-008,010-011]", "SLURM_JOB_NODELIST": "gpu-[001-016]"}
    lay = R.slurm_layout(env, resolve=lambda name: "10.0.0.7" if name == "gpu-007" else name)
    assert (lay.rank, lay.world, lay.local_rank) == (3, 8, 1)
    assert lay.nodes == ["gpu-007", "gpu-008", "gpu-010", "gpu-011"] and lay.master_addr == "10.0.0.7"
    assert lay.run_id == "4242.2" and 20000 <= lay.master_port < 40000
    other = R.slurm_layout(dict(env, SLURM_STEP_ID="3"), resolve=str)
    assert other.master_port != lay.master_port                  # parallel steps of one job never meet
    fixed = R.slurm_layout(dict(env, MASTER_ADDR="head", MASTER_PORT="29500"), resolve=str)
    assert (fixed.master_addr, fixed.master_port) == ("head", 29500)
    with pytest.raises(GpuhcError, match="runs under srun"):
        R.slurm_layout({"SLURM_JOB_ID": "1"})
    ports = {R.rendezvous_port(str(j), str(s)) for j in range(100, 110) for s in range(8)}
    assert len(ports) == 80


def test_srun_argv_and_tasks_per_node():
    argv = srun_argv(["gpu-003", "gpu-001"], 8, ["gpuhc", "nccl", "--step"])
    assert argv[:6] == ["srun", "--nodes=2", "--nodelist=gpu-[001,003]", "--ntasks=16", "--ntasks-per-node=8",
                        "--kill-on-bad-exit=0"] and argv[-3:] == ["gpuhc", "nccl", "--step"]
    assert J.tasks_per_node(None, {"SLURM_NTASKS_PER_NODE": "4"}, "cuda") == 4
    assert J.tasks_per_node(2, {"SLURM_NTASKS_PER_NODE": "4"}, "cuda") == 2
    assert J.tasks_per_node(None, {}, "cpu") == 1


class FakeSteps:
    """Driver.run_round over a truth table instead of srun: a group fails when it holds a bad node."""

    def __init__(self, bad=(), hang=()):
        self.bad, self.hang, self.rounds = set(bad), set(hang), []

    def __call__(self, driver, groups, purpose, prefix=True):
        self.rounds.append([tuple(g) for g in groups])
        out = []
        for g in groups:
            if self.hang & set(g):
                j = N.Judgement(False, None, None, 0.06, 0.9, "failed: Timed out")
            else:
                bw = 0.02 if self.bad & set(g) else 0.3
                j = N.judge(sizes((4096, bw)), True, None, 0.06, 0.9, False)
            rec = N.group_record(g, j, job_id="%s.%d" % (driver.job_id, driver.steps), ranks=len(g), backend="gloo",
                                 device="cpu", sizes=[], algo="Ring" if len(g) == 2 else None, purpose=purpose,
                                 error=None if j.busbw else "Timed out")
            driver.steps += 1
            out.append(rec)
        driver.records.extend(out)
        return out


def patch_steps(monkeypatch, steps):
    monkeypatch.setattr(J.Driver, "run_round", lambda self, groups, purpose, prefix=True: steps(self, groups, purpose))


@pytest.mark.parametrize("bad,hang", [(["gpu-006"], []), ([], ["gpu-002"])])
def test_job_driver_bisects_to_the_bad_node_and_concludes(make_cfg, monkeypatch, bad, hang):
    cfg = cfg_with(make_cfg, expect_busbw_gbps=0.06)
    steps = FakeSteps(bad, hang)
    patch_steps(monkeypatch, steps)
    lines = []
    env = {"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "gpu-[001-008]"}
    code = J.job_bisect(cfg, env=env, out=lines.append)
    text = "\n".join(lines)
    culprit = (bad or hang)[0]
    assert code == 1 and "bisecting inside the job's allocation" in text, text
    assert "convicted: %s:" % culprit in text and text.count("convicted:") == 1, text
    assert steps.rounds[0] == [tuple("gpu-%03d" % i for i in range(1, 9))]
    assert all(len(set().union(*map(set, r))) == sum(map(len, r)) for r in steps.rounds)    # disjoint steps
    store = Store.from_config(cfg)
    assert store.latest(culprit).overall is Severity.RESET
    assert all(store.latest("gpu-%03d" % i).overall is Severity.PASS for i in range(1, 9) if "gpu-%03d" % i != culprit)


def test_job_driver_without_bisection_and_on_a_healthy_group(make_cfg, monkeypatch):
    cfg = cfg_with(make_cfg, expect_busbw_gbps=0.06)
    env = {"SLURM_JOB_ID": "32", "SLURM_JOB_NODELIST": "gpu-[001-004]"}
    patch_steps(monkeypatch, FakeSteps(["gpu-003"]))
    lines = []
    assert J.job_bisect(cfg, bisect=False, env=env, out=lines.append) == 1
    assert "not bisected" in "\n".join(lines) and "undecided: gpu-[001-004]" in "\n".join(lines)
    steps = FakeSteps()
    patch_steps(monkeypatch, steps)
    assert J.job_bisect(cfg, env=env, out=lines.append) == 0 and len(steps.rounds) == 1
    with pytest.raises(GpuhcError, match="inside a batch job"):
        J.job_bisect(cfg, env={})


def test_job_driver_stops_within_its_budget(make_cfg, monkeypatch):
    cfg = cfg_with(make_cfg, expect_busbw_gbps=0.06, budget=1.0)
    steps = FakeSteps(["gpu-003"])

    def slow(driver, groups, purpose, prefix=True):
        time.sleep(0.6)
        return steps(driver, groups, purpose, prefix)
    monkeypatch.setattr(J.Driver, "run_round", slow)
    lines = []
    J.job_bisect(cfg, env={"SLURM_JOB_ID": "33", "SLURM_JOB_NODELIST": "gpu-[001-004]"}, out=lines.append)
    assert "another round would pass nccl.budget" in "\n".join(lines) and len(steps.rounds) <= 2


# ---- pairwise mode over a fake Slurm ---------------------------------------------------------------------

class PairSlurm(FakeSlurm):
    """submit() runs the group at once: its record goes to the pair history (pass unless it holds a bad node)."""

    def __init__(self, cfg, bad):
        super().__init__({n: view(n) for n in NODES})
        self.cfg, self.bad, self.specs, self.finished = cfg, set(bad), [], {}

    def submit(self, spec):
        self.specs.append(spec)
        job = str(100 + len(self.specs))
        PairHistory.from_config(self.cfg).append(record(spec.nodelist, not self.bad & set(spec.nodelist),
                                                        job="%s.0" % job, bw=0.02 if self.bad & set(spec.nodelist) else 0.3))
        return job

    def jobs(self, ids=None, name=None, user=None, states=None):
        return [JobInfo(job_id=i, state="COMPLETED") for i in ids or ()]


def test_pairs_plan_is_the_circle_method():
    jobs = P.plan(NODES)
    assert [(j.round, j.nodes) for j in jobs] == [
        (1, ("gpu-001", "gpu-004")), (1, ("gpu-002", "gpu-003")), (2, ("gpu-001", "gpu-003")),
        (2, ("gpu-002", "gpu-004")), (3, ("gpu-001", "gpu-002")), (3, ("gpu-003", "gpu-004"))]
    assert {j.round for j in P.plan(["n%d" % i for i in range(10)], quick=True)} == {1, 2}


def test_pairs_convict_only_the_bad_node_and_submit_exclusive_pair_jobs(make_cfg):
    cfg = cfg_with(make_cfg, expect_busbw_gbps=0.06)
    cfg["breaker"]["max_fraction"] = 0.5
    fake = PairSlurm(cfg, ["gpu-003"])
    out = P.pairs(cfg, "gpu-[001-004]", slurm=fake, progress=lambda line: None)
    assert list(out.verdict.convicted) == ["gpu-003"] and not out.verdict.suspect_links
    assert out.exit_code == 1 and out.actions == {"gpu-003": "drain"}
    assert fake.views["gpu-003"].reason.startswith("gpuhc: RESET nccl: 0.02 GB/s with gpu-[001-002,004]")
    spec = fake.specs[0]
    assert spec.exclusive and spec.nodes == 2 and spec.args[0] == "--pair" and spec.script.endswith(
        "sbatch/nccl-allreduce.sbatch") and spec.deadline and spec.time_limit
    assert all("gpu-003" in s.nodelist for s in fake.specs[6:])      # follow-ups only where the rule needs them
    assert "convicted: gpu-003" in P.text(out)
    healthy = P.pairs(cfg, "gpu-[001-004]", slurm=PairSlurm(cfg, []), progress=lambda line: None)
    assert healthy.exit_code == 0 and not healthy.verdict.convicted and len(healthy.jobs) == 6


# ---- real gloo ranks on this machine --------------------------------------------------------------------

def result_of(path):
    text = path.read_text()
    return json.JSONDecoder().raw_decode(text[text.index("\n{") + 1:])[0]


def _rank(env, cfg_path, out):
    env = dict(os.environ, **env, GPUHC_CONFIG=cfg_path, PYTHONPATH=ROOT)
    with open(out, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "gpuhc", "nccl", "--step", "--json"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


@pytest.mark.parametrize("fault", ["slow", "hang"])
def test_scenario_slows_or_hangs_the_real_collective_of_the_group(tmp_path, fault):
    """Three gloo ranks as srun would start them, rank 2 on a simulated node of h100-nccl-slow / -hang."""
    (tmp_path / "sc").mkdir()
    for node in ("gpu-001", "gpu-002"):
        (tmp_path / "sc" / ("%s.yaml" % node)).write_text("extends: h100-healthy\n")
    (tmp_path / "sc" / "gpu-003.yaml").write_text("extends: h100-nccl-%s\n" % fault)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                               "simulate": str(tmp_path / "sc" / "%n.yaml"), "slurm": {"backend": "none"},
                               "detect": {"cloud_metadata": False, "slurm_features": False},
                               "nccl": {"sizes": [4096, 262144], "warmup": 1, "iters": 3, "timeout": 3.0,
                                        "device": "cpu", "expect_busbw_gbps": 0.03}}))
    from gpuhc.workloads.allreduce import free_port

    port = str(free_port())
    t0 = time.monotonic()
    procs = [_rank({"SLURM_PROCID": str(r), "SLURM_NTASKS": "3", "SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0",
                    "SLURM_JOB_NODELIST": "gpu-[001-003]", "SLURMD_NODENAME": "gpu-%03d" % (r + 1),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}, str(cfg), str(tmp_path / ("r%d" % r)))
             for r in range(3)]
    codes = [p.wait(60) for p in procs]
    took = time.monotonic() - t0
    rec = result_of(tmp_path / "r0")
    text = (tmp_path / "r0").read_text()
    assert codes[0] == 1 and not rec["passed"], text
    assert rec["nodes"] == ["gpu-001", "gpu-002", "gpu-003"] and rec["job_id"] == "5.0"
    if fault == "slow":       # 50 ms a collective: well under the expected figure at every size
        assert all(s["time_us"] > 45000 for s in rec["sizes"]) and rec["busbw_gbps"] < 0.03, rec
    else:                     # the peers time out after nccl.timeout; the hung rank's watchdog ends it
        assert rec["busbw_gbps"] is None and "imed out" in rec["error"] and codes[2] == 124, (rec, codes)
        assert took < 30, took
    assert len(PairHistory(str(tmp_path / "store")).read()) == 1


@pytest.mark.gpu
def test_one_node_nccl_run_on_the_gpus_here(tmp_path):
    """On a lent GPU: one node, one rank per GPU, NCCL, as srun would start them; the figures are printed
    (bench/RESULTS.md keeps them beside nccl-tests')."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    n = torch.cuda.device_count()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                               "slurm": {"backend": "none"}, "detect": {"cloud_metadata": False, "slurm_features": False},
                               "nccl": {"device": "cuda", "sizes": [1 << 20, 1 << 26, 1 << 30, 1 << 32],
                                        "timeout": 120.0}}))
    from gpuhc.workloads.allreduce import free_port

    port = str(free_port())
    procs = [_rank({"SLURM_PROCID": str(r), "SLURM_NTASKS": str(n), "SLURM_LOCALID": str(r), "SLURM_JOB_ID": "1",
                    "SLURM_JOB_NODELIST": "gpu-001", "SLURMD_NODENAME": "gpu-001", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port}, str(cfg), str(tmp_path / ("r%d" % r))) for r in range(n)]
    codes = [p.wait(600) for p in procs]
    rec = result_of(tmp_path / "r0")
    print(json.dumps({s["size_bytes"]: round(s["busbw_gbps"], 1) for s in rec["sizes"]}))
    assert rec["backend"] == "nccl" and rec["nccl_version"] and not rec["error"], rec
    assert all(s["wrong"] == 0 for s in rec["sizes"]) and codes[0] in (0, 1), codes
