"""LocalHost.run: every command the checks and `gpuhc reset` run is bounded by its timeout."""
import os
import subprocess
import time

from gpuhc.backends.host import LocalHost


def test_a_command_is_cut_at_its_timeout_even_when_its_child_holds_the_output_open():
    """A killed command whose child keeps stdout open (or that cannot die, stuck in the kernel)
    must not hold the caller: the result comes back after the timeout plus a short reap wait."""
    started = time.monotonic()
    res = LocalHost().run(["sh", "-c", "echo partial; sleep 30 & sleep 30"], timeout=0.5)
    took = time.monotonic() - started
    assert res.timed_out and res.rc == 124 and "timed out after 0.5s" in res.stderr
    assert took < 0.5 + LocalHost.REAP_WAIT + 1.0, took


def test_exit_status_output_and_missing_command():
    res = LocalHost().run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=5)
    assert (res.rc, res.stdout, res.stderr, res.ok) == (3, "out\n", "err\n", False)
    assert LocalHost().run(["gpuhc-no-such-command"], timeout=5).rc == 127


def test_a_command_that_cannot_die_does_not_hold_the_caller(monkeypatch):
    """nvidia-smi stuck in the kernel (D state) ignores even SIGKILL: waiting for it after the kill
    would hang `gpuhc reset` or a check past every timeout."""
    import subprocess

    from gpuhc.backends import host as H
    from gpuhc.bounded import call_within

    class Unkillable:
        returncode = None
        pid = (1 << 22) + 1         # past PID_MAX_LIMIT: no process group of that id can exist
        writers = []

        def __init__(self, *args, **kwargs):
            self.killed = False
            (r1, w1), (r2, w2) = os.pipe(), os.pipe()
            self.writers += [w1, w2]      # held open: its output never ends
            self.stdout, self.stderr = os.fdopen(r1, "rb"), os.fdopen(r2, "rb")

        def communicate(self, input=None, timeout=None):
            time.sleep(min(timeout if timeout is not None else 60, 60))
            raise subprocess.TimeoutExpired("nvidia-smi", timeout)

        def kill(self):
            self.killed = True

        def wait(self, timeout=None):
            time.sleep(min(timeout if timeout is not None else 60, 60))
            raise subprocess.TimeoutExpired("nvidia-smi", timeout)

        def poll(self):
            return None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(subprocess, "Popen", Unkillable)
    monkeypatch.setattr(LocalHost, "REAP_WAIT", 0.2, raising=False)
    try:
        res = call_within(lambda: LocalHost().run(["nvidia-smi", "--gpu-reset", "-i", "0000:5d:00.0"], timeout=0.3), 5)
    finally:
        for fd in Unkillable.writers:
            os.close(fd)
    assert res.timed_out and res.rc == 124


def _live_with_argument(arg):
    """Live processes (not zombies) with ``arg`` among their arguments, from /proc."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
            with open("/proc/%s/stat" % pid) as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if arg.encode() in argv and state != "Z":
            out.append(int(pid))
    return out


def test_a_command_given_up_at_its_timeout_is_killed_with_its_whole_process_group():
    """A journalctl, dmesg or dcgmi given up at its timeout was never killed with what it started:
    one orphan per run. The command runs in a process group of its own, killed whole."""
    import random

    mark = "%d.%06d" % (60, random.randrange(10 ** 6))       # sleep's argument: names our processes
    res = LocalHost().run(["sh", "-c", "sleep %s & sleep %s & wait" % (mark, mark)], timeout=0.5)
    assert res.timed_out and res.rc == 124
    deadline = time.monotonic() + 5
    while _live_with_argument(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_with_argument(mark) == []


def test_a_command_output_is_kept_to_its_limit_and_the_command_is_not_blocked(monkeypatch):
    """A command that writes without end is read on (never blocked on a full pipe) and kept to
    OUTPUT_MAX bytes per stream, not to all the memory it can fill before its timeout."""
    from gpuhc.backends import bounded_io

    monkeypatch.setattr(bounded_io, "OUTPUT_MAX", 1000)
    res = LocalHost().run(["sh", "-c", "head -c 5000000 /dev/zero; echo done >&2"], timeout=20)
    assert res.rc == 0 and not res.timed_out
    assert len(res.stdout) == 1000 and res.truncated and res.stderr == "done\n"
    res = LocalHost().run(["sh", "-c", "head -c 1000 /dev/zero"], timeout=20)
    assert len(res.stdout) == 1000 and not res.truncated


def test_a_nul_byte_in_an_argument_is_a_failed_command_not_a_crash():
    res = LocalHost().run(["echo", "a\0b"], timeout=5)
    assert res.rc == 126 and not res.ok
