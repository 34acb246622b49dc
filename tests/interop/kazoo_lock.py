"""A kazoo Lock peer for queuelock's interop test.

usage: kazoo_lock.py HOSTS PATH START_FILE END_FILE

Takes a kazoo Lock on PATH (seeing Curator/queuelock "-lock-" nodes too), writes the
time in nanoseconds to START_FILE, holds for half a second, writes END_FILE, releases.
"""
import sys
import time

from kazoo.client import KazooClient

hosts, path, start_file, end_file = sys.argv[1:5]
zk = KazooClient(hosts=hosts, timeout=10.0)
zk.start(timeout=15)
# kazoo only counts its own "__lock__" children unless told about other namings:
# queuelock (like Apache Curator) names lock nodes "_c_<uuid>-lock-<seq>".
lock = zk.Lock(path, "kazoo-peer", extra_lock_patterns=["-lock-"])
print("kazoo: queued", flush=True)
lock.acquire(timeout=60)
with open(start_file, "w") as f:
    f.write(str(time.time_ns()))
time.sleep(0.5)
with open(end_file, "w") as f:
    f.write(str(time.time_ns()))
lock.release()
zk.stop()
zk.close()
