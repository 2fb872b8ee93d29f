"""Pure-Python twin of ``mmsb._ext.cpu``: reports ``build=[]`` and reads /proc/cpuinfo."""
from __future__ import annotations

LEVELS = ("AVX512F", "AVX2", "AVX", "SSE4_2", "SSE2", "SVE", "NEON")

_CPUINFO_FLAGS = {"sse2": "SSE2", "sse4_2": "SSE4_2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA",
                  "avx512f": "AVX512F", "asimd": "NEON", "neon": "NEON", "sve": "SVE"}
_ORDER = ("SSE2", "SSE4_2", "AVX", "AVX2", "FMA", "AVX512F", "NEON", "SVE")

KERNEL_LEVELS = ("sse2", "avx2", "avx512")
_LEVEL_FLAGS = {"sse2": ("sse2",),
                "avx2": ("sse4_2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c"),
                "avx512": ("sse4_2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "avx512f", "avx512bw",
                           "avx512dq", "avx512vl", "avx512cd")}

__all__ = ["LEVELS", "KERNEL_LEVELS", "build_features", "machine_features", "features", "level_supported",
           "set_dispatch"]


def _cpuinfo_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return set()
    found = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return found


def level_supported(level: str) -> bool:
    """True when /proc/cpuinfo lists every feature the kernels of ``level`` are compiled for."""
    if level not in KERNEL_LEVELS:
        raise ValueError(f"unknown SIMD level {level!r} (expected one of {', '.join(KERNEL_LEVELS)})")
    return level == "sse2" or set(_LEVEL_FLAGS[level]) <= _cpuinfo_flags()


def set_dispatch(simd, simd_levels, threads=None) -> None:
    """Accepted for parity with the compiled module (the twins use no compiled level)."""


def build_features() -> list[str]:
    """No compiled code: always []."""
    return []


def machine_features() -> list[str]:
    """SIMD features named in /proc/cpuinfo (empty where it cannot be read)."""
    found = {_CPUINFO_FLAGS[f] for f in _cpuinfo_flags() if f in _CPUINFO_FLAGS}
    return [name for name in _ORDER if name in found]


def features() -> dict:
    """``{'build': [], 'machine', 'simd_level', 'simd': None, 'simd_levels': [], 'openmp_threads': 1, 'threads': 1}``.

    With no compiled code, ``simd_level`` is the best level of the CPU (numpy dispatches on it at run time).
    """
    machine = machine_features()
    level = next((name for name in LEVELS if name in machine), "none")
    return {"build": [], "machine": machine, "simd_level": level, "simd": None, "simd_levels": [],
            "openmp_threads": 1, "threads": 1}
