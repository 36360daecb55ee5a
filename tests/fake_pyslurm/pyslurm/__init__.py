"""A stand-in for pyslurm (no real pyslurm builds against this machine's Slurm 22.05), for
tests/test_slurm_pyslurm.py. Put ``tests/fake_pyslurm`` first on sys.path and ``import pyslurm``.

It reproduces the parts of the real API gpuhc uses, as PySlurm/pyslurm has them (pyslurm 23.02 to
25.x: pyslurm/core/node.pyx at f86866886105315b13b2cf2da117663d568a0a7a, pyslurm/core/node.pxd
at fe79d642878fabe7cbfc5b4a34c590e0184aa73c, pyslurm/core/job/job.pyx at b7369e31, and for
25.x pyslurm/core/reservation.pyx at a8d27913, pyslurm/xcollections.pyx at abae18db,
pyslurm/core/error.pyx, pyslurm/utils/cstr.pyx, pyslurm/utils/ctime.pyx, pyslurm/version.py):

* ``__version__`` is "SLURM_MAJOR.MINOR.PATCH" without a leading zero ("25.11.0", "24.5.1").
* ``Nodes.load()`` and ``Reservations.load()`` return a MultiClusterMap: ``data`` is
  {cluster: {name: obj}}; iterating gives keys, ``values()`` the objects, ``get(name)``.
* ``Node(name=None, **kwargs)`` sets only writable properties (name, configured_gres, address,
  hostname, extra, comment, weight, available_features, active_features, cpu_binding, state,
  reason); a read-only one raises AttributeError. ``state`` accepts only scontrol's update
  states (DRAIN, RESUME, DOWN, UNDRAIN, ...; else ValueError "Invalid Node state: x").
  String setters store "" as NULL, which slurm_update_node reads as "no change".
* ``Node.state`` is slurm_node_state_string_complete(): the base state, then "+FLAG" per flag in
  Slurm's table order ("IDLE+DRAIN", "DOWN+NOT_RESPONDING", "IDLE+MAINTENANCE+RESERVED").
  ``reason``, ``comment`` are None when empty; ``reason_time``, ``boot_time`` None when 0;
  ``partitions``, ``active_features``, ``available_features`` lists ([] when empty).
* ``Node.load(name)`` raises RPCError "Node 'x' does not exist"; ``node.modify(changes)``
  applies another Node's set fields to ``node.name`` (slurm_update_node).
* ``Job.load(job_id)`` (an int); ``job.comment`` None when unset; unknown id: RPCError.
* ``RPCError(errno=..., msg=...)``, a PyslurmError; str() is the message.

Test hooks (not pyslurm's): ``_controller`` holds the nodes, jobs and reservations slurmctld would
have, records every update RPC in ``calls``, and can be made to hang (``hang()``/``release()``).
"""
import threading
import time

__version__ = "25.11.0"
LOCAL_CLUSTER = "linux"

_BASE = ("DOWN", "IDLE", "ALLOCATED", "ERROR", "MIXED", "FUTURE", "UNKNOWN")
# Slurm's node_state_flags[] order (src/common/slurm_protocol_defs.c)
_FLAGS = ("CLOUD", "COMPLETING", "DRAIN", "DYNAMIC_FUTURE", "DYNAMIC_NORM", "INVALID_REG", "FAIL",
          "MAINTENANCE", "POWER_DOWN", "POWER_UP", "PERFCTRS", "POWERED_DOWN", "REBOOT_REQUESTED",
          "REBOOT_ISSUED", "RESERVED", "RESUME", "NOT_RESPONDING", "PLANNED", "POWERING_UP", "POWERING_DOWN")
# _node_state_from_str(): the states scontrol update accepts
_UPDATE_STATES = {"CANCEL_REBOOT", "DOWN", "DRAIN", "FAIL", "FUTURE", "NORESP", "NO_RESP", "POWER_DOWN",
                  "POWER_DOWN_ASAP", "POWER_DOWN_FORCE", "POWER_UP", "RESUME", "UNDRAIN"}


class PyslurmError(Exception):
    pass


class RPCError(PyslurmError):
    def __init__(self, errno=-1, msg=None):
        self.errno = errno
        self.msg = msg or "Unspecified error"
        super().__init__(self.msg)


