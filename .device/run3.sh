#!/bin/bash
# #17 figures: the issue's workload (4000x4000 grid, 100k sources), 16 workers, then 1
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONPATH=$PWD:/tmp/site
uptime > $OUT/env.txt
python3 setup.py -q build_ext --inplace > $OUT/build.txt 2>&1
timeout 490 python3 -m mmsb.dask.bench --grid --side 4000 --sources 100000 --more 1000 --workers 16,1 --overhead-writes 30 --json $OUT/dask-grid-4000.json > $OUT/dask_grid_4000.txt 2>&1
echo "dask rc $?" >> $OUT/env.txt
uptime >> $OUT/env.txt
