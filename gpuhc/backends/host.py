"""Host access: files under a root (sysfs, /proc), external commands with timeouts,
the kernel log, boot id, cloud instance type.

``Host`` holds the logic written once on top of four primitives (read_text,
listdir, run, kernel_log_since); ``LocalHost`` implements the primitives on
the real machine under a root directory (so tests can redirect it), and the
simulation implements them from a scenario file (backends/sim.py).
"""
from __future__ import annotations

import abc
import errno
import os
from typing import Any, Dict, List, Optional, Sequence

from .bounded_io import OUTPUT_MAX, CommandResult, read_regular, run_command
from .kernel_log import LOG_READ_MAX, MONO, LogChunk, _read_file_since, _read_kmsg_since, since_line

# re-exported: callers import these from the host backend
__all__ = ["Host", "LocalHost", "CommandResult", "LogChunk", "OUTPUT_MAX", "LOG_READ_MAX", "READ_MAX",
           "NVIDIA_VENDOR", "GPU_CLASSES", "read_regular", "run_command", "since_line"]

NVIDIA_VENDOR = "0x10de"
# PCI class codes of NVIDIA GPUs: VGA (0x0300), 3D controller (0x0302).
GPU_CLASSES = ("0x0300", "0x0302")
# NVSwitch (bridge class 0x0680) is not a GPU.


