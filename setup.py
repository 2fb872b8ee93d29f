"""Build the Cython extensions in mmsb/_ext with one set of directives for the whole build.

The hot kernels (merge, spmv, codecs) are compiled once per SIMD level from the same generated C file: the
baseline (``mmsb._ext.merge``, x86-64 SSE2), ``mmsb._ext._avx2.merge`` (-mavx2 -mfma ...) and
``mmsb._ext._avx512.merge`` (AVX-512 F/BW/DQ/VL/CD); ``mmsb._kernels`` picks the best one the CPU runs at import.
Cython runs and the C compilers run in parallel (``--parallel``/``-j`` defaults to the CPU count), each
extension printing one progress line.

MMSB_CYTHON_DEBUG=1 turns bounds checks, wraparound and initialisation checks back on;
MMSB_EXT_ONLY=merge,spmv builds only those modules (for kernel work); MMSB_NATIVE=1 adds -march=native;
MMSB_SIMD_LEVELS=avx2,avx512 chooses the extra levels built on x86-64 (empty: baseline only).

Each built extension is kept in build/ext-cache/ under a hash of everything that goes into it (its C source and
the shared headers, the compiler and linker command lines, the flags, Python's and numpy's versions), so that a
second build of the same tree (``pip install .`` then ``pip install -e .``) copies it instead of compiling it
again. MMSB_EXT_CACHE=0 turns the cache off; ``rm -rf build`` empties it.
"""
import glob
import hashlib
import os
import platform
import re
import shutil
import sys
import threading
import time

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
# -ffp-contract=off: no fused multiply-add contraction, so that every SIMD level rounds as the numpy twins do
CFLAGS = ["-O0", "-g", "-ffp-contract=off"] if DEBUG else ["-O3", "-ffp-contract=off"]
if os.environ.get("MMSB_NATIVE") == "1":     # kernels for this machine's SIMD level (not portable)
    CFLAGS.append("-march=native")
OPENMP = [] if os.environ.get("MMSB_NO_OPENMP") == "1" else ["-fopenmp"]
JOBS = os.cpu_count() or 1

