"""instance-profiles.conf: per instance type / node class expectations, and profile detection."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .errors import ProfileError
from .text import LINE_MAX
from .yamlio import read_text

PACKAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "instance-profiles.conf")
GENERIC = "generic"


@dataclass(frozen=True)
class Profile:
    name: str
    gpus: Optional[int] = None
    model: Optional[str] = None
    nvlinks: Optional[int] = None
    nvswitch: Optional[bool] = None
    efa: Optional[int] = None
    ib: Optional[int] = None
    ib_rate: Optional[float] = None
    pcie_gen: Optional[int] = None
    pcie_width: Optional[int] = None
    ecc: Optional[bool] = None
    mig: Optional[str] = None           # "yes" | "no" | "any"
    memory_gib: Optional[float] = None
    busbw_gbps: Optional[float] = None           # expected all-reduce bus bandwidth inside the node
    internode_busbw_gbps: Optional[float] = None  # expected all-reduce bus bandwidth across nodes (>= 1 GiB)
    matmul_tflops: Optional[float] = None        # expected dense BF16 matmul per GPU (measured, not peak)
    hbm_gbps: Optional[float] = None             # expected device-to-device copy, read + write
    pcie_gbps: Optional[float] = None            # expected host<->device copy, one way, pinned
    p2p_gbps: Optional[float] = None             # expected GPU-to-GPU copy, one way
    auto: bool = True
    aliases: Tuple[str, ...] = ()
    description: str = ""
    source: str = ""                    # file:line it came from

    @property
    def expects_gpus(self) -> Optional[bool]:
        """True/False when the profile says whether the node has GPUs; None when it does not say."""
        return None if self.gpus is None else self.gpus > 0

    def to_dict(self) -> Dict[str, object]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in (None, (), ""):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if n < 0:
        raise ValueError("must not be negative")
    if n > 1 << 31:
        raise ValueError("too large")
    return n


def _float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(x):
        raise ValueError("expected a finite number")
    if x < 0:
        raise ValueError("must not be negative")
    return x


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("yes", "true", "1", "on"):
        return True
    if low in ("no", "false", "0", "off"):
        return False
    raise ValueError("expected yes or no")


def _mig(v: str) -> str:
    if v.lower() not in ("yes", "no", "any"):
        raise ValueError("expected yes, no or any")
    return v.lower()


def _aliases(v: str) -> Tuple[str, ...]:
    return tuple(a for a in (x.strip() for x in v.split(",")) if a)


KEYS: Dict[str, Callable[[str], object]] = {
    "gpus": _int, "model": str, "nvlinks": _int, "nvswitch": _bool, "efa": _int, "ib": _int,
    "ib_rate": _float, "pcie_gen": _int, "pcie_width": _int, "ecc": _bool, "mig": _mig,
    "memory_gib": _float, "busbw_gbps": _float, "internode_busbw_gbps": _float, "matmul_tflops": _float,
    "hbm_gbps": _float, "pcie_gbps": _float, "p2p_gbps": _float, "auto": _bool,
    "aliases": _aliases, "description": str,
}


def parse(text: str, path: str = "<string>") -> Dict[str, Profile]:
    """Profiles by name, in file order. Raises ProfileError naming file and line."""
    profiles: Dict[str, Profile] = {}
    names: Dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = "%s:%d" % (path, lineno)
        if len(raw) > LINE_MAX:         # shlex takes microseconds a character: bounded work per line
            raise ProfileError("%s: line longer than %d characters" % (where, LINE_MAX))
        try:
            tokens = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ProfileError("%s: %s" % (where, exc)) from None
        if not tokens:
            continue
        name, items = tokens[0], tokens[1:]
        if "=" in name:
            raise ProfileError("%s: a line starts with the profile name, not %r" % (where, name))
        values: Dict[str, object] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ProfileError("%s: expected key=value, got %r" % (where, item))
            if key not in KEYS:
                raise ProfileError("%s: unknown key %r (known: %s)" % (where, key, ", ".join(KEYS)))
            if key in values:
                raise ProfileError("%s: key %r given twice" % (where, key))
            try:
                values[key] = KEYS[key](value)
            except ValueError as exc:
                raise ProfileError("%s: %s=%r: %s" % (where, key, value, exc)) from None
        if values.get("model"):
            values.setdefault("ecc", True)
            values.setdefault("mig", "no")
        profile = Profile(name=name, source=where, **values)  # type: ignore[arg-type]
        for label in (name,) + profile.aliases:
            if label in names:
                raise ProfileError("%s: name %r already used at %s" % (where, label, names[label]))
            names[label] = where
        profiles[name] = profile
    if GENERIC not in profiles:
        profiles[GENERIC] = Profile(name=GENERIC, description="built-in fallback", source="built-in")
    return profiles


def load(path: Optional[str] = None) -> Dict[str, Profile]:
    path = path or PACKAGE_FILE
    return parse(read_text(path, ProfileError), path)


def lookup(profiles: Dict[str, Profile], label: str) -> Optional[Profile]:
    """A profile by name or alias."""
    if label in profiles:
        return profiles[label]
    for profile in profiles.values():
        if label in profile.aliases:
            return profile
    return None


# Words in a GPU name that mark a board form factor: "NVIDIA H100 PCIe", "NVIDIA A100-PCIE-40GB",
# "NVIDIA H200 NVL". A profile's model names the SXM part by the chip alone ("H100"), so a PCIe or
# NVL board would match an NVSwitch system's profile and drain for NVLinks and a fabric it never had.
FORM_FACTORS = ("pcie", "nvl")


def _words(text: str) -> set:
    return set(re.split(r"[^a-z0-9]+", text.lower()))


def model_matches(model: str, gpu_name: str) -> bool:
    """Whether the GPU name is of this model: every word of the model is a word of the name
    (case-insensitive), so "L4" is not an "NVIDIA L40S", "B200" not a "GB200", "A10" not an "A100"."""
    want = _words(model) - {""}
    return bool(want) and want <= _words(gpu_name)


def match_gpus(profiles: Dict[str, Profile], gpu_name: str, count: int) -> Optional[Profile]:
    """The first auto profile whose model is in the GPU name and whose count matches, where the
    model names the board's form factor (PCIe, NVL) whenever the GPU name does."""
    forms = _words(gpu_name) & set(FORM_FACTORS)
    for profile in profiles.values():
        if not (profile.auto and profile.model and model_matches(profile.model, gpu_name) and profile.gpus == count):
            continue
        if forms <= _words(profile.model):
            return profile
    return None


