#!/usr/bin/env bash
# The figures that issues #14, #15, #17 and #18 ask for on the lent 16-core host, one part per device call (each
# part stays under the device's 10-minute limit). From the repository root on the host, with the dependencies in
# /tmp/site (../shared/tools/device-wheels.sh --bench, carry .whl) and the extensions built:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   python3 setup.py -q build_ext --inplace
#   bash docs/benchmarks/host/run.sh kernels  > $OUT/kernels.txt 2>&1   # #18, #14 (~4 min)
#   bash docs/benchmarks/host/run.sh dynamic  > $OUT/dynamic.txt 2>&1   # #15 (~1 min)
#   bash docs/benchmarks/host/run.sh dask     > $OUT/dask.txt 2>&1      # #17 (~3 min)
#
# Each part prints the machine load before and after; every row is a ratio against its baseline in the same run.
set -u
cd "$(dirname "$0")/../../.."
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
echo "== $(nproc) CPUs; $(uptime)"
python3 -c "import mmsb._kernels as k; print('kernels', k.KIND, 'simd', k.SIMD, k.SIMD_LEVELS, 'threads', k.THREADS)"
case "${1:-}" in
  kernels)
    echo "== SpMV plus_times / min_plus vs GraphBLAS at all threads and at 2 (vector gather on/off, prefetch)"
    timeout 150 python3 docs/benchmarks/host/spmv_variants.py
    echo "== mmsb bench --only spmv,closure"
    timeout 200 python3 -m mmsb bench --only spmv,closure
    echo "== mmsb bench --only load (one busy process on 2 pinned CPUs: quiet vs loaded kernel ratios)"
    timeout 150 python3 -m mmsb bench --only load
    echo "== mmsb bench --only path"
    timeout 150 python3 -m mmsb bench --only path
    ;;
  dynamic)
    echo "== mmsb bench --only dynamic"
    timeout 300 python3 -m mmsb bench --only dynamic
    ;;
  dask)
    echo "== the issue's workload: 4000x4000 grid, min_plus closure from 100k sources, 16 and 1 workers"
    timeout 420 python3 -m mmsb.dask.bench --grid --side 4000 --sources 100000 --more 1000 --workers 16,1 \
        --overhead-writes 30 --json "$OUT/dask.json"
    ;;
  *)
    echo "usage: run.sh kernels|dynamic|dask" >&2
    exit 2
    ;;
esac
echo "== $(uptime)"
