import glob, re, sys, statistics, collections
d = sys.argv[1]
for g in sys.argv[2:]:
    res = collections.defaultdict(lambda: {"before": [], "after": []})
    order = []
    for f in sorted(glob.glob(f"{d}/{g}_*_*.txt")):
        w = "before" if "_before_" in f else "after"
        lines = open(f).read().splitlines()
        seen = collections.Counter()
        for a, b in zip(lines, lines[1:]):
            m = re.search(r"\| ratio ([0-9.]+)x", b)
            if a.startswith("  ") and not a.startswith("    ") and m:
                name = a.strip()
                seen[name] += 1
                key = (name, seen[name])
                if key not in order:
                    order.append(key)
                res[key][w].append(float(m.group(1)))
    print(f"| {g}: row | before (median of {len(res[order[0]]['before'])}) | after | after ÷ before |")
    print("| --- | --- | --- | --- |")
    for key in order:
        b, a = res[key]["before"], res[key]["after"]
        if not b or not a:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        name = key[0] + (f" ({key[1]})" if key[1] > 1 else "")
        print(f"| {name} | {mb:.3g}x | {ma:.3g}x | {ma / mb:.2f} |")
    print()
