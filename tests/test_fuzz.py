"""Generated input for the parsers of text gpuhc does not control (issue 18): the kernel-log/Xid
parser, the DCGM JSON parser and the config loader. Each returns its result or raises its
documented error (none for the Xid parser, DiagParseError, ConfigError), in bounded time."""
import json
import math
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# no example database in the tree; the time of one example is asserted by the test itself (a
# hypothesis deadline would also count the strategies' own time on a busy machine)
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOUND = 1.0         # seconds for one example, far above what a linear parser needs


def timed(fn, *args):
    started = time.monotonic()
    out = fn(*args)
    took = time.monotonic() - started
    assert took < BOUND, "%.2fs for one input" % took
    return out


# -- kernel log --------------------------------------------------------------------------------

_PIECES = ["NVRM: Xid ", "SXid ", "(PCI:0000:5d:00)", "(0000:3a:00.0 GPU-I:01 GPU-CI:00)", "(PCI:", "): ", ":",
           "13", "79", "154", "95", ", ", ",", "pid=", "pid='<unknown>'", "name=", "name=<unknown>", "'", " ",
           "\t", " " * 300, "Fatal, ", "Non-fatal, ", "Severity 1 ", "Data {0x1}", "0x", "deadbeef", "_",
           "to 0x2 (Node Reboot Required)", "[", "]", "[ 12.345678] ", "[Mon Jan 15 10:22:33 2024] ",
           "2024-01-15T10:22:33.123456+00:00 ", "<4>1 ", "<6>", "Jan 15 10:22:33 host kernel: ", "6,12,345,-;",
           "\n", "\r", "\0", "\x1b[2J", "\u2028", "\ufffd", "é", "x" * 50, "1" * 40, ".", "-"]

kernel_text = st.one_of(
    st.text(max_size=2000),
    st.lists(st.sampled_from(_PIECES) | st.text(max_size=20), max_size=400).map("".join),
)


@FUZZ
@given(text=kernel_text, repeat=st.integers(1, 50))
def test_fuzz_kernel_log_and_xid_parser(tmp_path_factory, text, repeat):
    from gpuhc import xid as X
    from gpuhc.backends.host import LocalHost, since_line

    text = text * repeat
    events = timed(X.scan, text)
    assert [e.xid for e in events] == [e.xid for e in X.parse(text.split("\n"))]
    records = X.merge([], events, now=1.0)
    cond = X.Conditions(gpu_name="A100", uvm_in_use=True)
    for row in X.describe(events, cond):
        assert row["severity"] in ("PASS", "MONITOR", "RESET", "REBOOT", "ISOLATE")
        X.wall_time(row["time"], 1.7e9)
    assert len(records) <= len(events)
    chunk = since_line(text, None, "dmesg")
    assert since_line(text, chunk.cursor, "dmesg").text == ""
    # the same bytes as a kernel log file
    path = tmp_path_factory.mktemp("log") / "kern.log"
    path.write_bytes(text.encode("utf-8", "surrogatepass") + b"\n")
    chunk = timed(LocalHost(kernel_log=str(path)).kernel_log_since, None)
    timed(X.scan, chunk.text, chunk.first_line)


# -- DCGM --------------------------------------------------------------------------------------

_KEYS = ["DCGM Diagnostic", "DCGM GPU Diagnostic", "test_categories", "tests", "category", "name", "results",
         "status", "gpu_id", "gpu_ids", "entity_group", "entity_group_id", "entity_id", "warnings", "warning",
         "error_id", "error_severity", "error_category", "info", "test_summary", "metadata", "version",
         "Driver Version Detected", "runtime_error", "cpu_id", "entity_groups"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["Pass", "Fail", "Warn", "Skip", "GPU", "CPU", "1,2", "3", "", "x,y"]),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=6),
                           max_leaves=60)


def _dump(value):
    return json.dumps(value, allow_nan=True)


dcgm_text = st.one_of(
    json_values.map(_dump),
    st.tuples(st.text(max_size=40), json_values.map(_dump), st.text(max_size=40)).map("".join),
    st.text(max_size=500),
    st.integers(1, 20000).map(lambda n: "[" * n),
    st.integers(1, 20000).map(lambda n: '{"tests": ' + "[" * n + "]" * n + "}"),
)


@FUZZ
@given(text=dcgm_text)
def test_fuzz_dcgm_json_parser(text):
    from gpuhc import dcgm

    try:
        diag = timed(dcgm.parse, text)
    except dcgm.DiagParseError:
        return
    assert diag.shape in ("2.x", "3.x", "4.x")
    for r in diag.results:
        assert isinstance(r.status, str) and (r.gpus is None or all(isinstance(g, int) for g in r.gpus))


# -- config ------------------------------------------------------------------------------------

_CONFIG_KEYS = ["store", "state_dir", "simulate", "profiles", "profile", "kernel_log", "xid", "detect", "dcgm",
                "network", "suites", "context_suites", "timeouts", "history", "status", "thresholds", "slurm",
                "breaker", "resume", "epilog", "job_optout", "strict", "overrides", "sxid_overrides", "level",
                "levels", "timeout", "checks", "budget", "prolog", "epilog", "lightweight", "xid", "ecc",
                "max_fraction", "passes", "backend", "dry_run", "window", "auto", "suite_depth", "79", 79]
config_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
                           st.floats(allow_nan=True, allow_infinity=True),
                           st.sampled_from(["/tmp/gpuhc-fuzz", "/etc/passwd", "/proc/self", "/tmp/a\0b", "auto",
                                            "xid", "RESET", "ISOLATE", "cli", "none", "prolog", "", "/" * 5000]),
                           st.text(max_size=20))
config_values = st.recursive(config_scalars, lambda inner: st.lists(inner, max_size=5)
                             | st.dictionaries(st.sampled_from(_CONFIG_KEYS), inner, max_size=6), max_leaves=40)
config_text = st.one_of(
    st.dictionaries(st.sampled_from(_CONFIG_KEYS), config_values, max_size=8).map(
        lambda d: __import__("yaml").safe_dump(d, allow_unicode=True)),
    st.text(max_size=500),
    st.lists(st.sampled_from(["a: ", "&x ", "*x", "[", "]", "{", "}", "- ", "\n", "  ", "<<: ", "!!python/object ",
                              "? ", ": ", "'", '"', "\\0", "store", "suites", "xid", "1", "\t"]), max_size=200).map("".join),
)


@FUZZ
@given(text=config_text)
def test_fuzz_config_loader(tmp_path_factory, text):
    from gpuhc import config as C
    from gpuhc.errors import ConfigError

    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        cfg = timed(C.load, str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)          # one line, naming file and key
        return
    assert isinstance(cfg["suites"], dict) and not math.isnan(C.budget(cfg, "prolog"))
