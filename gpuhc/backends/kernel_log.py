"""Reading the kernel log incrementally: /dev/kmsg by sequence number, a log file by byte offset
(rotation and copytruncate followed, compressed rotations skipped), dmesg/journal text by line
cursor. Each scan reads at most LOG_READ_MAX bytes; the next scan goes on from its cursor, so no
record is skipped; a cursor tells lost records (ring buffer overwritten) from none."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# a log file's or /dev/kmsg's bytes read by one scan (1,000,000 lines fit in one: DESIGN.md's Xid budget)
LOG_READ_MAX = 128 << 20
# "[  123.456789] ..." (dmesg, journalctl -o short-monotonic): seconds since boot
MONO = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass
class LogChunk:
    """Kernel-log text read since a cursor, the cursor to resume from, and how many records
    were lost in between (overwritten in the ring buffer before they were read)."""
    text: str
    cursor: Dict[str, Any]
    first_line: int = 1          # line number of the first line of text in the whole log
    lost: int = 0
    # spans of seconds since boot, (after, before), whose records were lost (/dev/kmsg)
    gaps: List[Tuple[float, float]] = field(default_factory=list)


def _read_kmsg_since(path: str, cursor: Optional[Dict[str, Any]]) -> Optional[LogChunk]:
    """Records of /dev/kmsg after the cursor's sequence number, without blocking; None when
    /dev/kmsg cannot be opened. Sequence numbers are exact: a gap means records were lost."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    after = cursor.get("seq", -1) if cursor and cursor.get("source") == "kmsg" else -1
    out: List[str] = []
    last = after
    last_usec = (cursor or {}).get("usec", 0) if after >= 0 else 0
    lost, gaps, total = 0, [], 0
    try:
        while total < LOG_READ_MAX:        # the ring buffer holds less; the next scan goes on from the cursor
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:   # overwritten while reading: the next read resyncs
                    continue
                break
            if not rec:
                break
            total += len(rec)
            head, _, msg = rec.decode("utf-8", "replace").partition(";")
            fields = head.split(",")
            try:
                seq, usec = int(fields[1]), int(fields[2])
            except (IndexError, ValueError):
                continue                        # not a record of /dev/kmsg's format
            if seq <= after:
                continue
            if last >= 0 and seq > last + 1:       # a jump in sequence numbers: overwritten records
                lost += seq - last - 1
                gaps.append((last_usec / 1e6, usec / 1e6))
            out.append("%s;%s" % (head, msg.split("\n", 1)[0]))
            last, last_usec = seq, usec
    finally:
        os.close(fd)
    line = (cursor or {}).get("line", 0) if after >= 0 else 0
    return LogChunk("\n".join(out) + ("\n" if out else ""),
                    {"source": "kmsg", "seq": last, "usec": last_usec, "line": line + len(out)},
                    first_line=line + 1, lost=lost, gaps=gaps)


_TAIL = 64      # bytes before a file cursor that the cursor remembers (a checksum of them)


def _read_file_since(path: str, cursor: Optional[Dict[str, Any]]) -> LogChunk:
    """A saved or syslog file, from the cursor's byte offset; a rotated (new inode), truncated, or
    truncated and grown again (the bytes before the offset changed) file is read from its start.
    After a rotation, the lines the old file got after the cursor (it lives on as kern.log.1 or
    kern.log-DATE) are read first, so nothing logged between the last scan and the rotation is lost.
    Only a regular file is read (OSError otherwise), at most LOG_READ_MAX bytes a scan: the next
    scan goes on from there."""
    with _open_regular(path) as fh:
        st = os.fstat(fh.fileno())
        offset, line = _file_resume(fh, st, cursor)
        fh.seek(offset)
        data = fh.read(LOG_READ_MAX)
        end = data.rfind(b"\n") + 1        # a partial last line waits for the next scan...
        if not end and len(data) == LOG_READ_MAX:
            end = len(data)                 # ...unless it fills a whole scan: read on past it
        fh.seek(max(0, offset + end - _TAIL))
        tail = fh.read(min(_TAIL, offset + end))
    text = data[:end].decode("utf-8", "replace")
    first = line + 1
    rest = _rotated_rest(path, cursor, st.st_ino) if offset == 0 else ""   # rotated, or truncated
    if rest:
        first = cursor.get("line", 0) + 1 if cursor else 1
    return LogChunk(rest + text, {"source": "file", "inode": st.st_ino, "offset": offset + end,
                                  "tail": zlib.crc32(tail), "line": line + text.count("\n")}, first_line=first)


