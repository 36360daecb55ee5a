"""The node-side contexts, one module each over one pipeline (contexts/pipeline.py): run the suite,
decide, act, record. ``prolog``, ``epilog``, ``healthcheck`` (Slurm's moments) and ``check`` (an
operator's `gpuhc check`); the exclusive jobs' own steps (sweep, quarantine, bench) join them here.

The controller-side commands (sweep planning, quarantine, nccl --pairs, report) live in
gpuhc/controller/: they plan and submit Slurm jobs and never touch a GPU.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Optional

MODULES = {"prolog": "prolog", "epilog": "epilog", "healthcheck": "healthcheck", "check": "check",
           "bench": "bench", "sweep": "sweep",
           "quarantine": "quarantine"}


def get(name: str):
    """The context object (a pipeline.NodeContext) of ``name``."""
    return importlib.import_module("%s.%s" % (__name__, MODULES[name])).CONTEXT


def run(cfg: Dict[str, Any], name: str, node: Optional[str] = None, simulate: Optional[str] = None,
        env: Optional[Dict[str, str]] = None, **options: Any):
    """One run of context ``name`` on this node: a pipeline.Outcome."""
    from .pipeline import run as run_pipeline

    return run_pipeline(cfg, get(name), node=node, simulate=simulate, env=env, **options)
