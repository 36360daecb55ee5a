"""Helpers shared by the workloads: lazy torch import, device and dtype names, timers.

Nothing here imports torch at module import time.
"""

import contextlib
import dataclasses
import statistics
import sys
import time
import warnings

# name -> (torch dtype attribute, unit roundoff of the stored values)
DTYPES = {
    "bf16": ("bfloat16", 2.0 ** -8),
    "fp16": ("float16", 2.0 ** -11),
    "tf32": ("float32", 2.0 ** -24),     # fp32 storage; the inputs are rounded to tf32 inside the kernel
    "fp32": ("float32", 2.0 ** -24),
}
ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}

GIB = 1 << 30
MIB = 1 << 20


def torch():
    """Import torch (the workloads' only way to get it). A missing NumPy is not our concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*NumPy.*")
        import torch as _torch
    return _torch


def dtype_name(dtype):
    name = ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise ValueError("unknown dtype %r (expected one of %s)" % (dtype, ", ".join(DTYPES)))
    return name


def torch_dtype(name):
    return getattr(torch(), DTYPES[dtype_name(name)][0])


def element_size(name):
    return {"bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4}[dtype_name(name)]


def is_cuda(device):
    return str(device).startswith("cuda")


def to_device(label):
    """A device label ("cuda", "cuda:3", "cpu", "cpu:1") -> torch.device. Any cpu:N is the CPU:
    the index only names a distinct "device" for tests that need several (it maps to the same CPU)."""
    t = torch()
    label = str(label)
    if label.startswith("cpu"):
        return t.device("cpu")
    if label.startswith("cuda"):
        if not t.cuda.is_available():
            raise RuntimeError("device %s: CUDA is not available (torch %s)" % (label, t.__version__))
        d = t.device(label)
        return t.device("cuda", d.index if d.index is not None else t.cuda.current_device())
    raise ValueError("unknown device %r (expected cuda, cuda:N or cpu)" % label)


def device_name(dev):
    t = torch()
    if dev.type == "cuda":
        return t.cuda.get_device_name(dev)
    return "cpu"


def sync(dev):
    if dev.type == "cuda":
        torch().cuda.synchronize(dev)


@contextlib.contextmanager
def on_device(dev):
    """Make dev the current CUDA device (so the current stream is its stream); no-op on CPU."""
    if dev.type == "cuda":
        with torch().cuda.device(dev):
            yield
    else:
        yield


@contextlib.contextmanager
def matmul_precision(dtype, dev, reduced_precision_reduction=None):
    """fp32 -> true fp32 ("highest"); tf32 -> TF32 on CUDA (fp32 on CPU, which has no TF32).
    reduced_precision_reduction: None leaves torch's defaults for bf16/fp16 split-K reductions;
    False forces them to fp32 (the stress test's error bound assumes fp32 accumulation throughout).
    Everything is restored on exit."""
    t = torch()
    old_prec = t.get_float32_matmul_precision()
    cm = t.backends.cuda.matmul
    old_red = None
    if reduced_precision_reduction is not None:
        old_red = (cm.allow_fp16_reduced_precision_reduction, cm.allow_bf16_reduced_precision_reduction)
    try:
        use_tf32 = dtype_name(dtype) == "tf32" and dev.type == "cuda"
        t.set_float32_matmul_precision("high" if use_tf32 else "highest")
        if reduced_precision_reduction is not None:
            cm.allow_fp16_reduced_precision_reduction = bool(reduced_precision_reduction)
            cm.allow_bf16_reduced_precision_reduction = bool(reduced_precision_reduction)
        yield
    finally:
        t.set_float32_matmul_precision(old_prec)
        if old_red is not None:
            cm.allow_fp16_reduced_precision_reduction = old_red[0]
            cm.allow_bf16_reduced_precision_reduction = old_red[1]


class Timer:
    """Times one region: CUDA events on a CUDA device (GPU time of the work queued between start
    and stop on the current stream), time.perf_counter on the CPU. elapsed_s() waits for the end."""

    def __init__(self, dev):
        self.dev = dev
        self.cuda = dev.type == "cuda"
        if self.cuda:
            t = torch()
            with on_device(dev):
                self._a = t.cuda.Event(enable_timing=True)
                self._b = t.cuda.Event(enable_timing=True)

    def start(self):
        if self.cuda:
            with on_device(self.dev):
                self._a.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            with on_device(self.dev):
                self._b.record()
        else:
            self._t1 = time.perf_counter()

    def elapsed_s(self):
        if self.cuda:
            self._b.synchronize()
            return self._a.elapsed_time(self._b) / 1e3
        return self._t1 - self._t0


def timer_kind(dev):
    return "cuda-events" if dev.type == "cuda" else "perf_counter"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def say(progress, line):
    if progress is not None:
        progress(line)


def stderr_progress(line):
    """A ready-made progress callback: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


class Result:
    """Mixin for the result dataclasses: as_dict() for JSON and the store."""

    def as_dict(self):
        return dataclasses.asdict(self)  # type: ignore[call-overload]
