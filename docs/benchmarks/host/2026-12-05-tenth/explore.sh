#!/bin/bash
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
lscpu | head -20 >> $OUT/env.txt
(time python3 setup.py -q build_ext --inplace -j 16) > $OUT/build.txt 2>&1
echo "build rc $? $(uptime)" >> $OUT/env.txt
cd docs/benchmarks/limits && python3 setup_floor.py -q build_ext --inplace > $OUT/floor_build.txt 2>&1
timeout 120 python3 link_floor.py 21 > $OUT/floor_host16.txt 2>&1
echo "floor16 rc $? $(uptime)" >> $OUT/env.txt
timeout 120 taskset -c 0,1 python3 link_floor.py 21 > $OUT/floor_host2.txt 2>&1
echo "floor2 rc $? $(uptime)" >> $OUT/env.txt
cd ../../..
timeout 150 python3 -c "
from mmsb.bench import dynamic
for r in dynamic._link(False): print(r)
" > $OUT/linkrow.txt 2>&1
echo "linkrow rc $? $(uptime)" >> $OUT/env.txt
CKDIR=/tmp timeout 200 python3 docs/benchmarks/host/2026-12-05-ninth/ckrow.py 5 > $OUT/ckrow.txt 2>&1
echo "ckrow rc $? $(uptime)" >> $OUT/env.txt
