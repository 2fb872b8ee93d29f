"""Pure-Python twin of ``mmsb._ext.cpu``: reports ``build=[]`` and reads /proc/cpuinfo."""
from __future__ import annotations

LEVELS = ("AVX512F", "AVX2", "AVX", "SSE4_2", "SSE2", "SVE", "NEON")

_CPUINFO_FLAGS = {"sse2": "SSE2", "sse4_2": "SSE4_2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA",
                  "avx512f": "AVX512F", "asimd": "NEON", "neon": "NEON", "sve": "SVE"}
_ORDER = ("SSE2", "SSE4_2", "AVX", "AVX2", "FMA", "AVX512F", "NEON", "SVE")

__all__ = ["LEVELS", "build_features", "machine_features", "features"]


def build_features() -> list[str]:
    """No compiled code: always []."""
    return []


def machine_features() -> list[str]:
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
    return [name for name in _ORDER if name in found]


def features() -> dict:
    """``{'build': [], 'machine', 'simd_level', 'openmp_threads': 1}``.

    With no compiled code, ``simd_level`` is the best level of the CPU (numpy dispatches on it at run time).
    """
    machine = machine_features()
    level = next((name for name in LEVELS if name in machine), "none")
    return {"build": [], "machine": machine, "simd_level": level, "openmp_threads": 1}
