"""Benchmarks of one GPU: dense matmul TFLOP/s, HBM copy bandwidth, PCIe host<->device bandwidth,
GPU-to-GPU (P2P) copy bandwidth.

Conventions (each result says which it used):
- TFLOP/s = 2*n^3 / time / 1e12 for an n x n x n matmul; GB/s = 1e9 bytes per second.
- Timing: CUDA events around each timed iteration on a GPU (GPU time, no launch gaps counted),
  time.perf_counter on the CPU. The headline figure uses the median iteration (robust to one
  slow iteration); the mean and best are beside it.
- matmul: warm-up iterations first (cuBLAS heuristics, clocks), then on CUDA the L2 cache is
  flushed before each timed iteration by writing a buffer twice the L2 size (outside the timed
  region), so every iteration reads its operands from HBM as a real workload does.
- hbm: device-to-device copy of `nbytes`; the bandwidth counts each byte read AND written
  (2 * nbytes / time), as CUDA's bandwidthTest, nvbandwidth and STREAM's Copy do. On an H100
  SXM this reads about 2.6-3 TB/s of the 3.35 TB/s peak.
- pcie: one-way bytes / time for host-to-device and device-to-host copies from pinned memory.
- p2p: one-way bytes / time of a copy from GPU src to GPU dst (NVLink when the GPUs are peers).

A benchmark that cannot run here (PCIe or P2P on the CPU, P2P with one GPU) returns its result
with `skipped` set to the reason and the figures at 0.0; it never raises for that.
"""

import dataclasses
from typing import List, Optional

from . import _common as common

DEFAULT_N = {"cuda": 8192, "cpu": 512}


@dataclasses.dataclass
class MatmulResult(common.Result):
    device: str
    name: str
    dtype: str
    n: int
    iters: int
    warmup: int
    flops_per_iter: float
    time_ms: float          # median timed iteration
    tflops: float           # from the median iteration
    tflops_mean: float      # total flops / total timed time
    tflops_best: float      # from the fastest iteration
    timer: str              # "cuda-events" or "perf_counter"
    l2_flush_bytes: int     # 0: no flush (CPU, or flush_l2=False)
    skipped: Optional[str] = None


@dataclasses.dataclass
class CopyResult(common.Result):
    device: str
    name: str
    nbytes: int
    iters: int
    time_ms: float          # median timed copy
    gbps: float             # 2 * nbytes / median time / 1e9 (read + write)
    gbps_best: float
    convention: str
    timer: str
    skipped: Optional[str] = None


@dataclasses.dataclass
class PcieResult(common.Result):
    device: str
    name: str
    nbytes: int
    iters: int
    h2d_gbps: float         # one way, median copy
    d2h_gbps: float
    h2d_time_ms: float
    d2h_time_ms: float
    pinned: bool
    timer: str
    skipped: Optional[str] = None


@dataclasses.dataclass
class P2PResult(common.Result):
    src: str
    dst: str
    nbytes: int
    iters: int
    time_ms: float
    gbps: float             # one way: nbytes / median time / 1e9
    gbps_best: float
    peer_access: bool       # False: the copy is staged through the host (no NVLink/PCIe P2P)
    timer: str
    skipped: Optional[str] = None


def _time_iters(dev, fn, iters, warmup, before=None):
    """Run fn warmup times, then iters timed times (before() runs untimed ahead of each timed
    one); return the per-iteration times in seconds."""
    for _ in range(warmup):
        fn()
    common.sync(dev)
    timers = [common.Timer(dev) for _ in range(iters)]
    with common.on_device(dev):
        for t in timers:
            if before is not None:
                before()
            t.start()
            fn()
            t.stop()
    common.sync(dev)
    return [t.elapsed_s() for t in timers]


def _l2_bytes(dev):
    props = common.torch().cuda.get_device_properties(dev)
    return int(getattr(props, "L2_cache_size", 0) or 0) or 64 * common.MIB


