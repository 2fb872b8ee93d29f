#!/bin/bash
# alternate before (/tmp/before, dc74917) and after (/work/main) on the VM
out=/work/notes/ab_vm; mkdir -p $out
for g in merge spmv path; do
  for i in 1 2 3; do
    for w in before after; do
      d=/tmp/before; [ $w = after ] && d=/work/main
      (cd $d && PYTHONPATH=$d python3 -m mmsb bench --only $g > $out/${g}_${w}_$i.txt 2>&1)
    done
  done
done
for i in 1 2; do
  for w in before after; do
    d=/tmp/before; [ $w = after ] && d=/work/main
    (cd $d && PYTHONPATH=$d python3 /work/main/docs/benchmarks/host/2026-12-05-ninth/ckrow.py 2 > $out/ckrow_${w}_$i.txt 2>&1)
  done
done
echo done > $out/DONE