# extra SIMD levels (x86-64 with gcc/clang): the compiler flags of each; mmsb/_ext/cpu.pyx checks the same features
SIMD_FLAGS = {
    "avx2": ["-msse4.2", "-mpopcnt", "-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
    "avx512": ["-msse4.2", "-mpopcnt", "-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mavx512f",
               "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd", "-mprefer-vector-width=512"],
}
SIMD_MODULES = ("merge", "spmv", "codecs")
_X86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
_LEVELS_ENV = os.environ.get("MMSB_SIMD_LEVELS")
SIMD_LEVELS = ([n for n in _LEVELS_ENV.split(",") if n] if _LEVELS_ENV is not None else list(SIMD_FLAGS)) \
    if _X86 and not DEBUG else []

ONLY = [n for n in os.environ.get("MMSB_EXT_ONLY", "").split(",") if n]
SOURCES = [s for s in sorted(glob.glob("mmsb/_ext/*.pyx"))
           if not ONLY or os.path.splitext(os.path.basename(s))[0] in ONLY]


HEADERS = sorted(glob.glob("mmsb/_ext/*.h")) + sorted(glob.glob("mmsb/_ext/*.pxd"))


def _extension(name, source, extra=()):
    return Extension(
        name,
        [source],
        depends=HEADERS,          # rebuilt when a shared header changes; shipped in the sdist
        include_dirs=[np.get_include(), "mmsb/_ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=CFLAGS + list(extra) + OPENMP,
        extra_link_args=OPENMP,
    )


def _simd_copy(c_file, level):
    """The generated C file of a hot kernel copied to build/simd/<level>/ (rewritten only when it changed)."""
    dst = os.path.join("build", "simd", level, os.path.basename(c_file))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(c_file):
        shutil.copy2(c_file, dst)
    return dst


CACHE_DIR = os.path.join("build", "ext-cache")
# the comment at the top of a Cython-generated C file: build settings that _cache_key hashes anyway, with the path
# of the numpy it was generated against (pip builds each time in a fresh temporary environment)
_METADATA = re.compile(rb"/\* BEGIN: Cython Metadata.*?END: Cython Metadata \*/", re.S)
USE_CACHE = os.environ.get("MMSB_EXT_CACHE", "1") != "0"


def _cache_key(ext, compiler):
    """A hash of everything that goes into ``ext``'s built file."""
    h = hashlib.sha256()
    for part in (sys.version, sys.platform, platform.machine(), np.__version__, ext.name,
                 getattr(compiler, "compiler_so", None), getattr(compiler, "linker_so", None),
                 ext.extra_compile_args, ext.extra_link_args, ext.define_macros,
                 # numpy's headers by its version (above): pip builds each time in a fresh temporary environment
                 [d for d in ext.include_dirs if d != np.get_include()]):
        h.update(repr(part).encode() + b"\0")
    for path in list(ext.sources) + sorted(ext.depends):
        with open(path, "rb") as f:
            h.update(hashlib.sha256(_METADATA.sub(b"", f.read())).digest())
    return h.hexdigest()


def _copy_whole(src, dst):
    """Copy ``src`` to ``dst`` through a temporary file and a rename: ``dst`` is never seen half written."""
    part = f"{dst}.{os.getpid()}.{threading.get_ident()}.part"
    shutil.copyfile(src, part)
    os.replace(part, dst)


def _prune_cache(keep=64):
    """Keep the ``keep`` most recently used files of the cache (a few builds' worth)."""
    try:
        files = sorted((os.path.join(CACHE_DIR, n) for n in os.listdir(CACHE_DIR) if not n.endswith(".part")),
                       key=os.path.getmtime)
        for path in files[:-keep]:
            os.unlink(path)
    except OSError:
        pass                                     # another build pruned it meanwhile


class ParallelBuildExt(build_ext):
    """build_ext that compiles the extensions in parallel by default, says which one it is on, and reuses an
    identical earlier build of an extension from build/ext-cache/."""

    def finalize_options(self):
        if self.parallel is None:
            self.parallel = JOBS
        super().finalize_options()

    def build_extension(self, ext):
        start = time.perf_counter()
        target = self.get_ext_fullpath(ext.name)
        cached = None
        if USE_CACHE and not self.force:
            cached = os.path.join(CACHE_DIR, _cache_key(ext, self.compiler) + os.path.splitext(target)[1])
            if os.path.exists(cached):
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                _copy_whole(cached, target)     # a process that has the old file loaded keeps it intact
                os.utime(cached)                # recently used: kept by _prune_cache
                print(f"mmsb: {ext.name} unchanged since an earlier build (build/ext-cache)", flush=True)
                return
        print(f"mmsb: compiling {ext.name} ...", flush=True)
        if cached is not None and os.path.exists(target):
            os.unlink(target)                   # a miss compiles: what is cached matches its key
        super().build_extension(ext)
        if cached is not None and os.path.exists(target):
            os.makedirs(CACHE_DIR, exist_ok=True)
            _copy_whole(target, cached)         # whole or absent, also with parallel builds
            _prune_cache()
        print(f"mmsb: built {ext.name} in {time.perf_counter() - start:.1f} s", flush=True)


def _extensions():
    base = cythonize([_extension("mmsb._ext." + os.path.splitext(os.path.basename(src))[0], src)
                      for src in SOURCES],
                     compiler_directives=DIRECTIVES, force=DEBUG, nthreads=JOBS, quiet=True)
    out = list(base)
    for ext in base:
        mod = ext.name.rsplit(".", 1)[1]
        if mod not in SIMD_MODULES:
            continue
        for level in SIMD_LEVELS:
            out.append(_extension(f"mmsb._ext._{level}.{mod}", _simd_copy(ext.sources[0], level),
                                  SIMD_FLAGS[level]))
    # the slowest compiles first, so that the parallel build ends with the short ones
    out.sort(key=lambda e: -os.path.getsize(e.sources[0]))
    return out


setup(ext_modules=_extensions(), cmdclass={"build_ext": ParallelBuildExt})
