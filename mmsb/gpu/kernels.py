"""CUDA kernels (CuPy RawModules generated from one template) for every built-in semiring and dtype.

A module is generated for one ``(dtype, ⊕ expression, ⊗ expression, index type, group)`` and cached by the hash
of its source. Built-in semirings use their op codes (``mmsb._ops``) mapped to expressions with exactly the
semantics of the CPU kernels: integer plus/times wrap, ``min`` is ``b < a ? b : a`` (a NaN update is ignored, a
NaN page value is kept), bool pages run as uint8 with or -> max, and -> min. Plugin semirings with ``cuda_add``
/ ``cuda_mul`` (C expressions over ``a`` and ``b``) get the same kernels. FMA contraction is off
(``--fmad=false``) so that a ⊗ followed by ⊕ rounds like the CPU.

Kernels: ``apply_norm`` (sorted unique sparse delta -> old values and changed flags), ``scatter_atomic``
(unsorted accumulate: hardware atomics for add/min/max where CUDA has them, a CAS loop otherwise),
``scatter_sorted`` (sort-and-segment: one thread folds each run of equal indices in input order; exact),
``masked_merge`` (dense, 16-byte vector loads: double2 / float4 / ...), ``spmv`` (CSR pull, a group of
``GROUP`` lanes per row, paired vector loads streamed past the cache, reduced with shuffles), ``push``
(sparse push with atomics and changed flags),
``combine`` (elementwise ⊕) and ``batch_apply`` (the command buffer: many deltas on many pages, one launch).
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np

from mmsb import _ops
from mmsb.gpu import _runtime as rt

CTYPES = {"int8": ("signed char", "unsigned char"), "int16": ("short", "unsigned short"),
          "int32": ("int", "unsigned int"), "int64": ("long long", "unsigned long long"),
          "uint8": ("unsigned char", "unsigned char"), "uint16": ("unsigned short", "unsigned short"),
          "uint32": ("unsigned int", "unsigned int"), "uint64": ("unsigned long long", "unsigned long long"),
          "float32": ("float", "unsigned int"), "float64": ("double", "unsigned long long"),
          "bool": ("unsigned char", "unsigned char")}

_EXPR = {_ops.OP_ASSIGN: "b", _ops.OP_MIN: "(b < a ? b : a)", _ops.OP_MAX: "(b > a ? b : a)"}


def op_expr(code: int, dtype: np.dtype) -> str:
    """The C expression of an op code on ``dtype`` with the CPU kernels' semantics."""
    if code in _EXPR:
        return _EXPR[code]
    sym = "+" if code == _ops.OP_PLUS else "*"
    if np.dtype(dtype).kind == "f":
        return f"(a {sym} b)"
    return f"(T)((W)(UT)a {sym} (W)(UT)b)"


def _fast_atomic(code: Optional[int], dtype: np.dtype) -> tuple[int, str]:
    """(kind, C type) of a hardware atomic for ⊕ on dtype: 1 add, 2 min, 3 max; (0, '') for the CAS loop."""
    name = np.dtype(dtype).name
    if code == _ops.OP_PLUS:
        t = {"float32": "float", "float64": "double", "int32": "int", "uint32": "unsigned int",
             "int64": "unsigned long long", "uint64": "unsigned long long"}.get(name)
        return (1, t) if t else (0, "")
    if code in (_ops.OP_MIN, _ops.OP_MAX):
        t = {"int32": "int", "uint32": "unsigned int", "int64": "long long",
             "uint64": "unsigned long long"}.get(name)
        return (2 if code == _ops.OP_MIN else 3, t) if t else (0, "")
    return 0, ""


