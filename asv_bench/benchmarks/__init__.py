"""asv benchmarks for mmsb: the same ground as ``mmsb bench`` at smaller sizes, for regression tracking.

Each group has ``time_*`` pairs (mmsb and its baseline) and ``track_ratio_*`` figures (baseline / mmsb measured
side by side inside one call). Run: ``cd asv_bench && asv run --python=same --quick``.
"""
