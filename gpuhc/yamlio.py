"""YAML parsing with one-line errors naming file and line: text that is not UTF-8 and a key given
twice in one mapping (YAML keeps the last silently) are errors too."""
from __future__ import annotations

from typing import Any, Type

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


def read_text(path: str, error: Type[GpuhcError]) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise error("%s: cannot read: %s" % (path, exc.strerror or exc)) from None
    return decode(data, path, error)


def read_yaml(path: str, error: Type[GpuhcError]) -> Any:
    return parse_yaml(read_text(path, error), path, error)
