#!/bin/bash
# alternate the load group: before (/tmp/before) and after (/work/main), N rounds
for i in $(seq 1 $1); do
  for w in before main; do
    d=/tmp/before; [ $w = main ] && d=/work/main
    echo "== $w round $i $(cat /proc/loadavg)"
    (cd $d && PYTHONPATH=$d python3 -m mmsb bench --only load 2>&1 | grep -A1 "beside" | grep -v "^--" | paste - - | sed 's/  */ /g; s/, beside one busy process//; s/the same ratio, quiet/quiet/')
  done
done
