"""Simulation backends: the GPU interface and the host primitives served from a scenario."""
from __future__ import annotations

import copy
import fnmatch
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..scenario import Scenario
from .gpu import GpuBackend, GpuError
from .host import NVIDIA_VENDOR, CommandResult, Host, LogChunk, since_line


class SimGpu(GpuBackend):
    kind = "sim"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__()
        self.scenario = scenario
        self._gpus = scenario.nvml_gpus

    def _fault(self, name: str, gpu: Optional[int]) -> None:
        """Injected faults run inside the tracked call, so a hang looks like a hung NVML call."""
        for fault in self.scenario.faults:
            if fault.get("call", "*") not in ("*", name):
                continue
            if "gpu" in fault and fault["gpu"] != gpu:
                continue
            if "hang" in fault:
                time.sleep(float(fault["hang"]))
            if "error" in fault:
                raise GpuError(fault["error"], name, gpu, fault.get("detail", "simulated"))

    def _value(self, name: str, gpu: int) -> Any:
        self._fault(name, gpu)
        if gpu < 0 or gpu >= len(self._gpus):
            raise GpuError("INVALID_ARGUMENT", name, gpu, "no GPU %d" % gpu)
        value = self._gpus[gpu].get(name)
        return copy.deepcopy(value)

    def _driver_version(self) -> str:
        self._fault("driver_version", None)
        return str(self.scenario.node.get("driver_version", "570.133.20"))

    def _device_count(self) -> int:
        self._fault("device_count", None)
        return len(self._gpus)

    def __getattr__(self, attr: str) -> Any:
        # _identity, _ecc, ... : every per-GPU call reads the scenario the same way.
        if attr.startswith("_") and attr[1:] in _PER_GPU:
            name = attr[1:]
            return lambda gpu: self._value(name, gpu)
        raise AttributeError(attr)


_PER_GPU = {"identity", "ecc", "retired_pages", "remapped_rows", "pcie", "nvlink",
            "clock_event_reasons", "temperature", "power", "modes", "fabric", "processes",
            "utilization"}


class SimHost(Host):
    kind = "sim"

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.files = dict(scenario.files)
        # Every GPU of the scenario is on PCI, whether NVML lists it or not.
        for gpu in scenario.gpus:
            bus = gpu["identity"]["pci_bus_id"].lower()
            base = "/sys/bus/pci/devices/%s/" % bus
            self.files.setdefault(base + "vendor", NVIDIA_VENDOR + "\n")
            self.files.setdefault(base + "class", "0x030200\n")
        self.files.setdefault("/proc/sys/kernel/random/boot_id",
                              scenario.node.get("boot_id", "5b0e1b5e-0000-4000-8000-%012x" % 1) + "\n")

    def read_text(self, path: str) -> Optional[str]:
        return self.files.get(path)

    def listdir(self, path: str) -> List[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self.files if p.startswith(prefix)}
        return sorted(names)

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        line = " ".join(argv)
        spec = self.scenario.commands.get(line)
        if spec is None:
            for pattern, candidate in self.scenario.commands.items():
                if fnmatch.fnmatchcase(line, pattern):
                    spec = candidate
                    break
        if spec is None:
            return CommandResult(127, "", "%s: command not found (not in scenario)" % argv[0])
        hang = float(spec.get("hang", 0))
        if hang:
            time.sleep(min(hang, timeout))
            if hang >= timeout:
                return CommandResult(124, "", "%s: timed out after %gs" % (argv[0], timeout), True)
        return CommandResult(int(spec.get("rc", 0)), str(spec.get("stdout", "")), str(spec.get("stderr", "")))

    def kernel_log_since(self, cursor: Optional[Dict[str, Any]]) -> LogChunk:
        # the cursor names the scenario file: another scenario on the same node name is another log
        text = "\n".join(self.scenario.kernel_log)
        return since_line(text + "\n" if text else "", cursor, "sim:%s" % self.scenario.path)

    def instance_type(self, timeout: float) -> Optional[str]:
        return self.scenario.node.get("instance_type")



