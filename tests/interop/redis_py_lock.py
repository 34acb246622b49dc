"""A redis-py Lock peer for queuelock's Redis interop test.

usage: redis_py_lock.py HOST:PORT KEY START_FILE END_FILE HOLD_SECONDS

Takes redis-py's Lock on KEY (SET KEY token NX PX, polling until it gets it), writes the
time in nanoseconds to START_FILE, holds HOLD_SECONDS, writes END_FILE, releases.
"""
import sys
import time

import redis

addr, key, start_file, end_file, hold = sys.argv[1:6]
host, port = addr.rsplit(":", 1)
r = redis.Redis(host=host, port=int(port))
lock = r.lock(key, timeout=30, sleep=0.02, blocking_timeout=60)
print("redis-py: trying", flush=True)
if not lock.acquire():
    sys.exit("redis-py: lock not acquired within 60 s")
with open(start_file, "w") as f:
    f.write(str(time.time_ns()))
time.sleep(float(hold))
with open(end_file, "w") as f:
    f.write(str(time.time_ns()))
lock.release()