_TEMPLATE = r"""
typedef __TYPE__ T;
typedef __UTYPE__ UT;
typedef __WTYPE__ W;
typedef __ITYPE__ I;
#define GROUP __GROUP__
#define IS_FLOAT __ISFLOAT__
#define FAST __FAST__
typedef __ATYPE__ AT;

template <class To, class From> __device__ __forceinline__ To bitc(From f) {
    union { From f; To t; } u; u.t = To(); u.f = f; return u.t;
}
__device__ __forceinline__ T op_add(T a, T b) { return (T)(__ADD__); }
__device__ __forceinline__ T op_mul(T a, T b) { return (T)(__MUL__); }
__device__ __forceinline__ bool neq(T a, T b) {
#if IS_FLOAT
    return (a != b) && !((a != a) && (b != b));
#else
    return a != b;
#endif
}

/* page[i] = page[i] (+) v atomically; true when some step changed the value */
__device__ __forceinline__ bool atomic_op(T* addr, T v) {
#if FAST == 1
    T old = (T)atomicAdd((AT*)addr, (AT)v);
    return neq(op_add(old, v), old);
#elif FAST == 2
    T old = (T)atomicMin((AT*)addr, (AT)v);
    return v < old;
#elif FAST == 3
    T old = (T)atomicMax((AT*)addr, (AT)v);
    return v > old;
#else
    if constexpr (sizeof(T) == 8) {
        unsigned long long* p = (unsigned long long*)addr;
        unsigned long long old = *p, assumed;
        do {
            assumed = old;
            T cur = bitc<T>(assumed);
            T nv = op_add(cur, v);
            if (!neq(nv, cur)) return false;
            old = atomicCAS(p, assumed, bitc<unsigned long long>(nv));
        } while (old != assumed);
        return true;
    } else if constexpr (sizeof(T) == 4) {
        unsigned int* p = (unsigned int*)addr;
        unsigned int old = *p, assumed;
        do {
            assumed = old;
            T cur = bitc<T>(assumed);
            T nv = op_add(cur, v);
            if (!neq(nv, cur)) return false;
            old = atomicCAS(p, assumed, bitc<unsigned int>(nv));
        } while (old != assumed);
        return true;
    } else {
        size_t a = (size_t)addr;
        unsigned int* base = (unsigned int*)(a & ~(size_t)3);
        unsigned int shift = (unsigned int)(a & 3) * 8u;
        unsigned int mask = (sizeof(T) == 1 ? 0xffu : 0xffffu) << shift;
        unsigned int old = *base, assumed;
        do {
            assumed = old;
            UT cb = (UT)((assumed & mask) >> shift);
            T cur = bitc<T>(cb);
            T nv = op_add(cur, v);
            if (!neq(nv, cur)) return false;
            unsigned int nw = (assumed & ~mask) | (((unsigned int)bitc<UT>(nv)) << shift);
            old = atomicCAS(base, assumed, nw);
        } while (old != assumed);
        return true;
    }
#endif
}

__device__ __forceinline__ T shfl_down(unsigned int m, T v, int d) {
#if IS_FLOAT
    return __shfl_down_sync(m, v, d, GROUP);
#else
    if constexpr (sizeof(T) < 4) return (T)__shfl_down_sync(m, (int)v, d, GROUP);
    else if constexpr (sizeof(T) == 4) return bitc<T>(__shfl_down_sync(m, bitc<unsigned int>(v), d, GROUP));
    else return bitc<T>(__shfl_down_sync(m, bitc<unsigned long long>(v), d, GROUP));
#endif
}

#define TID ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define NTH ((long long)gridDim.x * blockDim.x)

extern "C" __global__ void apply_norm(T* page, const long long* idx, const T* vals, T* old,
                                      unsigned char* changed, long long n, int assign) {
    for (long long k = TID; k < n; k += NTH) {
        long long i = idx[k];
        T a = page[i], b = vals[k];
        T nv = assign ? b : op_add(a, b);
        page[i] = nv;
        old[k] = a;
        changed[k] = neq(nv, a) ? 1 : 0;
    }
}

extern "C" __global__ void scatter_atomic(T* page, const long long* idx, const T* vals, long long n) {
    for (long long k = TID; k < n; k += NTH) atomic_op(page + idx[k], __ldg(vals + k));
}

/* idx sorted (vals in input order within each run): one thread folds each run; exact, last-wins for assign */
extern "C" __global__ void scatter_sorted(T* page, const long long* idx, const T* vals, long long n, int assign) {
    for (long long k = TID; k < n; k += NTH) {
        long long i = idx[k];
        if (k > 0 && idx[k - 1] == i) continue;
        long long j = k;
        T a = page[i];
        if (assign) {
            while (j + 1 < n && idx[j + 1] == i) j++;
            a = vals[j];
        } else {
            a = op_add(a, vals[j]);
            while (j + 1 < n && idx[j + 1] == i) { j++; a = op_add(a, vals[j]); }
        }
        page[i] = a;
    }
}

#define VEC ((16 / sizeof(T)) < 4 ? 4 : (16 / sizeof(T)))
struct __align__(16) VT { T v[VEC]; };
struct __align__(VEC) VM { unsigned char m[VEC]; };

/* dense masked merge: the first nvec*VEC entries with vector loads (16-byte aligned), the rest scalar */
extern "C" __global__ void masked_merge(T* __restrict__ page, const unsigned char* __restrict__ mask,
                                        const T* __restrict__ vals, long long n, long long nvec, int assign) {
    for (long long k = TID; k < nvec; k += NTH) {
        VM m = ((const VM*)mask)[k];
        unsigned int any = 0;
#pragma unroll
        for (int j = 0; j < (int)VEC; j++) any |= m.m[j];
        if (!any) continue;
        VT p = ((VT*)page)[k];
        VT b = ((const VT*)vals)[k];
#pragma unroll
        for (int j = 0; j < (int)VEC; j++) if (m.m[j]) p.v[j] = assign ? b.v[j] : op_add(p.v[j], b.v[j]);
        ((VT*)page)[k] = p;
    }
    for (long long i = nvec * VEC + TID; i < n; i += NTH)
        if (mask[i]) page[i] = assign ? vals[i] : op_add(page[i], vals[i]);
}

/* two neighbouring entries in one vector load, streamed past L1/L2 (evict-first) so that x keeps the cache */
struct TP { T a, b; };
__device__ __forceinline__ TP ld2_stream(const T* p) {
    TP r;
    if constexpr (sizeof(T) == 8) { ulonglong2 v = __ldcs((const ulonglong2*)p); r.a = bitc<T>(v.x); r.b = bitc<T>(v.y); }
    else if constexpr (sizeof(T) == 4) { uint2 v = __ldcs((const uint2*)p); r.a = bitc<T>(v.x); r.b = bitc<T>(v.y); }
    else if constexpr (sizeof(T) == 2) { ushort2 v = __ldcs((const ushort2*)p); r.a = bitc<T>(v.x); r.b = bitc<T>(v.y); }
    else { uchar2 v = __ldcs((const uchar2*)p); r.a = bitc<T>(v.x); r.b = bitc<T>(v.y); }
    return r;
}
struct IPair { I a, b; };
__device__ __forceinline__ IPair ldi2_stream(const I* p) {
    IPair r;
    if constexpr (sizeof(I) == 8) { longlong2 v = __ldcs((const longlong2*)p); r.a = v.x; r.b = v.y; }
    else { int2 v = __ldcs((const int2*)p); r.a = v.x; r.b = v.y; }
    return r;
}
__device__ __forceinline__ T ld_stream(const T* p) {
    if constexpr (sizeof(T) == 8) return bitc<T>(__ldcs((const unsigned long long*)p));
    else if constexpr (sizeof(T) == 4) return bitc<T>(__ldcs((const unsigned int*)p));
    else if constexpr (sizeof(T) == 2) return bitc<T>(__ldcs((const unsigned short*)p));
    else return bitc<T>(__ldcs((const unsigned char*)p));
}
__device__ __forceinline__ T fma_step(T acc, T d, T xv, T zero) {
    return (xv != zero) ? op_add(acc, op_mul(d, xv)) : acc;
}

/* y[out] = zero (+) (+)_k data[k] (x) x[indices[k]] over stored k with x != zero.
   GROUP lanes per row; each lane takes two neighbouring entries per step with one vector load of indices and
   one of data (an odd row start is peeled), two steps in flight on long rows. Index and data loads stream
   (evict-first), so the gathered x stays in L2. */
extern "C" __global__ void spmv(const I* __restrict__ indptr, const I* __restrict__ indices,
                                const T* __restrict__ data, const T* __restrict__ x, T* __restrict__ y,
                                const long long* __restrict__ rows, long long nrows, int use_rows, int compact,
                                T zero) {
    int lane = threadIdx.x % GROUP;
    unsigned int gmask = (GROUP == 32) ? 0xffffffffu : (((1u << GROUP) - 1u) << ((threadIdx.x % 32) / GROUP * GROUP));
    for (long long r = TID / GROUP; r < nrows; r += NTH / GROUP) {
        long long row = use_rows ? rows[r] : r;
        I s = indptr[row], e = indptr[row + 1];
        T acc = zero;
        if ((s & 1) && s < e) {
            if (lane == 0) acc = fma_step(acc, ld_stream(data + s), __ldg(x + __ldcs(indices + s)), zero);
            s += 1;
        }
        I k = s + 2 * lane;
        for (; k + 2 * GROUP + 1 < e; k += 4 * GROUP) {
            IPair j0 = ldi2_stream(indices + k), j1 = ldi2_stream(indices + k + 2 * GROUP);
            TP d0 = ld2_stream(data + k), d1 = ld2_stream(data + k + 2 * GROUP);
            T x0 = __ldg(x + j0.a), x1 = __ldg(x + j0.b), x2 = __ldg(x + j1.a), x3 = __ldg(x + j1.b);
            acc = fma_step(acc, d0.a, x0, zero);
            acc = fma_step(acc, d0.b, x1, zero);
            acc = fma_step(acc, d1.a, x2, zero);
            acc = fma_step(acc, d1.b, x3, zero);
        }
        for (; k + 1 < e; k += 2 * GROUP) {
            IPair j = ldi2_stream(indices + k);
            TP d = ld2_stream(data + k);
            T x0 = __ldg(x + j.a), x1 = __ldg(x + j.b);
            acc = fma_step(acc, d.a, x0, zero);
            acc = fma_step(acc, d.b, x1, zero);
        }
        if (k < e) acc = fma_step(acc, ld_stream(data + k), __ldg(x + __ldcs(indices + k)), zero);
#pragma unroll
        for (int off = GROUP / 2; off > 0; off >>= 1) {
            T o = shfl_down(gmask, acc, off);
            acc = op_add(acc, o);
        }
        if (lane == 0) y[compact ? r : row] = acc;
    }
}

/* y[i] = y[i] (+) (A[i, j] (x) v) for each (j, v) with v != zero (At in CSR); changed[i] = 1 where it moved */
extern "C" __global__ void push(const I* __restrict__ indptr_t, const I* __restrict__ indices_t,
                                const T* __restrict__ data_t, const long long* __restrict__ idx,
                                const T* __restrict__ vals, long long m, T* y, unsigned char* changed, T zero) {
    int lane = threadIdx.x % GROUP;
    for (long long r = TID / GROUP; r < m; r += NTH / GROUP) {
        T v = vals[r];
        if (v == zero) continue;
        long long j = idx[r];
        I s = indptr_t[j], e = indptr_t[j + 1];
        for (I k = s + lane; k < e; k += GROUP) {
            I i = indices_t[k];
            if (atomic_op(y + i, op_mul(data_t[k], v))) changed[i] = 1;
        }
    }
}

extern "C" __global__ void combine(T* y, const T* t, long long n) {
    for (long long k = TID; k < n; k += NTH) y[k] = op_add(y[k], t[k]);
}

extern "C" __global__ void neq_flags(const T* a, const T* b, unsigned char* out, long long n) {
    for (long long k = TID; k < n; k += NTH) out[k] = neq(a[k], b[k]) ? 1 : 0;
}

/* command buffer: header = ndeltas x {page pointer, first entry, assign}; entries: idx (int64) then vals (T) */
extern "C" __global__ void batch_apply(const long long* __restrict__ hdr, int ndeltas,
                                       const long long* __restrict__ idx, const T* __restrict__ vals,
                                       T* __restrict__ old, unsigned char* __restrict__ changed, long long n) {
    for (long long k = TID; k < n; k += NTH) {
        int lo = 0, hi = ndeltas - 1;
        while (lo < hi) { int mid = (lo + hi + 1) >> 1; if (hdr[3 * mid + 1] <= k) lo = mid; else hi = mid - 1; }
        T* page = (T*)hdr[3 * lo];
        long long i = idx[k];
        T a = page[i], b = vals[k];
        T nv = hdr[3 * lo + 2] ? b : op_add(a, b);
        page[i] = nv;
        old[k] = a;
        changed[k] = neq(nv, a) ? 1 : 0;
    }
}
"""