class SimDeep:
    """The deep interface served from a scenario's ``deep`` section: what each GPU would measure
    under load. A call listed in ``deep.hang`` does not return: it waits out its timeout and is a
    DeepError HANG, as TorchDeep's killed child is. A scenario without figures is UNAVAILABLE (as
    a node without torch)."""

    kind = "sim"
    ALLREDUCE_HALF = 32 << 20       # size at which the simulated bus bandwidth reaches half its peak

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.deep = scenario.deep or {}

    def _gpu(self, index: int) -> Dict[str, Any]:
        values = dict(self.deep.get("gpu") or {})
        values.update((self.deep.get("gpus") or {}).get(index) or {})
        return values

    def _enter(self, call: str, timeout_s: float) -> None:
        from .deep import HANG, UNAVAILABLE, DeepError

        if call in (self.deep.get("hang") or []):
            time.sleep(timeout_s)
            raise DeepError(HANG, call, "no result within %.0f s" % timeout_s)
        if not self.deep.get("gpu") and not self.deep.get("gpus") and not self.deep.get("allreduce"):
            raise DeepError(UNAVAILABLE, call, "scenario %s has no deep figures" % self.scenario.name)

    def stress(self, gpus: Sequence[int], duration_s: float, dtype: str, timeout_s: float, progress=None):
        self._enter("stress", timeout_s)
        out: Dict[str, Any] = {"dtype": dtype, "duration_s": duration_s, "elapsed_s": duration_s, "notes": [],
                               "gpus": {}}
        for i in gpus:
            g = self._gpu(i)
            bad = int(g.get("mismatches") or 0)
            out["gpus"][i] = {"tflops": g.get("stress_tflops", g.get("matmul_tflops")), "iterations": 1000,
                              "mismatches": bad, "max_error": 0.0, "ref_ok": bad == 0,
                              "reason": "%d products differ from the other GPUs'" % bad if bad else ""}
        out["faulty"] = [i for i in gpus if out["gpus"][i]["mismatches"]]
        out["ok"] = not out["faulty"]
        return out

    def bench(self, gpus: Sequence[int], tests: Sequence[str], dtypes: Sequence[str], timeout_s: float,
              progress=None):
        self._enter("bench", timeout_s)
        out: Dict[str, Any] = {"gpus": {}, "p2p": [], "skipped": {}}
        for i in gpus:
            g, row = self._gpu(i), out["gpus"].setdefault(i, {})
            if "matmul" in tests and g.get("matmul_tflops") is not None:
                row["matmul_tflops"] = {d: g["matmul_tflops"] for d in dtypes}
            if "hbm" in tests and g.get("hbm_gbps") is not None:
                row["hbm_gbps"] = g["hbm_gbps"]
            if "pcie" in tests and g.get("h2d_gbps") is not None:
                row["h2d_gbps"], row["d2h_gbps"] = g["h2d_gbps"], g.get("d2h_gbps", g["h2d_gbps"])
        if "p2p" in tests:
            for a in gpus:
                for b in gpus:
                    if a != b and self._gpu(a).get("p2p_gbps") is not None:
                        gbps = min(self._gpu(a)["p2p_gbps"], self._gpu(b).get("p2p_gbps", self._gpu(a)["p2p_gbps"]))
                        out["p2p"].append({"src": a, "dst": b, "gbps": gbps, "peer_access": True})
        return out

    def nccl_fault(self) -> Tuple[float, bool]:
        """(seconds this node's ranks add to each collective, whether they hang in it) in a real
        multi-node all-reduce (`gpuhc nccl`): the scenario's deep.nccl, else (0.0, False)."""
        spec = self.deep.get("nccl") or {}
        return float(spec.get("delay_s") or 0.0), bool(spec.get("hang"))

    def allreduce(self, gpus: Sequence[int], max_bytes: int, timeout_s: float, progress=None):
        self._enter("allreduce", timeout_s)
        peak = float((self.deep.get("allreduce") or {}).get("busbw_gbps") or 0.0)
        n = len(gpus)
        sizes = []
        size = 1 << 20
        while size <= max(max_bytes, 1 << 20):
            busbw = peak * size / (size + self.ALLREDUCE_HALF)
            algbw = busbw * n / (2.0 * (n - 1)) if n > 1 else busbw
            sizes.append({"size_bytes": size, "count": size // 4, "dtype": "float32", "wrong": 0,
                          "time_us": size / (algbw * 1e3) if algbw else 0.0,
                          "algbw_gbps": algbw, "busbw_gbps": busbw})
            size *= 2
        return {"ok": True, "world": n, "backend": "sim", "error": None, "sizes": sizes,
                "torch_version": None, "nccl_version": None, "env": {}}
