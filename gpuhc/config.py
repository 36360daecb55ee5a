"""config.yaml: defaults, validation (unknown key or wrong type names its path), loading.

Search order: ``--config PATH``, ``$GPUHC_CONFIG``, ``/etc/gpuhc/config.yaml``; none is needed.
The loaded file is deep-merged over the defaults, so a file only says what differs.
"""
from __future__ import annotations

import copy
import os
import stat
from typing import Any, Dict, Optional

from . import checks as registry
from .checks import CHECKS
from .checks.meta import CONTEXTS
from .errors import ConfigError
from .schema import MapOf, OneOf
from .schema import validate as check_shape
from .yamlio import decode, parse_yaml, read_bytes

DEFAULT_PATH = "/etc/gpuhc/config.yaml"

_SUITES = registry.default_suites()          # from each check's META (checks/meta.py)
LIGHTWEIGHT = list(_SUITES["lightweight"])
# after a clean job: what the job may have left behind (new Xids, ECC, remaps, processes, links)
EPILOG_QUICK = list(_SUITES["epilog"])
# limits the checks apply: each declared by its check with its source (`gpuhc checks` lists them)
THRESHOLDS = {name: t.default for name, t in registry.default_thresholds().items()}
# checks that load the GPUs for minutes: never in the prolog, epilog or lightweight suites
INTENSIVE = [n for n in _SUITES["intensive"] if n not in LIGHTWEIGHT]


def _default_store() -> str:
    if os.geteuid() == 0:
        return "/var/lib/gpuhc"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "gpuhc")


