"""A deterministic, seeded workload with propagation and its numpy model (shared by the parent tests and the
crash child process, so that the parent can rebuild exactly what the child committed).

Pages (N entries each):
  src  float64 plus_times   written (assign / accumulate / masked)
  lk   float64 = link(A, src)                         (A: small integer matrix, so sums are exact)
  dv   float64 = derive("dbl", [src, lk]) = 2*src + lk
  ms   float64 min_plus     written (min-accumulate and assign: an assign may *worsen* a distance)
  md   float64 = closure(md, ms, W.T)                  (shortest distances along edges u->v of weight W[u, v])
  cnt  int64   plus_times   written (accumulate / assign)
Every transaction commits exactly one epoch; checkpoints and compaction commit none.
"""
from __future__ import annotations

import numpy as np

N = 12
WRITTEN = ("src", "ms", "cnt")
PAGES = ("src", "lk", "dv", "ms", "md", "cnt")


def dbl(a, b):
    return 2.0 * a + b


FUNCS = {"dbl": dbl}


def _matrices():
    rng = np.random.default_rng(12345)
    A = rng.integers(0, 3, size=(N, N)).astype(np.float64)
    W = np.full((N, N), np.inf)
    edges = rng.random((N, N)) < 0.25
    np.fill_diagonal(edges, False)
    W[edges] = rng.integers(1, 6, size=int(edges.sum())).astype(np.float64)
    return A, W


A, W = _matrices()


def setup(buf) -> int:
    """Create the pages and rules in an open, empty buffer; returns the epoch after setup."""
    src = buf.create_page("src", N)
    lk = buf.create_page("lk", N)
    buf.link(lk, src, A)
    dv = buf.create_page("dv", N)
    buf.derive(dv, [src, lk], "dbl")
    ms = buf.create_page("ms", N, semiring="min_plus")
    md = buf.create_page("md", N, semiring="min_plus")
    buf.closure(md, ms, W.T.copy())
    buf.create_page("cnt", N, dtype="int64")
    return buf.epoch


def initial_state() -> dict:
    return {"src": np.zeros(N), "ms": np.full(N, np.inf), "cnt": np.zeros(N, dtype=np.int64)}


def closure_model(ms: np.ndarray) -> np.ndarray:
    x = ms.copy()
    for _ in range(N + 1):
        # x[i] = min(ms[i], min_j W[j, i] + x[j])
        nx = np.minimum(ms, np.min(W + x[:, None], axis=0))
        if np.array_equal(nx, x):
            break
        x = nx
    return x


def full_state(st: dict) -> dict:
    lk = A @ st["src"]
    return {"src": st["src"], "lk": lk, "dv": dbl(st["src"], lk), "ms": st["ms"], "md": closure_model(st["ms"]),
            "cnt": st["cnt"]}


def gen_txn(seed: int, trial: int, k: int) -> list:
    """The ops of transaction k of a trial: [(page, index or None, mask or None, values, accumulate)]."""
    rng = np.random.default_rng([seed, trial, k])
    ops = []
    for _ in range(int(rng.integers(1, 4))):
        page = WRITTEN[int(rng.integers(0, 3))]
        acc = bool(rng.random() < 0.6)
        if rng.random() < 0.12:                       # dense masked write of the whole page
            mask = rng.random(N) < 0.4
            index = None
            n = N
        else:
            mask = None
            n = int(rng.integers(1, 5))
            index = np.sort(rng.choice(N, size=n, replace=False)).astype(np.int64)
        if page == "src":
            vals = rng.integers(-5, 6, size=n).astype(np.float64)
        elif page == "ms":
            vals = rng.integers(0, 21, size=n).astype(np.float64)
        else:
            vals = rng.integers(-3, 4, size=n).astype(np.int64)
        ops.append((page, index, mask, vals, acc))
    return ops


def apply_ops(st: dict, ops: list) -> dict:
    st = {k: v.copy() for k, v in st.items()}
    for page, index, mask, vals, acc in ops:
        a = st[page]
        if mask is not None:
            sel = np.flatnonzero(mask)
            index, vals = sel, vals[sel]
        if acc:
            if page == "ms":
                np.minimum.at(a, index, vals)
            else:
                np.add.at(a, index, vals)
        else:
            a[index] = vals
    return st


def write_ops(buf, ops: list) -> int:
    """Commit ``ops`` as one transaction (or one write); returns the epoch."""
    if len(ops) == 1:
        page, index, mask, vals, acc = ops[0]
        return buf.write(page, vals, index=index, mask=mask, accumulate=acc)
    tx = buf.transaction()
    for page, index, mask, vals, acc in ops:
        tx.write(page, vals, index=index, mask=mask, accumulate=acc)
    return tx.commit()


def state_of(buf) -> dict:
    return {name: buf[name].read() for name in PAGES}


def diff(buf_state: dict, model: dict) -> list:
    """Names of pages whose contents differ (NaN-free data: exact equality)."""
    return [n for n in PAGES if not np.array_equal(np.asarray(buf_state[n]).reshape(-1), model[n])]
