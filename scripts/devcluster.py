#!/usr/bin/env python3
"""A real, throw-away Slurm cluster on 127.0.0.1, for the test suite and the demo.

One slurmctld and one ``slurmd -N NAME`` per node, all on this host, with their
own munged (private key and socket), free ports chosen at start, and every
state, spool, pid and log file under one working directory.  Nothing outside
that directory is written, and ``stop()`` ends exactly the processes it started.

As a module::

    from devcluster import Cluster
    c = Cluster("/tmp/x", nodes=4, prolog="/path/prolog.d/*", env={"GPUHC_CONFIG": "/path/cfg.yaml"})
    c.start()                       # returns once every node is idle
    job = c.sbatch("#!/bin/sh\\nhostname\\n", nodelist="gpu-001")
    c.wait_job(job)                 # -> "COMPLETED"
    c.node_state("gpu-001")         # -> (["IDLE"], None)
    c.stop()

As a command::

    python scripts/devcluster.py up --dir /tmp/gpuhc-demo --nodes 4 --prolog 'slurm/prolog.d/*' --env GPUHC_CONFIG=...
    python scripts/devcluster.py status --dir /tmp/gpuhc-demo
    python scripts/devcluster.py down --dir /tmp/gpuhc-demo

Needs root (slurmd runs jobs and prologs as root) and Debian's ``slurm-wlm``
and ``munge`` packages (``apt-get install slurm-wlm munge``).

How the environment reaches the prolog and epilog (verified on 22.05.8):
slurmd builds their environment from scratch -- the job's SLURM_* variables,
SLURMD_NODENAME, SLURM_CONF (the daemon's -f file, so scontrol inside a prolog
talks to this cluster) and SLURM_SCRIPT_CONTEXT, and no PATH -- so nothing of
slurmd's own environment reaches them, and their stderr is thrown away.  With
``env`` given, ``Prolog=``/``Epilog=`` therefore name a small generated wrapper
(``WORKDIR/etc/prolog``, ``.../epilog``) that exports ``env``, appends stderr
to ``WORKDIR/log/prolog-NODE.log``, then runs every script matching the given
path or glob in name order, stopping at the first that fails and exiting with
its status.  Without ``env`` (or with ``wrap=False``) slurm.conf names the path
or glob itself.  Beware: Slurm 22.05 runs the scripts of a glob in *reverse*
name order (it pushes each match onto the head of its list) and stops at the
first failure; the wrapper uses name order.

Requeue delay: a job requeued after a failed prolog may start again only after
AuthInfo's ``cred_expire`` (Slurm's default 120 s); the cluster sets 10 s.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

DAEMONS = ("slurmctld", "slurmd", "munged", "mungekey", "sinfo", "sbatch", "scontrol", "squeue", "scancel")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}
STATE_FILE = "cluster.json"
MARKER = "GPUHC_DEVCLUSTER"     # set in every daemon's environment: finds their leftovers at stop()


class ClusterError(RuntimeError):
    pass


def find_binary(name):
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]:
        p = os.path.join(d, name)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def unavailable_reason():
    """Why a cluster cannot be started here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the Slurm test cluster runs on Linux only"
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (slurmd runs jobs and prologs as root)"
    missing = [b for b in DAEMONS if not find_binary(b)]
    if missing:
        return ("Slurm/munge not installed (missing %s): apt-get install slurm-wlm munge"
                % ", ".join(missing))
    return None


def free_ports(n):
    """n distinct TCP ports free on all addresses right now (slurmctld and slurmd bind 0.0.0.0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_names(n, prefix="gpu-"):
    return ["%s%03d" % (prefix, i) for i in range(1, n + 1)]


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(%s: %s)" % (path, e.strerror)
    return "\n".join(data.splitlines()[-lines:])


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # a zombie child of ours is dead for our purpose
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(roots):
    """The set of roots and every process below them."""
    children = {}
    for pid in _all_pids():
        try:
            with open("/proc/%d/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, ()))
    return out


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _environ_has(pid, entry):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return entry.encode() in f.read().split(b"\0")
    except OSError:
        return False


WRAPPER = """#!/bin/sh
# Generated by gpuhc's scripts/devcluster.py. slurmd gives a prolog/epilog only the
# job's SLURM_* variables (and SLURM_CONF), no PATH, and discards its stderr; this
# wrapper adds the cluster's environment, keeps stderr in {log}-NODE.log, then runs
# every script matching the configured path or glob in name order and stops at the
# first one that fails, exiting with its status.
{exports}
exec 2>>{log}-"$SLURMD_NODENAME".log
for f in {pattern}; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    "$f"
    rc=$?
    echo "$(date '+%F %T') ${{SLURM_JOB_ID:+job $SLURM_JOB_ID }}$f exited $rc" >&2
    [ $rc -eq 0 ] || exit $rc
