#!/bin/bash
# Eleventh session, on the lent 16-core host: the tree before (.device/before: git archive of e2831c4) and after
# the threaded checkpoint copy, built side by side, then alternating: the starting-commit latency (cklat.py) and
# #14's automatic-checkpoint row alone (the ninth session's ckrow.py, policy on/off alternating 4 times per run).
cd "$(dirname "$0")/../../../.."   # the repository root; $OUT: where the outputs go
H=$PWD/docs/benchmarks/host/2026-12-05-eleventh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONUNBUFFERED=1 CKDIR=/tmp
echo "== $(nproc) CPUs; $(uptime)" > $OUT/env.txt
(python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_after.txt 2>&1) &
(cd .device/before && python3 setup.py -q build_ext --inplace -j 8 > $OUT/build_before.txt 2>&1) &
wait
echo "built $(uptime)" >> $OUT/env.txt
sleep 15
for i in 1 2; do
  for w in before after; do
    d=$PWD; [ $w = before ] && d=$PWD/.device/before
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 60 python3 $H/cklat.py 1 >> $OUT/cklat_$w.txt 2>&1)
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 120 python3 $H/../2026-12-05-ninth/ckrow.py 4 >> $OUT/ckrow_$w.txt 2>&1)
    echo "$w $i $(uptime)" >> $OUT/env.txt
  done
done