def _open_regular(path: str) -> Any:
    """A regular file opened for reading in binary; OSError for anything else (a FIFO is not
    waited on, a device is not read for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_PACKED = (".gz", ".xz", ".bz2", ".zst")


def _rotated_rest(path: str, cursor: Optional[Dict[str, Any]], current: int) -> str:
    """What the log had after the cursor when ``path`` no longer holds it: the file the cursor was
    in, renamed by logrotate (path.1, path-DATE: same inode), or copied before a truncation
    (copytruncate: the copy's bytes before the cursor's offset match the cursor's tail). Only
    regular, uncompressed files beside ``path``; '' when none is found (with compress and no
    delaycompress those lines are gone)."""
    if not cursor or cursor.get("source") != "file" or not cursor.get("offset"):
        return ""
    offset = cursor["offset"]
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return ""
    candidates = []
    for name in names:
        if name == base or not name.startswith(base) or name.endswith(_PACKED):
            continue
        full = os.path.join(folder, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_ino == current or st.st_size < offset:
            continue            # a FIFO or device would block the open; a smaller file cannot hold it
        if st.st_ino == cursor.get("inode") or "tail" in cursor:
            candidates.append((st.st_ino != cursor.get("inode"), full, st.st_ino))
    for _, full, inode in sorted(candidates):          # the renamed file first, then copies
        try:
            with _open_regular(full) as fh:
                at, _ = _file_resume(fh, os.fstat(fh.fileno()), dict(cursor, inode=inode))
                if at != offset:
                    continue    # not the file the cursor was in
                data = fh.read(LOG_READ_MAX)    # past that, what it got before the rotation is lost
        except OSError:
            continue
        text = data.decode("utf-8", "replace")
        return text if not text or text.endswith("\n") else text + "\n"   # it will not grow again
    return ""


def _file_resume(fh: Any, st: os.stat_result, cursor: Optional[Dict[str, Any]]) -> Tuple[int, int]:
    """(byte offset, line number) to resume a file at: the cursor's while it is the same file
    and has not been cut short, else the start."""
    if not cursor or cursor.get("source") != "file" or cursor.get("inode") != st.st_ino:
        return 0, 0
    offset = cursor.get("offset", 0)
    if offset > st.st_size:
        return 0, 0
    if "tail" in cursor:
        size = min(_TAIL, offset)
        fh.seek(offset - size)
        if zlib.crc32(fh.read(size)) != cursor["tail"]:
            return 0, 0
    return offset, cursor.get("line", 0)


def since_line(text: str, cursor: Optional[Dict[str, Any]], source: str) -> LogChunk:
    """Sources without a cursor of their own (dmesg output, a simulated log): resume after the
    last line already seen, found by its checksum (a full ring buffer drops old lines, so the
    line count alone would skip new ones); when that line is gone, the lines with a later
    ``[sec.usec]`` timestamp are new (all lines when the log has no timestamps)."""
    lines = text.split("\n")        # newlines only, as the Xid scan counts lines (not \r, \x1c, U+2028...)
    if lines and not lines[-1]:
        lines.pop()
    prev = cursor if cursor and cursor.get("source") == source else {}
    start = _resume_index(lines, prev)
    new = lines[start:]
    return LogChunk("\n".join(new) + ("\n" if new else ""),
                    {"source": source, "line": len(lines), "last": _digest(lines[-1]) if lines else None,
                     "last_time": _last_time(lines) if lines else prev.get("last_time")},
                    first_line=start + 1)


def _digest(line: str) -> str:
    return hashlib.blake2b(line.encode("utf-8", "replace"), digest_size=8).hexdigest()


def _last_time(lines: List[str]) -> Optional[float]:
    for line in reversed(lines):
        m = MONO.match(line)
        if m:
            return float(m.group(1))
    return None


def _resume_index(lines: List[str], prev: Dict[str, Any]) -> int:
    """Index of the first line not seen before in ``lines``."""
    seen = prev.get("line", 0)
    if not seen:
        return 0
    if "last" not in prev:                  # a cursor written by an older gpuhc: by count
        return seen if seen <= len(lines) else 0
    digest = prev["last"]
    for i in range(min(seen, len(lines)) - 1, -1, -1):     # old lines only move towards the start
        if _digest(lines[i]) == digest:
            return i + 1
    after = prev.get("last_time")
    if after is None:
        return 0
    dated = False
    for i, line in enumerate(lines):
        m = MONO.match(line)
        if m:
            dated = True
            if float(m.group(1)) > after:
                return i
    return len(lines) if dated else 0       # no timestamps at all: nothing places them, all are new
