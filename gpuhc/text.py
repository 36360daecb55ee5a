"""Text gpuhc does not control (kernel log, command output, store records, config), on its way in and
on its way out.

In: ``LINE_MAX``, the one limit on a line gpuhc parses; ``cut`` keeps a line's first LINE_MAX
characters (a kernel-log line is about 200; the rest of a longer one is ignored), so the work of a
parser is bounded by what it is given, whatever one line holds.

Out: ``clean``, the one sanitiser of everything gpuhc hands to something that shows or stores text
as lines: drain reasons and node comments (Slurm, ``sinfo -R``), syslog, tables, Prometheus label
values. Control characters (C0 with tab, CR and LF; DEL; C1), Unicode line and paragraph
separators, characters that reorder text on display (bidi controls) and lone surrogates become a
space (U+FFFD for a surrogate); the result is cut to ``limit`` characters (OUT_MAX unless told),
``...`` marking the cut.
Linear in its input (``str.translate``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

LINE_MAX = 4096         # characters of one parsed line (kernel log, command output) that are read
OUT_MAX = 1024          # characters of one line or table cell gpuhc writes (a drain reason: policy.REASON_MAX)

_SPACE = " "
_TABLE: Dict[int, str] = {c: _SPACE for c in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0))}
_TABLE.update({c: _SPACE for c in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A, 0x202B, 0x202C, 0x202D,
                                   0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF)})
_TABLE.update({c: "\ufffd" for c in range(0xD800, 0xE000)})


def cut(line: str, limit: int = LINE_MAX) -> str:
    """The first ``limit`` characters of ``line``."""
    return line if len(line) <= limit else line[:limit]


def clean(text: Any, limit: Optional[int] = OUT_MAX) -> str:
    """``text`` (str() of anything else) as one line of plain characters, at most ``limit`` long."""
    text = text if isinstance(text, str) else str(text)
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."[:limit]
    return text.translate(_TABLE)
