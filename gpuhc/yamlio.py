"""YAML parsing with one-line errors naming file and line."""
from __future__ import annotations

from typing import Any, Type

from .errors import GpuhcError


def parse_yaml(text: str, path: str, error: Type[GpuhcError]) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = ":%d" % (mark.line + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error("%s%s: invalid YAML: %s" % (path, where, problem)) from None


def read_yaml(path: str, error: Type[GpuhcError]) -> Any:
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise error("%s: cannot read: %s" % (path, exc.strerror or exc)) from None
    return parse_yaml(text, path, error)
