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
    ("stroe: /x\n", "stroe: unknown key"),
    ("timeouts:\n  chek: 3\n", "timeouts.chek: unknown key"),
    ("timeouts:\n  check: soon\n", "timeouts.check: expected a number, got 'soon'"),
    ("timeouts:\n  budget: {prolog: fast}\n", "timeouts.budget.prolog: expected a number"),
    ("suites:\n  prolog: nvml\n", "suites.prolog: expected a list"),
    ("suites:\n  prolog: [nvml, 3]\n", "suites.prolog[1]: expected a string"),
    ("detect: {cloud_metadata: maybe}\n", "detect.cloud_metadata: expected true or false"),
    ("timeouts: {check: true}\n", "timeouts.check: expected a number, got True"),
    ("timeouts: {check: -1}\n", "timeouts.check: must not be negative"),
    ("- a\n- b\n", "expected a mapping"),
    ("store: [unclosed\n", "invalid YAML"),
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