def defaults() -> Dict[str, Any]:
    store = _default_store()
    return {
        "store": store,
        "state_dir": os.path.join(store, "local"),
        "simulate": None,
        "profiles": None,
        "profile": None,
        "kernel_log": "auto",
        "xid": {"strict": False, "overrides": {}, "sxid_overrides": {}},
        "detect": {"slurm_features": True, "cloud_metadata": True, "cloud_timeout": 0.3},
        # dcgmi diag: the run level by context (else `level`); levels 3 and 4 only where the node is
        # exclusive (quarantine, sweep, or `exclusive: true`); `timeout` bounds the diag in seconds
        "dcgm": {"level": 1, "levels": {"quarantine": 3, "sweep": 2}, "timeout": 900.0, "required": False,
                 "exclusive": False, "start_hostengine": True, "overrides": {}},
        # the deep checks (they load the GPUs: exclusive jobs only). deep.device: auto (a simulated
        # node's scenario figures, else torch on CUDA), cuda, cpu (torch for real on the CPU), sim.
        # `timeout` bounds each check's workload process (killed past it: a hang is a finding)
        "deep": {"device": "auto"},
        "gpu_stress": {"duration": 60.0, "durations": {"sweep": 30.0, "quarantine": 300.0}, "dtype": "bf16",
                       "timeout": 1200.0},
        "gpu_bench": {"tests": ["matmul", "hbm", "pcie", "p2p"], "dtypes": ["bf16"], "timeout": 1200.0},
        "allreduce_node": {"max_bytes": 8 << 30, "timeout": 900.0},
        # all-reduce across nodes (`gpuhc nccl`, sbatch/nccl-allreduce.sbatch, `gpuhc nccl --pairs`):
        # expect_busbw_gbps overrides the profile's busbw_gbps (one node) and internode_busbw_gbps (2+
        # nodes) where set, e.g. on CPU test clusters; sizes in bytes ([]: 1 MiB..8 GiB doubling on GPUs,
        # 4 KiB..4 MiB on the CPU), warmup and timed iterations per size; timeout: init and each
        # collective (a hang is a failure within it); judged at sizes >= judge_from_bytes on GPUs (the
        # largest size on the CPU); device auto (cuda where the node has NVIDIA devices), cuda, cpu;
        # bisect: a failing job finds the node in its own allocation, within budget s; pair jobs: sbatch
        # `script` (default sbatch/nccl-allreduce.sbatch beside the package) with time_limit, a deadline
        # s after submission, output, partition; pairs_wait: how long `gpuhc nccl --pairs` waits for them
        "nccl": {"expect_busbw_gbps": None, "sizes": [], "warmup": 5, "iters": 20, "timeout": 120.0,
                 "judge_from_bytes": 1 << 30, "device": "auto", "bisect": True, "budget": 3000.0,
                 "script": None, "time_limit": 1800.0, "deadline": 21600.0, "output": "/tmp/gpuhc-nccl-%j.out",
                 "partition": "", "pairs_wait": 7200.0},
        # network: link_downed growth between two runs that counts as flapping; kernel modules RDMA needs
        "network": {"flap_threshold": 1, "memlock": True, "efa_modules": ["efa", "ib_core", "ib_uverbs"],
                    "ib_modules": ["ib_core", "ib_uverbs"]},
        "suites": {suite: list(names) for suite, names in _SUITES.items()},
        "context_suites": {"prolog": "prolog", "epilog": "epilog", "healthcheck": "healthcheck",
                           "check": "lightweight", "sweep": "sweep", "quarantine": "quarantine", "bench": "bench"},
        "timeouts": {
            "check": 5.0,
            "checks": {},
            "budget": {"prolog": 8.0, "epilog": 20.0, "healthcheck": 20.0, "check": 60.0,
                       "sweep": 1200.0, "quarantine": 7200.0, "bench": 3600.0},
            "command": 10.0,
            "store": 2.0,
            "store_read": 30.0,
            # of each context's budget, the seconds kept back from the checks for acting on the
            # result (Slurm queries and updates, the store write): the budget bounds the whole run
            "act": 3.0,
            "reset": 120.0,     # one `nvidia-smi --gpu-reset` (gpuhc reset)
        },
        "history": {"max_records": 1000, "max_age_days": 90},
        "status": {"stale_after": 86400},
        # `gpuhc report`: the window when --since is not given (s); incidents in the window that make a
        # node a lemon; the bound on reading the store's metric series (s; a slow store ends there)
        "report": {"since": 7 * 86400.0, "lemon_drains": 3, "timeout": 300.0},
        # limits the checks apply (NVIDIA's guidance where it gives one)
        "thresholds": dict(THRESHOLDS),
        # Slurm: backend "cli" (scontrol/sinfo), "pyslurm" (when it matches the installed Slurm, else
        # the CLI with a warning), "auto" (pyslurm when it matches, else the CLI) or "none";
        # dry_run records what would be drained
        "slurm": {"backend": "cli", "timeout": 5.0, "dry_run": False, "comment_monitor": True},
        # stop draining past this share of a partition (or the cluster) drained by gpuhc within window s
        # settle: after a drain, how long to wait for drains started at the same moment to show
        # before counting again (prologs of one job start together; see acting.breaker_after_drain)
        "breaker": {"enabled": True, "max_fraction": 0.1, "max_nodes": None, "window": 86400.0, "settle": 1.0},
        # automatic resume: consecutive passes of a suite at least as deep as the draining one
        "resume": {"auto": True, "passes": 3,
                   "suite_depth": {"prolog": 1, "epilog": 1, "healthcheck": 1, "lightweight": 1, "check": 1,
                                   "custom": 0, "intensive": 2, "quarantine": 2, "sweep": 2, "bench": 0,
                                   "deep": 0}},
        # epilog: the suite for a job that failed (non-zero exit or signal); whether to kill the
        # compute processes a job left on the GPUs (SIGKILL; never on a simulated node); whether
        # to ask slurmctld for the exit code of a job whose epilog sees 0:0 (cancelled, timed out:
        # the node does not know yet; one scontrol call per node per job end)
        "epilog": {"failure_suite": "epilog_failure", "kill_leftover_processes": False,
                   "ask_slurm_exit_code": False},
        # per-job opt-out of the slow parts (the failure suite): a job whose --comment holds the
        # token gets the quick epilog suite; only where the operator allows it
        "job_optout": {"allowed": False, "token": "gpuhc:skip-slow"},
        # `gpuhc quarantine NODELIST`: a MAINT reservation on the node (for `reservation_user`), the
        # node resumed inside it, and sbatch `script` (default: sbatch/quarantine.sbatch beside the
        # package) -w NODE --exclusive --reservation, --time time_limit s; `deadline`: how long the
        # job may wait to start (Slurm's --deadline is set to that plus the time limit, since Slurm
        # cancels a job that cannot end by it); the reservation lasts time_limit + deadline + `grace`. At most
        # max_concurrent nodes in quarantine at once, and max_per_partition in one partition.
        # auto_reset: on a RESET verdict, reset the GPUs and rerun the failing checks once;
        # auto_reboot: on a REBOOT verdict, `scontrol reboot ASAP nextstate=DOWN`.
        # finish_wait: how long the finisher (spawned by the quarantine job's epilog) waits for the
        # job to leave Slurm before deleting the reservation.
        "quarantine": {"max_concurrent": 4, "max_per_partition": 2, "time_limit": 7200.0, "deadline": 3600.0,
                       "grace": 1800.0, "partition": "", "qos": "", "script": None,
                       "output": "/tmp/gpuhc-quarantine-%j.out", "reservation_user": "root", "auto_reset": True,
                       "auto_reboot": False, "timeout": 120.0, "finish_wait": 600.0},
        # `gpuhc sweep` (cron on the controller): at most max_nodes jobs a run, and never more sweep
        # jobs in a partition than max_idle_fraction of its idle nodes (at least one); a node is
        # swept again once `interval` s have passed since its newest sweep/quarantine/bench record.
        # Each job: sbatch `script` (default: sbatch/sweep.sbatch beside the package) -w NODE
        # --exclusive, --time time_limit s, --deadline `deadline` s after submission (Slurm drops a
        # job that cannot end by then), partition (default: the node's own), qos, nice (yield to
        # users' jobs), stdout to `output`. `timeout`: the whole run's Slurm calls (then exit 3).
        # auto_quarantine: send nodes gpuhc drained at RESET (REBOOT once rebooted) to quarantine
        "sweep": {"max_nodes": 4, "max_idle_fraction": 0.1, "interval": 86400.0, "time_limit": 1800.0,
                  "deadline": 3600.0, "partition": "", "qos": "", "nice": 1000, "auto_quarantine": False,
                  "script": None, "output": "/tmp/gpuhc-sweep-%j.out", "timeout": 120.0},
    }