_modules: dict = {}
_fast: dict = {}
_fns: dict = {}
_KERNELS = ("apply_norm", "scatter_atomic", "scatter_sorted", "masked_merge", "spmv", "push", "combine",
            "neq_flags", "batch_apply")


class Ops:
    """The ⊕ / ⊗ of a semiring on one dtype, as C expressions, plus its zero and hardware-atomic choice."""

    def __init__(self, dtype: Any, add: str, mul: str, zero: Any, add_code: Optional[int] = None):
        self.dtype = np.dtype(dtype)
        self.add, self.mul = add, mul
        self.zero = zero
        self.add_code = add_code

    @classmethod
    def for_codes(cls, dtype: Any, add_code: int, mul_code: int = _ops.OP_TIMES, zero: Any = 0) -> "Ops":
        dt = np.dtype(dtype)
        return cls(dt, op_expr(add_code, dt), op_expr(mul_code, dt), zero, add_code)

    def kview(self) -> np.dtype:
        return np.dtype(np.uint8) if self.dtype == np.bool_ else self.dtype


def ops_for(sr: Any, dtype: Any) -> Optional[Ops]:
    """Ops of semiring ``sr`` on ``dtype``: built-in codes, or the plugin's cuda_add/cuda_mul; None if neither."""
    dt = np.dtype(dtype)
    if dt.name not in CTYPES:
        return None
    codes = sr.codes_for(dt)
    zero = sr.zero_for(dt)
    if codes is not None:
        return Ops.for_codes(dt, codes[0], codes[1], zero)
    if sr.cuda_add and sr.cuda_mul:
        return Ops(dt, sr.cuda_add, sr.cuda_mul, zero)
    return None


