"""Host access: files under a root (sysfs, /proc), external commands with timeouts,
the kernel log, boot id, cloud instance type.

``Host`` holds the logic written once on top of four primitives (read_text,
listdir, run, kernel_log_lines); ``LocalHost`` implements the primitives on
the real machine under a root directory (so tests can redirect it), and the
simulation implements them from a scenario file (backends/sim.py).
"""
from __future__ import annotations

import errno
import os
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence

NVIDIA_VENDOR = "0x10de"
# PCI class codes of NVIDIA GPUs: VGA (0x0300), 3D controller (0x0302).
GPU_CLASSES = ("0x0300", "0x0302")
# NVSwitch (bridge class 0x0680) is not a GPU.


@dataclass
class CommandResult:
    rc: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


class Host:
    """Host interface; subclasses implement the four primitives."""

    kind = "base"

    def read_text(self, path: str) -> Optional[str]:
        raise NotImplementedError

    def listdir(self, path: str) -> List[str]:
        raise NotImplementedError

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        raise NotImplementedError

    def kernel_log_lines(self) -> List[str]:
        raise NotImplementedError

    def boot_id(self) -> Optional[str]:
        text = self.read_text("/proc/sys/kernel/random/boot_id")
        return text.strip() if text else None

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
        try:
            with open(self._path(path), "r", errors="replace") as fh:
                return fh.read()
        except OSError:
            return None

    def listdir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except OSError:
            return []

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        try:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
        except FileNotFoundError:
            return CommandResult(127, "", "%s: command not found" % argv[0])
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return CommandResult(124, out, "%s: timed out after %gs" % (argv[0], timeout), True)
        except OSError as exc:
            return CommandResult(126, "", "%s: %s" % (argv[0], exc))
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def kernel_log_lines(self) -> List[str]:
        source = self.kernel_log_source
        if source not in ("auto", "kmsg", "dmesg", "journal"):
            text = self.read_text(source)
            if text is None:
                raise OSError(errno.ENOENT, "kernel log file not readable: %s" % source)
            return text.splitlines()
        if source in ("auto", "kmsg"):
            lines = _read_kmsg(self._path("/dev/kmsg"))
            if lines is not None or source == "kmsg":
                return lines or []
        if source in ("auto", "dmesg"):
            res = self.run(["dmesg"], timeout=5)
            if res.ok or source == "dmesg":
                return res.stdout.splitlines()
        res = self.run(["journalctl", "-k", "-b", "--no-pager", "-q", "-o", "short-monotonic"], timeout=10)
        if res.ok:
            return res.stdout.splitlines()
        raise OSError(errno.EIO, "no kernel log source could be read (kmsg, dmesg, journalctl)")

    def instance_type(self, timeout: float) -> Optional[str]:
        return _imds_instance_type(timeout)


def _read_kmsg(path: str) -> Optional[List[str]]:
    """All records in /dev/kmsg without blocking; None when it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    lines = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:   # record overwritten while reading: continue
                    continue
                break
            if not rec:
                break
            lines.append(rec.decode("utf-8", "replace").rstrip("\n"))
    finally:
        os.close(fd)
    return lines


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