KERNEL_LOG_SOURCES = ("auto", "kmsg", "journal", "dmesg")
TIERS = ("MONITOR", "RESET", "REBOOT", "ISOLATE")
DTYPES = ("bf16", "fp16", "tf32", "fp32")
NUM = "amount"                 # a finite number, not negative (counts, thresholds)
SECONDS = "duration"           # a time limit: above 0 (0 would turn a check into an ERROR that never drains)


def _per(keys: Any, value: Any) -> Dict[str, Any]:
    """A mapping of these keys only (a misspelt one is an error), each value of ``value``."""
    return {key: value for key in keys}


# The file's shape, in gpuhc/schema.py's language (checked by validate() before the meaning is).
SCHEMA: Dict[str, Any] = {
    "store": "str",
    "state_dir": "str",
    "simulate": "str?",
    "profiles": "str?",
    "profile": "str?",
    "kernel_log": "str",
    "detect": {"slurm_features": "bool", "cloud_metadata": "bool", "cloud_timeout": SECONDS},
    "dcgm": {"level": "count", "levels": _per(CONTEXTS, "count"), "timeout": SECONDS, "required": "bool",
             "exclusive": "bool", "start_hostengine": "bool", "overrides": MapOf("text", OneOf("tier", TIERS))},
    "deep": {"device": OneOf("device", ("auto", "cuda", "cpu", "sim"))},
    "gpu_stress": {"duration": SECONDS, "durations": _per(CONTEXTS, SECONDS), "dtype": OneOf("dtype", DTYPES),
                   "timeout": SECONDS},
    "gpu_bench": {"tests": [OneOf("test", ("matmul", "hbm", "pcie", "p2p"))], "dtypes": [OneOf("dtype", DTYPES)],
                  "timeout": SECONDS},
    "allreduce_node": {"max_bytes": "count", "timeout": SECONDS},
    "nccl": {"expect_busbw_gbps": "amount?", "sizes": ["count"], "warmup": "count", "iters": "count",
             "timeout": SECONDS, "judge_from_bytes": "count", "device": OneOf("device", ("auto", "cuda", "cpu")),
             "bisect": "bool", "budget": SECONDS, "script": "str?", "time_limit": SECONDS, "deadline": SECONDS,
             "output": "str", "partition": "str", "pairs_wait": SECONDS},
    "network": {"flap_threshold": NUM, "memlock": "bool", "efa_modules": ["str"], "ib_modules": ["str"]},
    "suites": MapOf("str", ["str"]),
    "xid": {"strict": "bool", "overrides": MapOf("index", OneOf("tier", TIERS)),
            "sxid_overrides": MapOf("index", OneOf("tier", TIERS))},
    "context_suites": _per(CONTEXTS, "str"),
    "timeouts": {
        "check": SECONDS,
        "checks": _per(CHECKS, SECONDS),
        "budget": _per(CONTEXTS, SECONDS),
        "command": SECONDS,
        "store": SECONDS,
        "store_read": SECONDS,
        "act": SECONDS,
        "reset": SECONDS,
    },
    "history": {"max_records": "count", "max_age_days": NUM},
    "status": {"stale_after": SECONDS},
    "report": {"since": SECONDS, "lemon_drains": "count", "timeout": SECONDS},
    "thresholds": _per(THRESHOLDS, NUM),
    "slurm": {"backend": OneOf("backend", ("cli", "pyslurm", "auto", "none")), "timeout": SECONDS,
              "dry_run": "bool", "comment_monitor": "bool"},
    "breaker": {"enabled": "bool", "max_fraction": NUM, "max_nodes": "count?", "window": NUM, "settle": "seconds"},
    "resume": {"auto": "bool", "passes": "count", "suite_depth": MapOf("str", "count")},
    "epilog": {"failure_suite": "str", "kill_leftover_processes": "bool", "ask_slurm_exit_code": "bool"},
    "job_optout": {"allowed": "bool", "token": "str"},
    "quarantine": {"max_concurrent": "count", "max_per_partition": "count", "time_limit": SECONDS,
                   "deadline": SECONDS, "grace": SECONDS, "partition": "str", "qos": "str", "script": "str?",
                   "output": "str", "reservation_user": "str", "auto_reset": "bool", "auto_reboot": "bool",
                   "timeout": SECONDS, "finish_wait": SECONDS},
    "sweep": {"max_nodes": "count", "max_idle_fraction": NUM, "interval": SECONDS, "time_limit": SECONDS,
              "deadline": SECONDS, "partition": "str", "qos": "str", "nice": "int?", "auto_quarantine": "bool",
              "script": "str?", "output": "str", "timeout": SECONDS},
}


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "suites":
            out[key] = merge(out[key], value)
        elif key == "suites" and isinstance(value, dict):
            out[key] = dict(out[key], **value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(data: Any, source: str = "config") -> Dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a mapping at the top level, got %s" % (source, type(data).__name__))
    try:
        check_shape(data, SCHEMA, error=ConfigError)
    except ConfigError as exc:
        raise ConfigError("%s: %s" % (source, exc)) from None
    cfg = merge(defaults(), data)
    _check_meaning(cfg, data, source)
    return cfg


PATH_MAX = 4096         # bytes of a path, its final NUL included (Linux); a name at most NAME_MAX
NAME_MAX = 255
# File systems on which a stat cannot hang (not network, not FUSE): a path set in the config is
# looked at (is it a directory? a regular file?) only when its mount is one of these.
LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat", "ramfs",
            "jfs", "reiserfs", "bcachefs", "devtmpfs"}


