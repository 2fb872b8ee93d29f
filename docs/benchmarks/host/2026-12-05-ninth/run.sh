#!/bin/bash
# Ninth session, on the lent 16-core host: the checkpoint, path and dynamic groups (one device call, ~5 min).
# Then, on the same warm machine: python3 docs/benchmarks/host/spmv_variants.py and
# CKDIR=/tmp python3 docs/benchmarks/host/2026-12-05-ninth/ckrow.py 6 (policy on/off alternating, 6 runs each).
cd "$(dirname "$0")/../../../.."   # the repository root; $OUT: where the outputs go
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
/usr/bin/time -v python3 setup.py -q build_ext --inplace > $OUT/build.txt 2>&1
echo "build rc $? $(uptime)" >> $OUT/env.txt
timeout 300 python3 -m mmsb bench --only checkpoint > $OUT/bench_checkpoint.txt 2>&1
echo "checkpoint rc $? $(uptime)" >> $OUT/env.txt
timeout 150 python3 -m mmsb bench --only path > $OUT/bench_path.txt 2>&1
echo "path rc $? $(uptime)" >> $OUT/env.txt
timeout 200 python3 -m mmsb bench --only dynamic > $OUT/bench_dynamic.txt 2>&1
echo "dynamic rc $? $(uptime)" >> $OUT/env.txt
