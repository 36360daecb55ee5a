"""One way to wait for a call that may hang: run it in a daemon thread and wait at most so long.

A call stuck in the kernel (a hung GPU, a hung NFS mount, libslurm waiting on slurmctld) cannot be
interrupted from Python; it can only be left behind. The daemon thread does not keep the process
alive at exit. Callers turn ``Overtime`` into their own error (a check finding, StoreError,
SlurmError) with the words that fit.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class Overtime(Exception):
    """The call had not returned when the time was up (it may still be running)."""


def call_within(fn: Callable[[], Any], timeout: float, name: str = "gpuhc-bounded") -> Any:
    """fn()'s value, or its exception re-raised here; Overtime past ``timeout`` seconds."""
    box: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:   # re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=name, daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise Overtime()
    if "error" in box:
        raise box["error"]
    return box.get("value")