# What a node's GPUs do not say: how it is networked. A DGX H100 has eight NDR rails; an OEM HGX
# H100 with the same GPU baseboard may run Spectrum-X Ethernet, NDR200 or four rails. A profile
# picked from the GPU model and count alone expects none of it (the profile named in config or
# by a Slurm node feature, or the instance type, does).
NETWORK_KEYS = ("efa", "ib", "ib_rate")        # without_network clears these fields by name


def without_network(profile: Profile) -> Tuple[Profile, List[str]]:
    """``profile`` less its network expectations, and a note naming those it dropped."""
    dropped = ["%s=%g" % (k, getattr(profile, k)) for k in NETWORK_KEYS if getattr(profile, k) is not None]
    if not dropped:
        return profile, []
    return (dataclasses.replace(profile, efa=None, ib=None, ib_rate=None),
            ["%s not expected: the GPU model does not say how the node is networked (name profile %s in "
             "config or as a Slurm node feature to expect it)" % (" ".join(dropped), profile.name)])


@dataclass
class Detection:
    profile: Profile
    how: str                      # config | slurm-feature | instance-type | gpu-model | fallback
    notes: List[str] = field(default_factory=list)


def detect(profiles: Dict[str, Profile], forced: Optional[str] = None,
           features: Callable[[], Iterable[str]] = lambda: (),
           instance_type: Callable[[], Optional[str]] = lambda: None,
           gpu_model: Callable[[], Optional[Tuple[str, int]]] = lambda: None) -> Detection:
    """Detection order of DESIGN.md section 5; each source is asked only when the earlier ones gave nothing."""
    if forced:
        profile = lookup(profiles, forced)
        if profile is None:
            raise ProfileError("profile %r (from config) is not in the instance profiles (known: %s)"
                               % (forced, ", ".join(profiles)))
        return Detection(profile, "config")
    for feature in features() or ():
        profile = lookup(profiles, feature)
        if profile is not None:
            return Detection(profile, "slurm-feature")
    itype = instance_type()
    if itype:
        profile = lookup(profiles, itype)
        if profile is not None:
            return Detection(profile, "instance-type")
    notes = ["instance type %s has no profile" % itype] if itype else []
    found = gpu_model()
    if found:
        name, count = found
        profile = match_gpus(profiles, name, count)
        if profile is not None:
            profile, dropped = without_network(profile)
            return Detection(profile, "gpu-model", notes + dropped)
    return Detection(profiles[GENERIC], "fallback", notes)
