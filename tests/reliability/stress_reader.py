"""Read-only second process for the stress test: opens the store with mode="r" again and again while the writer
runs, and checks the invariants of every state it sees. Prints "OK <opens>" or a traceback."""
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


import mmsb  # noqa: E402
from mmsb.errors import TornWriteWarning  # noqa: E402

from test_stress import FUNCS, check_invariants  # noqa: E402


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    end = time.time() + seconds
    opens = 0
    while time.time() < end:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornWriteWarning)
            try:
                buf = mmsb.open(path, "r", functions=FUNCS)
            except FileNotFoundError:
                continue        # a segment or checkpoint removed by a concurrent compaction: open again
        try:
            check_invariants(buf)
        finally:
            buf.close()
        opens += 1
    print(f"OK {opens}")


if __name__ == "__main__":
    main()
