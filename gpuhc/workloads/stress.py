"""GPU stress with result comparison (issue 13, gpu_stress).

Every device multiplies the SAME seeded n x n matrices over and over for `duration_s`, writing
each product into the next of many result slots that together fill most of its free memory
(gpu-burn's layout), and every product is compared with the expected one. Anchors: gpu-burn
(compare results, count errors, the GPU with errors is faulty), Imbue's stress test (copy results
across GPUs and compare), huggingface gpu-fryer (throughput of each GPU over the run).

The comparison itself (how a wrong result is found and named, and which comparison is honest for
each dtype) is in :mod:`gpuhc.workloads.stress_compare`; this module runs the load.

On the CPU, sizes are small (n=256, 4 slots) and "devices" may be named cpu:0, cpu:1, ...: they
all map to the CPU and run one after the other (the test of the comparison logic, not a load).
On CUDA all devices run at once from one thread: each keeps up to `depth` iterations queued, and
completion is polled with CUDA events, so a slow GPU completes fewer iterations without holding
the others back; TFLOP/s per device = 2 n^3 * iterations / (its time from the start to its last
completed product), timed with CUDA events.
"""

import dataclasses
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _common as common
from .stress_compare import U_ACC, U_IN, _bitwise_equal, _choose_golden, _count, _int_view, tolerance

# re-exported: callers use stress.tolerance (and the constants of its bound)
__all__ = ["DeviceStress", "StressResult", "run", "tolerance", "U_ACC", "U_IN", "MAX_SLOTS", "RESERVE"]

MAX_SLOTS = 4096
RESERVE = 1 << 30


@dataclasses.dataclass
class DeviceStress(common.Result):
    device: str             # the label given (cuda:0, cpu:1, ...)
    name: str               # GPU model, or "cpu"
    iterations: int         # products completed during the run (setup excluded)
    elapsed_s: float        # from the start of the run to its last completed product
    tflops: float           # 2 n^3 * iterations / elapsed_s / 1e12
    checked: int            # products compared with the golden result (all of them, at the end)
    mismatches: int         # products with at least one element differing from the golden result
    first_mismatch_iteration: Optional[int]
    first_mismatch_elements: int      # wrong elements in the first mismatching product
    first_mismatch_max_abs: float     # its largest |value - golden|
    max_error: float        # largest |c - ref| / S vs the CPU float64 reference at setup (unit: see tol)
    max_abs_error: float    # largest |c - ref| at setup
    ref_ok: bool            # max_error <= tolerance
    agrees: bool            # its setup product is the chosen golden (exact mode) / passes the reference
    slots: int              # result slots (slots * n*n*element size bytes of its memory cycled)
    mem_bytes: int          # bytes allocated for the load (inputs, golden, slots)
    faulty: bool
    reason: str             # why it is faulty ("" if not)


@dataclasses.dataclass
class StressResult(common.Result):
    ok: bool
    faulty: List[str]       # labels of the faulty devices, in order
    dtype: str
    n: int
    duration_s: float       # asked
    elapsed_s: float        # wall time of the run loop
    exact: bool             # bitwise comparison across devices (see module doc)
    tolerance: float        # tol of the reference check
    seed: int
    devices: List[DeviceStress]
    notes: List[str]


def _labels(devices):
    t = common.torch()
    if isinstance(devices, str):
        if devices == "cuda":
            if not t.cuda.is_available():
                raise RuntimeError("device cuda: CUDA is not available (torch %s)" % t.__version__)
            return ["cuda:%d" % i for i in range(t.cuda.device_count())]
        devices = [devices]
    labels = [str(d) for d in devices]
    if not labels:
        raise ValueError("no devices to stress")
    seen: Dict[str, int] = {}
    out = []
    for lab in labels:        # a repeated label gets #k so results stay distinct
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        out.append(lab if k == 0 else "%s#%d" % (lab, k))
    return out


