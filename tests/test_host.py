"""LocalHost.run: every command the checks and `gpuhc reset` run is bounded by its timeout."""
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

        def __init__(self, *args, **kwargs):
            self.killed = False

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

    monkeypatch.setattr(H.subprocess, "Popen", Unkillable)
    monkeypatch.setattr(LocalHost, "REAP_WAIT", 0.2, raising=False)
    res = call_within(lambda: LocalHost().run(["nvidia-smi", "--gpu-reset", "-i", "0000:5d:00.0"], timeout=0.3), 5)
    assert res.timed_out and res.rc == 124
