"""gpu_config: persistence mode on, MIG mode as the profile expects (RESET when not, either way),
compute mode default. Pure evaluate on fixtures, then scenarios through the runner."""
import pytest

from gpuhc import config as C
from gpuhc import profiles as P
from gpuhc.checks import gpu_config as G
from gpuhc.checks.base import Entry
from gpuhc.model import GpuRef

GOOD = {"persistence": True, "mig_current": False, "mig_pending": False, "compute_mode": "default"}
CHECKS = ["gpu_config"]
# as instance-profiles.conf gives them: a model line defaults to mig=no
PROFILES = P.parse('dgx-h100 gpus=8 model="H100"\n'
                   'mig-h100 gpus=8 model="H100" mig=yes\n'
                   'any-h100 gpus=8 model="H100" mig=any\n')
NO_MIG, MIG, ANY_MIG, GENERIC = (PROFILES[n] for n in ("dgx-h100", "mig-h100", "any-h100", "generic"))


def gpu(index=0, **modes):
    return Entry(GpuRef(index, "GPU-%d" % index), dict(GOOD, **modes))


def evaluate(*entries, profile=NO_MIG):
    return G.evaluate({"gpus": list(entries)}, profile, C.validate({}))


def problems(findings):
    return [(f.severity.value, f.message) for f in findings if f.severity.value != "PASS"]


def test_profile_lines_default_to_mig_off():
    assert NO_MIG.mig == "no" and MIG.mig == "yes" and GENERIC.mig is None


def test_all_good_passes():
    out = evaluate(gpu(0), gpu(1))
    assert [(f.gpu.index, f.severity.value) for f in out] == [(0, "PASS"), (1, "PASS")]
    assert out[0].message == "persistence on, MIG off, compute mode default"


def test_mig_on_as_the_profile_expects_passes():
    out = evaluate(gpu(mig_current=True, mig_pending=True), profile=MIG)
    assert problems(out) == [] and "MIG on" in out[0].message


def test_persistence_off_is_monitor():
    out = evaluate(gpu(persistence=False))
    assert problems(out) == [("MONITOR", "persistence mode is off")]
    assert "nvidia-persistenced" in out[0].remediation


def test_unknown_persistence_is_not_a_finding():
    assert problems(evaluate(gpu(persistence=None))) == []


def test_mig_on_where_the_profile_expects_off_is_reset():
    out = evaluate(gpu(mig_current=True, mig_pending=True))
    assert problems(out) == [("RESET", "MIG is on, profile expects off")]
    assert out[0].remediation == "nvidia-smi -i 0 -mig 0, then reset the GPU"


def test_mig_off_where_the_profile_expects_on_is_reset():
    out = evaluate(gpu(3), profile=MIG)
    assert problems(out) == [("RESET", "MIG is off, profile expects on")]
    assert out[0].remediation == "nvidia-smi -i 3 -mig 1, then reset the GPU"


@pytest.mark.parametrize("profile", [ANY_MIG, GENERIC, None])
def test_mig_is_not_judged_without_an_expectation(profile):
    assert problems(evaluate(gpu(mig_current=True, mig_pending=True), profile=profile)) == []
    assert problems(evaluate(gpu(mig_current=False), profile=profile)) == []


def test_mig_change_pending_is_monitor_beside_the_mismatch():
    # an operator already asked for MIG off; it takes effect at the next reset
    out = evaluate(gpu(mig_current=True, mig_pending=False))
    assert sorted(problems(out)) == [("MONITOR", "MIG mode change pending until the next reset"),
                                     ("RESET", "MIG is on, profile expects off")]
    # pending towards the wrong mode on a GPU currently right
    assert problems(evaluate(gpu(mig_pending=True))) == [("MONITOR", "MIG mode change pending until the next reset")]


def test_mig_unsupported_gpu_is_not_judged():
    # GPUs without MIG (NVML answers NOT_SUPPORTED) report None
    assert problems(evaluate(gpu(mig_current=None, mig_pending=None))) == []


@pytest.mark.parametrize("mode", ["exclusive_process", "prohibited", "exclusive_thread", "unknown"])
def test_compute_mode_not_default_is_monitor(mode):
    out = evaluate(gpu(compute_mode=mode))
    assert problems(out) == [("MONITOR", "compute mode is %s" % mode)]
    assert "-c DEFAULT" in out[0].remediation


def test_several_problems_on_one_gpu_each_reported():
    out = evaluate(gpu(persistence=False, compute_mode="exclusive_process", mig_current=True, mig_pending=True))
    assert sorted(s for s, _ in problems(out)) == ["MONITOR", "MONITOR", "RESET"]


# -- scenarios through the runner ------------------------------------------------------------------

def write(tmp_path, text, name="node.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def config_findings(report):
    return [(f.where(), f.severity.value, f.message) for f in report.findings
            if f.check == "gpu_config" and f.severity.value != "PASS"]


@pytest.mark.parametrize("name", ["h100-healthy", "a100-healthy", "a30-healthy"])
def test_healthy_bundled_nodes_pass(run_scenario, name):
    report = run_scenario(name, checks=CHECKS)
    found = [f for f in report.findings if f.check == "gpu_config"]
    assert found and all(f.severity.value == "PASS" for f in found) and report.overall.value == "PASS"


def test_persistence_off_and_exclusive_mode_on_a_node(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpu:\n  modes: {persistence: false}\n"
                           "gpus:\n  4:\n    modes: {compute_mode: exclusive_process}\n")
    report = run_scenario(path, checks=CHECKS)
    found = config_findings(report)
    assert ("GPU4", "MONITOR", "compute mode is exclusive_process") in found
    assert sorted(w for w, s, m in found if m == "persistence mode is off") == ["GPU%d" % i for i in range(8)]
    assert len(found) == 9 and report.overall.value == "MONITOR"


def test_mig_on_against_dgx_profile_is_reset(run_scenario, tmp_path):
    path = write(tmp_path, "extends: h100-healthy\ngpus:\n  2:\n    modes: {mig_current: true, mig_pending: true}\n")
    report = run_scenario(path, checks=CHECKS)
    assert report.profile == "dgx-h100"
    assert config_findings(report) == [("GPU2", "RESET", "MIG is on, profile expects off")]
    assert report.overall.value == "RESET"


def test_mig_off_against_a_mig_profile_is_reset(run_scenario, tmp_path):
    conf = write(tmp_path, 'mig-h100 gpus=8 model="H100" mig=yes auto=no\n', "profiles.conf")
    path = write(tmp_path, "extends: h100-healthy\ngpu:\n  modes: {mig_current: true, mig_pending: true}\n"
                           "gpus:\n  7:\n    modes: {mig_current: false, mig_pending: false}\n")
    report = run_scenario(path, checks=CHECKS, profiles=conf, profile="mig-h100")
    assert report.profile == "mig-h100"
    assert config_findings(report) == [("GPU7", "RESET", "MIG is off, profile expects on")]
    assert report.overall.value == "RESET"