def module(ops: Ops, itype: str = "long long", group: int = 1) -> Any:
    """The compiled RawModule for ``ops`` (cached by a hash of its source)."""
    cp = rt.cupy()
    dt = ops.dtype
    fastkey = (dt.str, ops.add, ops.mul, ops.add_code, itype, int(group), cp.cuda.Device().id)
    mod = _fast.get(fastkey)
    if mod is not None:
        return mod
    ctype, utype = CTYPES[dt.name]
    fast, atype = _fast_atomic(ops.add_code, dt)
    src = (_TEMPLATE.replace("__TYPE__", ctype).replace("__UTYPE__", utype)
           .replace("__WTYPE__", "unsigned long long" if dt.itemsize == 8 else "unsigned int")
           .replace("__ITYPE__", itype).replace("__GROUP__", str(int(group)))
           .replace("__ISFLOAT__", "1" if dt.kind == "f" else "0").replace("__FAST__", str(fast))
           .replace("__ATYPE__", atype or ctype).replace("__ADD__", ops.add).replace("__MUL__", ops.mul))
    key = hashlib.sha256(src.encode()).hexdigest()
    dev = cp.cuda.Device().id
    mod = _modules.get((key, dev))
    if mod is None:
        mod = cp.RawModule(code=src, options=("--std=c++17", "--fmad=false"), name_expressions=None)
        _modules[(key, dev)] = mod
    _fast[fastkey] = mod
    return mod


