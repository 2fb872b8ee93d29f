"""Coverage-guided fuzzing of every mmsb decoder with atheris (pip install atheris).

    python tests/reliability/fuzz_atheris.py -atheris_runs=100000 [corpus_dir]

The first input byte picks the target (tests/reliability/_targets.py); only CorruptionError may escape.
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402,F401  (imported uninstrumented: only mmsb's own code is instrumented)
import blosc2  # noqa: E402,F401
import crc32c  # noqa: E402,F401

with atheris.instrument_imports(include=["mmsb"]):
    import mmsb.codecs  # noqa: F401
    import mmsb.log.records  # noqa: F401
    import mmsb.log.segment  # noqa: F401
    import mmsb.checkpoint  # noqa: F401
    import mmsb.container  # noqa: F401
    import mmsb.identity  # noqa: F401
    import mmsb.spill  # noqa: F401
    import mmsb._ref.codecs  # noqa: F401

from mmsb.errors import CorruptionError  # noqa: E402

import _targets as T  # noqa: E402

NAMES = sorted(T.TARGETS)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    fn = T.TARGETS[NAMES[data[0] % len(NAMES)]]
    try:
        fn(data[1:])
    except CorruptionError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
