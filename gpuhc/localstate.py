"""Small per-node state on local disk (never shared storage): caches and cursors, as JSON files
written atomically. A failure to read or write is never fatal: the caller recomputes."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional


def read(state_dir: str, name: str) -> Optional[Any]:
    try:
        with open(os.path.join(state_dir, name + ".json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write(state_dir: str, name: str, value: Any) -> bool:
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + name, dir=state_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, os.path.join(state_dir, name + ".json"))
        return True
    except OSError:
        return False