class _Dev:
    def __init__(self, index, label, n, dtype_name):
        t = common.torch()
        self.index = index
        self.label = label
        self.dev = common.to_device(label)
        self.cuda = self.dev.type == "cuda"
        self.name = common.device_name(self.dev)
        self.sms = t.cuda.get_device_properties(self.dev).multi_processor_count if self.cuda else 0
        self.dtype = common.torch_dtype(dtype_name)
        self.n = n
        self.slot_bytes = n * n * t.empty(0, dtype=self.dtype).element_size()
        self.iterations = 0
        self.checked = 0
        self.mismatches = 0
        self.first_mm = None
        self.first_mm_elems = 0
        self.first_mm_abs = 0.0
        self.last_done: Any = None   # CUDA event of the last completed iteration, or its perf_counter time
        self.pending: Deque[Tuple[Any, int, int, int, Optional[int]]] = deque()
        self.reason = ""
        self.agrees = True
        self.max_error = 0.0
        self.max_abs_error = 0.0
        self.written: Dict[int, int] = {}   # slot -> iteration whose product it holds, not yet checked
        # tensors and events, set up by run()
        self.a: Any = None
        self.b: Any = None
        self.golden: Any = None
        self.slots: Any = None
        self.neb: Any = None
        self.flags: Any = None
        self.t0_event: Any = None
        self.t0 = 0.0
        self.nslots = 0
        self.mem_bytes = 0
        self.dead = False            # failed or hung during the run: no longer used

    def elapsed_s(self):
        if self.last_done is None:
            return 0.0
        if self.cuda:
            return self.t0_event.elapsed_time(self.last_done) / 1e3
        return self.last_done - self.t0

    def plan_slots(self, mem_fraction, cpu_slots):
        """Slots filling mem_fraction of the memory free now (inputs and golden copy already
        allocated), less the comparison's bool buffer (n*n bytes) and a reserve for cuBLAS's
        workspace and the temporaries of the mismatch path (RESERVE)."""
        if not self.cuda:
            return cpu_slots
        t = common.torch()
        free, _total = t.cuda.mem_get_info(self.dev)
        free += t.cuda.memory_reserved(self.dev) - t.cuda.memory_allocated(self.dev)   # torch's cache
        budget = free * mem_fraction - RESERVE - self.n * self.n
        return max(3, min(MAX_SLOTS, int(budget // self.slot_bytes)))


def run(devices="cuda", duration_s=60.0, dtype="bf16", n=None, mem_fraction=0.9, slots=None, seed=1234,
        exact=None, ref_rows=None, ref_samples=256, depth=None, fault: Optional[Callable] = None,
        progress: Optional[Callable[[str], None]] = None, progress_every_s=10.0, hang_s=60.0) -> StressResult:
    """Stress `devices` ("cuda" for every visible GPU, "cpu", or a list of labels such as
    ["cuda:0", "cuda:1"] or ["cpu:0", "cpu:1"]) for duration_s seconds with dtype matmuls.

    n: matrix size (default 16384 on CUDA: 2 n^3 is large beside the comparison's memory traffic;
    256 on the CPU). slots: result slots per device (default on CUDA: as many as fit in
    mem_fraction of the free memory, less a reserve for cuBLAS and temporaries; 4 on the CPU).
    exact: bitwise comparison across devices (None: when all devices are the same model).
    depth: iterations queued per device (default 2 on CUDA, 1 on the CPU, where work is synchronous;
    a test may queue more on the CPU to exercise the deferred comparison).
    fault(index, iteration, c): called on each product right after it is computed (iteration 0
    is the setup product); a test injects a miscompute by changing c in place, or an error by
    raising.
    A device that raises during the run (a CUDA error: Xid, fallen off the bus) is named faulty
    with the error and the others go on; one whose queued work has not completed hang_s after the
    run's end is named hung and the run returns without it. A hang during the setup (before the
    run) is not bounded here: the caller runs stress in a process with a time limit.
    """
    t = common.torch()
    dtype = common.dtype_name(dtype)
    labels = _labels(devices)
    cuda_any = any(common.is_cuda(x) for x in labels)
    if cuda_any and not all(common.is_cuda(x) for x in labels):
        raise ValueError("stress: mix of CUDA and CPU devices: %s" % ", ".join(labels))
    n = int(n or (16384 if cuda_any else 256))
    tol = tolerance(dtype, n)
    depth = max(1, int(depth if depth is not None else (2 if cuda_any else 1)))
    notes = []
    devs = [_Dev(i, lab, n, dtype) for i, lab in enumerate(labels)]
    if exact is None:
        exact = len({(d.name, d.sms) for d in devs}) == 1
        if not exact:
            notes.append("devices differ (%s): tolerance mode, each device held to its own first product"
                         % ", ".join(sorted({"%s/%d SMs" % (d.name, d.sms) for d in devs})))

    # Inputs: generated once on the CPU from the seed, rounded to dtype, copied to every device.
    g = t.Generator().manual_seed(seed)
    a_host = (t.rand(n, n, generator=g) * 2 - 1).to(devs[0].dtype)
    b_host = (t.rand(n, n, generator=g) * 2 - 1).to(devs[0].dtype)
    common.say(progress, "stress: %d device(s), %s, n=%d, %.0f s" % (len(devs), dtype, n, duration_s))

    with common.matmul_precision(dtype, devs[0].dev, reduced_precision_reduction=False):
        # setup: inputs, one product each
        c0 = []
        for d in devs:
            with common.on_device(d.dev):
                d.a = a_host.to(d.dev, copy=True)
                d.b = b_host.to(d.dev, copy=True)
                c = t.mm(d.a, d.b)
                if fault is not None:
                    fault(d.index, 0, c)
                c0.append(c)
        for d in devs:
            common.sync(d.dev)

        golden_index = _choose_golden(t, devs, c0, a_host, b_host, tol, exact, ref_rows, ref_samples, seed, notes)

        # golden copy on each device, then the slots
        for d in devs:
            with common.on_device(d.dev):
                src = c0[golden_index] if golden_index is not None else c0[d.index]
                d.golden = src.to(d.dev, copy=True)
        del c0, c, src
        for d in devs:
            with common.on_device(d.dev):
                d.nslots = int(slots) if slots else d.plan_slots(mem_fraction, 4)
                d.nslots = max(d.nslots, depth + 1)
                d.slots = [t.empty(n, n, dtype=d.dtype, device=d.dev) for _ in range(d.nslots)]
                d.neb = t.empty(n, n, dtype=t.bool, device=d.dev)
                d.mem_bytes = (d.nslots + 3) * d.slot_bytes + n * n
                if d.cuda:
                    d.flags = t.zeros(depth + 1, dtype=t.bool).pin_memory()
                    d.t0_event = t.cuda.Event(enable_timing=True)
                else:
                    d.flags = t.zeros(depth + 1, dtype=t.bool)
        for d in devs:
            common.sync(d.dev)
        common.say(progress, "stress: %d slots of %.1f MiB per device; running"
                   % (devs[0].nslots, devs[0].slot_bytes / common.MIB))

        # run: launch while fewer than depth are queued; poll completions
        flops = 2.0 * n ** 3
        t0 = time.perf_counter()
        for d in devs:
            d.t0 = t0
            if d.cuda:
                with common.on_device(d.dev):
                    d.t0_event.record()
        next_progress = t0 + progress_every_s
        it = {d.index: 0 for d in devs}
        while True:
            now = time.perf_counter()
            running = now - t0 < duration_s
            busy = False
            for d in devs:
                if d.dead:
                    continue
                try:
                    busy |= _collect(t, d)
                    while running and len(d.pending) < depth:
                        it[d.index] += 1
                        _launch(t, d, it[d.index], depth, fault)
                        busy = True
                except Exception as e:      # a CUDA error under load: this device is out, the rest go on
                    d.dead = True
                    d.pending.clear()
                    d.reason = "failed under load at iteration %d: %s: %s" % (
                        it[d.index], type(e).__name__, " ".join(str(e).split())[:300])
            if not running and not any(d.pending for d in devs if not d.dead):
                break
            if not running and now - t0 > duration_s + hang_s:
                for d in devs:
                    if d.pending and not d.dead:
                        d.dead = True
                        d.reason = "stopped completing work: %d queued product(s) unfinished %.0f s after the " \
                                   "run's end (hung)" % (len(d.pending), hang_s)
                        d.pending.clear()
                break
            if now >= next_progress:
                next_progress = now + progress_every_s
                common.say(progress, "stress: %.0f/%.0f s  " % (now - t0, duration_s) + "  ".join(
                    "%s %d it %.1f TFLOP/s %d bad" % (d.label, d.iterations, _tflops(d, flops), d.mismatches)
                    for d in devs))
            if not busy:
                time.sleep(0.0002)
        elapsed = time.perf_counter() - t0

        # the products not yet compared
        for d in devs:
            if d.dead:
                continue
            for slot, w in sorted(d.written.items(), key=lambda kv: kv[1]):
                with common.on_device(d.dev):
                    bad = not _bitwise_equal(t, d.slots[slot], d.golden)
                _count(t, d, w, slot, bad)
            d.written.clear()

    results = []
    for d in devs:
        if d.mismatches and not d.reason:
            d.reason = "%d of %d products differ from the expected result (first at iteration %d: %d element(s), " \
                       "largest deviation %.3g)" % (d.mismatches, d.checked, d.first_mm or 0, d.first_mm_elems,
                                                    d.first_mm_abs)
        results.append(DeviceStress(
            device=d.label, name=d.name, iterations=d.iterations, elapsed_s=d.elapsed_s(),
            tflops=_tflops(d, flops), checked=d.checked, mismatches=d.mismatches,
            first_mismatch_iteration=d.first_mm, first_mismatch_elements=d.first_mm_elems,
            first_mismatch_max_abs=d.first_mm_abs, max_error=d.max_error, max_abs_error=d.max_abs_error,
            ref_ok=d.max_error <= tol, agrees=d.agrees, slots=d.nslots, mem_bytes=d.mem_bytes,
            faulty=bool(d.reason), reason=d.reason))
        for attr in ("a", "b", "golden", "slots", "neb"):
            setattr(d, attr, None)
    faulty = [r.device for r in results if r.faulty]
    common.say(progress, "stress: done in %.1f s: %s"
               % (elapsed, ("faulty: " + ", ".join(faulty)) if faulty else "no mismatch"))
    return StressResult(ok=not faulty, faulty=faulty, dtype=dtype, n=n, duration_s=float(duration_s),
                        elapsed_s=elapsed, exact=bool(exact), tolerance=tol, seed=seed, devices=results, notes=notes)


def _tflops(d, flops):
    e = d.elapsed_s()
    return flops * d.iterations / e / 1e12 if e > 0 else 0.0


def _launch(t, d, i, depth, fault):
    """Queue iteration i on device d: compare the slot about to come due, then compute into slot i % S."""
    S = d.nslots
    h = i % (depth + 1)
    j = (i + depth) % S           # the slot overwritten `depth` iterations from now: check it now
    w = d.written.pop(j, None)
    with common.on_device(d.dev):
        if w is not None:
            t.ne(_int_view(t, d.slots[j]), _int_view(t, d.golden), out=d.neb)
            d.flags[h].copy_(d.neb.any(), non_blocking=True)
        k = i % S
        t.mm(d.a, d.b, out=d.slots[k])
        if fault is not None:
            fault(d.index, i, d.slots[k])
        d.written[k] = i
        if d.cuda:
            ev = t.cuda.Event(enable_timing=True)
            ev.record()
        else:
            ev = None
    d.pending.append((ev, i, h, j, w))


def _collect(t, d):
    """Take the completed iterations of d; True if any was taken."""
    took = False
    while d.pending:
        ev, i, h, j, w = d.pending[0]
        if ev is not None and not ev.query():
            break
        d.pending.popleft()
        took = True
        d.iterations += 1
        d.last_done = ev if ev is not None else time.perf_counter()
        if w is not None:
            # slot j still holds iteration w's product: the iteration that overwrites it is not
            # launched before this one is collected (at most `depth` are queued)
            _count(t, d, w, j, bool(d.flags[h]))
    return took

