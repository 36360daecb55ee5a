"""The layers of DESIGN.md section 2: imports point down only, and the prolog never loads torch.

Every import statement of every module under gpuhc/ is read (function-level imports included,
since gpuhc imports lazily on purpose), resolved to a gpuhc module, and checked against the rules
below. A rule names who may not import what, with the reason from the design."""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "gpuhc")

SLURM = ("gpuhc.backends.slurm", "gpuhc.backends.slurm_cli", "gpuhc.backends.slurm_pyslurm", "gpuhc.acting")
STORE = ("gpuhc.store",)
TOP = ("gpuhc.cli", "gpuhc.contexts", "gpuhc.controller", "gpuhc.fleet", "gpuhc.status", "gpuhc.export")
HARDWARE = ("gpuhc.backends.gpu_nvml", "gpuhc.backends.nvml_library", "gpuhc.backends.host", "gpuhc.backends.sim",
            "gpuhc.workloads")

# (importer prefix, forbidden prefixes, why)
RULES = [
    ("gpuhc.checks", SLURM + STORE + TOP + ("gpuhc.policy", "gpuhc.runner", "gpuhc.session", "gpuhc.resume",
                                           "gpuhc.config"),
     "a check never talks to Slurm or the store, never decides or acts, and reads config through its arguments"),
    ("gpuhc.backends", ("gpuhc.checks", "gpuhc.policy", "gpuhc.runner", "gpuhc.session", "gpuhc.resume",
                        "gpuhc.config") + STORE + TOP,
     "backends are the bottom layer: they touch the world and know nothing above them"),
    # policy reads Slurm's data types (NodeView from backends/slurm.py), never a backend that calls Slurm
    ("gpuhc.policy", HARDWARE + SLURM[1:] + STORE + TOP + ("gpuhc.checks", "gpuhc.runner", "gpuhc.session"),
     "policy decides on plain inputs: it never talks to hardware, Slurm or the store"),
    ("gpuhc.fleet", ("gpuhc.checks", "gpuhc.runner", "gpuhc.session", "gpuhc.contexts", "gpuhc.cli")
     + HARDWARE, "the fleet view reads the store and Slurm; it never runs a check"),
    ("gpuhc.controller", ("gpuhc.checks", "gpuhc.runner", "gpuhc.session", "gpuhc.contexts", "gpuhc.cli")
     + HARDWARE, "the controller side plans and submits jobs; it never touches a GPU"),
    ("gpuhc.workloads", SLURM + STORE + TOP + ("gpuhc.checks", "gpuhc.policy", "gpuhc.runner"),
     "workloads are the torch engine: plain functions, called by checks in the processes that load GPUs"),
    ("gpuhc.model", ("gpuhc.",), "the data types are the bottom of everything"),
    ("gpuhc.errors", ("gpuhc.",), "the error types are the bottom of everything"),
]
# (importer, imported) exceptions to a rule above: the package's version, the error types
ALLOWED = {("gpuhc.model", "gpuhc.errors"), ("gpuhc.model", "gpuhc.__version__"), ("gpuhc.model", "gpuhc")}
# nothing but the entry points imports the command line
CLI_IMPORTERS = {"gpuhc.__main__"}


def modules():
    for base, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


def imports(module, path):
    """Absolute gpuhc module names imported anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update("%s.%s" % (target, a.name) for a in node.names)    # `from . import policy`
    return {m for m in out if m == "gpuhc" or m.startswith("gpuhc.")}


def _under(name, prefix):
    return name == prefix or name.startswith(prefix + ".") or (prefix.endswith(".") and name.startswith(prefix))


def violations(extra=()):
    """Every import that breaks a rule, over gpuhc/ and the (module, path) pairs of ``extra``."""
    found = []
    for module, path in list(modules()) + list(extra):
        for target in imports(module, path):
            if _under(target, "gpuhc.cli") and module not in CLI_IMPORTERS and not _under(module, "gpuhc.cli"):
                found.append("%s imports %s: only the entry point imports the command line" % (module, target))
            for importer, forbidden, why in RULES:
                if not _under(module, importer):
                    continue
                for prefix in forbidden:
                    if _under(target, prefix) and not _under(target, importer) and (module, target) not in ALLOWED:
                        found.append("%s imports %s: %s" % (module, target, why))
    return sorted(set(found))


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_the_layer_test_sees_a_violation(tmp_path):
    """The rules can fail: a check module that imports the store is reported."""
    bad = tmp_path / "_layer_probe.py"
    bad.write_text("def gather(ctx):\n    from ..store import Store\n    return Store\n")
    found = violations([("gpuhc.checks._layer_probe", str(bad))])
    assert any("gpuhc.checks._layer_probe imports gpuhc.store" in v for v in found)


PROBE = r"""
import json, os, sys
sys.argv = ["gpuhc", "prolog", "--node", "gpu-001", "--simulate", "h100-healthy"]
real_exit = os._exit
def report(code):
    sys.stdout.flush()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "pyslurm", "gpuhc.workloads")
                   or m.startswith("gpuhc.workloads") or m.startswith("gpuhc.controller") or m.startswith("gpuhc.fleet"))
    with open(os.environ["PROBE_OUT"], "w") as fh:
        json.dump({"code": code, "heavy": heavy, "gpuhc": sorted(m for m in sys.modules if m.startswith("gpuhc"))}, fh)
    real_exit(code)
os._exit = report
from gpuhc.cli import run
run()
"""


def test_the_prolog_imports_no_torch(tmp_path):
    """`gpuhc prolog` on a simulated node, in a subprocess: torch (and numpy, pyslurm, the workloads,
    the controller and fleet code) is never in sys.modules."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\ndetect: {cloud_metadata: false}\n"
                   % (tmp_path / "store", tmp_path / "state"))
    out = tmp_path / "probe.json"
    env = dict(os.environ, GPUHC_CONFIG=str(cfg), PROBE_OUT=str(out), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.exists(), proc.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, proc.stdout + proc.stderr
    assert "gpuhc.contexts.prolog" in result["gpuhc"]          # the probe saw the real prolog path
    assert result["heavy"] == []
