#!/usr/bin/env bash
# readme-bench.sh OUT DATE SECONDS: puts the Markdown tables of a full bench run
# (OUT/DATE-*.md) into README.md between the bench markers.
set -euo pipefail
out=$1 date=$2 secs=$3
python3 - "$out" "$date" "$secs" <<'PY'
import glob, os, re, sys
out, date, secs = sys.argv[1:]
parts = []
for md in sorted(glob.glob(os.path.join(out, f"{date}-*.md"))):
    text = open(md).read().replace("](" + date, "](" + out + "/" + date)
    parts.append(text.replace("\n### ", "\n#### ").replace("### ", "#### ", 1))
body = (f"Latest full run ({date}; `scripts/bench` took {int(secs) // 60} min {int(secs) % 60} s for "
        f"both backends). Raw figures: `{out}/{date}-<backend>.json`.\n\n" + "\n".join(parts))
readme = open("README.md").read()
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
if start not in readme:
    sys.exit("README.md has no bench markers")
pre, rest = readme.split(start, 1)
_, post = rest.split(end, 1)
open("README.md", "w").write(pre + start + "\n" + body + "\n" + end + post)
print("README.md updated", file=sys.stderr)
PY
