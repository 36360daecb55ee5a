"""GPU stress with result comparison (issue 13, gpu_stress).

Every device multiplies the SAME seeded n x n matrices over and over for `duration_s`, writing
each product into the next of many result slots that together fill most of its free memory
(gpu-burn's layout), and every product is compared with the expected one. Anchors: gpu-burn
(compare results, count errors, the GPU with errors is faulty), Imbue's stress test (copy results
across GPUs and compare), huggingface gpu-fryer (throughput of each GPU over the run).

How a wrong result is found and named
1. Setup: each device computes C0 = A @ B once. The C0s are compared across devices element by
   element, and each is checked against a float64 product computed on the CPU for a slice of
   elements (the first `ref_rows` rows, `ref_samples` seeded random elements, and every element
   where two devices disagree).
2. The expected result ("golden") is then chosen: in exact mode (below), the group of devices
   with bitwise-identical C0 that passes the CPU reference and outnumbers every other such group;
   a device outside it is faulty. When no group can be chosen (two devices that disagree and both
   pass the reference: a low-bit difference no tolerance can judge), every device that disagrees
   is named, with that reason. In tolerance mode each device's own C0 is its golden, and the
   setup judges each device against the reference alone.
3. Run: each product is compared bitwise with the golden copy held on its device just before its
   slot is overwritten, `slots` iterations later (so the check covers the arithmetic AND the
   memory holding the result for that time); the slots left at the end are compared after the
   run. Every product is checked exactly once. `mismatches` counts products with any wrong
   element; the first one's wrong-element count and largest deviation are recorded.

Which comparison is honest, per dtype
- Exact (bitwise) across devices: cuBLAS documents bitwise-reproducible results for the same
  routine on GPUs of the same architecture and SM count with the same toolkit (and torch uses one
  stream per device, so no multi-stream workspace caveat applies). This holds for fp32 with TF32
  off and equally for tf32, bf16 and fp16: the same kernel on the same inputs rounds the same way.
  So when every device reports the same name and SM count (or all are the CPU), exact=None picks
  exact mode; a node with mixed GPU models (or MIG slices of different sizes) gets tolerance mode.
  The same device must also reproduce its own product bitwise run after run: that is what the
  per-iteration comparison holds every device to, in both modes.
- Against the CPU float64 reference, the error of element c_ij is bounded by
      |c_ij - ref_ij| <= tol * S_ij,   S_ij = sum_k |a_ik| |b_kj|
      tol = 2 * (n * u_acc) + 2 * u_in + 2 * u_out
  u_acc = 2^-24 (fp32 accumulation; cuBLAS accumulates bf16/fp16 products in fp32, and the
  reduced-precision split-K reductions are switched off for the run), u_in = 2^-10 for tf32 (the
  kernel rounds the fp32 inputs to 10 mantissa bits; 0 otherwise: the reference is computed from
  the same rounded inputs), u_out the rounding of the stored result (2^-8 bf16, 2^-11 fp16,
  2^-24 fp32). n*u_acc is the classical worst-case bound (Higham's gamma_n) for any summation
  order; the factor 2 covers tensor cores' truncating (round-toward-zero) accumulation. It is a
  bound a healthy device cannot exceed, so it never convicts one; it is loose (a low-bit error
  passes it), which is why the bitwise comparisons above carry the detection. max_error is the
  largest |c - ref| / S over the checked elements, in the same unit as tol.

On the CPU, sizes are small (n=256, 4 slots) and "devices" may be named cpu:0, cpu:1, ...: they
all map to the CPU and run one after the other (the test of the comparison logic, not a load).
On CUDA all devices run at once from one thread: each keeps up to `depth` iterations queued, and
completion is polled with CUDA events, so a slow GPU completes fewer iterations without holding
the others back; TFLOP/s per device = 2 n^3 * iterations / (its time from the start to its last
completed product), timed with CUDA events.
"""

import dataclasses
import math
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _common as common

U_ACC = 2.0 ** -24
U_IN = {"tf32": 2.0 ** -10}
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


def tolerance(dtype, n):
    dtype = common.dtype_name(dtype)
    return 2 * n * U_ACC + 2 * U_IN.get(dtype, 0.0) + 2 * common.DTYPES[dtype][1]


def _int_view(t, x):
    return x.view(t.int16 if x.element_size() == 2 else t.int32)


def _bitwise_equal(t, x, y):
    return bool(t.equal(_int_view(t, x), _int_view(t, y)))


def _diff_positions(t, x, y, limit):
    ne = (_int_view(t, x) != _int_view(t, y)).flatten()
    return ne.nonzero().flatten()[:limit].tolist()


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


def _count(t, d, w, slot, bad):
    d.checked += 1
    if not bad:
        return
    d.mismatches += 1
    if d.first_mm is None:
        d.first_mm = w
        with common.on_device(d.dev):
            x, g = d.slots[slot], d.golden
            for r0 in range(0, x.shape[0], 1024):      # row blocks: bounded temporaries
                xs, gs = x[r0:r0 + 1024], g[r0:r0 + 1024]
                ne = _int_view(t, xs) != _int_view(t, gs)
                cnt = int(ne.sum())
                if cnt:
                    d.first_mm_elems += cnt
                    diff = (xs[ne].double() - gs[ne].double()).abs()
                    diff = t.where(t.isnan(diff), math.inf, diff)
                    d.first_mm_abs = max(d.first_mm_abs, float(diff.max()))


