# 2-core VM: e2831c4 built in a worktree at /tmp/base (before) against the change in /work/main (after), alternating
for i in 1 2; do
  for w in before after; do
    d=/work/main; [ $w = before ] && d=/tmp/base
    (cd $d && MMSB_PROGRESS=0 PYTHONPATH=$d timeout 400 python3 -m mmsb bench --only merge > /tmp/vmab/merge_${w}_$i.txt 2>&1)
    echo "merge $w $i $(cat /proc/loadavg)" >> /tmp/vmab/env.txt
  done
done
