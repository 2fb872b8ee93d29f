"""The hot kernels (merge, spmv, codecs) compiled for the avx2 SIMD level (built by setup.py)."""
