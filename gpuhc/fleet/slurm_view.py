"""Slurm's view of the nodes for `gpuhc status`, `show` and `export`: state, reason, partitions
and the reservation a node is in (quarantine runs in one). Read-only."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ..acting import log, slurm_backend
from ..backends.slurm import SlurmError


def slurm_view(cfg: Dict[str, Any], names: Optional[Sequence[str]] = None) -> Optional[Dict[str, Dict[str, Any]]]:
    """Slurm's view of every node (or of ``names``); None without Slurm (the readers then show the
    store alone)."""
    slurm = slurm_backend(cfg)
    if slurm is None:
        return None
    try:
        nodes = slurm.nodes(names)
    except SlurmError as exc:
        log("warning: showing the store alone: %s" % exc)
        return None
    reservations: Dict[str, str] = {}
    try:
        # quarantine runs in a reservation; asked whatever the flags say: MAINTENANCE and RESERVED
        # show seconds after a reservation starts
        reservations = slurm.reservations()
    except SlurmError as exc:
        log("warning: reservations unreadable: %s" % exc)
    return {name: {"state": sorted(v.states), "reason": v.reason, "partitions": v.partitions,
                   "reservation": reservations.get(name, "")}
            for name, v in nodes.items()}
