"""Command line: one thin command per verb; parses, calls one function, prints. The commands live
by what they work on: node.py (on a node), fleet.py (reading the results), control.py (acting
through Slurm from the controller); base.py holds what they share."""
from __future__ import annotations

from . import control, fleet, node  # noqa: F401  (registers their commands on main)
from .base import EXIT_INTERRUPTED, Group, error_line, load_config, main, run

__all__ = ["EXIT_INTERRUPTED", "Group", "error_line", "load_config", "main", "run"]