done
exit 0
"""


def _shell_glob(pattern):
    """Quote a path for sh, leaving its glob characters (* ? [ ]) active."""
    return "".join(c if c in "*?[]" else shlex.quote(c) if not (c.isalnum() or c in "/._-+,:=@%") else c
                   for c in pattern)


class Cluster:
    """A Slurm cluster on 127.0.0.1 whose every file lives under ``workdir``.

    nodes:       a count, or a list of node names (default gpu-001..gpu-004)
    prolog:      path or glob of the prolog script(s); None for no prolog
    epilog:      same for the epilog
    env:         variables given to the prolog, epilog and health check (e.g. GPUHC_CONFIG)
    partitions:  {name: "Nodes=... Default=YES ..."}; default one partition "gpu" over all nodes
    extra_conf:  lines appended to slurm.conf (a string or a list)
    prolog_epilog_timeout, message_timeout: seconds
    health_check: (program, interval) to set HealthCheckProgram/Interval, run through the
                  same environment wrapper; None for none
    """

    def __init__(self, workdir, nodes=4, prolog=None, epilog=None, env=None, partitions=None,
                 extra_conf="", cpus=2, real_memory=1000, prolog_epilog_timeout=60, message_timeout=10,
                 health_check=None, cluster_name=None, cred_expire=10, wrap=None):
        self.workdir = os.path.abspath(workdir)
        self.nodes = node_names(nodes) if isinstance(nodes, int) else list(nodes)
        if not self.nodes:
            raise ValueError("a cluster needs at least one node")
        self.prolog = prolog
        self.epilog = epilog
        self.env = dict(env or {})
        self.partitions = partitions
        self.extra_conf = extra_conf if isinstance(extra_conf, str) else "\n".join(extra_conf)
        self.cpus = cpus
        self.real_memory = real_memory
        self.prolog_epilog_timeout = prolog_epilog_timeout
        self.message_timeout = message_timeout
        self.health_check = health_check
        self.cred_expire = cred_expire
        self.wrap = bool(self.env) if wrap is None else wrap
        self.cluster_name = cluster_name or "gpuhc" + uuid.uuid4().hex[:8]
        self.ctld_port = None
        self.node_ports = {}
        self.pids = {}          # daemon name ("slurmctld", "slurmd:gpu-001", "munged") -> pid
        self._procs = {}        # the Popen objects while we are their parent
        self.start_seconds = None

    # ---------------------------------------------------------------- paths
    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def conf(self):
        return self.path("etc", "slurm.conf")

    @property
    def munge_socket(self):
        return self.path("munge", "munge.sock")

    def ctld_log(self):
        return self.path("log", "slurmctld.log")

    def slurmd_log(self, node):
        return self.path("log", "slurmd-%s.log" % node)

    @property
    def client_env(self):
        """The environment for Slurm client commands against this cluster."""
        e = dict(os.environ)
        for k in [k for k in e if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCONTROL_"))]:
            del e[k]
        e["SLURM_CONF"] = self.conf
        return e

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout=60, attempts=3):
        """Write the configuration, start munged, slurmctld and every slurmd; wait until all nodes are idle.

        Raises ClusterError with the last lines of the daemons' logs when that fails (after stopping
        whatever it started). Ports are free when chosen but not reserved: on a clash, it tries again.
        """
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except ClusterError as e:
                if "Address already in use" not in str(e) or attempt == attempts - 1:
                    raise

    def _start(self, timeout):
        why = unavailable_reason()
        if why:
            raise ClusterError(why)
        t0 = time.monotonic()
        old = load_state(self.workdir)
        if old and old.running():
            old.stop()
        for sub in ("state", "spool", "log", "run", "jobs"):
            shutil.rmtree(self.path(sub), ignore_errors=True)
        for sub in ("etc", "state", "spool", "log", "run", "jobs"):
            os.makedirs(self.path(sub), exist_ok=True)
        os.chmod(self.workdir, 0o755)
        # slurmstepd's sockets (SPOOL/NODE/NODE_JOBID.STEPID) must fit a unix socket path (107 bytes)
        longest = len(self.path("spool")) + 2 * max(len(n) for n in self.nodes) + len("//_4294967295.4294967291")
        if longest > 107:
            raise ClusterError("working directory %s is too long for Slurm's unix sockets; use a shorter one"
                               % self.workdir)
        ports = free_ports(1 + len(self.nodes))
        self.ctld_port, self.node_ports = ports[0], dict(zip(self.nodes, ports[1:]))
        self._write_wrappers()
        with open(self.conf, "w") as f:
            f.write(self.slurm_conf())
        self._save()
        try:
            self._start_munged()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf], self.path("log", "slurmctld.out"))
            self._save()
            self._wait_ctld(deadline=t0 + timeout)
            for n in self.nodes:
                self._spawn("slurmd:" + n, ["slurmd", "-D", "-N", n, "-f", self.conf],
                            self.path("log", "slurmd-%s.out" % n))
            self._save()
            self.wait_idle(timeout=max(5.0, timeout - (time.monotonic() - t0)))
        except BaseException as e:
            msg = "Slurm test cluster in %s did not come up: %s\n%s" % (self.workdir, e, self.diagnostics())
            self.stop()
            if isinstance(e, (ClusterError, subprocess.SubprocessError, OSError)):
                raise ClusterError(msg) from e
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout=15):
        """Cancel jobs, end exactly the daemons this cluster started, and their leftovers. Safe to call twice."""
        if self.pids.get("slurmctld") and self._ours(self.pids["slurmctld"], "slurmctld"):
            try:        # let slurmstepd end the jobs (and run epilogs) while the daemons still run
                self.run(["scancel", "--full", "-u", "root"], check=False, timeout=10)
                deadline = time.monotonic() + 5
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.2)
            except Exception:
                pass
        order = [k for k in self.pids if k.startswith("slurmd:")] + ["slurmctld"]
        self._terminate([k for k in order if k in self.pids], timeout)
        # what the daemons left (slurmstepd, slurmscriptd, prologs: they inherited our marker) and
        # everything below them (job processes)
        marker = "%s=%s" % (MARKER, self.cluster_name)
        daemons = set(self.pids.values())
        for _ in range(5):
            strays = _descendants([p for p in _all_pids() if p not in daemons and _environ_has(p, marker)])
            strays.discard(os.getpid())
            if not strays:
                break
            for p in strays:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)
        if "munged" in self.pids:
            self._terminate(["munged"], timeout)
        self.pids = {}
        self._procs = {}
        if os.path.isdir(self.workdir):
            self._save()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def running(self):
        return any(self._ours(pid, name) for name, pid in self.pids.items())

    # ------------------------------------------------------------- internals
    def slurm_conf(self):
        w = self.path
        lines = [
            "# Generated by gpuhc's scripts/devcluster.py: a throw-away cluster on 127.0.0.1",
            "ClusterName=%s" % self.cluster_name,
            "SlurmctldHost=%s(127.0.0.1)" % socket.gethostname().split(".")[0],
            "SlurmctldPort=%d" % self.ctld_port,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            # cred_expire is also how long a requeued job waits before it may start again (default 120 s)
            "AuthInfo=socket=%s,cred_expire=%d" % (self.munge_socket, self.cred_expire),
            "CredType=cred/munge",
            "StateSaveLocation=%s" % w("state"),
            "SlurmdSpoolDir=%s" % w("spool", "%n"),
            "SlurmctldPidFile=%s" % w("run", "slurmctld.pid"),
            "SlurmdPidFile=%s" % w("run", "slurmd-%n.pid"),
            "SlurmctldLogFile=%s" % self.ctld_log(),
            "SlurmdLogFile=%s" % w("log", "slurmd-%n.log"),
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=nohold_on_prolog_fail,sched_interval=2,bf_interval=2",
            "PrologFlags=Alloc",
            "PrologEpilogTimeout=%d" % self.prolog_epilog_timeout,
            "MessageTimeout=%d" % self.message_timeout,
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=2",
            "MinJobAge=600",
            "JobRequeue=1",
            "TreeWidth=%d" % max(16, len(self.nodes)),
        ]
        if self.prolog:
            lines.append("Prolog=%s" % self.script_path("prolog", self.prolog))
        if self.epilog:
            lines.append("Epilog=%s" % self.script_path("epilog", self.epilog))
        if self.health_check:
            program, interval = self.health_check
            lines += ["HealthCheckProgram=%s" % self.script_path("healthcheck", program),
                      "HealthCheckInterval=%d" % interval, "HealthCheckNodeState=ANY"]
        for n in self.nodes:
            lines.append("NodeName=%s NodeHostname=localhost NodeAddr=127.0.0.1 Port=%d CPUs=%d "
                         "RealMemory=%d State=UNKNOWN" % (n, self.node_ports[n], self.cpus, self.real_memory))
        parts = self.partitions or {"gpu": "Nodes=ALL Default=YES MaxTime=INFINITE State=UP"}
        for name, spec in parts.items():
            lines.append("PartitionName=%s %s" % (name, spec))
        if self.extra_conf:
            lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def script_path(self, name, pattern):
        """What slurm.conf's Prolog=/Epilog=/HealthCheckProgram= names: the generated wrapper, or the
        given path or glob itself when not wrapping."""
        return self.path("etc", name) if self.wrap else os.path.abspath(pattern)

    def _write_wrappers(self):
        exports = ["export SLURM_CONF=%s" % shlex.quote(self.conf)]
        exports += ["export %s=%s" % (k, shlex.quote(str(v))) for k, v in sorted(self.env.items())]
        exports.append("export %s=%s" % (MARKER, self.cluster_name))
        hc = self.health_check[0] if self.health_check else None
        for name, pattern in (("prolog", self.prolog), ("epilog", self.epilog), ("healthcheck", hc)):
            p = self.path("etc", name)
            if os.path.exists(p):
                os.unlink(p)
            if not pattern or not self.wrap:
                continue
            with open(p, "w") as f:
                f.write(WRAPPER.format(exports="\n".join(exports), pattern=_shell_glob(os.path.abspath(pattern)),
                                       log=shlex.quote(self.path("log", name))))
            os.chmod(p, 0o755)

    def _daemon_env(self):
        e = dict(os.environ)
        for k in [k for k in e if k.startswith("SLURM_")]:
            del e[k]
        e["SLURM_CONF"] = self.conf     # (none of this reaches prologs: see the module's docstring)
        e[MARKER] = self.cluster_name
        return e

    def _start_munged(self):
        d = self.path("munge")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        key = os.path.join(d, "munge.key")
        if not os.path.exists(key):
            r = subprocess.run(["mungekey", "--create", "--keyfile=" + key], capture_output=True, text=True)
            if r.returncode != 0 or not os.path.exists(key):
                with open(key, "wb") as f:
                    f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        if self._munge_ok():
            return
        if os.path.exists(self.munge_socket):
            os.unlink(self.munge_socket)
        # --force: the socket's directory may sit below a directory others cannot enter (e.g. pytest's tmp)
        self._spawn("munged", ["munged", "--foreground", "--force", "--socket=" + self.munge_socket,
                               "--key-file=" + key, "--log-file=" + os.path.join(d, "munged.log"),
                               "--pid-file=" + os.path.join(d, "munged.pid"),
                               "--seed-file=" + os.path.join(d, "munged.seed")],
                    os.path.join(d, "munged.out"))
        deadline = time.monotonic() + 10
        while not self._munge_ok():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise ClusterError("munged did not answer on %s" % self.munge_socket)
            time.sleep(0.1)

    def _munge_ok(self):
        if not os.path.exists(self.munge_socket):
            return False
        try:
            cred = subprocess.run(["munge", "-n", "-S", self.munge_socket], capture_output=True, timeout=5)
            if cred.returncode != 0:
                return False
            r = subprocess.run(["unmunge", "-S", self.munge_socket], input=cred.stdout, capture_output=True,
                               timeout=5)
            return r.returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _spawn(self, name, argv, out):
        argv = [find_binary(argv[0]) or argv[0]] + argv[1:]
        with open(out, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=self._daemon_env(), cwd=self.workdir, start_new_session=True,
                                 close_fds=True)
        self._procs[name] = p
        self.pids[name] = p.pid

    def _check_alive(self, name):
        p = self._procs.get(name)
        if p is not None and p.poll() is not None:
            raise ClusterError("%s exited with status %s at start" % (name, p.returncode))

    def _wait_ctld(self, deadline):
        while True:
            self._check_alive("slurmctld")
            r = self.run(["scontrol", "ping"], check=False, timeout=10)
            if r.returncode == 0 and "UP" in r.stdout:
                return
            if time.monotonic() > deadline:
                raise ClusterError("slurmctld did not answer: %s" % (r.stdout + r.stderr).strip())
            time.sleep(0.2)

    def _ours(self, pid, name):
        """pid is still the daemon we started (not a recycled pid)."""
        if not pid or not _pid_alive(pid):
            return False
        cmd = _cmdline(pid)
        exe = name.split(":")[0]
        return exe in cmd and (self.workdir + "/") in cmd

    def _terminate(self, names, timeout):
        live = {n: self.pids[n] for n in names if self._ours(self.pids.get(n), n)}
        for n, pid in live.items():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            for n in list(live):
                p = self._procs.get(n)
                if p is not None:
                    p.poll()
                if not _pid_alive(live[n]):
                    del live[n]
            time.sleep(0.05)
        for n, pid in live.items():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for n in names:
            p = self._procs.get(n)
            if p is not None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def _save(self):
        data = {"workdir": self.workdir, "nodes": self.nodes, "prolog": self.prolog, "epilog": self.epilog,
                "env": self.env, "partitions": self.partitions, "extra_conf": self.extra_conf,
                "cpus": self.cpus, "real_memory": self.real_memory,
                "prolog_epilog_timeout": self.prolog_epilog_timeout, "message_timeout": self.message_timeout,
                "health_check": self.health_check, "cluster_name": self.cluster_name,
                "cred_expire": self.cred_expire, "wrap": self.wrap,
                "ctld_port": self.ctld_port, "node_ports": self.node_ports, "pids": self.pids}
        tmp = self.path(STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path(STATE_FILE))

    def diagnostics(self, lines=25):
        out = []
        for name, path in [("slurmctld", self.ctld_log()), ("slurmctld stdout", self.path("log", "slurmctld.out"))] + \
                [("slurmd " + n, self.slurmd_log(n)) for n in self.nodes] + \
                [("munged", self.path("munge", "munged.log"))]:
            if os.path.exists(path) and os.path.getsize(path):
                out.append("--- %s (%s), last lines:\n%s" % (name, path, tail(path, lines)))
        return "\n".join(out)

    # --------------------------------------------------------------- clients
    def run(self, argv, check=True, timeout=30, input=None):
        """Run a Slurm client command against this cluster (SLURM_CONF set); returns CompletedProcess."""
        r = subprocess.run(list(argv), capture_output=True, text=True, env=self.client_env, timeout=timeout,
                           input=input, cwd=self.path("jobs") if os.path.isdir(self.path("jobs")) else None)
        if check and r.returncode != 0:
            raise ClusterError("%s exited %d: %s" % (" ".join(argv), r.returncode, (r.stderr or r.stdout).strip()))
        return r

    def scontrol(self, *args, **kw):
        return self.run(["scontrol"] + [str(a) for a in args], **kw).stdout

    def sinfo_json(self):
        return json.loads(self.run(["sinfo", "--json"]).stdout)

    def nodes_info(self):
        """{node name: sinfo --json record} for this cluster's nodes."""
        return {n["name"]: n for n in self.sinfo_json().get("nodes", [])}

    @staticmethod
    def parse_node(rec):
        """(state list, reason) of one sinfo --json node record: the base state first, then its flags.

        22.05 gives "state": "idle" and "state_flags": ["DRAIN"]; later releases give "state": ["IDLE", "DRAIN"].
        """
        st = rec.get("state")
        states = [st] if isinstance(st, str) else list(st or [])
        states += [f for f in rec.get("state_flags", []) or []]
        states = [s.upper() for s in states]
        seen = []
        for s in states:
            if s not in seen:
                seen.append(s)
        reason = rec.get("reason") or None
        return seen, reason

    def node_state(self, name):
        rec = self.nodes_info().get(name)
        if rec is None:
            raise ClusterError("no node %s in this cluster" % name)
        return self.parse_node(rec)

    def wait_idle(self, timeout=60, nodes=None):
        """Wait until every node (or those named) is IDLE with no flags."""
        names = list(nodes or self.nodes)
        deadline = time.monotonic() + timeout
        last = {}
        while True:
            for d in [k for k in self._procs if k == "slurmctld" or k.startswith("slurmd:")]:
                self._check_alive(d)
            try:
                info = self.nodes_info()
                last = {n: self.parse_node(info[n]) if n in info else (["MISSING"], None) for n in names}
            except (ClusterError, ValueError, subprocess.SubprocessError) as e:
                last = {"sinfo": str(e)}
            if all(isinstance(v, tuple) and v[0] == ["IDLE"] for v in last.values()) and len(last) == len(names):
                return
            if time.monotonic() > deadline:
                raise ClusterError("nodes not idle after %ds: %s" % (timeout, last))
            time.sleep(0.25)

    def sbatch(self, script, **opts):
        """Submit a batch script (text); options as keywords (nodelist="gpu-001", job_name="x",
        requeue=True); returns the job id. Output goes to WORKDIR/jobs/slurm-JOBID.out."""
        if not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.path("jobs"))
        with os.fdopen(fd, "w") as f:
            f.write(script)
        os.chmod(path, 0o755)
        argv = ["sbatch", "--parsable", "--output=" + self.path("jobs", "slurm-%j.out")]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                argv.append(flag)
            elif v is not False and v is not None:
                argv.append("%s=%s" % (flag, v))
        argv.append(path)
        out = self.run(argv).stdout.strip()
        return int(out.split(";")[0])

    def job(self, jobid):
        """scontrol show job as a dict (JobState, NodeList, Restarts, Reason, BatchHost, ExitCode, ...)."""
        r = self.run(["scontrol", "show", "job", "-o", str(jobid)], check=False)
        if r.returncode != 0:
            return {}
        return parse_kv(r.stdout.strip())

    def wait_job(self, jobid, timeout=60, states=TERMINAL):
        """Wait for the job to reach one of `states` (default: any final state); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(jobid).get("JobState")
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise ClusterError("job %s still %s after %ds: %s" % (jobid, state, timeout, self.job(jobid)))
            time.sleep(0.25)

    def drain(self, node, reason):
        self.scontrol("update", "nodename=" + node, "state=drain", "reason=" + reason)

    def resume(self, node):
        """Undrain/resume a node (no error if it already is)."""
        self.run(["scontrol", "update", "nodename=" + node, "state=resume"], check=False)

    def jobs(self):
        """Ids of the jobs slurmctld still holds that have not finished (pending, running, completing...)."""
        out = self.run(["squeue", "-h", "-o", "%i %T"]).stdout.split("\n")
        return [int(l.split()[0]) for l in out if l.strip() and l.split()[1] not in TERMINAL]

    def reservations(self):
        out = self.run(["scontrol", "show", "reservation", "-o"], check=False).stdout
        return [parse_kv(l).get("ReservationName") for l in out.splitlines() if l.startswith("ReservationName=")]

    def reset(self, timeout=30):
        """Between tests: cancel all jobs, delete reservations, resume every node, wait until all are idle."""
        self.run(["scancel", "--full", "-u", "root"], check=False)
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                raise ClusterError("jobs %s still there after scancel" % self.jobs())
            time.sleep(0.25)
        for r in self.reservations():
            self.run(["scontrol", "delete", "reservation=" + r], check=False)
        info = self.nodes_info()
        for n in self.nodes:
            if n not in info or self.parse_node(info[n])[0] != ["IDLE"]:
                self.resume(n)
        self.wait_idle(max(5.0, deadline - time.monotonic()))

    def shell_hint(self):
        return "export SLURM_CONF=%s" % self.conf


def parse_kv(line):
    """Parse Slurm's one-line `Key=Value Key=Value` output; values may contain spaces."""
    out = {}
    parts = re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
    for p in parts:
        if "=" in p:
            k, v = p.split("=", 1)
            out[k] = v
    return out


