"""Slurm through its command-line tools (sinfo --json, scontrol), each with a timeout.

Arguments are passed as lists, never through a shell. Node state and state flags come from
``sinfo --json``: DRAIN is a flag beside the base state (Slurm 22.05 gives ``state`` as a
string and ``state_flags`` as a list; 23.02 and later give ``state`` as a list), so both
shapes are read into one set of upper-case words.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .slurm import NodeView, Slurm, SlurmError, reserved_nodes, state_words


def _number(value: Any) -> Optional[int]:
    if isinstance(value, dict):           # 23.x: {"set": true, "number": N}
        value = value.get("number") if value.get("set", True) else None
    try:
        return int(value) if value not in (None, "", 0) else None
    except (TypeError, ValueError):
        return None


def parse_nodes(text: str) -> Dict[str, NodeView]:
    """NodeViews from ``sinfo --json`` (22.05 through 24.x shapes)."""
    data = json.loads(text)
    out: Dict[str, NodeView] = {}
    for node in data.get("nodes", []):
        name = node.get("name") or node.get("hostname")
        if not name:
            continue
        states = state_words(node.get("state")) | state_words(node.get("state_flags"))
        feats = node.get("active_features") or node.get("features") or ""
        if isinstance(feats, str):
            feats = [f for f in feats.split(",") if f]
        view = out.get(name)
        parts = node.get("partitions") or ([node["partition"]] if node.get("partition") else [])
        if view is not None:                  # sinfo repeats a node once per partition
            view.partitions.extend(p for p in parts if p not in view.partitions)
            continue
        out[name] = NodeView(name=name, states=states, reason=node.get("reason") or "",
                             reason_time=_number(node.get("reason_changed_at") or node.get("reason_set_at")),
                             partitions=list(parts), comment=node.get("comment") or "", features=list(feats),
                             boot_time=_number(node.get("boot_time")))
    return out


class SlurmCli(Slurm):
    """The default Slurm backend."""

    kind = "cli"

    def available(self) -> bool:
        """The tools are installed and Slurm is configured on this host."""
        configured = bool(os.environ.get("SLURM_CONF")) or any(
            os.path.exists(p) for p in ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf"))
        return configured and shutil.which("scontrol") is not None and shutil.which("sinfo") is not None

    def _run(self, argv: Sequence[str], timeout: Optional[float] = None) -> str:
        if shutil.which(argv[0]) is None:
            raise SlurmError("%s not found" % argv[0])
        timeout = self.time_left(" ".join(argv[:3]), timeout)
        try:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmError("%s timed out after %.3gs" % (" ".join(argv[:3]), timeout)) from None
        except OSError as exc:
            raise SlurmError("%s: %s" % (argv[0], exc)) from None
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise SlurmError("%s failed (rc %d): %s" % (" ".join(argv[:3]), proc.returncode, msg[-1] if msg else ""))
        return proc.stdout

    def nodes(self, names: Optional[Iterable[str]] = None) -> Dict[str, NodeView]:
        argv = ["sinfo", "--json"]
        names = list(names or [])
        if names:
            argv += ["--nodes", ",".join(names)]
        text = self._run(argv)
        try:
            return parse_nodes(text)
        except (ValueError, TypeError, AttributeError) as exc:
            raise SlurmError("sinfo --json gave unreadable output: %s" % exc) from None

    def update_node(self, name: str, **fields: str) -> None:
        argv = ["scontrol", "update", "NodeName=%s" % name]
        argv += ["%s=%s" % (k, v) for k, v in fields.items()]
        self._run(argv)

    def job_comment(self, job_id: str) -> str:
        """The job's --comment ('' when none)."""
        out = self._run(["scontrol", "show", "job", "--oneliner", str(job_id)])
        comment = out.split(" Comment=", 1)[1] if " Comment=" in out else ""
        # the comment runs to the next 'Key=' field
        for key in (" StdErr=", " StdIn=", " StdOut=", " Power=", " MailUser=", " TresPerNode="):
            comment = comment.split(key, 1)[0]
        return comment.strip() if comment.strip() != "(null)" else ""

    def reservations(self) -> Dict[str, str]:
        """node -> the name of the active reservation it is in (one per node: the first listed)."""
        active = []
        for line in self._run(["scontrol", "show", "reservation", "--oneliner"]).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("State", "ACTIVE") == "ACTIVE":
                active.append((fields.get("ReservationName"), fields.get("Nodes", "")))
        return reserved_nodes(active)


def node_features(node: str, timeout: float = 3.0) -> List[str]:
    """The node's features; [] when Slurm cannot be asked (used by profile detection)."""
    try:
        return SlurmCli(timeout).features(node)
    except SlurmError:
        return []
