"""The comparison of stress products (:mod:`gpuhc.workloads.stress`): golden result, CPU reference, tolerance.

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

The run loop (:func:`gpuhc.workloads.stress.run`) queues the products and compares each with its device's
golden copy; this module holds the rest: the setup's grouping and choice of the golden product
(``_choose_golden``), the float64 reference (``_Ref``), the bound (:func:`tolerance`), the bitwise views the
comparisons use, and the count of a mismatching product (``_count``).
"""

import math
from typing import Any, List, Tuple

from . import _common as common

U_ACC = 2.0 ** -24
U_IN = {"tf32": 2.0 ** -10}


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
