#!/bin/bash
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONUNBUFFERED=1
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
(python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_after.txt 2>&1) &
(cd .device/before && python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_before.txt 2>&1) &
wait
echo "built $(uptime)" >> $OUT/env.txt
sleep 15
for i in 1 2; do
  for w in before after; do
    d=$PWD; [ $w = before ] && d=$PWD/.device/before
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 100 python3 -m mmsb bench --only spmv > $OUT/spmv_${w}_$i.txt 2>&1)
    echo "$w $i $(uptime)" >> $OUT/env.txt
  done
done