def matmul(device="cuda", dtype=None, n=None, iters=None, warmup=None, flush_l2=True, seed=0,
           progress=None) -> MatmulResult:
    """Dense n x n x n matmul throughput. Defaults: bf16 and n=8192 on CUDA (large and aligned: a
    multiple of 256, so every tile is full), fp32 and n=512 on the CPU; 20 timed iterations after
    5 warm-up on CUDA, 5 after 1 on the CPU. dtype: bf16, fp16, tf32 (fp32 storage, TF32 tensor
    cores on CUDA; plain fp32 on the CPU) or fp32 (true fp32, TF32 off)."""
    t = common.torch()
    dev = common.to_device(device)
    cuda = dev.type == "cuda"
    dtype = common.dtype_name(dtype or ("bf16" if cuda else "fp32"))
    n = int(n or DEFAULT_N[dev.type])
    iters = int(iters or (20 if cuda else 5))
    warmup = int(warmup if warmup is not None else (5 if cuda else 1))
    g = t.Generator(device=dev).manual_seed(seed)
    with common.on_device(dev), common.matmul_precision(dtype, dev):
        a = t.randn(n, n, device=dev, generator=g).to(common.torch_dtype(dtype))
        b = t.randn(n, n, device=dev, generator=g).to(common.torch_dtype(dtype))
        c = t.empty(n, n, device=dev, dtype=common.torch_dtype(dtype))
        flush = None
        if cuda and flush_l2:
            flush = t.empty(2 * _l2_bytes(dev), dtype=t.uint8, device=dev)
        times = _time_iters(dev, lambda: t.mm(a, b, out=c), iters, warmup,
                            before=(flush.zero_ if flush is not None else None))
    flops = 2.0 * n ** 3
    med = common.median(times)
    r = MatmulResult(device=str(device), name=common.device_name(dev), dtype=dtype, n=n, iters=iters, warmup=warmup,
                     flops_per_iter=flops, time_ms=med * 1e3, tflops=flops / med / 1e12,
                     tflops_mean=flops * len(times) / sum(times) / 1e12, tflops_best=flops / min(times) / 1e12,
                     timer=common.timer_kind(dev), l2_flush_bytes=int(flush.numel()) if flush is not None else 0)
    common.say(progress, "matmul %s %s n=%d: %.1f TFLOP/s" % (device, dtype, n, r.tflops))
    return r


def hbm(device="cuda", nbytes=None, iters=None, warmup=None, progress=None) -> CopyResult:
    """Device memory bandwidth: a device-to-device copy of nbytes (default 1 GiB on CUDA, 64 MiB
    on the CPU, where it measures host memory), counted as read + write."""
    t = common.torch()
    dev = common.to_device(device)
    cuda = dev.type == "cuda"
    nbytes = int(nbytes or (common.GIB if cuda else 64 * common.MIB))
    iters = int(iters or (20 if cuda else 5))
    warmup = int(warmup if warmup is not None else (3 if cuda else 1))
    with common.on_device(dev):
        src = t.ones(nbytes, dtype=t.uint8, device=dev)
        dst = t.empty_like(src)
        times = _time_iters(dev, lambda: dst.copy_(src), iters, warmup)
    med = common.median(times)
    r = CopyResult(device=str(device), name=common.device_name(dev), nbytes=nbytes, iters=iters, time_ms=med * 1e3,
                   gbps=2 * nbytes / med / 1e9, gbps_best=2 * nbytes / min(times) / 1e9,
                   convention="read+write: 2 * nbytes / time (as bandwidthTest, nvbandwidth, STREAM Copy)",
                   timer=common.timer_kind(dev))
    common.say(progress, "hbm %s %d MiB: %.1f GB/s (read+write)" % (device, nbytes >> 20, r.gbps))
    return r


