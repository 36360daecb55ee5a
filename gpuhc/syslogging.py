"""Lines to syslog (tag gpuhc, facility daemon): where the Slurm contexts' findings, warnings and
errors go, since slurmd discards a prolog's output.

syslog() is a blocking send to /dev/log: it waits as long as the syslog daemon does not read (an
rsyslog whose forwarding queue is full), and takes microseconds when the daemon does. So a send
waits at most WAIT seconds and never past the run's deadline (``until``); after one
send that did not return, later ones are not attempted."""
from __future__ import annotations

import time
from typing import Iterable, Optional

from .bounded import Overtime, call_within
from .text import clean

WAIT = 1.0
_deadline: Optional[float] = None
_stuck = False


def until(deadline: Optional[float]) -> None:
    """The run's deadline (time.monotonic()): no send waits past it."""
    global _deadline
    _deadline = deadline


def send(lines: Iterable[str], priority: str = "LOG_INFO") -> None:
    """Each line at ``priority`` (a name of the syslog module: LOG_INFO, LOG_WARNING, LOG_ERR)."""
    global _stuck
    lines = [clean(line) for line in lines]     # one line each, bounded: a NUL made syslog() raise
    if _stuck or not lines:
        return

    def run() -> None:
        import syslog

        syslog.openlog("gpuhc", 0, syslog.LOG_DAEMON)
        for line in lines:
            syslog.syslog(getattr(syslog, priority), line)

    wait = WAIT if _deadline is None else min(WAIT, _deadline - time.monotonic())
    if wait < 0.01:         # the run's budget is spent: the process must end inside it
        return
    try:
        call_within(run, wait, "gpuhc-syslog")
    except Overtime:
        _stuck = True
    except Exception:
        pass