def _mounts() -> Dict[str, str]:
    """Mount point -> file system type, from /proc/self/mountinfo (which never hangs); {} when it
    cannot be read."""
    out: Dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            text = fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and len(fields) >= 5 and tail.split():
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            out[point.replace("\\134", "\\")] = tail.split()[0]
    return out


def _mount_type(path: str, mounts: Dict[str, str]) -> Optional[str]:
    """The file system type of the mount that holds ``path`` (an absolute, normalised path)."""
    best = max((p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")), key=len, default=None)
    return mounts.get(best) if best is not None else None


def _path_problem(path: str, want: str) -> Optional[str]:
    """Why ``path`` cannot work as a ``want`` ("directory" or "file"), or None. On disk, each part
    of the path is looked at (lstat) only while it is on a local file system and not a symbolic
    link: nothing here can hang on a network or FUSE mount (a hung store is the store's business)."""
    if "\0" in path:
        return "a path holds no NUL byte, got %r" % path
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        return "a path is shorter than %d bytes, got one of %d" % (PATH_MAX, len(raw))
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return "a name in a path is at most %d bytes, %r has a longer one" % (NAME_MAX, path[:60] + "...")
    norm = os.path.normpath(path)
    for pseudo in ("/proc", "/sys"):
        if norm == pseudo or norm.startswith(pseudo + "/"):
            return "%r is under %s, the kernel's own file system: nothing can be kept there" % (path, pseudo)
    mounts, parts, at = _mounts(), [p for p in norm.split("/") if p], ""
    for n, part in enumerate(parts):
        at += "/" + part
        if _mount_type(at, mounts) not in LOCAL_FS:
            return None
        try:
            st = os.lstat(at)
        except FileNotFoundError:
            return None                 # made when first needed
        except OSError as exc:
            return "%r cannot be used: %s" % (path, exc.strerror or exc)
        if stat.S_ISLNK(st.st_mode):
            return None                 # where it leads is not looked at
        if n < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return "%r cannot be used: %r is not a directory" % (path, at)
    if want == "directory" and parts and not stat.S_ISDIR(st.st_mode):
        return "%r exists and is not a directory" % path
    if want == "file" and (not parts or not stat.S_ISREG(st.st_mode)):
        return "%r is not a regular file" % path
    return None


def _check_meaning(cfg: Dict[str, Any], data: Dict[str, Any], source: str) -> None:
    """What the types cannot say: names that must exist, numbers in range. Only what the file
    set is blamed (the defaults are right)."""
    def fail(path: str, msg: str) -> ConfigError:
        return ConfigError("%s: %s: %s" % (source, path, msg))

    for key in ("store", "state_dir"):
        if not os.path.isabs(cfg[key]):
            raise fail(key, "expected an absolute path (Slurm runs gpuhc from another directory), got %r" % cfg[key])
    for key, want in (("store", "directory"), ("state_dir", "directory"), ("profiles", "file"), ("simulate", "file"),
                      ("kernel_log", "file")):
        value = data.get(key)
        if isinstance(value, str) and (value.startswith("/") or "\0" in value):   # a path, not a name
            problem = _path_problem(value, want)
            if problem:
                raise fail(key, problem)
    for section in ("overrides", "sxid_overrides"):
        seen: Dict[int, Any] = {}
        for key in cfg["xid"][section]:
            if int(key) in seen:
                raise fail("xid.%s" % section, "Xid %d given twice (%r and %r)" % (int(key), seen[int(key)], key))
            seen[int(key)] = key
    known = tuple(CHECKS)
    for suite, names in (data.get("suites") or {}).items():
        for n, name in enumerate(names):
            if name not in known:
                raise fail("suites.%s[%d]" % (suite, n), "unknown check %r (known: %s)" % (name, ", ".join(known)))
            if name in names[:n]:       # each check once: a suite of 15,000 xid entries ran 15,000 scans
                raise fail("suites.%s[%d]" % (suite, n), "check %r listed twice" % name)
    suites = cfg["suites"]
    for context, suite in cfg["context_suites"].items():
        if suite not in suites:
            raise fail("context_suites.%s" % context, "unknown suite %r (defined: %s)" % (suite, ", ".join(sorted(suites))))
    if cfg["epilog"]["failure_suite"] not in suites:
        raise fail("epilog.failure_suite", "unknown suite %r (defined: %s)"
                   % (cfg["epilog"]["failure_suite"], ", ".join(sorted(suites))))
    levels = dict(cfg["dcgm"]["levels"], **{"": cfg["dcgm"]["level"]})
    for context, level in levels.items():
        if not 1 <= level <= 4:
            raise fail("dcgm.levels.%s" % context if context else "dcgm.level", "a DCGM run level is 1 to 4, got %d" % level)
    source_ = cfg["kernel_log"]
    if source_ not in KERNEL_LOG_SOURCES and not os.path.isabs(source_):
        raise fail("kernel_log", "expected %s or the absolute path of a log file, got %r"
                   % (", ".join(KERNEL_LOG_SOURCES), source_))
    if cfg["breaker"]["max_fraction"] > 1:
        raise fail("breaker.max_fraction", "a fraction is 0 to 1, got %r" % cfg["breaker"]["max_fraction"])
    if cfg["resume"]["passes"] < 1:
        raise fail("resume.passes", "at least 1 pass is needed, got %d" % cfg["resume"]["passes"])
    _check_sweep(cfg, data, fail)
    nccl = cfg["nccl"]
    if nccl["deadline"] <= nccl["time_limit"]:
        raise fail("nccl.deadline", "Slurm drops a job that cannot end by its deadline: %g s after submission "
                   "is not more than nccl.time_limit %g s" % (nccl["deadline"], nccl["time_limit"]))


def _check_sweep(cfg: Dict[str, Any], data: Dict[str, Any], fail: Any) -> None:
    """The sweep section: what its types cannot say (a job that can never run or end in time)."""
    sweep = cfg["sweep"]
    if sweep["max_idle_fraction"] > 1:
        raise fail("sweep.max_idle_fraction", "a fraction is 0 to 1, got %r" % sweep["max_idle_fraction"])
    for key in ("partition", "qos"):
        if any(c.isspace() or c == "\0" for c in sweep[key]):
            raise fail("sweep.%s" % key, "a Slurm %s name has no spaces, got %r" % (key, sweep[key]))
    if sweep["time_limit"] <= budget(cfg, "sweep"):
        raise fail("sweep.time_limit", "the job's time limit (%g s) must exceed timeouts.budget.sweep (%g s), "
                   "or Slurm ends the job before it acts on what it found" % (sweep["time_limit"], budget(cfg, "sweep")))
    if sweep["deadline"] <= sweep["time_limit"]:
        raise fail("sweep.deadline", "Slurm drops a job that cannot end by its deadline: %g s after submission "
                   "leaves no time to start a job of time_limit %g s" % (sweep["deadline"], sweep["time_limit"]))
    script = (data.get("sweep") or {}).get("script")
    if isinstance(script, str):
        if not os.path.isabs(script):
            raise fail("sweep.script", "expected an absolute path (cron runs gpuhc from another directory), got %r"
                       % script)
        problem = _path_problem(script, "file")
        if problem:
            raise fail("sweep.script", problem)


def load(path: Optional[str] = None) -> Dict[str, Any]:
    """The effective configuration. An explicitly named file must exist; the default may not."""
    explicit = path or os.environ.get("GPUHC_CONFIG")
    path = explicit or DEFAULT_PATH
    raw = read_bytes(path, ConfigError, missing_ok=True)     # bounded: /etc/gpuhc may be a shared mount
    if raw is None and not explicit:
        return defaults()
    if raw is None:
        raise ConfigError("%s: config file not found" % path)
    data = parse_yaml(decode(raw, path, ConfigError), path, ConfigError)
    cfg = validate(data, path)
    cfg["_path"] = path
    return cfg


COMMAND_MARGIN = 60.0     # beyond a check's own command timeout: probes and starting a daemon first


def check_timeout(cfg: Dict[str, Any], check: str) -> float:
    """timeouts.checks.NAME; else a check section's own command `timeout` plus a margin (dcgm runs
    for minutes); else the check's declared META.timeout; else timeouts.check."""
    own = cfg["timeouts"]["checks"].get(check)
    if own is not None:
        return float(own)
    section = cfg.get(check)
    if isinstance(section, dict) and "timeout" in section:
        return float(section["timeout"]) + COMMAND_MARGIN
    declared = registry.metadata(check).timeout if check in CHECKS else None
    return float(declared if declared is not None else cfg["timeouts"]["check"])


def budget(cfg: Dict[str, Any], context: str) -> float:
    """The whole run's time in this context: checks, Slurm and the store together."""
    budgets = cfg["timeouts"]["budget"]
    return float(budgets.get(context, budgets.get("check", 60.0)))


def checks_budget(cfg: Dict[str, Any], context: str) -> float:
    """What the checks get of the context's budget: all but ``timeouts.act`` (at most half)."""
    total = budget(cfg, context)
    return total - min(float(cfg["timeouts"]["act"]), total / 2)


def checks_deadline(cfg: Dict[str, Any], context: str, deadline: float) -> float:
    """When the checks of a run that must end at ``deadline`` (time.monotonic()) must end: what
    is kept for Slurm and the store comes after."""
    return deadline - (budget(cfg, context) - checks_budget(cfg, context))
