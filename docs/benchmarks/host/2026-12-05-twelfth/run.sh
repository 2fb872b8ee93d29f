#!/bin/bash
# Twelfth session, on the lent 16-core host: #14's automatic-checkpoint row against the policy's factor
# (ckfactor.py, 6 alternating rounds of factors 1, 2, 3 and the policy off).
cd "$(dirname "$0")/../../../.."   # the repository root; $OUT: where the outputs go
H=$PWD/docs/benchmarks/host/2026-12-05-twelfth
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
export PYTHONUNBUFFERED=1 CKDIR=/tmp PYTHONPATH=$PWD:/tmp/site
echo "== $(nproc) CPUs; $(lscpu | grep 'Model name'); $(uptime)" > $OUT/env.txt
python3 setup.py -q build_ext --inplace -j 16 > $OUT/build.txt 2>&1
echo "built $(uptime)" >> $OUT/env.txt
sleep 20
timeout 400 python3 $H/ckfactor.py 6 1 2 3 > $OUT/ckfactor.txt 2>&1
echo "done $(uptime)" >> $OUT/env.txt