def load_state(workdir):
    """The Cluster recorded in workdir by an earlier start(), or None."""
    path = os.path.join(os.path.abspath(workdir), STATE_FILE)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    c = Cluster(d["workdir"], nodes=d["nodes"], prolog=d.get("prolog"), epilog=d.get("epilog"),
                env=d.get("env"), partitions=d.get("partitions"), extra_conf=d.get("extra_conf", ""),
                cpus=d.get("cpus", 2), real_memory=d.get("real_memory", 1000),
                prolog_epilog_timeout=d.get("prolog_epilog_timeout", 60),
                message_timeout=d.get("message_timeout", 10),
                health_check=tuple(d["health_check"]) if d.get("health_check") else None,
                cluster_name=d.get("cluster_name"), cred_expire=d.get("cred_expire", 10), wrap=d.get("wrap"))
    c.ctld_port = d.get("ctld_port")
    c.node_ports = d.get("node_ports") or {}
    c.pids = d.get("pids") or {}
    return c


# -------------------------------------------------------------------- command
def main(argv=None):
    ap = argparse.ArgumentParser(prog="devcluster", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster and leave it running")
    down = sub.add_parser("down", help="stop the cluster (its files stay, for the logs)")
    down.add_argument("--clean", action="store_true", help="then remove the working directory")
    for p in (up, down, sub.add_parser("status", help="show the cluster's daemons and nodes")):
        p.add_argument("--dir", default="/tmp/gpuhc-devcluster", help="working directory (default %(default)s)")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--prolog", help="prolog path or glob (quote the glob)")
    up.add_argument("--epilog", help="epilog path or glob (quote the glob)")
    up.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="variable for the prolog/epilog, e.g. GPUHC_CONFIG=/path/config.yaml (repeatable)")
    up.add_argument("--healthcheck", metavar="PROGRAM", help="HealthCheckProgram (through the env wrapper)")
    up.add_argument("--healthcheck-interval", type=int, default=60, metavar="SECONDS")
    up.add_argument("--extra-conf", action="append", default=[], metavar="LINE", help="slurm.conf line (repeatable)")
    up.add_argument("--prolog-epilog-timeout", type=int, default=60)
    up.add_argument("--timeout", type=int, default=60, help="seconds to wait for all nodes to be idle")
    a = ap.parse_args(argv)

    if a.cmd == "up":
        why = unavailable_reason()
        if why:
            print("devcluster: " + why, file=sys.stderr)
            return 2
        env = {}
        for kv in a.env:
            k, sep, v = kv.partition("=")
            if not sep:
                ap.error("--env wants K=V, not %r" % kv)
            env[k] = v
        os.makedirs(a.dir, exist_ok=True)
        c = Cluster(a.dir, nodes=a.nodes, prolog=a.prolog, epilog=a.epilog, env=env, extra_conf=a.extra_conf,
                    prolog_epilog_timeout=a.prolog_epilog_timeout,
                    health_check=(a.healthcheck, a.healthcheck_interval) if a.healthcheck else None)
        try:
            c.start(timeout=a.timeout)
        except ClusterError as e:
            print("devcluster: %s" % e, file=sys.stderr)
            return 1
        print("Slurm cluster %s up in %.1fs: %d nodes (%s), slurmctld on 127.0.0.1:%d, files in %s"
              % (c.cluster_name, c.start_seconds, len(c.nodes), ",".join(c.nodes), c.ctld_port, c.workdir))
        print("Use it:\n    %s\n    sinfo; sbatch -w %s --wrap hostname; squeue; sinfo -R"
              % (c.shell_hint(), c.nodes[0]))
        print("Logs: %s/log/   Stop it: python %s down --dir %s" % (c.workdir, sys.argv[0], c.workdir))
        return 0

    c = load_state(a.dir)
    if c is None:
        print("devcluster: no cluster recorded in %s" % a.dir, file=sys.stderr)
        return 0 if a.cmd == "down" else 1
    if a.cmd == "down":
        was = c.running()
        c.stop()
        print("devcluster: cluster %s in %s %s" % (c.cluster_name, c.workdir, "stopped" if was else "was not running"))
        if a.clean:
            shutil.rmtree(c.workdir, ignore_errors=True)
        return 0
    # status
    for name, pid in sorted(c.pids.items()):
        print("%-16s pid %-8s %s" % (name, pid, "running" if c._ours(pid, name) else "not running"))
    if not c.running():
        print("devcluster: cluster %s in %s is not running" % (c.cluster_name, c.workdir))
        return 1
    print(c.shell_hint())
    r = c.run(["sinfo", "-N", "-l"], check=False)
    print(r.stdout + r.stderr, end="")
    r = c.run(["sinfo", "-R"], check=False)
    print(r.stdout + r.stderr, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
