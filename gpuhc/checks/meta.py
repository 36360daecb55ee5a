"""The contract of a check module, and the metadata each one declares beside its code.

A check module defines::

    NAME = "ecc"
    META = CheckMeta(description=..., suites=(...), ...)   # where it runs, what it needs, its numbers
    def gather(ctx) -> data                                  # backend calls only; bounded by the runner
    def evaluate(data, profile, config) -> [Finding]         # pure: no I/O, same input, same findings

The registry (``gpuhc/checks/__init__.py``) maps names to modules; config builds the default
suites and the default thresholds from the metadata (config.yaml can still override both), and a
test walks the registry and fails on a module that breaks this contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

# Every context a check may run in: the node-side Slurm contexts, `gpuhc check`, and the
# exclusive jobs (sweep, quarantine, bench) where loading the GPUs is allowed.
CONTEXTS = ("prolog", "epilog", "healthcheck", "check", "sweep", "quarantine", "bench")
EXCLUSIVE_CONTEXTS = ("sweep", "quarantine", "bench")

# The default suites, in the order config lists them. Each check names the ones it belongs to.
SUITES = ("prolog", "epilog", "healthcheck", "lightweight", "intensive", "dcgm", "epilog_failure",
          "sweep", "quarantine", "bench", "deep")
# the read-only checks: every suite but the single-purpose ones (dcgm, bench, deep)
LIGHTWEIGHT_SUITES = ("prolog", "healthcheck", "lightweight", "intensive", "epilog_failure", "sweep", "quarantine")
# the checks that load the GPUs: the exclusive jobs' suites (`deep` = the three of them alone)
DEEP_SUITES = ("quarantine", "bench", "deep")


@dataclass(frozen=True)
class Threshold:
    """A number a check compares against, with where it comes from (one line)."""
    default: float
    source: str


@dataclass(frozen=True)
class CheckMeta:
    description: str                       # one line: what the check looks at
    suites: Tuple[str, ...]                # the default suites it is part of (registry order within each)
    contexts: Tuple[str, ...] = CONTEXTS   # where it may run at all; elsewhere the runner skips it
    exclusive: bool = False                # loads the GPUs: only where the node is exclusive
    needs_gpu: bool = True                 # skipped when the GPU library is unavailable or hung
    timeout: Optional[float] = None        # default seconds for its gather step (None: timeouts.check)
    thresholds: Mapping[str, Threshold] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.contexts if c not in CONTEXTS]
        if unknown:
            raise ValueError("unknown context(s) %s" % ", ".join(unknown))
        if self.exclusive and any(c not in EXCLUSIVE_CONTEXTS + ("check",) for c in self.contexts):
            raise ValueError("an exclusive check runs only in %s (and check)" % ", ".join(EXCLUSIVE_CONTEXTS))
        for name, value in self.thresholds.items():
            if not value.source.strip():
                raise ValueError("threshold %s has no source" % name)


class CheckModule(Protocol):
    """What the runner uses of a check module."""
    NAME: str
    META: CheckMeta

    def gather(self, ctx: Any) -> Any: ...

    def evaluate(self, data: Any, profile: Any, config: Optional[Dict[str, Any]]) -> List[Any]: ...


GatherFn = Callable[[Any], Any]
