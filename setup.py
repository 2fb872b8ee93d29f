"""Build the Cython extensions in mmsb/_ext with one set of directives for the whole build.

MMSB_CYTHON_DEBUG=1 turns bounds checks, wraparound and initialisation checks back on;
MMSB_EXT_ONLY=merge,spmv builds only those modules (for kernel work); MMSB_NATIVE=1 adds -march=native.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MMSB_CYTHON_DEBUG") == "1"
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]
if os.environ.get("MMSB_NATIVE") == "1":     # kernels for this machine's SIMD level (not portable)
    CFLAGS.append("-march=native")
OPENMP = [] if os.environ.get("MMSB_NO_OPENMP") == "1" else ["-fopenmp"]

ONLY = [n for n in os.environ.get("MMSB_EXT_ONLY", "").split(",") if n]
SOURCES = [s for s in sorted(glob.glob("mmsb/_ext/*.pyx"))
           if not ONLY or os.path.splitext(os.path.basename(s))[0] in ONLY]

extensions = [
    Extension(
        "mmsb._ext." + os.path.splitext(os.path.basename(src))[0],
        [src],
        include_dirs=[np.get_include(), "mmsb/_ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=CFLAGS + OPENMP,
        extra_link_args=OPENMP,
    )
    for src in SOURCES
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, force=DEBUG))
