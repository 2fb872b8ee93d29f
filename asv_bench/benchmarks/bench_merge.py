import numpy as np

from mmsb import _kernels, _ops, semirings

from ._util import ratio


class Scatter:
    """Sparse scatter-⊕ of 100k unsorted updates into a 1M float64 page."""
    params = ["plus", "min"]
    param_names = ["op"]

    def setup(self, op):
        rng = np.random.default_rng(0)
        self.page = rng.random(1_000_000)
        self.index = rng.integers(0, self.page.size, 100_000)
        self.values = rng.random(100_000)
        self.code = {"plus": _ops.OP_PLUS, "min": _ops.OP_MIN}[op]
        self.ufunc = {"plus": np.add, "min": np.minimum}[op]
        self.sr = semirings.get({"plus": "plus_times", "min": "min_plus"}[op])

    def time_kernel_scatter(self, op):
        _kernels.merge.scatter(self.page, self.index, self.values, self.code, False)

    def time_semiring_accumulate(self, op):
        self.sr.accumulate(self.page, self.index, self.values)

    def time_numpy_ufunc_at(self, op):
        self.ufunc.at(self.page, self.index, self.values)

    def track_ratio_ufunc_at_over_scatter(self, op):
        return ratio(lambda: _kernels.merge.scatter(self.page, self.index, self.values, self.code, False),
                     lambda: self.ufunc.at(self.page, self.index, self.values))
    track_ratio_ufunc_at_over_scatter.unit = "x"


class MaskedMerge:
    def setup(self):
        rng = np.random.default_rng(1)
        self.page = rng.random(1_000_000)
        self.mask = rng.random(self.page.size) < 0.5
        self.values = rng.random(self.page.size)

    def time_masked_merge_min(self):
        _kernels.merge.masked_merge(self.page, self.mask, self.values, _ops.OP_MIN)

    def time_numpy_where(self):
        np.where(self.mask, np.minimum(self.page, self.values), self.page)

    def track_ratio_where_over_masked_merge(self):
        return ratio(lambda: _kernels.merge.masked_merge(self.page, self.mask, self.values, _ops.OP_MIN),
                     lambda: np.where(self.mask, np.minimum(self.page, self.values), self.page))
    track_ratio_where_over_masked_merge.unit = "x"


class Fold:
    params = ["plus_times", "min_plus"]
    param_names = ["semiring"]

    def setup(self, name):
        self.x = np.random.default_rng(2).random(1_000_000)
        self.sr = semirings.get(name)

    def time_fold_add(self, name):
        self.sr.fold_add(self.x)
