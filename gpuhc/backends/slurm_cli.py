"""Slurm through its command-line tools (scontrol, sinfo --json), each with a timeout.

Arguments are passed as lists, never through a shell.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import List, Optional


def _run(argv: List[str], timeout: float) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def node_features(node: str, timeout: float = 3.0) -> List[str]:
    """The node's available and active features; [] when Slurm cannot be asked."""
    out = _run(["scontrol", "show", "node", node, "--oneliner"], timeout)
    feats: List[str] = []
    for token in (out or "").split():
        key, _, value = token.partition("=")
        if key in ("AvailableFeatures", "ActiveFeatures") and value not in ("", "(null)"):
            feats.extend(f for f in value.split(",") if f and f not in feats)
    return feats
