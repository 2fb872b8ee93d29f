#!/bin/bash
# #15 figures on a quiet machine (CPU), the GPU matrix-page test, then the #17 sharded grid (as far as time allows)
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site
uptime > $OUT/env.txt
python3 setup.py -q build_ext --inplace > $OUT/build.txt 2>&1
timeout 100 python3 -m pytest -q tests/test_gpu.py -k "matrix_page" -p no:cacheprovider > $OUT/gpu_matrix.txt 2>&1
echo "gpu rc $?" >> $OUT/env.txt
timeout 200 python3 -m mmsb bench --only dynamic > $OUT/bench_dynamic.txt 2>&1
echo "dynamic rc $?" >> $OUT/env.txt
uptime >> $OUT/env.txt
timeout 200 python3 -m mmsb.dask.bench --grid --side 2000 --sources 25000 --more 1000 --workers 16,1 --overhead-writes 30 --json $OUT/dask-grid-2000.json > $OUT/dask_grid_2000.txt 2>&1
echo "dask rc $?" >> $OUT/env.txt
uptime >> $OUT/env.txt
