"""`dcgmi diag -j` output of DCGM 2.x, 3.x and 4.x, read into one flat list of test results.

The three shapes, as dcgmi writes them (dcgmi/Diag.cpp of each release, and captured output):

- 2.x: ``{"DCGM GPU Diagnostic": {"test_categories": [{"category", "tests": [{"name", "results":
  [{"gpu_ids": "3", "status": "Fail", "warnings": "<text>", "info": "<text>"}]}]}]}}``;
  a software (Deployment) result has no GPU id; no error id or severity.
- 3.x: the same tree, each result ``{"gpu_id": "3", "status", "warnings": [{"warning", "error_id",
  "error_category", "error_severity"}], "info"}``; a Deployment result names the GPU only beside an
  error (and its warning text sits under the key "warnings"); "version" and "Driver Version
  Detected" at the top level.
- 4.x: ``{"DCGM Diagnostic": {"test_categories": [... "results": [{"entity_group": "GPU",
  "entity_group_id": 1, "entity_id": 3, "status", "warnings": [...], "info": [...]}],
  "test_summary": {"status", "warnings", "info"}]}, "entity_groups": [...], "metadata": {"version", ...}}``;
  the summary holds the test's overall status and the errors of no entity (a test can fail there
  alone while every per-GPU result passes).

A run that could not start says so in ``runtime_error`` under the top key. Statuses are
Pass, Fail, Warn, Skip in any case. The parser is tolerant of fields it does not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

ROOT_KEYS = ("DCGM Diagnostic", "DCGM GPU Diagnostic")
STATUSES = ("PASS", "FAIL", "WARN", "SKIP")

# DCGM's dcgmErrorSeverity_t (dcgm_errors.h), the per-error verdict DCGM 3.x and 4.x attach
SEVERITY_NAMES = {0: "NONE", 1: "MONITOR", 2: "ISOLATE", 3: "UNKNOWN", 4: "TRIAGE", 5: "CONFIG", 6: "RESET"}


class DiagParseError(ValueError):
    """The output holds no diagnostic JSON."""


@dataclass
class DiagWarning:
    text: str
    error_id: Optional[int] = None
    severity: Optional[int] = None       # dcgmErrorSeverity_t, when the JSON gives one
    category: Optional[int] = None


@dataclass
class DiagResult:
    category: str
    test: str
    status: str                          # PASS | FAIL | WARN | SKIP | the unknown text, upper case
    gpus: Optional[List[int]] = None     # GPU ids; None for a node-wide (software) result
    entity: Optional[str] = None         # a non-GPU entity, e.g. "CPU 0"
    warnings: List[DiagWarning] = field(default_factory=list)
    info: List[str] = field(default_factory=list)


@dataclass
class Diag:
    shape: str                           # "2.x" | "3.x" | "4.x"
    version: Optional[str] = None
    driver: Optional[str] = None
    runtime_error: Optional[str] = None
    results: List[DiagResult] = field(default_factory=list)


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):        # RecursionError: arrays nested thousands deep
        pass
    start, end = text.find("{"), text.rfind("}")       # a banner line before the JSON
    if 0 <= start < end:
        try:
            return json.loads(text[start:end + 1])
        except (ValueError, RecursionError):
            pass
    raise DiagParseError("no diagnostic JSON in the output")


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):      # OverflowError: 1e400 is infinity
        return None


def _list(value: Any) -> List[Any]:
    """``value`` when it is a list, else [] (a field of another type is ignored, as unknown ones are)."""
    return value if isinstance(value, list) else []


def _texts(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)] if value != "" else []


def _warnings(value: Any) -> List[DiagWarning]:
    out = []
    for item in value if isinstance(value, list) else ([value] if value else []):
        if isinstance(item, dict):
            text = item.get("warning", item.get("warnings", ""))
            out.append(DiagWarning(str(text or ""), _int(item.get("error_id")), _int(item.get("error_severity")),
                                   _int(item.get("error_category"))))
        elif item:
            out.append(DiagWarning(str(item)))
    return out


def _status(value: Any) -> str:
    text = str(value or "").strip().upper()
    for status in STATUSES:
        if text.startswith(status):
            return status
    return text or "UNKNOWN"


def _where(result: Dict[str, Any]) -> Dict[str, Any]:
    """The GPU ids or other entity a result is about."""
    group = result.get("entity_group")
    if group is not None:
        ident = _int(result.get("entity_id"))
        if str(group).upper() == "GPU" and ident is not None:
            return {"gpus": [ident]}
        return {"entity": "%s %s" % (group, "" if ident is None else ident)}
    for key in ("gpu_id", "gpu_ids"):
        if key in result and result[key] not in (None, ""):
            ids = [_int(x) for x in str(result[key]).split(",")]
            return {"gpus": [i for i in ids if i is not None] or None}
    if "cpu_id" in result:
        return {"entity": "CPU %s" % result["cpu_id"]}
    return {}


def _rank(status: str) -> int:
    return 0 if status in ("PASS", "SKIP") else 2 if status == "FAIL" else 1


def _results(category: str, test: Dict[str, Any]) -> List[DiagResult]:
    """A test's results per entity; its 4.x ``test_summary`` (the overall status, with the errors
    that belong to no entity) as a node-wide result when it is worse than every per-entity one."""
    name = str(test.get("name", "?"))
    rows = test.get("results") or []
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        out.append(DiagResult(category, name, _status(row.get("status")), warnings=_warnings(row.get("warnings")),
                              info=_texts(row.get("info")), **_where(row)))
    summary = test.get("test_summary")
    if isinstance(summary, dict) and (not out or _rank(_status(summary.get("status"))) > max(_rank(r.status) for r in out)):
        out.append(DiagResult(category, name, _status(summary.get("status")), warnings=_warnings(summary.get("warnings")),
                              info=_texts(summary.get("info")), **_where(summary)))
    return out


def _shape(key: Optional[str], doc: Dict[str, Any], categories: List[Any]) -> str:
    """Which major version wrote the document: 4.x names its top key "DCGM Diagnostic" and its results
    by entity; 3.x gives "gpu_id" and a top-level "version"; 2.x "gpu_ids" and nothing else."""
    if key == "DCGM Diagnostic" or "metadata" in doc:
        return "4.x"
    rows = [row for cat in categories if isinstance(cat, dict) for test in _list(cat.get("tests"))
            if isinstance(test, dict) for row in _list(test.get("results")) if isinstance(row, dict)]
    if any("entity_group" in row for row in rows):
        return "4.x"
    if "version" in doc or any("gpu_id" in row or isinstance(row.get("warnings"), list) for row in rows):
        return "3.x"
    return "2.x"


def parse(text: str) -> Diag:
    """The diagnostic in ``text`` (dcgmi's stdout); raises DiagParseError when there is none."""
    doc = _load(text or "")
    if not isinstance(doc, dict):
        raise DiagParseError("diagnostic JSON is not an object")
    key = next((k for k in ROOT_KEYS if isinstance(doc.get(k), dict)), None)
    root = doc[key] if key else doc
    if key is None and "tests" not in doc:
        raise DiagParseError("JSON without a %s section" % " or ".join(repr(k) for k in ROOT_KEYS))
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    categories = root.get("test_categories")
    if not isinstance(categories, list):
        categories = [{"category": "", "tests": _list(root.get("tests"))}]     # tests without categories
    results: List[DiagResult] = []
    for cat in categories:
        if isinstance(cat, dict):
            for test in _list(cat.get("tests")):
                if isinstance(test, dict):
                    results.extend(_results(str(cat.get("category", "")), test))
    version = metadata.get("version") or doc.get("version") or root.get("version")
    driver = metadata.get("Driver Version Detected") or doc.get("Driver Version Detected")
    error = root.get("runtime_error")
    return Diag(_shape(key, doc, categories), str(version) if version else None, str(driver) if driver else None,
                str(error) if error else None, results)
