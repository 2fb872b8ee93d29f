#!/bin/bash
# GPU tests and the 16-core CPU figures of #18 (and a small sharded-grid probe for #17)
set -x
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site
nproc > $OUT/env.txt; uptime >> $OUT/env.txt; python3 --version >> $OUT/env.txt
t0=$(date +%s)
python3 setup.py -q build_ext --inplace > $OUT/build.txt 2>&1
echo "build seconds $(( $(date +%s) - t0 ))" >> $OUT/env.txt
python3 -c "import mmsb, mmsb.gpu as g; print(mmsb.kernels, g.available(), g.device_count())" >> $OUT/env.txt 2>&1
timeout 240 python3 -m pytest -q -x tests/test_gpu.py tests/test_matrix_pages.py -p no:cacheprovider > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc $?" >> $OUT/env.txt
timeout 200 python3 -m mmsb bench --only spmv,closure > $OUT/bench_spmv_closure.txt 2>&1
uptime >> $OUT/env.txt
