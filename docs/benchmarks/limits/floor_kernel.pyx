# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The least work any incremental ``link`` update must do for a batch of changed matrix entries (#15's 5x figure):
for each change (row-sorted), find the entry in its CSR row, swap in the new value and add (new - old) * x[col]
to y[row]. No validation, no log, no rounding-error bounds, no undo: a lower bound on the time of an exact
incremental update, to compare with a full mxv."""
from cython.parallel cimport prange


def entry_update(const long[::1] indptr, const long[::1] indices, double[::1] data, const long[::1] rows,
                 const long[::1] cols, const double[::1] vals, const double[::1] x, double[::1] y,
                 int threads):
    cdef Py_ssize_t k, n = rows.shape[0]
    cdef long r, c, lo, hi, mid
    cdef double old
    for k in prange(n, nogil=True, num_threads=threads, schedule="static"):
        r = rows[k]
        c = cols[k]
        lo = indptr[r]
        hi = indptr[r + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if indices[mid] < c:
                lo = mid + 1
            else:
                hi = mid
        old = data[lo]
        data[lo] = vals[k]
        y[r] += (vals[k] - old) * x[c]