class _Ref:
    """float64 reference on the CPU: the first r rows in full, plus scattered (i, j) points."""

    def __init__(self, t, a_host, b_host, r, points, chunk=2048):
        n = a_host.shape[0]
        self.r = r
        self.points = sorted(set(p for p in points if p[0] >= r))
        a = a_host[:r].double()
        self.rows = t.empty(r, n, dtype=t.float64)
        self.rows_s = t.empty(r, n, dtype=t.float64)
        for c0 in range(0, n, chunk):          # B in column chunks: never all of B in float64
            b = b_host[:, c0:c0 + chunk].double()
            self.rows[:, c0:c0 + chunk] = a @ b
            self.rows_s[:, c0:c0 + chunk] = a.abs() @ b.abs()
        self.pts = t.empty(len(self.points), dtype=t.float64)
        self.pts_s = t.empty(len(self.points), dtype=t.float64)
        for k, (i, j) in enumerate(self.points):
            ai, bj = a_host[i].double(), b_host[:, j].double()
            self.pts[k] = ai @ bj
            self.pts_s[k] = ai.abs() @ bj.abs()

    def errors(self, t, c):
        """(max |c - ref| / S, max |c - ref|) of a device's product c over the checked elements."""
        n = c.shape[1]
        got = [c[:self.r].double().cpu().flatten()]
        ref, s = [self.rows.flatten()], [self.rows_s.flatten()]
        if self.points:
            idx = t.tensor([i * n + j for i, j in self.points], device=c.device)
            got.append(c.flatten().index_select(0, idx).double().cpu())
            ref.append(self.pts)
            s.append(self.pts_s)
        got, ref, s = t.cat(got), t.cat(ref), t.cat(s)
        if got.numel() == 0:
            return 0.0, 0.0
        err = (got - ref).abs()
        err = t.where(t.isfinite(got), err, t.full_like(err, math.inf))
        rel = t.where(s > 0, err / s.clamp_min(1e-300), t.where(err == 0, 0.0, math.inf))
        return float(rel.max()), float(err.max())


def _choose_golden(t, devs, c0, a_host, b_host, tol, exact, ref_rows, ref_samples, seed, notes):
    """Group the setup products, check them against the CPU reference, pick the golden group;
    set each device's agrees/reason/max_error. Returns the index of a device holding the golden
    product (exact mode), or None."""
    n = a_host.shape[0]
    r = min(n, int(ref_rows if ref_rows is not None else (8 if n > 1024 else 32)))
    points: List[Tuple[int, int]] = []
    g = t.Generator().manual_seed(seed + 1)
    if ref_samples:
        ii = t.randint(0, n, (int(ref_samples),), generator=g).tolist()
        jj = t.randint(0, n, (int(ref_samples),), generator=g).tolist()
        points += list(zip(ii, jj))
    groups: List[Any] = []            # [representative index, [members]]
    extra: List[Tuple[int, int]] = []  # points where two groups differ
    if exact:
        for d, c in zip(devs, c0):
            for grp in groups:
                rep = c0[grp[0]]
                other = c if c.device == rep.device else c.to(rep.device)
                if _bitwise_equal(t, rep, other):
                    grp[1].append(d.index)
                    break
            else:
                if groups:
                    rep = c0[groups[0][0]]
                    other = c if c.device == rep.device else c.to(rep.device)
                    extra += [divmod(p, n) for p in _diff_positions(t, rep, other, 64)]
                groups.append([d.index, [d.index]])
    ref = _Ref(t, a_host, b_host, r, points + extra)
    for d, c in zip(devs, c0):
        d.max_error, d.max_abs_error = ref.errors(t, c)
    if not exact:
        for d in devs:
            if d.max_error > tol:
                d.agrees = False
                d.reason = "its product differs from the CPU float64 reference by %.3g x sum|a||b| (bound %.3g)" \
                           % (d.max_error, tol)
        return None
    passing = [grp for grp in groups if all(devs[i].max_error <= tol for i in grp[1])]
    passing.sort(key=lambda grp: -len(grp[1]))
    golden = None
    if passing and (len(passing) == 1 or len(passing[0][1]) > len(passing[1][1])):
        golden = passing[0]
    if len(groups) > 1:
        notes.append("setup products fall into %d bitwise groups: %s" % (len(groups), "; ".join(
            ",".join(devs[i].label for i in grp[1]) for grp in groups)))
    for grp in groups:
        if golden is not None and grp is golden:
            continue
        for i in grp[1]:
            d = devs[i]
            if d.max_error > tol:
                d.agrees = False
                d.reason = "its product differs from the CPU float64 reference%s (%.3g x sum|a||b|, bound %.3g)" % (
                    " and from the other devices'" if len(groups) > 1 else "", d.max_error, tol)
            elif golden is not None:
                d.agrees = False
                d.reason = "its product differs bitwise from the product of %s (same model)" % ", ".join(
                    devs[k].label for k in golden[1])
            elif len(groups) > 1:
                d.agrees = False
                d.reason = "the devices disagree bitwise and no majority passes the CPU reference: cannot " \
                           "tell which is right (this device is in a group of %d of %d)" % (len(grp[1]), len(devs))
    return golden[0] if golden is not None else None
