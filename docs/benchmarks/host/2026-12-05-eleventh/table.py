"""Before/after table of one group from the bench outputs in one folder: ``python3 table.py GROUP FOLDER``
(GROUP_before_*.txt against GROUP_after_*.txt, medians of the ratios)."""
import glob
import os
import re
import statistics
import sys

SKIP = ("   ", "  python=", "  ratio =", "  before:")


def parse(path: str) -> dict:
    rows, name = {}, None
    for line in open(path):
        if line.startswith("  ") and not line.startswith(SKIP):
            name = line.strip()
        m = re.search(r"\| ratio ([0-9.e+-]+)x", line)
        if m and name:
            rows[name] = float(m.group(1))
            name = None
    return rows


group, folder = sys.argv[1], sys.argv[2]
runs = {w: [parse(f) for f in sorted(glob.glob(os.path.join(folder, f"{group}_{w}_*.txt")))]
        for w in ("before", "after")}
print(f"| {group}: row | before (median of {len(runs['before'])}) | after (median of {len(runs['after'])}) "
      "| after ÷ before |")
print("| --- | --- | --- | --- |")
for n in runs["after"][0]:
    b = [r[n] for r in runs["before"] if n in r]
    a = [r[n] for r in runs["after"] if n in r]
    if a and b:
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"| {n} | {mb:.3g}x | {ma:.3g}x | {ma / mb:.2f} |")
