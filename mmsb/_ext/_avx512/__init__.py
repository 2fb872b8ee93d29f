"""The hot kernels (merge, spmv, codecs) compiled for the avx512 SIMD level (built by setup.py)."""
