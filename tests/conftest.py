import os
import subprocess
import sys

import pytest

from gpuhc import config as C
from gpuhc import session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def initialised_store(tmp_path):
    """Every test's scratch store, ``tmp_path / "store"`` (what make_cfg and the tests' config files
    name), is initialised as an operator does once per cluster (`gpuhc store init`): a configured
    store without the marker is refused by its writers (it may be an empty mount point). Tests of
    that refusal use another path."""
    from gpuhc.store import MARKER

    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    (store / MARKER).write_text('{"gpuhc_store": 1, "by": "tests/conftest.py"}\n')
    return store


@pytest.fixture
def make_cfg(tmp_path):
    """A validated config isolated from the machine: local state in tmp, no cloud lookups."""
    def make(**over):
        data = {"store": str(tmp_path / "store"), "state_dir": str(tmp_path / "state"),
                "detect": {"slurm_features": False}}
        data.update(over)
        return C.validate(data, "test-config")
    return make


@pytest.fixture
def run_scenario(make_cfg):
    def run(name, context="check", checks=(), suite=None, node="gpu-001", **over):
        cfg = make_cfg(**over)
        report, detection, ctx = session.run(cfg, context, suite=suite, checks=checks, node=node, simulate=name)
        return report
    return run


def gpuhc(*args, env=None, timeout=60, input=None):
    """Run the gpuhc command line as a separate process, as operators and Slurm do."""
    full_env = dict(os.environ)
    full_env.pop("GPUHC_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "gpuhc"] + list(args), capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT, input=input)


# The real Slurm cluster (tests/slurm_cluster.py): fixtures `slurm_cluster` (session) and `slurm`
# (reset per test); every test using them is marked `slurm`.
from slurm_cluster import slurm, slurm_cluster  # noqa: E402

__all__ = ["slurm", "slurm_cluster"]        # fixtures pytest finds here (pyflakes: used)


def pytest_collection_modifyitems(items):
    for item in items:
        if {"slurm", "slurm_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slurm)
