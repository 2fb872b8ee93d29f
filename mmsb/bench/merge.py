"""merge: sparse scatter-⊕ and dense masked merge against numpy ufunc.at / np.where; semiring folds."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from mmsb import _kernels, _ops, semirings
from mmsb.bench._common import Row, pair

GROUP = "merge"


def run(quick: bool = False) -> Iterator[Row]:
    page_n = 1_000_000 if quick else 10_000_000
    upd_n = 100_000 if quick else 1_000_000
    rep = 3 if quick else 5
    rng = np.random.default_rng(42)
    base = rng.random(page_n)
    index = rng.integers(0, page_n, upd_n, dtype=np.int64)       # unsorted, with duplicates
    values = rng.random(upd_n)
    size = f"{upd_n:,} unsorted updates into a {page_n:,} float64 page"

    # Correctness first: the kernel must agree with numpy.
    for code, uf in ((_ops.OP_PLUS, np.add), (_ops.OP_MIN, np.minimum)):
        a, b = base.copy(), base.copy()
        _kernels.merge.scatter(a, index, values, code, False)
        uf.at(b, index, values)
        if not np.allclose(a, b, rtol=1e-12, atol=0):
            raise AssertionError(f"merge.scatter({_ops.NAMES[code]}) disagrees with np.{uf.__name__}.at")

    pg = base.copy()
    for code, uf, label in ((_ops.OP_PLUS, np.add, "plus"), (_ops.OP_MIN, np.minimum, "min")):
        t_m, t_b = pair(lambda: _kernels.merge.scatter(pg, index, values, code, False),
                        lambda: uf.at(pg, index, values), rep)
        yield Row(GROUP, f"scatter {label} (kernel), {size}", t_m, f"np.{uf.__name__}.at", t_b).judge_ratio(2.0)

    for name, uf in (("plus_times", np.add), ("min_plus", np.minimum)):
        sr = semirings.get(name)
        t_m, t_b = pair(lambda: sr.accumulate(pg, index, values), lambda: uf.at(pg, index, values), rep)
        yield Row(GROUP, f"Semiring('{name}').accumulate, {size}", t_m, f"np.{uf.__name__}.at",
                  t_b).judge_ratio(2.0)

    # Dense masked merge: page[mask] = min(page, v)[mask], in place.
    mask = rng.random(page_n) < 0.5
    dense = rng.random(page_n)
    a = base.copy()
    _kernels.merge.masked_merge(a, mask, dense, _ops.OP_MIN)
    if not np.array_equal(a, np.where(mask, np.minimum(base, dense), base)):
        raise AssertionError("merge.masked_merge(min) disagrees with np.where")
    t_m, t_b = pair(lambda: _kernels.merge.masked_merge(pg, mask, dense, _ops.OP_MIN),
                    lambda: np.where(mask, np.minimum(pg, dense), pg), rep)
    yield Row(GROUP, f"masked_merge min (kernel), {page_n:,} float64, 50% mask", t_m,
              "np.where(mask, np.minimum(page, v), page)", t_b).judge_ratio(3.0)
    # the fairer in-place numpy form, for context
    t_m, t_b = pair(lambda: _kernels.merge.masked_merge(pg, mask, dense, _ops.OP_MIN),
                    lambda: np.minimum(pg, dense, out=pg, where=mask), rep)
    yield Row(GROUP, f"masked_merge min (kernel), {page_n:,} float64, 50% mask", t_m,
              "np.minimum(page, v, out=page, where=mask)", t_b, note="context: numpy's in-place form")

    # The same kernels at each SIMD level built and runnable here, against the SSE2 baseline of the same build.
    levels = _kernels.compiled_levels()
    for level, ns in levels.items():
        if level == "sse2":
            continue
        for label, fn in (("masked_merge min", lambda m: m.masked_merge(pg, mask, dense, _ops.OP_MIN)),
                          ("scatter plus", lambda m: m.scatter(pg, index, values, _ops.OP_PLUS, False)),
                          ("scatter min", lambda m: m.scatter(pg, index, values, _ops.OP_MIN, False))):
            t_m, t_b = pair(lambda: fn(ns.merge), lambda: fn(levels["sse2"].merge), rep)
            yield Row(GROUP, f"{label} at the {level} level (in use: {_kernels.SIMD})", t_m,
                      "the same kernel at the sse2 level", t_b, note="report; the faster level is the default")

    # Semiring folds over a whole page (⊕-reduce) against the numpy reduction a user would write.
    for name, red in (("plus_times", np.add.reduce), ("min_plus", np.minimum.reduce), ("max_min", np.maximum.reduce)):
        sr = semirings.get(name)
        t_m, t_b = pair(lambda: sr.fold_add(base), lambda: red(base), rep)
        yield Row(GROUP, f"Semiring('{name}').fold_add, {page_n:,} float64", t_m,
                  f"np.{red.__self__.__name__}.reduce", t_b, note="context (no target)")
