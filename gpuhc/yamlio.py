"""YAML parsing with one-line errors naming file and line: text that is not UTF-8 and a key given
twice in one mapping (YAML keeps the last silently) are errors too; and the reading of config,
profiles and scenario files, within READ_WAIT seconds."""
from __future__ import annotations

import os
from typing import Any, Optional, Type

from .bounded import Overtime, call_within
from .errors import GpuhcError

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


def read_bytes(path: str, error: Type[GpuhcError], missing_ok: bool = False) -> Optional[bytes]:
    """The file's bytes (None when ``missing_ok`` and nothing is at ``path``), within READ_WAIT seconds."""
    def read() -> Optional[bytes]:
        if missing_ok and not os.path.lexists(path):
            return None
        with open(path, "rb") as fh:
            return fh.read()

    try:
        return call_within(read, READ_WAIT, "gpuhc-read")
    except Overtime:
        raise error("%s: cannot read: no answer within %g s (a hung mount?)" % (path, READ_WAIT)) from None
    except OSError as exc:
        raise error("%s: cannot read: %s" % (path, exc.strerror or exc)) from None


def read_text(path: str, error: Type[GpuhcError]) -> str:
    return decode(read_bytes(path, error), path, error)


def read_yaml(path: str, error: Type[GpuhcError]) -> Any:
    return parse_yaml(read_text(path, error), path, error)