class _Controller:
    """What slurmctld knows, and a switch that makes every RPC hang."""

    def __init__(self):
        self.nodes = {}           # name -> dict(base, flags, reason, reason_time, comment, partitions, ...)
        self.jobs = {}            # id -> dict(comment=...)
        self.reservations = []    # dicts: name, nodes, start_time, end_time
        self.calls = []           # (rpc, node names, {field: value})
        self._running = threading.Event()
        self._running.set()
        self.rpcs = 0

    def add_node(self, name, state="IDLE", reason=None, reason_time=0, partitions=("gpu",), comment=None,
                 features=(), boot_time=1700000000):
        base, *flags = state.upper().split("+")
        assert base in _BASE and all(f in _FLAGS for f in flags), state
        self.nodes[name] = {"base": base, "flags": set(flags), "reason": reason, "reason_time": reason_time,
                            "comment": comment, "partitions": list(partitions), "features": list(features),
                            "boot_time": boot_time}

    def hang(self):
        self._running.clear()

    def release(self):
        self._running.set()

    def rpc(self, name):
        self._running.wait()      # a hung slurmctld: the call does not come back
        self.rpcs += 1

    def update_node(self, names, umsg):
        self.rpc("slurm_update_node")
        self.calls.append(("slurm_update_node", names, dict(umsg)))
        for name in names.split(","):
            rec = self.nodes.get(name)
            if rec is None:
                raise RPCError(2009, "Invalid node name specified")
            state = umsg.get("state")
            if state == "DRAIN":
                if not umsg.get("reason"):
                    raise RPCError(2020, "You must specify a reason when DOWNING or DRAINING a node")
                rec["flags"].add("DRAIN")
            elif state == "RESUME":
                if not (rec["flags"] & {"DRAIN", "FAIL"}) and rec["base"] != "DOWN":
                    raise RPCError(2020, "Invalid node state specified")
                rec["flags"] -= {"DRAIN", "FAIL", "NOT_RESPONDING"}
                if rec["base"] == "DOWN":
                    rec["base"] = "IDLE"
                rec["reason"], rec["reason_time"] = None, 0
            elif state is not None:
                rec["flags"].add(state)
            if umsg.get("reason") is not None:
                rec["reason"], rec["reason_time"] = umsg["reason"], int(time.time())
            if umsg.get("comment") is not None:
                rec["comment"] = umsg["comment"]


_controller = _Controller()


def _reset():
    global _controller
    _controller.release()
    _controller = _Controller()
    return _controller


def _cstr(value):
    """cstr.fmalloc: an empty string is stored as NULL (None)."""
    return value if value else None


class _MultiClusterMap:
    def __init__(self, typ):
        self.data = {}
        self._typ = typ

    def _add(self, key, value):
        self.data.setdefault(LOCAL_CLUSTER, {})[key] = value

    def keys(self):
        return [k for cluster in self.data.values() for k in cluster]

    def values(self):
        return [v for cluster in self.data.values() for v in cluster.values()]

    def items(self):
        return [(k, v) for cluster in self.data.values() for k, v in cluster.items()]

    def get(self, key, default=None):
        return self.data.get(LOCAL_CLUSTER, {}).get(key, default)

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return sum(len(c) for c in self.data.values())

    def __contains__(self, key):
        return any(key in c for c in self.data.values())

    def __repr__(self):
        return "%s([%s])" % (self._typ, ", ".join(map(repr, self.values())))


class Nodes(_MultiClusterMap):
    def __init__(self, nodes=None):
        super().__init__("Nodes")

    @staticmethod
    def load(preload_passwd_info=False):
        _controller.rpc("slurm_load_node")
        out = Nodes()
        for name, rec in _controller.nodes.items():
            out._add(name, Node._from_record(name, rec))
        return out