def kernel(ops: Ops, name: str, itype: str = "long long", group: int = 1) -> Any:
    key = (ops.dtype.str, ops.add, ops.mul, ops.add_code, itype, int(group), name)
    fn = _fns.get(key)
    if fn is None or rt.cupy().cuda.Device().id != fn[0]:
        fn = _fns[key] = (rt.cupy().cuda.Device().id, module(ops, itype, group).get_function(name))
    return fn[1]


def launch(fn: Any, n: int, args: tuple, threads: int = 256, per_thread: int = 1, cap: int = 132 * 32) -> None:
    """Grid-stride launch over ``n`` items (``per_thread`` items a thread at most in the first pass)."""
    if rt._inject:
        rt.check_injected("launch")
    if n <= 0:
        return
    blocks = max(1, min((n + threads * per_thread - 1) // (threads * per_thread), cap))
    fn((blocks,), (threads,), args)
    rt.counters["kernel_launches"] += 1


def scalar(ops: Ops, v: Any) -> Any:
    return np.asarray(v, dtype=ops.dtype).astype(ops.kview())[()]


# -- operations on CuPy arrays (1-D, the page's dtype; bool as bool or uint8) ---------------------------------
def _kv(a: Any) -> Any:
    return a.view("uint8") if a.dtype == np.bool_ else a


def apply_normalized(ops: Ops, page: Any, idx: Any, vals: Any, assign: bool) -> tuple[Any, Any]:
    """Apply a sorted, unique sparse delta in place; returns (old values, changed flags as uint8)."""
    cp = rt.cupy()
    n = int(idx.size)
    old = cp.empty(n, dtype=ops.kview())
    changed = cp.empty(n, dtype=np.uint8)
    launch(kernel(ops, "apply_norm"), n, (_kv(page), idx, _kv(vals), old, changed, np.int64(n), np.int32(assign)))
    return old, changed


def scatter(ops: Ops, page: Any, idx: Any, vals: Any, assign: bool = False, is_sorted: bool = False,
            exact: bool = False) -> None:
    """page[idx[k]] = page[idx[k]] ⊕ vals[k] in input order, duplicates combined (assign: the last wins).

    Unsorted accumulate uses atomics (hardware add/min/max where CUDA has them, else CAS); ``exact=True`` or
    assign sort first (stable) and fold runs, which reproduces the CPU order bit for bit.
    """
    cp = rt.cupy()
    n = int(idx.size)
    if not n:
        return
    if not is_sorted and (assign or exact):
        order = cp.argsort(idx, kind="stable") if _has_stable(cp) else _stable_argsort(cp, idx)
        idx, vals = idx[order], vals[order]
        is_sorted = True
    if is_sorted:
        launch(kernel(ops, "scatter_sorted"), n, (_kv(page), idx, _kv(vals), np.int64(n), np.int32(assign)))
    else:
        launch(kernel(ops, "scatter_atomic"), n, (_kv(page), idx, _kv(vals), np.int64(n)))


def _has_stable(cp: Any) -> bool:
    import inspect

    try:
        return "kind" in inspect.signature(cp.argsort).parameters
    except (TypeError, ValueError):
        return False


def _stable_argsort(cp: Any, idx: Any) -> Any:
    # argsort of (idx, position) pairs: lexsort keys, last key primary
    return cp.lexsort(cp.stack([cp.arange(idx.size, dtype=np.int64), idx]))


def masked_merge(ops: Ops, page: Any, mask: Any, vals: Any, assign: bool = False) -> None:
    """Where mask: page = page ⊕ vals (or vals for assign); 16-byte vector loads when aligned."""
    n = int(page.size)
    it = ops.kview().itemsize
    vec = max(16 // it, 4)
    aligned = (page.data.ptr % 16 == 0 and vals.data.ptr % 16 == 0 and mask.data.ptr % vec == 0)
    nvec = n // vec if aligned else 0
    launch(kernel(ops, "masked_merge"), max(nvec, 1) if nvec else n,
           (_kv(page), _kv(mask), _kv(vals), np.int64(n), np.int64(nvec), np.int32(assign)))


class DeviceCSR:
    """A CSR matrix (and lazily its transpose) on one device, int32 indices when they fit."""

    def __init__(self, csr: Any, dev: int, dtype: np.dtype):
        cp = rt.cupy()
        self.shape = tuple(csr.shape)
        self.nnz = int(csr.indptr[-1]) if csr.indptr.size else 0
        small = self.nnz < 2**31 - 1 and max(self.shape) < 2**31 - 1
        it = np.int32 if small else np.int64
        self.itype = "int" if small else "long long"
        kd = np.uint8 if np.dtype(dtype) == np.bool_ else np.dtype(dtype)
        with rt.on(dev):
            self.indptr = rt.to_device(np.asarray(csr.indptr).astype(it), dev)
            self.indices = rt.to_device(np.asarray(csr.indices).astype(it), dev)
            self.data = rt.to_device(np.asarray(csr.data).astype(dtype).view(kd) if np.dtype(dtype) == np.bool_
                                     else np.asarray(csr.data).astype(dtype), dev)
        rows = self.shape[0]
        mean = self.nnz / max(rows, 1)
        g = 1                          # lanes per row: each lane takes two entries a step
        while g < 32 and g * 4 <= max(mean, 1):
            g *= 2
        self.group = g
        _ = cp


def spmv(ops: Ops, A: DeviceCSR, x: Any, y: Any, rows: Any = None, compact: bool = False,
         group: Optional[int] = None) -> None:
    """y[i] = zero ⊕ (⊕_k A[i, k] ⊗ x[k]) for all rows (or ``rows``; ``compact``: y[r] for the r-th listed row)."""
    cp = rt.cupy()
    g = A.group if group is None else group
    nrows = A.shape[0] if rows is None else int(rows.size)
    dummy = rows if rows is not None else _dummy(cp)
    launch(kernel(ops, "spmv", A.itype, g), nrows * g, cap=1 << 30,
           args=(A.indptr, A.indices, _kv(A.data), _kv(x), _kv(y), dummy, np.int64(nrows), np.int32(rows is not None),
            np.int32(compact), scalar(ops, ops.zero)))


def push(ops: Ops, At: DeviceCSR, idx: Any, vals: Any, y: Any, changed: Any, group: Optional[int] = None) -> None:
    """y ⊕= A ⊗ (idx, vals) with Aᵀ given; sets changed[i] = 1 where y[i] moved."""
    g = At.group if group is None else group
    m = int(idx.size)
    launch(kernel(ops, "push", At.itype, g), m * g,
           (At.indptr, At.indices, _kv(At.data), idx, _kv(vals), np.int64(m), _kv(y), changed,
            scalar(ops, ops.zero)))


def combine(ops: Ops, y: Any, t: Any) -> None:
    n = int(y.size)
    launch(kernel(ops, "combine"), n, (_kv(y), _kv(t), np.int64(n)))


def changed_mask(ops: Ops, a: Any, b: Any) -> Any:
    cp = rt.cupy()
    out = cp.empty(a.size, dtype=np.uint8)
    launch(kernel(ops, "neq_flags"), int(a.size), (_kv(a), _kv(b), out, np.int64(a.size)))
    return out.view(np.bool_)


def closure(ops: Ops, At: DeviceCSR, x: Any, frontier: Any, max_rounds: Optional[int] = None) -> Any:
    """Semi-naive fixpoint x[i] = x[i] ⊕ A[i, j] ⊗ x[j] from ``frontier`` (device int64); returns the sorted
    changed entries (device int64). ValueError("closure does not converge") after n + 1 rounds."""
    cp = rt.cupy()
    n = int(x.size)
    zero = scalar(ops, ops.zero)
    xv = _kv(x)
    flags = cp.zeros(n, dtype=np.uint8)
    touched = cp.zeros(n, dtype=np.uint8)
    front = cp.unique(frontier)
    rounds = 0
    limit = n + 1 if max_rounds is None else max_rounds
    while True:
        if front.size:
            front = front[xv[front] != zero]
        if not front.size:
            break
        rounds += 1
        if rounds > limit:
            raise ValueError("closure does not converge")
        vals = xv[front]
        push(ops, At, front, vals, x, flags)
        front = cp.flatnonzero(flags).astype(np.int64)
        touched |= flags
        flags[front] = 0
    return cp.flatnonzero(touched).astype(np.int64)


_dummies: dict = {}


def _dummy(cp: Any) -> Any:
    dev = cp.cuda.Device().id
    d = _dummies.get(dev)
    if d is None:
        d = _dummies[dev] = cp.zeros(1, dtype=np.int64)
    return d


def batch_apply(ops: Ops, pages: list, idxs: list, valss: list, assigns: list, dev: int) -> tuple[Any, Any, Any]:
    """The command buffer: pack many sorted-unique sparse deltas (for distinct pages of one dtype on one device)
    into one device buffer (one pinned upload) and apply them with one kernel launch.

    Returns (offsets, old values, changed flags) as numpy arrays (one download each)."""
    cp = rt.cupy()
    nd = len(pages)
    counts = np.array([i.size for i in idxs], dtype=np.int64)
    offs = np.zeros(nd + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    total = int(offs[-1])
    kd = ops.kview()
    hdr = np.empty((nd, 3), dtype=np.int64)
    hdr[:, 0] = [p.data.ptr for p in pages]
    hdr[:, 1] = offs[:-1]
    hdr[:, 2] = np.asarray(assigns, dtype=np.int64)
    hb, ib = hdr.nbytes, total * 8
    vb = total * kd.itemsize
    packed = np.empty(hb + ib + vb + 16, dtype=np.uint8)
    packed[:hb] = hdr.view(np.uint8).ravel()
    packed[hb:hb + ib] = (np.concatenate(idxs).astype(np.int64) if total else np.empty(0, np.int64)).view(np.uint8)
    vstart = hb + ib
    if total:
        packed[vstart:vstart + vb] = np.concatenate([np.asarray(v).astype(ops.dtype).view(kd) for v in valss]
                                                    ).view(np.uint8)
    with rt.on(dev):
        dbuf = rt.to_device(packed, dev)
        dh = dbuf[:hb].view(np.int64)
        di = dbuf[hb:hb + ib].view(np.int64)
        dv = dbuf[vstart:vstart + vb].view(kd)
        old = cp.empty(total, dtype=kd)
        changed = cp.empty(total, dtype=np.uint8)
        launch(kernel(ops, "batch_apply"), total, (dh, np.int32(nd), di, dv, old, changed, np.int64(total)))
        return offs, rt.to_host(old), rt.to_host(changed)
