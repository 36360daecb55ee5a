"""The deep-diagnostics interface: what the GPUs measure under load (stress with result
comparison, benchmarks, the node's all-reduce). Answered by the torch engine (TorchDeep, on CUDA or
for real on the CPU) or by a scenario (sim.SimDeep), through the same calls and result shapes.

TorchDeep runs each workload in a child process (``python -m gpuhc.workloads.run KIND``, JSON in
and out): torch is never imported into gpuhc's own process, a CUDA call that hangs holds only the
child, and the child is killed with its process group at the call's timeout (DeepError HANG).

Result shapes (plain dicts, JSON-safe; GPU keys are NVML indexes as strings are not: ints):
  stress:    {ok, faulty: [gpu], dtype, duration_s, elapsed_s, notes: [str],
              gpus: {gpu: {tflops, iterations, mismatches, max_error, ref_ok, reason}}}
  bench:     {gpus: {gpu: {matmul_tflops: {dtype: f}, hbm_gbps, h2d_gbps, d2h_gbps}},
              p2p: [{src, dst, gbps}], skipped: {test: reason}}
  allreduce: {ok, world, backend, error, sizes: [{size_bytes, count, dtype, time_us, algbw_gbps,
              busbw_gbps, wrong}], torch_version, nccl_version, env}
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, runtime_checkable

Progress = Optional[Callable[[str], None]]
HANG, FAILED, UNAVAILABLE = "HANG", "FAILED", "UNAVAILABLE"
TESTS = ("matmul", "hbm", "pcie", "p2p")


class DeepError(Exception):
    """A deep call that could not give a result: HANG (past its timeout), FAILED (the workload
    crashed or refused), UNAVAILABLE (no torch, no CUDA)."""

    def __init__(self, code: str, call: str, detail: str = "") -> None:
        super().__init__("%s %s%s" % (call, code.lower(), ": " + detail if detail else ""))
        self.code, self.call, self.detail = code, call, detail


@runtime_checkable
class DeepInterface(Protocol):
    kind: str

    def stress(self, gpus: Sequence[int], duration_s: float, dtype: str, timeout_s: float,
               progress: Progress = None) -> Dict[str, Any]: ...

    def bench(self, gpus: Sequence[int], tests: Sequence[str], dtypes: Sequence[str], timeout_s: float,
              progress: Progress = None) -> Dict[str, Any]: ...

    def allreduce(self, gpus: Sequence[int], max_bytes: int, timeout_s: float,
                  progress: Progress = None) -> Dict[str, Any]: ...


class TorchDeep:
    """The torch engine (gpuhc.workloads) on ``device`` "cuda" (GPU i is cuda:i: CUDA enumerates
    in PCI bus order when CUDA_DEVICE_ORDER=PCI_BUS_ID, which the child sets, as NVML does) or
    "cpu" (every GPU index stands for a CPU "device": the code path runs for real, small sizes)."""

    def __init__(self, device: str = "cuda") -> None:
        self.kind = "torch-" + device
        self.device = device

    def labels(self, gpus: Sequence[int]) -> List[str]:
        if self.device == "cpu":
            return ["cpu:%d" % i for i in gpus]
        return ["cuda:%d" % i for i in gpus]

    def stress(self, gpus, duration_s, dtype, timeout_s, progress=None):
        out = self._child("stress", {"devices": self.labels(gpus), "duration_s": duration_s, "dtype": dtype},
                          timeout_s, progress)
        by_label = dict(zip(self.labels(gpus), gpus))
        return {"ok": out["ok"], "faulty": [by_label[x] for x in out["faulty"] if x in by_label],
                "dtype": out["dtype"], "duration_s": out["duration_s"], "elapsed_s": out["elapsed_s"],
                "notes": out.get("notes") or [],
                "gpus": {by_label[d["device"]]: {k: d.get(k) for k in ("tflops", "iterations", "mismatches",
                                                                        "max_error", "ref_ok", "reason")}
                         for d in out["devices"] if d["device"] in by_label}}

    def bench(self, gpus, tests, dtypes, timeout_s, progress=None):
        return _int_keys(self._child("bench", {"devices": self.labels(gpus), "gpus": list(gpus), "tests": list(tests),
                                               "dtypes": list(dtypes)}, timeout_s, progress))

    def allreduce(self, gpus, max_bytes, timeout_s, progress=None):
        return self._child("allreduce", {"world": len(gpus), "devices": self.labels(gpus), "max_bytes": int(max_bytes),
                                         "backend": "gloo" if self.device == "cpu" else "nccl",
                                         "timeout_s": max(1.0, timeout_s - 5.0)}, timeout_s, progress)

    def _child(self, kind: str, args: Dict[str, Any], timeout_s: float, progress: Progress) -> Dict[str, Any]:
        """``python -m gpuhc.workloads.run KIND`` with ``args`` on stdin: its JSON result, its stderr
        lines passed to ``progress`` as they come; killed with its group at ``timeout_s``."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "gpuhc.workloads.run", kind], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise DeepError(FAILED, kind, str(exc)) from None
        deadline = time.monotonic() + timeout_s
        import threading

        lines: List[str] = []

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                lines.append(line)
                del lines[:-20]
                if progress is not None and line:
                    progress(line)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(args).encode())
            proc.stdin.close()
        except OSError:
            pass
        result: List[bytes] = []
        stdout = proc.stdout
        collector = threading.Thread(target=lambda: result.append(stdout.read()), daemon=True)
        collector.start()
        collector.join(max(0.0, deadline - time.monotonic()))
        if collector.is_alive():
            _kill(proc)
            raise DeepError(HANG, kind, "no result within %.0f s" % timeout_s)
        try:        # its output is closed; it exits now, or is killed with its group
            rc = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = None
        reader.join(1.0)
        try:
            out = json.loads((result[0] if result else b"").decode("utf-8", "replace") or "null")
        except ValueError:
            out = None
        if not isinstance(out, dict):
            tail = next((x for x in reversed(lines) if x.strip()), "")
            code = UNAVAILABLE if "No module named 'torch'" in tail or "CUDA is not available" in tail else FAILED
            raise DeepError(code, kind, "exit %s: %s" % (rc, tail[:300]))
        if out.get("error_code"):
            raise DeepError(out["error_code"], kind, out.get("error") or "")
        return out


def _kill(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _int_keys(result: Dict[str, Any]) -> Dict[str, Any]:
    """JSON turned the GPU keys into strings: back to NVML indexes."""
    if isinstance(result.get("gpus"), dict):
        result["gpus"] = {int(k): v for k, v in result["gpus"].items()}
    return result


def open_deep(cfg: Dict[str, Any], scenario: Any = None) -> Any:
    """The deep backend of a run: a scenario's figures on a simulated node, unless ``deep.device``
    asks for the torch engine (``cpu``: the real code on the CPU, as the tests run it); else the
    torch engine on ``deep.device`` (default cuda)."""
    device = (cfg.get("deep") or {}).get("device", "auto")
    if scenario is not None and device in ("auto", "sim"):
        from .sim import SimDeep

        return SimDeep(scenario)
    return TorchDeep("cuda" if device in ("auto", "sim") else device)
