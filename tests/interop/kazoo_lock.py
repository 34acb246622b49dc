"""A kazoo lock peer for queuelock's interop tests.

usage: kazoo_lock.py HOSTS PATH START_FILE END_FILE [RECIPE]

Takes a kazoo lock on PATH, writes the time in nanoseconds to START_FILE, holds for half
a second, writes END_FILE, releases. RECIPE:

* `lock-extra` (the default): `Lock(extra_lock_patterns=["-lock-"])`, which also sees
  Curator-named ("-lock-") nodes, queuelock's default naming;
* `lock`, `write`, `read`: kazoo's `Lock()`, `WriteLock()`, `ReadLock()` with default
  arguments, which see only kazoo-named ("__lock__", "__rlock__") nodes: queuelock's
  `naming=kazoo`.
"""
import sys
import time

from kazoo.client import KazooClient

hosts, path, start_file, end_file = sys.argv[1:5]
recipe = sys.argv[5] if len(sys.argv) > 5 else "lock-extra"
zk = KazooClient(hosts=hosts, timeout=10.0)
zk.start(timeout=15)
if recipe == "lock-extra":
    # queuelock (like Apache Curator) names lock nodes "_c_<uuid>-lock-<seq>" by default.
    lock = zk.Lock(path, "kazoo-peer", extra_lock_patterns=["-lock-"])
elif recipe == "lock":
    lock = zk.Lock(path, "kazoo-peer")
elif recipe == "write":
    lock = zk.WriteLock(path, "kazoo-peer")
elif recipe == "read":
    lock = zk.ReadLock(path, "kazoo-peer")
else:
    sys.exit(f"unknown recipe {recipe!r}")
print(f"kazoo: queued ({recipe})", flush=True)
lock.acquire(timeout=60)
with open(start_file, "w") as f:
    f.write(str(time.time_ns()))
time.sleep(0.5)
with open(end_file, "w") as f:
    f.write(str(time.time_ns()))
lock.release()
zk.stop()
zk.close()