class Host(abc.ABC):
    """The host interface the checks use (files, directories, commands, the kernel log), rooted so
    tests can redirect it; subclasses (LocalHost, sim.SimHost) implement the four primitives."""

    kind = "base"

    @abc.abstractmethod
    def read_text(self, path: str) -> Optional[str]:
        """The file's text, or None when it does not exist or cannot be read."""

    @abc.abstractmethod
    def listdir(self, path: str) -> List[str]:
        """The names in a directory ([] when it does not exist)."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """A command (argument list, never a shell) that is killed with its group at ``timeout``."""

    @abc.abstractmethod
    def kernel_log_since(self, cursor: Optional[Dict[str, Any]]) -> LogChunk:
        """The kernel log of this boot after ``cursor`` (None: from the start); a log file source
        is read on from its cursor whatever the boot."""

    def boot_id(self) -> Optional[str]:
        text = self.read_text("/proc/sys/kernel/random/boot_id")
        return text.strip() if text else None

    def boot_time(self) -> Optional[float]:
        """When this boot started, in epoch seconds (``btime`` of /proc/stat), or None."""
        for line in (self.read_text("/proc/stat") or "").splitlines():
            if line.startswith("btime "):
                value = line.split()[1:2]
                return float(value[0]) if value and value[0].isdigit() else None
        return None

    def instance_type(self, timeout: float) -> Optional[str]:
        return None

    # -- derived, written once ---------------------------------------------------------------
    def pci_nvidia_gpus(self) -> List[str]:
        """PCI bus ids of the NVIDIA GPUs the kernel sees (sysfs), sorted."""
        found = []
        base = "/sys/bus/pci/devices"
        for dev in self.listdir(base):
            vendor = (self.read_text("%s/%s/vendor" % (base, dev)) or "").strip().lower()
            if vendor != NVIDIA_VENDOR:
                continue
            cls = (self.read_text("%s/%s/class" % (base, dev)) or "").strip().lower()
            if cls[:6] in GPU_CLASSES:
                found.append(dev.lower())
        return sorted(found)


class LocalHost(Host):
    kind = "local"

    def __init__(self, root: str = "/", kernel_log: str = "auto") -> None:
        self.root = root
        self.kernel_log_source = kernel_log

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read_text(self, path: str) -> Optional[str]:
        """A regular file's text (/proc and sysfs files are regular), None when it cannot be read,
        is something else (a FIFO, a device: never opened to block or read for ever) or holds more
        than READ_MAX bytes."""
        data = read_regular(self._path(path), READ_MAX)
        return data.decode("utf-8", "replace") if data is not None and len(data) <= READ_MAX else None

    def listdir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except OSError:
            return []

    REAP_WAIT = 2.0     # after a kill: a process stuck in the kernel (D state) cannot die; do not wait on it

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """The command's exit status and output: run_command's."""
        return run_command(argv, timeout, reap_wait=self.REAP_WAIT)

    def kernel_log_since(self, cursor: Optional[Dict[str, Any]]) -> LogChunk:
        source = self.kernel_log_source
        if source not in ("auto", "kmsg", "dmesg", "journal"):
            try:
                return _read_file_since(source, cursor)
            except OSError as exc:
                raise OSError(exc.errno, "%s (config kernel_log)" % (exc.strerror or exc), source) from None
        if source in ("auto", "kmsg"):
            chunk = _read_kmsg_since(self._path("/dev/kmsg"), cursor)
            if chunk is not None:
                if chunk.lost and source == "auto":
                    chunk = self._fill_gap_from_journal(chunk, cursor)
                return chunk
            if source == "kmsg":
                raise OSError(errno.EACCES, "/dev/kmsg cannot be read")
        if source in ("auto", "journal"):
            chunk = self._journal_since(cursor)
            if chunk is not None:
                return chunk
            if source == "journal":
                raise OSError(errno.EIO, "journalctl -k could not be read")
        res = self.run(["dmesg"], timeout=5)
        if not res.ok:
            raise OSError(errno.EIO, "no kernel log source could be read (kmsg, journalctl, dmesg)")
        return since_line(res.stdout, cursor, "dmesg")

    def _journal_since(self, cursor: Optional[Dict[str, Any]]) -> Optional[LogChunk]:
        argv = ["journalctl", "-k", "-b", "--no-pager", "-q", "-o", "short-monotonic", "--show-cursor"]
        if cursor and cursor.get("source") == "journal":
            argv.append("--after-cursor=%s" % cursor["cursor"])
        res = self.run(argv, timeout=10)
        if not res.ok or res.truncated:     # cut short, it lacks the cursor its last line gives
            return None
        text, _, tail = res.stdout.rpartition("-- cursor: ")
        if not _:
            text, tail = res.stdout, (cursor or {}).get("cursor", "")
        first = (cursor or {}).get("line", 0) + 1 if cursor and cursor.get("source") == "journal" else 1
        return LogChunk(text, {"source": "journal", "cursor": tail.strip(), "line": first - 1 + text.count("\n")},
                        first_line=first)

    def _fill_gap_from_journal(self, chunk: LogChunk, cursor: Optional[Dict[str, Any]]) -> LogChunk:
        """Records overwritten in the ring buffer before we read them: take those spans from journald."""
        res = self.run(["journalctl", "-k", "-b", "--no-pager", "-q", "-o", "short-monotonic"], timeout=10)
        if not res.ok:
            return chunk
        kept = []
        for line in res.stdout.splitlines():
            m = MONO.match(line)
            if m and any(after < float(m.group(1)) < before for after, before in chunk.gaps):
                kept.append(line)
        if not kept:
            return chunk
        return LogChunk("\n".join(kept) + "\n" + chunk.text, chunk.cursor, chunk.first_line, lost=0)

    def instance_type(self, timeout: float) -> Optional[str]:
        return _imds_instance_type(timeout)



# Limits on what is read (README "Limits"): a /proc or sysfs file (sysfs gives at most a page).
READ_MAX = 1 << 20



def _imds_instance_type(timeout: float) -> Optional[str]:
    """EC2 instance type via IMDSv2; None off EC2 or on any failure within the timeout."""
    import urllib.request

    base = "http://169.254.169.254/latest"
    try:
        req = urllib.request.Request(base + "/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            token = resp.read().decode()
        req = urllib.request.Request(base + "/meta-data/instance-type",
                                     headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode().strip() or None
    except Exception:
        return None
