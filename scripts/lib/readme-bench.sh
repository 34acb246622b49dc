#!/usr/bin/env bash
# readme-bench.sh OUT DATE SECONDS BACKEND...: puts the Markdown tables of a full bench run
# (OUT/DATE-BACKEND.md for each BACKEND run) into README.md between the bench markers,
# each backend between markers of its own (<!-- bench:backend:NAME -->), so that a run
# of some backends keeps the tables of the others as they were.
set -euo pipefail
out=$1 date=$2 secs=$3
shift 3
python3 - "$out" "$date" "$secs" "$@" <<'PY'
import os, re, sys
out, date, secs, *backends = sys.argv[1:]
ORDER = ["etcd", "zookeeper", "postgres", "redis"]
NAMES = {"etcd": "etcd", "zookeeper": "ZooKeeper", "postgres": "PostgreSQL", "redis": "Redis"}
readme = open("README.md").read()
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
if start not in readme:
    sys.exit("README.md has no bench markers")
pre, rest = readme.split(start, 1)
body, post = rest.split(end, 1)

parts = {}
marked = re.findall(r"<!-- bench:backend:(\w+) -->\n(.*?)<!-- bench:backend:end -->\n", body, re.S)
if marked:
    parts = dict(marked)
else:
    # The section as written before per-backend markers: one intro line, then a
    # "#### <server>" table per backend (etcd's followed by any extra tables of the run).
    lines = body.strip("\n").split("\n")
    intro = lines[0] if lines and lines[0].startswith("Latest full run") else ""
    text = "\n".join(lines[1:] if intro else lines)
    m = re.search(r"\(([^;]*); `scripts/bench` took ([^)]*) for both backends\)", intro)
    run = f"Run of {m.group(1)}: `scripts/bench` took {m.group(2)} for etcd and ZooKeeper together.\n\n" if m else ""
    current = None
    for chunk in re.split(r"\n(?=#### )", "\n" + text):
        head = chunk.strip("\n")
        if not head:
            continue
        for b in ORDER:
            if head.startswith("#### " + NAMES[b] + " "):
                current = b
                break
        if current is None:
            continue
        parts[current] = parts.get(current, run) + head + "\n\n"

for b in backends:
    md = os.path.join(out, f"{date}-{b}.md")
    if not os.path.exists(md):
        continue
    text = open(md).read().replace("](" + date, "](" + out + "/" + date)
    text = text.replace("\n### ", "\n#### ").replace("### ", "#### ", 1)
    took = f"{int(secs) // 60} min {int(secs) % 60} s"
    parts[b] = f"Run of {date}: `scripts/bench --backend {b}` took {took}, building the driver and the peers included.\n\n" + text.strip("\n") + "\n\n"

new = [f"Latest full run of each backend. Raw figures: `{out}/<date>-<backend>.json`.\n"]
for b in ORDER + sorted(set(parts) - set(ORDER)):
    if b in parts:
        new.append(f"<!-- bench:backend:{b} -->\n{parts[b]}<!-- bench:backend:end -->\n")
open("README.md", "w").write(pre + start + "\n" + "\n".join(new) + end + post)
print("README.md updated", file=sys.stderr)
PY
