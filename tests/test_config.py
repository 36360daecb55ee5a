import pytest

from gpuhc import config as C
from gpuhc.errors import ConfigError


def test_no_config_file_gives_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUHC_CONFIG", raising=False)
    monkeypatch.setattr(C, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    cfg = C.load()
    assert cfg["suites"]["prolog"] and cfg["timeouts"]["check"] > 0 and cfg["simulate"] is None


def test_file_merges_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("store: /shared/gpuhc\nsimulate: /sc/%n.yaml\ntimeouts:\n  check: 2\n  budget: {prolog: 4}\n"
                    "suites:\n  quick: [nvml, xid]\n")
    cfg = C.load(str(path))
    assert cfg["store"] == "/shared/gpuhc" and cfg["simulate"] == "/sc/%n.yaml"
    assert cfg["timeouts"]["check"] == 2 and cfg["timeouts"]["budget"]["prolog"] == 4
    assert cfg["timeouts"]["budget"]["epilog"] == 20.0          # untouched default kept
    assert cfg["suites"]["quick"] == ["nvml", "xid"] and "prolog" in cfg["suites"]


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("profile: p5\n")
    monkeypatch.setenv("GPUHC_CONFIG", str(path))
    assert C.load()["profile"] == "p5"


@pytest.mark.parametrize("text,needle", [
    ("stroe: /x\n", "unknown key 'stroe' (known: allreduce_node, breaker,"),
    ("timeouts:\n  chek: 3\n", "timeouts: unknown key 'chek'"),
    ("timeouts:\n  check: soon\n", "timeouts.check: expected a number of seconds above 0, got 'soon'"),
    ("timeouts:\n  budget: {prolog: fast}\n", "timeouts.budget.prolog: expected a number of seconds above 0"),
    ("suites:\n  prolog: nvml\n", "suites.prolog: expected a list"),
    ("suites:\n  prolog: [nvml, 3]\n", "suites.prolog[1]: expected a string"),
    ("detect: {cloud_metadata: maybe}\n", "detect.cloud_metadata: expected true/false, got 'maybe'"),
    ("timeouts: {check: true}\n", "timeouts.check: expected a number of seconds above 0, got true"),
    ("timeouts: {check: -1}\n", "timeouts.check: expected a number of seconds above 0, got -1"),
    ("- a\n- b\n", "expected a mapping"),
    ("store: [unclosed\n", "invalid YAML"),
    ("timeouts: {store: .inf}\n", "timeouts.store: expected a number of seconds above 0, got inf"),
    ("timeouts: {store_read: .nan}\n", "timeouts.store_read: expected a number of seconds above 0, got nan"),
    ("timeouts: {check: 7}\nslurm: {}\ntimeouts: {store: 1}\n", ":3: invalid YAML: key 'timeouts' given twice"),
    ("xid: {overrides: {74: REBOOT, 74: RESET}}\n", "key 74 given twice"),
    ("xid: {overrides: {abc: REBOOT}}\n", "xid.overrides: key 'abc': expected an index"),
    ("xid: {sxid_overrides: {x12: REBOOT}}\n", "xid.sxid_overrides: key 'x12': expected an index"),
    ("timeouts: {budget: {prologue: 5}}\n", "timeouts.budget: unknown key 'prologue' (known: bench, check, epilog"),
    ("timeouts: {checks: {nosuch: 3}}\n", "timeouts.checks: unknown key 'nosuch' (known: allreduce_node, clocks, dcgm"),
    ("context_suites: {prologue: prolog}\n", "context_suites: unknown key 'prologue'"),
    ("context_suites: {prolog: nosuch}\n", "context_suites.prolog: unknown suite 'nosuch'"),
    ("suites: {quick: [xid, nonsense]}\n", "suites.quick[1]: unknown check 'nonsense'"),
    ("epilog: {failure_suite: deeper}\n", "epilog.failure_suite: unknown suite 'deeper'"),
    ("dcgm: {level: 9}\n", "dcgm.level: a DCGM run level is 1 to 4, got 9"),
    ("dcgm: {levels: {sweep: 0}}\n", "dcgm.levels.sweep: a DCGM run level is 1 to 4, got 0"),
    ("dcgm: {levels: {swep: 2}}\n", "dcgm.levels: unknown key 'swep'"),
    ("kernel_log: bogusmode\n", "kernel_log: expected auto, kmsg, journal, dmesg or the absolute path"),
    ("breaker: {max_fraction: 10}\n", "breaker.max_fraction: a fraction is 0 to 1"),
    ("resume: {passes: 0}\n", "resume.passes: at least 1 pass"),
    ("timeouts: {check: 0}\n", "timeouts.check: expected a number of seconds above 0, got 0"),
    ("timeouts: {budget: {prolog: 0}}\n", "timeouts.budget.prolog: expected a number of seconds above 0"),
    ("slurm: {timeout: 0}\n", "slurm.timeout: expected a number of seconds above 0"),
    ("xid: {overrides: {74: REBOOT, '74': MONITOR}}\n", "xid.overrides: Xid 74 given twice (74 and '74')"),
    ("store: gpuhc-results\n", "store: expected an absolute path"),
    ("state_dir: ./state\n", "state_dir: expected an absolute path"),
    ("slurm: {backend: pyslurmm}\n", "slurm.backend: unknown backend 'pyslurmm' (one of: cli, pyslurm, auto, none)"),
    ("dcgm: {overrides: {diag_x: FATAL}}\n", "dcgm.overrides.diag_x: unknown tier 'FATAL'"),
])
def test_bad_config_is_one_line_error_with_path(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        C.load(str(path))
    msg = str(exc.value)
    assert msg.startswith(str(path)) and needle in msg and "\n" not in msg, msg


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(str(tmp_path / "missing.yaml"))


def test_meaningful_values_pass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("xid: {overrides: {74: REBOOT, '79': ISOLATE}}\ntimeouts: {checks: {xid: 3}, budget: {sweep: 900}}\n"
                    "kernel_log: /var/log/kern.log\nsuites: {quick: [nvml, xid]}\ncontext_suites: {check: quick}\n"
                    "dcgm: {level: 2, levels: {quarantine: 4}}\n")
    cfg = C.load(str(path))
    assert cfg["context_suites"]["check"] == "quick" and cfg["dcgm"]["levels"]["quarantine"] == 4


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"slurm: {dry_run: true}\nstore: /x\xff\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: not UTF-8 text \(byte 0xff\)"):
        C.load(str(path))


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    """Sites share settings with anchors and merge keys; only a key written twice in one mapping is
    refused, never one a merge brings in and the mapping overrides."""
    path = tmp_path / "c.yaml"
    path.write_text("thresholds: &t {temperature_margin_c: 7}\n"
                    "timeouts:\n  budget: &b {prolog: 9, epilog: 30}\n  checks: {xid: 4}\n"
                    "slurm: &s {timeout: 7, dry_run: true}\n"
                    "breaker:\n  <<: {max_fraction: 0.2, window: 600}\n  max_fraction: 0.3\n")
    cfg = C.load(str(path))
    assert cfg["timeouts"]["budget"]["prolog"] == 9 and cfg["breaker"]["max_fraction"] == 0.3
    assert cfg["breaker"]["window"] == 600 and cfg["slurm"]["dry_run"] is True
    path.write_text("base: &b {a: 1}\n")        # an unknown key is still an unknown key
    with pytest.raises(ConfigError, match="unknown key 'base'"):
        C.load(str(path))


def test_an_nccl_job_that_could_never_end_by_its_deadline_is_refused():
    """Slurm cancels at submission a job whose --deadline is closer than its time limit."""
    with pytest.raises(ConfigError, match="nccl.deadline"):
        C.validate({"nccl": {"deadline": 100, "time_limit": 600}})
