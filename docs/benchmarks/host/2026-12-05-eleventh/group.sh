#!/bin/bash
# Eleventh session, on the lent 16-core host: `mmsb bench --only checkpoint` before (.device/before: git archive of
# e2831c4) and after the threaded checkpoint copy, built side by side, alternating (ROUNDS: the round numbers, default 1).
cd "$(dirname "$0")/../../../.."   # the repository root; $OUT: where the outputs go
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONUNBUFFERED=1 MMSB_PROGRESS=0
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
(python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_after.txt 2>&1) &
(cd .device/before && python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_before.txt 2>&1) &
wait
echo "built $(uptime)" >> $OUT/env.txt
sleep 15
for i in ${ROUNDS:-1}; do
  for w in before after; do
    d=$PWD; [ $w = before ] && d=$PWD/.device/before
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 240 python3 -m mmsb bench --only checkpoint > $OUT/checkpoint_${w}_$i.txt 2>&1)
    echo "$w $i $(uptime)" >> $OUT/env.txt
  done
done
