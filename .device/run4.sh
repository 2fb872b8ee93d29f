#!/bin/bash
# #16 store figures and #15 again on a quiet machine; the stress test in a loop (reader race hunt)
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site
uptime > $OUT/env.txt
python3 setup.py -q build_ext --inplace > $OUT/build.txt 2>&1
timeout 240 python3 -m mmsb bench --only txn,checkpoint > $OUT/bench_store.txt 2>&1
echo "store rc $?" >> $OUT/env.txt; uptime >> $OUT/env.txt
timeout 120 python3 -m mmsb bench --only dynamic > $OUT/bench_dynamic.txt 2>&1
echo "dynamic rc $?" >> $OUT/env.txt; uptime >> $OUT/env.txt
for i in 1 2 3 4; do timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/reliability/test_stress.py > $OUT/stress_$i.txt 2>&1; echo "stress $i rc $?" >> $OUT/env.txt; done
