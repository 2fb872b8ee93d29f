# 2-core VM: e2831c4 built in a worktree at /tmp/base (before) against the change in /work/main (after), alternating
for i in 1 2 3; do
  for w in before after; do
    d=/work/main; [ $w = before ] && d=/tmp/base
    (cd $d && MMSB_PROGRESS=0 PYTHONPATH=$d python3 -m mmsb bench --only checkpoint > /tmp/vmab/checkpoint_${w}_$i.txt 2>&1)
    echo "$w $i $(cat /proc/loadavg)" >> /tmp/vmab/env.txt
  done
done
