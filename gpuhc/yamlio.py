"""YAML parsing with one-line errors naming file and line: text that is not UTF-8 and a key given
twice in one mapping (YAML keeps the last silently) are errors too; and the reading of config,
profiles and scenario files: the one place they are read, within READ_WAIT seconds, only from a
regular file, and at most the size limit of their kind (SIZE_MAX)."""
from __future__ import annotations

import os
import stat
from typing import Any, Dict, Literal, Optional, Type, overload

from .bounded import Overtime, call_within
from .errors import ConfigError, GpuhcError, ProfileError, ScenarioError

_LOADER: Any = None


def _loader() -> Any:
    """A safe loader (the C parser where there is one) that refuses a key given twice in a mapping."""
    global _LOADER
    if _LOADER is None:
        import yaml

        base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

        class Loader(base):  # type: ignore[misc, valid-type]
            """Checks each mapping's own keys once, as written, before merge keys (``<<``) are
            flattened into it: a key a merge brings in may be overridden, never given twice."""
            def __init__(self, stream: Any) -> None:
                super().__init__(stream)
                self._checked: set = set()

            def flatten_mapping(self, node: Any) -> None:
                if id(node) not in self._checked:
                    self._checked.add(id(node))
                    seen = set()
                    for key_node, _ in node.value:
                        if key_node.tag == "tag:yaml.org,2002:merge":
                            continue
                        key = self.construct_object(key_node, deep=True)
                        try:
                            duplicate = key in seen
                            seen.add(key)
                        except TypeError:            # an unhashable key: the base class says so
                            continue
                        if duplicate:
                            raise yaml.constructor.ConstructorError(
                                None, None, "key %r given twice in one mapping" % (key,), key_node.start_mark)
                super().flatten_mapping(node)

        _LOADER = Loader
    return _LOADER


def parse_yaml(text: str, path: str, error: Type[GpuhcError]) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = ":%d" % (mark.line + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error("%s%s: invalid YAML: %s" % (path, where, problem)) from None


def decode(data: bytes, path: str, error: Type[GpuhcError]) -> str:
    """UTF-8 text, or an error naming the file, line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error("%s:%d: not UTF-8 text (byte 0x%02x)" % (path, line, data[exc.start])) from None


# A config, profiles or scenario file not read in this time (the default prolog budget) is on a
# hung mount: an error naming it, instead of a prolog that hangs before its budget even starts.
READ_WAIT = 8.0


# The largest file of each kind that is read (README "Limits"), by the error class its reader
# raises: a config or profiles file is a few KiB; a scenario may carry a long kernel log. Past it,
# a one-line error, before the parser spends time and memory on it.
SIZE_MAX: Dict[Type[GpuhcError], int] = {ConfigError: 64 << 10, ProfileError: 64 << 10, ScenarioError: 16 << 20}
DEFAULT_SIZE_MAX = 64 << 10
_KIND = {ConfigError: "a config file", ProfileError: "a profiles file", ScenarioError: "a scenario file"}


def size_max(error: Type[GpuhcError]) -> int:
    return next((v for k, v in SIZE_MAX.items() if issubclass(error, k)), DEFAULT_SIZE_MAX)


def _size(n: int) -> str:
    return "%d MiB" % (n >> 20) if n >= 1 << 20 and not n % (1 << 20) else "%d KiB" % (n >> 10)


@overload
def read_bytes(path: str, error: Type[GpuhcError], missing_ok: Literal[False] = False) -> bytes: ...


@overload
def read_bytes(path: str, error: Type[GpuhcError], missing_ok: bool) -> Optional[bytes]: ...


def read_bytes(path: str, error: Type[GpuhcError], missing_ok: bool = False) -> Optional[bytes]:
    """The file's bytes (None when ``missing_ok`` and nothing is at ``path``), within READ_WAIT
    seconds. Only a regular file is read (a FIFO is not waited on, /dev/zero not read for ever),
    and none larger than ``size_max(error)``: an ``error`` naming the file otherwise."""
    limit = size_max(error)

    def read() -> Optional[bytes]:
        if missing_ok and not os.path.lexists(path):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise error("%s: cannot read: not a regular file" % path)
            parts, left = [], limit + 1             # the file may grow between fstat and read
            while left > 0 and st.st_size <= limit:
                part = os.read(fd, min(left, 1 << 20))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
        finally:
            os.close(fd)
        if st.st_size > limit or left <= 0:
            raise error("%s: larger than %s, the limit for %s" % (path, _size(limit), _KIND.get(error, "this file")))
        return b"".join(parts)

    try:
        return call_within(read, READ_WAIT, "gpuhc-read")
    except Overtime:
        raise error("%s: cannot read: no answer within %g s (a hung mount?)" % (path, READ_WAIT)) from None
    except OSError as exc:
        raise error("%s: cannot read: %s" % (path, exc.strerror or exc)) from None
    except ValueError:          # a NUL byte in the path
        raise error("%r: cannot read: a path holds no NUL byte" % path) from None


def read_text(path: str, error: Type[GpuhcError]) -> str:
    return decode(read_bytes(path, error), path, error)


def read_yaml(path: str, error: Type[GpuhcError]) -> Any:
    return parse_yaml(read_text(path, error), path, error)
