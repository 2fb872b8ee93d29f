#!/bin/bash
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
lscpu | grep "Model name" >> $OUT/env.txt
(time python3 setup.py -q build_ext --inplace -j 16) > $OUT/build.txt 2>&1
echo "build rc $? $(uptime)" >> $OUT/env.txt
sleep 20
timeout 200 python3 -m mmsb bench --only spmv > $OUT/bench_spmv.txt 2>&1
echo "spmv rc $? $(uptime)" >> $OUT/env.txt
CKDIR=/tmp timeout 200 python3 docs/benchmarks/host/2026-12-05-ninth/ckrow.py 5 > $OUT/ckrow.txt 2>&1
echo "ckrow rc $? $(uptime)" >> $OUT/env.txt
