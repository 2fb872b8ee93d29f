"""CPU feature detection: the SIMD extensions this build was compiled for and those the running CPU supports.

The pure-Python twin is ``mmsb._ref.cpu`` (it reports ``build=[]`` and reads /proc/cpuinfo).
"""
cdef extern from *:
    """
    static const char *mmsb_build_simd[] = {
    #ifdef __SSE2__
        "SSE2",
    #endif
    #ifdef __SSE4_2__
        "SSE4_2",
    #endif
    #ifdef __AVX__
        "AVX",
    #endif
    #ifdef __AVX2__
        "AVX2",
    #endif
    #ifdef __FMA__
        "FMA",
    #endif
    #ifdef __AVX512F__
        "AVX512F",
    #endif
    #if defined(__ARM_NEON) || defined(__ARM_NEON__)
        "NEON",
    #endif
    #ifdef __ARM_FEATURE_SVE
        "SVE",
    #endif
        NULL
    };

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #define MMSB_HAVE_CPU_SUPPORTS 1
    static const char *mmsb_machine_names[] = {"SSE2", "SSE4_2", "AVX", "AVX2", "FMA", "AVX512F", NULL};
    static int mmsb_machine_has(int i) {
        __builtin_cpu_init();
        switch (i) {
        case 0: return __builtin_cpu_supports("sse2") != 0;
        case 1: return __builtin_cpu_supports("sse4.2") != 0;
        case 2: return __builtin_cpu_supports("avx") != 0;
        case 3: return __builtin_cpu_supports("avx2") != 0;
        case 4: return __builtin_cpu_supports("fma") != 0;
        case 5: return __builtin_cpu_supports("avx512f") != 0;
        }
        return 0;
    }
    /* the features each extra kernel level of setup.py is compiled for (SIMD_FLAGS there) */
    static int mmsb_level_ok(int level) {
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt")
                 && __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2")
                 && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi")
                 && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
        if (level == 1)
            return v3;
        if (level == 2)
            return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                   && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
                   && __builtin_cpu_supports("avx512cd");
        return level == 0;
    }
    #else
    #define MMSB_HAVE_CPU_SUPPORTS 0
    static const char *mmsb_machine_names[] = {NULL};
    static int mmsb_machine_has(int i) { (void)i; return 0; }
    static int mmsb_level_ok(int level) { return level == 0; }
    #endif

    #ifdef _OPENMP
    #include <omp.h>
    static int mmsb_cpu_omp_threads(void) { return omp_get_max_threads(); }
    #else
    static int mmsb_cpu_omp_threads(void) { return 1; }
    #endif
    """
    const char **mmsb_build_simd
    const char **mmsb_machine_names
    int MMSB_HAVE_CPU_SUPPORTS
    int mmsb_machine_has(int i) nogil
    int mmsb_level_ok(int level) nogil
    int mmsb_cpu_omp_threads() nogil

# best first
LEVELS = ("AVX512F", "AVX2", "AVX", "SSE4_2", "SSE2", "SVE", "NEON")

# the kernel levels mmsb builds (setup.py SIMD_FLAGS) and the feature names each adds to the baseline build
KERNEL_LEVELS = ("sse2", "avx2", "avx512")
LEVEL_FEATURES = {"sse2": ("SSE2",), "avx2": ("SSE2", "SSE4_2", "AVX", "AVX2", "FMA"),
                  "avx512": ("SSE2", "SSE4_2", "AVX", "AVX2", "FMA", "AVX512F")}
LEVEL_NAMES = {"sse2": "SSE2", "avx2": "AVX2", "avx512": "AVX512F"}

_dispatch = {"simd": None, "simd_levels": [], "threads": None}


def level_supported(str level):
    """True when this CPU (and its OS) runs the kernels built for ``level`` ('sse2', 'avx2' or 'avx512')."""
    if level not in KERNEL_LEVELS:
        raise ValueError(f"unknown SIMD level {level!r} (expected one of {', '.join(KERNEL_LEVELS)})")
    return bool(mmsb_level_ok(KERNEL_LEVELS.index(level)))


def set_dispatch(simd, simd_levels, threads=None):
    """Record the kernel level mmsb._kernels chose, the levels built, and a callable giving the thread count."""
    _dispatch["simd"] = simd
    _dispatch["simd_levels"] = list(simd_levels)
    _dispatch["threads"] = threads

_CPUINFO_FLAGS = {"sse2": "SSE2", "sse4_2": "SSE4_2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA",
                  "avx512f": "AVX512F", "asimd": "NEON", "neon": "NEON", "sve": "SVE"}


def _cpuinfo_features():
    """SIMD features named in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return []
    found = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(_CPUINFO_FLAGS[f] for f in value.split() if f in _CPUINFO_FLAGS)
    return [name for name in ("SSE2", "SSE4_2", "AVX", "AVX2", "FMA", "AVX512F", "NEON", "SVE") if name in found]


def build_features():
    """SIMD macros this extension was compiled with, e.g. ['SSE2']."""
    cdef int i = 0
    out = []
    while mmsb_build_simd[i] != NULL:
        out.append(mmsb_build_simd[i].decode("ascii"))
        i += 1
    return out


def machine_features():
    """SIMD features the running CPU supports (__builtin_cpu_supports on x86, /proc/cpuinfo elsewhere)."""
    cdef int i = 0
    if not MMSB_HAVE_CPU_SUPPORTS:
        return _cpuinfo_features()
    out = []
    while mmsb_machine_names[i] != NULL:
        if mmsb_machine_has(i):
            out.append(mmsb_machine_names[i].decode("ascii"))
        i += 1
    return out


def features():
    """``{'build', 'machine', 'simd_level', 'simd', 'simd_levels', 'openmp_threads', 'threads'}``.

    ``simd`` is the kernel level in use ('sse2', 'avx2' or 'avx512', chosen by mmsb._kernels) and ``simd_level``
    its best feature ('SSE2', 'AVX2', 'AVX512F'); ``simd_levels`` the levels built; ``build`` the features
    compiled into them. Without a recorded choice, ``simd_level`` is the best feature both compiled in and
    supported by this CPU. ``threads`` is the number of threads a parallel kernel would use now (the thread policy
    of mmsb._kernels, lower while the machine is busy).
    """
    build = build_features()
    for lvl in _dispatch["simd_levels"]:
        build += [f for f in LEVEL_FEATURES.get(lvl, ()) if f not in build]
    machine = machine_features()
    if _dispatch["simd"] is not None:
        level = LEVEL_NAMES.get(_dispatch["simd"], _dispatch["simd"])
    else:
        usable = set(build) & set(machine)
        level = next((name for name in LEVELS if name in usable), "none")
    threads = _dispatch["threads"]() if _dispatch["threads"] is not None else mmsb_cpu_omp_threads()
    return {"build": build, "machine": machine, "simd_level": level, "simd": _dispatch["simd"],
            "simd_levels": list(_dispatch["simd_levels"]), "openmp_threads": mmsb_cpu_omp_threads(),
            "threads": threads}