def pcie(device="cuda", nbytes=None, iters=None, warmup=None, progress=None) -> PcieResult:
    """Host-to-device and device-to-host bandwidth with pinned host memory (default 256 MiB)."""
    nbytes = int(nbytes or 256 * common.MIB)
    if not common.is_cuda(device):
        return PcieResult(device=str(device), name="cpu", nbytes=nbytes, iters=0, h2d_gbps=0.0, d2h_gbps=0.0,
                          h2d_time_ms=0.0, d2h_time_ms=0.0, pinned=False, timer="",
                          skipped="no PCIe transfer on the CPU device (host and device memory are the same)")
    t = common.torch()
    dev = common.to_device(device)
    iters = int(iters or 10)
    warmup = int(warmup if warmup is not None else 2)
    host = t.ones(nbytes, dtype=t.uint8).pin_memory()
    with common.on_device(dev):
        d = t.empty(nbytes, dtype=t.uint8, device=dev)
        h2d = _time_iters(dev, lambda: d.copy_(host, non_blocking=True), iters, warmup)
        d2h = _time_iters(dev, lambda: host.copy_(d, non_blocking=True), iters, warmup)
    r = PcieResult(device=str(device), name=common.device_name(dev), nbytes=nbytes, iters=iters,
                   h2d_gbps=nbytes / common.median(h2d) / 1e9, d2h_gbps=nbytes / common.median(d2h) / 1e9,
                   h2d_time_ms=common.median(h2d) * 1e3, d2h_time_ms=common.median(d2h) * 1e3, pinned=True,
                   timer=common.timer_kind(dev))
    common.say(progress, "pcie %s: h2d %.1f GB/s, d2h %.1f GB/s" % (device, r.h2d_gbps, r.d2h_gbps))
    return r


def p2p(src="cuda:0", dst="cuda:1", nbytes=None, iters=None, warmup=None, progress=None) -> P2PResult:
    """One-way copy bandwidth from GPU src to GPU dst (default 1 GiB). Skipped on the CPU, with a
    single GPU, or when src and dst are the same GPU."""
    nbytes = int(nbytes or common.GIB)

    def skip(reason):
        return P2PResult(src=str(src), dst=str(dst), nbytes=nbytes, iters=0, time_ms=0.0, gbps=0.0, gbps_best=0.0,
                         peer_access=False, timer="", skipped=reason)

    if not (common.is_cuda(src) and common.is_cuda(dst)):
        return skip("P2P needs two CUDA devices (got %s -> %s)" % (src, dst))
    t = common.torch()
    if not t.cuda.is_available() or t.cuda.device_count() < 2:
        return skip("P2P needs two GPUs (%d visible)" % (t.cuda.device_count() if t.cuda.is_available() else 0))
    s, d = common.to_device(src), common.to_device(dst)
    if s == d:
        return skip("src and dst are the same GPU (%s)" % s)
    iters = int(iters or 20)
    warmup = int(warmup if warmup is not None else 3)
    peer = bool(t.cuda.can_device_access_peer(s.index, d.index))
    a = t.ones(nbytes, dtype=t.uint8, device=s)
    b = t.empty(nbytes, dtype=t.uint8, device=d)
    # torch runs a cross-device copy on the source device's current stream: time it there.
    times = _time_iters(s, lambda: b.copy_(a, non_blocking=True), iters, warmup)
    common.sync(d)
    med = common.median(times)
    r = P2PResult(src=str(src), dst=str(dst), nbytes=nbytes, iters=iters, time_ms=med * 1e3, gbps=nbytes / med / 1e9,
                  gbps_best=nbytes / min(times) / 1e9, peer_access=peer, timer=common.timer_kind(s))
    common.say(progress, "p2p %s -> %s: %.1f GB/s%s" % (src, dst, r.gbps, "" if peer else " (no peer access)"))
    return r


def p2p_all(devices=None, nbytes=None, iters=None, progress=None) -> List[P2PResult]:
    """p2p() for every ordered pair of the given CUDA devices (default: all visible)."""
    t = common.torch()
    if devices is None:
        devices = ["cuda:%d" % i for i in range(t.cuda.device_count())] if t.cuda.is_available() else []
    return [p2p(a, b, nbytes=nbytes, iters=iters, progress=progress) for a in devices for b in devices if a != b]


def plain_matmul_tflops(device="cuda", dtype="bf16", n=8192, iters=50, warmup=5):
    """The yardstick DESIGN's budget names: a plain torch.matmul loop timed with a wall clock
    (no flush, no per-iteration events). matmul() should land within 10% of this on a GPU."""
    import time
    t = common.torch()
    dev = common.to_device(device)
    with common.on_device(dev), common.matmul_precision(dtype, dev):
        a = t.randn(n, n, device=dev).to(common.torch_dtype(dtype))
        b = t.randn(n, n, device=dev).to(common.torch_dtype(dtype))
        for _ in range(warmup):
            t.matmul(a, b)
        common.sync(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            t.matmul(a, b)
        common.sync(dev)
        dt = time.perf_counter() - t0
    return 2.0 * n ** 3 * iters / dt / 1e12
