"""One small schema language for the YAML gpuhc reads (config.yaml, scenario files): a value is
checked against a schema once, at load, and a mismatch is one line naming the field
(``gpus.3.pcie.width_current: expected an integer or null, got 'x8'``).

A schema is one of:
  a leaf name from LEAVES ("int", "count", "str", ...), with "?" appended where null is allowed too;
  a dict: a mapping with (some of) these keys, each value of its schema (any other key is an error);
  Whole({...}): the same with every key present (list items: lists are never merged);
  a list of one schema: a list whose items are of that schema;
  MapOf(key, value): a mapping with any keys of leaf type ``key``;
  OneOf(noun, values): one of the given strings;
  a tuple: any of these schemas (None in it: null allowed).
"""
from __future__ import annotations

import math
import re
from typing import Any, Type

from .errors import GpuhcError


class Whole(dict):
    pass


class MapOf:
    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value


class OneOf:
    def __init__(self, noun: str, values: Any) -> None:
        self.noun, self.values = noun, tuple(values)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


# leaf name -> (what it is, in an error message; test)
LEAVES = {
    "int": ("an integer", is_int),
    "count": ("a non-negative integer", lambda v: is_int(v) and v >= 0),
    "index": ("an index (a non-negative integer)",
              lambda v: (is_int(v) and v >= 0) or (isinstance(v, str) and v.isdigit())),
    "float": ("a number", is_number),
    "amount": ("a non-negative number", lambda v: is_number(v) and v >= 0),
    "seconds": ("a non-negative number of seconds", lambda v: is_number(v) and v >= 0),
    "duration": ("a number of seconds above 0", lambda v: is_number(v) and v > 0),
    "bool": ("true/false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "text": ("a string", lambda v: isinstance(v, str) or is_int(v)),   # an integer reads as its digits
}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(schema: Any) -> str:
    if schema is None:
        return "null"
    if isinstance(schema, str):
        what = LEAVES[schema.rstrip("?")][0]
        return what + " or null" if schema.endswith("?") else what
    if isinstance(schema, (dict, MapOf)):
        return "a mapping"
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, OneOf):
        return "a %s" % schema.noun
    alts = [_describe(s) for s in schema]
    return ", ".join(alts[:-1]) + " or " + alts[-1]


def _fits(schema: Any, value: Any) -> bool:
    """Whether ``value`` is of the outer kind of ``schema`` (its contents are not looked at)."""
    if schema is None or value is None:
        return schema is value or (isinstance(schema, str) and schema.endswith("?"))
    if isinstance(schema, str):
        return LEAVES[schema.rstrip("?")][1](value)
    if isinstance(schema, (dict, MapOf)):
        return isinstance(value, dict)
    if isinstance(schema, list):
        return isinstance(value, list)
    if isinstance(schema, OneOf):
        return isinstance(value, str)
    return any(_fits(s, value) for s in schema)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _at(where: str, key: Any) -> str:
    """``gpus.3.pcie``; ``commands['nvidia-smi -q']`` for a key that is not a plain word."""
    if is_int(key) or (isinstance(key, str) and _PLAIN_KEY.match(key)):
        return "%s.%s" % (where, key) if where else str(key)
    return "%s[%r]" % (where, key)


def validate(value: Any, schema: Any, where: str = "", error: Type[GpuhcError] = GpuhcError) -> None:
    """Raise ``error("WHERE: ...")`` unless ``value`` is of ``schema`` (see above)."""
    def bad(msg: str) -> GpuhcError:
        return error("%s: %s" % (where, msg) if where else msg)

    if isinstance(schema, tuple):
        for alt in schema:
            if _fits(alt, value):
                if alt is not None:
                    validate(value, alt, where, error=error)
                return
    elif _fits(schema, value):
        if isinstance(schema, dict):
            missing = [key for key in schema if key not in value] if isinstance(schema, Whole) else []
            if missing:
                raise bad("missing key %r" % missing[0])
            for key, item in value.items():
                if key not in schema:
                    raise bad("unknown key %r (known: %s)" % (key, ", ".join(sorted(schema))))
                validate(item, schema[key], _at(where, key), error=error)
        elif isinstance(schema, MapOf):
            for key, item in value.items():
                if not _fits(schema.key, key):
                    raise bad("key %s: expected %s" % (_show(key), _describe(schema.key)))
                validate(item, schema.value, _at(where, key), error=error)
        elif isinstance(schema, list):
            for n, item in enumerate(value):
                validate(item, schema[0], "%s[%d]" % (where, n), error=error)
        elif isinstance(schema, OneOf) and value not in schema.values:
            raise bad("unknown %s %r (one of: %s)" % (schema.noun, value, ", ".join(schema.values)))
        return
    raise bad("expected %s, got %s" % (_describe(schema), _show(value)))