class Node:
    _WRITABLE = {"name", "configured_gres", "address", "hostname", "extra", "comment", "weight",
                 "available_features", "active_features", "cpu_binding", "state", "reason"}

    def __init__(self, name=None, **kwargs):
        object.__setattr__(self, "_info", {})
        object.__setattr__(self, "_umsg", {})
        self.name = name
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __setattr__(self, key, value):
        if key not in self._WRITABLE:
            if key in type(self).__dict__ or key in ("reason_time", "boot_time", "partitions", "next_state"):
                raise AttributeError("attribute '%s' of 'pyslurm.core.node.Node' objects is not writable" % key)
            raise KeyError(key)     # Node.__dict__[name].__set__(...) on an unknown name
        if key == "state":
            if not value:
                return
            if str(value).upper() not in _UPDATE_STATES:
                raise ValueError("Invalid Node state: %s" % value)
            value = str(value).upper()
        elif key in ("available_features", "active_features") and not isinstance(value, str) and value:
            value = ",".join(value)
        self._info[key] = _cstr(value)
        self._umsg[key] = _cstr(value)

    def __repr__(self):
        return "pyslurm.Node(%s)" % self.name

    def __eq__(self, other):
        return isinstance(other, Node) and self.name == other.name

    @classmethod
    def _from_record(cls, name, rec):
        node = cls.__new__(cls)
        object.__setattr__(node, "_info", {
            "name": name, "state_bits": (rec["base"], set(rec["flags"])), "reason": _cstr(rec["reason"]),
            "reason_time": rec["reason_time"], "comment": _cstr(rec["comment"]),
            "partitions": ",".join(rec["partitions"]), "features": ",".join(rec["features"]),
            "boot_time": rec["boot_time"]})
        object.__setattr__(node, "_umsg", {})
        return node

    @staticmethod
    def load(name):
        _controller.rpc("slurm_load_node_single")
        rec = _controller.nodes.get(name)
        if rec is None:
            raise RPCError(msg="Node '%s' does not exist" % name)
        return Node._from_record(name, rec)

    def modify(self, changes=None):
        updates = changes if changes is not None else self
        umsg = {k: v for k, v in updates._umsg.items() if k != "name" and v is not None}
        _controller.update_node(self.name, umsg)

    def to_dict(self):
        return {k: getattr(self, k) for k in ("name", "state", "reason", "comment", "partitions")}

    as_dict = to_dict

    @property
    def state(self):
        bits = self._info.get("state_bits")
        if bits is None:
            return self._info.get("state") or "UNKNOWN"
        base, flags = bits
        return base + "".join("+" + f for f in _FLAGS if f in flags)

    @property
    def next_state(self):
        return None

    @property
    def reason(self):
        return self._info.get("reason")

    @property
    def comment(self):
        return self._info.get("comment")

    @property
    def reason_time(self):
        return self._info.get("reason_time") or None

    @property
    def boot_time(self):
        return self._info.get("boot_time") or None

    @property
    def partitions(self):
        text = self._info.get("partitions")
        return text.split(",") if text else []

    @property
    def available_features(self):
        text = self._info.get("features")
        return text.split(",") if text else []

    @property
    def active_features(self):
        return self.available_features


# `name` is a property in pyslurm; here it is read back from _info
Node.name = property(lambda self: self._info.get("name"))


class Job:
    def __init__(self, job_id):
        object.__setattr__(self, "_info", {"job_id": int(job_id), "comment": None})

    def __repr__(self):
        return "pyslurm.Job(%s)" % self.id

    @staticmethod
    def load(job_id):
        _controller.rpc("slurm_load_job")
        if not isinstance(job_id, int):       # slurm_load_job(uint32_t): Cython rejects a str
            raise TypeError("an integer is required")
        rec = _controller.jobs.get(job_id)
        if rec is None:
            raise RPCError(2017, "Invalid job id specified")
        job = Job(job_id)
        job._info["comment"] = _cstr(rec.get("comment"))
        for key in ("exit_code", "exit_code_signal", "derived_exit_code", "derived_exit_code_signal"):
            job._info[key] = rec.get(key)      # pyslurm: None where WIFEXITED/WIFSIGNALED says no
        return job

    def __getattr__(self, name):
        if name in ("exit_code", "exit_code_signal", "derived_exit_code", "derived_exit_code_signal"):
            return self._info.get(name)
        raise AttributeError(name)

    @property
    def id(self):
        return self._info["job_id"]

    @property
    def comment(self):
        return self._info["comment"]


class Reservations(_MultiClusterMap):
    def __init__(self, reservations=None):
        super().__init__("Reservations")

    @staticmethod
    def load():
        _controller.rpc("slurm_load_reservations")
        out = Reservations()
        for rec in _controller.reservations:
            out._add(rec["name"], Reservation._from_record(rec))
        return out


class Reservation:
    def __init__(self, name=None, **kwargs):
        self._info = {"name": name}
        self._info.update(kwargs)

    @classmethod
    def _from_record(cls, rec):
        return cls(**rec)

    def __repr__(self):
        return "pyslurm.Reservation(%s)" % self.name

    @property
    def name(self):
        return self._info.get("name")

    @property
    def nodes(self):
        return _cstr(self._info.get("nodes"))

    @property
    def start_time(self):
        return self._info.get("start_time") or None

    @property
    def end_time(self):
        return self._info.get("end_time") or None

    @property
    def is_active(self):
        now = time.time()
        return (self._info.get("start_time") or 0) <= now <= (self._info.get("end_time") or 0)
