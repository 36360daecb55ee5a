"""The real Slurm cluster of the test suite (scripts/devcluster.py), as pytest fixtures.

``slurm_cluster`` (session): one 4-node cluster (gpu-001..gpu-004) for the whole run, started on
first use and always torn down.  Skipped with the reason when not root or when Slurm/munge are
missing; set GPUHC_REQUIRE_SLURM=1 (CI as root) to make that an error instead of a skip.

``slurm`` (function): the same cluster, reset before the test: no jobs, no reservations, no
prolog/epilog scripts installed, every node idle and undrained.

The prolog and epilog are globs over ``cluster.prolog_dir`` / ``cluster.epilog_dir`` (empty at
first): a test installs what it needs with ``add_prolog``/``add_epilog`` (a script text, or a path
such as the repository's slurm/prolog.d/50-gpuhc, linked).  They run with ``GPUHC_CONFIG`` set to
``cluster.gpuhc_config`` (a file the test writes) and with this interpreter's bin directory first
on PATH behind a ``gpuhc`` shim that runs this source tree (whatever copy is installed), so
``gpuhc`` is found as it would be when installed system-wide.

Set GPUHC_SLURM_KEEP=1 to leave the cluster's files (logs, state) in place after the run.
"""

import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_devcluster():
    if "devcluster" in sys.modules:
        return sys.modules["devcluster"]
    spec = importlib.util.spec_from_file_location("devcluster", os.path.join(ROOT, "scripts", "devcluster.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["devcluster"] = mod
    spec.loader.exec_module(mod)
    return mod


devcluster = _load_devcluster()
NODES = devcluster.node_names(4)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class TestCluster(devcluster.Cluster):
    """A Cluster whose prolog and epilog are whatever scripts a test puts in prolog_dir/epilog_dir."""

    __test__ = False    # not a test class, whatever its name

    def __init__(self, workdir, nodes=NODES, **kw):
        self.prolog_dir = os.path.join(workdir, "prolog.d")
        self.epilog_dir = os.path.join(workdir, "epilog.d")
        self.gpuhc_config = os.path.join(workdir, "gpuhc.yaml")
        # `gpuhc` on the prolog's PATH runs this source tree, whatever copy is installed
        shim_dir = os.path.join(workdir, "bin")
        os.makedirs(shim_dir, exist_ok=True)
        shim = os.path.join(shim_dir, "gpuhc")
        with open(shim, "w") as f:
            f.write("#!/bin/sh\nPYTHONPATH=%s exec %s -m gpuhc \"$@\"\n" % (ROOT, sys.executable))
        os.chmod(shim, 0o755)
        env = {"GPUHC_CONFIG": self.gpuhc_config,
               "PATH": shim_dir + ":" + os.path.dirname(sys.executable) + ":" + DEFAULT_PATH}
        env.update(kw.pop("env", {}) or {})
        super().__init__(workdir, nodes=nodes, prolog=os.path.join(self.prolog_dir, "*"),
                         epilog=os.path.join(self.epilog_dir, "*"), env=env, **kw)

    def start(self, timeout=60):
        for d in (self.prolog_dir, self.epilog_dir):
            os.makedirs(d, exist_ok=True)
        return super().start(timeout)

    def _add(self, d, name, text=None, src=None):
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        if os.path.lexists(path):
            os.unlink(path)
        if src is not None:
            os.symlink(os.path.abspath(src), path)
        else:
            with open(path, "w") as f:
                f.write(text if text.startswith("#!") else "#!/bin/sh\n" + text)
            os.chmod(path, 0o755)
        return path

    def add_prolog(self, name, text=None, src=None):
        """Install a prolog script (its text, or src: a path to link, e.g. slurm/prolog.d/50-gpuhc)."""
        return self._add(self.prolog_dir, name, text, src)

    def add_epilog(self, name, text=None, src=None):
        return self._add(self.epilog_dir, name, text, src)

    def clear_scripts(self):
        for d in (self.prolog_dir, self.epilog_dir):
            for f in os.listdir(d) if os.path.isdir(d) else ():
                os.unlink(os.path.join(d, f))

    def reset(self, timeout=30):
        self.clear_scripts()
        super().reset(timeout)


def skip_reason():
    return devcluster.unavailable_reason()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    why = skip_reason()
    if why:
        if os.environ.get("GPUHC_REQUIRE_SLURM") == "1":
            pytest.fail("GPUHC_REQUIRE_SLURM=1 but " + why, pytrace=False)
        pytest.skip(why)
    base = str(tmp_path_factory.mktemp("slurm"))
    if len(base) > 60:      # slurmstepd's unix sockets live under it: keep it short
        base = tempfile.mkdtemp(prefix="gpuhc-slurm-")
    cluster = TestCluster(base)
    try:
        cluster.start()
    except devcluster.ClusterError as e:
        cluster.stop()
        pytest.fail(str(e), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("GPUHC_SLURM_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster):
    slurm_cluster.reset()
    return slurm_cluster
