#!/usr/bin/env python3
"""queuelock bench harness for the Python lock peers (see bench/peers/README.md).

    locks.py LIB BACKEND ENDPOINT SCENARIO ARGS...

LIB: kazoo (kazoo.recipe.lock.Lock, ZooKeeper), aetcd (aetcd Lock, etcd), etcd3
(python-etcd3 Lock, etcd), redispy (redis-py's Lock, Redis), redis-lock
(python-redis-lock's Lock, Redis) or pottery (pottery's Redlock on one master, Redis).
Scenarios and JSON output as in bench/src/scenario.rs. kazoo, etcd3 and the Redis
libraries are blocking: their calls run on threads (one per contender). The Redis locks
run with their default waiting settings (redis-py: polls every 0.1 s; pottery: retries
after a random 0-0.2 s; python-redis-lock: BLPOP on a signal list) and the same 15 s
expiry as every other implementation's TTL.
"""
import asyncio
import concurrent.futures
import json
import os
import random
import sys
import time

TTL = 15
# A herd that makes no progress for this long is reported as stalled (scripts/bench
# --quick shortens it).
STALL_S = float(os.environ.get("QUEUELOCK_BENCH_STALL_S", "15"))


def pct(prefix, samples):
    s = sorted(samples)

    def pick(q):
        if not s:
            return None
        return round(s[round((len(s) - 1) * q)], 3)

    return {f"{prefix}p50_ms": pick(0.5), f"{prefix}p99_ms": pick(0.99), f"{prefix}max_ms": pick(1.0)}


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def window(mark):
    """Marks the start or end of the measured loop for the driver's CPU reading."""
    print(json.dumps({"window": mark}), flush=True)


def first_member(endpoint):
    """(host, port) of the first of a comma-separated member list: aetcd and python-etcd3
    take one endpoint only."""
    host, port = endpoint.split(",")[0].rsplit(":", 1)
    return host, int(port)


ONE_ENDPOINT_NOTE = "talks to the first member only (the library takes one endpoint)"


def lock_name(scenario):
    return f"bench/{scenario}-{os.getpid()}"


async def blocking(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Kazoo:
    """kazoo: one KazooClient (ZooKeeper session) per contender."""

    sharing = "a KazooClient (ZooKeeper session, own connection and threads) per waiter"
    note = None

    def __init__(self, endpoint):
        self.endpoint = endpoint  # a connect string: every member

    async def connect(self, shared=False):
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=self.endpoint, timeout=TTL)
        await blocking(zk.start)
        return KazooSession(zk)


class KazooSession:
    def __init__(self, zk):
        self.zk = zk

    async def lock(self, name):
        lock = self.zk.Lock("/kazoo-bench/" + name)
        await blocking(lock.acquire)
        return lock.release

    async def close(self):
        await blocking(self.zk.stop)
        await blocking(self.zk.close)


class Etcd3:
    """python-etcd3: a client (gRPC channel) per contender; the lock grants a lease per attempt."""

    sharing = "one etcd3 client (gRPC channel) for all; a Lock (a lease per attempt) and a thread per waiter"

    def __init__(self, endpoint):
        self.host, self.port = first_member(endpoint)
        self.note = ONE_ENDPOINT_NOTE if "," in endpoint else None
        self.shared = None

    async def connect(self, shared=False):
        import etcd3

        if shared:
            if self.shared is None:
                self.shared = Etcd3Session(etcd3.client(host=self.host, port=self.port))
            return self.shared
        return Etcd3Session(etcd3.client(host=self.host, port=self.port))


class Etcd3Session:
    def __init__(self, client):
        self.client = client

    async def lock(self, name):
        lock = self.client.lock(name, ttl=TTL)
        await blocking(lock.acquire, None)
        return lock.release

    async def close(self):
        self.client.close()


class Aetcd:
    """aetcd (asyncio): a client per contender; the lock grants a lease per attempt."""

    sharing = "one aetcd Client (gRPC channel) for all; a Lock (a lease per attempt) per waiter"

    def __init__(self, endpoint):
        self.host, self.port = first_member(endpoint)
        self.note = ONE_ENDPOINT_NOTE if "," in endpoint else None
        self.shared = None

    async def _new(self):
        import aetcd

        c = aetcd.Client(host=self.host, port=self.port)
        await c.connect()
        return AetcdSession(c)

    async def connect(self, shared=False):
        if shared:
            if self.shared is None:
                self.shared = await self._new()
            return self.shared
        return await self._new()


class AetcdSession:
    def __init__(self, client):
        self.client = client

    async def lock(self, name):
        lock = self.client.lock(name.encode(), ttl=TTL)
        await lock.acquire(timeout=None)

        async def release():
            await lock.release()

        return release

    async def close(self):
        await self.client.close()


class RedisLib:
    """The Redis locks: one redis-py client (its connection pool) for all contenders; each
    blocking call takes a pooled connection while it runs (a waiter in BLPOP holds one)."""

    note = None

    def __init__(self, endpoint):
        self.host, self.port = first_member(endpoint)
        self.client = None

    async def connect(self, shared=False):
        import redis

        if self.client is None:
            self.client = redis.Redis(host=self.host, port=self.port)
        return RedisSession(self, self.client)


class RedisPyLib(RedisLib):
    sharing = "one redis-py client (connection pool) for all; a Lock and a thread per waiter, polling every 0.1 s (the default)"

    def make(self, client, name):
        # thread_local=False: acquire and release run on different executor threads
        # (redis-py's documented setting for passing a lock between threads).
        lock = client.lock("redispy-bench:" + name, timeout=TTL, thread_local=False)
        return lambda: lock.acquire(blocking=True), lock.release


class RedisLockLib(RedisLib):
    sharing = "one redis-py client (connection pool) for all; a Lock and a thread per waiter, each waiting in BLPOP on its own pooled connection"

    def make(self, client, name):
        import redis_lock

        lock = redis_lock.Lock(client, "bench:" + name, expire=TTL)
        return lambda: lock.acquire(blocking=True), lock.release


class PotteryLib(RedisLib):
    sharing = "one redis-py client (connection pool) as the single master for all; a Redlock and a thread per waiter, retrying after a random 0-0.2 s (the default)"

    def make(self, client, name):
        from pottery import Redlock

        lock = Redlock(key="pottery-bench:" + name, masters={client}, auto_release_time=TTL)
        return lambda: lock.acquire(blocking=True, timeout=-1), lock.release


class RedisSession:
    def __init__(self, lib, client):
        self.lib, self.client = lib, client

    async def lock(self, name):
        acquire, release = self.lib.make(self.client, name)
        if not await blocking(acquire):
            raise RuntimeError(f"acquire of {name} returned False")
        return release

    async def close(self):
        pass


async def release_blocking_or_async(release):
    if asyncio.iscoroutinefunction(release):
        await release()
    else:
        await blocking(release)


async def close_all(sessions):
    seen = set()
    for s in sessions:
        if id(s) not in seen:
            seen.add(id(s))
            await s.close()


async def uncontended(lib, iterations):
    s = await lib.connect()
    name = lock_name("uncontended")

    async def op():
        await release_blocking_or_async(await s.lock(name))

    for _ in range(min(iterations, 5)):
        await op()
    samples = []
    window("start")
    started = time.monotonic()
    for _ in range(iterations):
        t = time.monotonic()
        await op()
        samples.append((time.monotonic() - t) * 1000)
    elapsed = time.monotonic() - started
    window("end")
    await close_all([s])
    out = {"scenario": "uncontended", "count": iterations, "ops_per_s": round(iterations / elapsed, 3)}
    out.update(pct("", samples))
    return out


async def contended(lib, n, seconds):
    name = lock_name(f"contended{n}")
    sessions = [await lib.connect() for _ in range(n)]
    for s in sessions:
        await release_blocking_or_async(await s.lock(name))
    stop = False
    last = [None]  # (release time, releaser)
    per, waits, handoffs = [0] * n, [], []

    async def run(i, s):
        while not stop:
            asked = time.monotonic()
            release = await s.lock(name)
            granted = time.monotonic()
            per[i] += 1
            waits.append((granted - asked) * 1000)
            prev = last[0]
            if prev is not None and prev[1] != i and prev[0] >= asked:
                handoffs.append((granted - prev[0]) * 1000)
            last[0] = (time.monotonic(), i)
            await release_blocking_or_async(release)

    window("start")
    started = time.monotonic()
    tasks = [asyncio.create_task(run(i, s)) for i, s in enumerate(sessions)]
    await asyncio.sleep(seconds)
    stop = True
    _, pending = await asyncio.wait(tasks, timeout=STALL_S)
    elapsed = time.monotonic() - started
    window("end")
    if not pending:
        await close_all(sessions)
    total = sum(per)
    out = {
        "scenario": "contended",
        "contenders": n,
        "seconds": round(elapsed, 3),
        "grants": total,
        "grants_per_s": round(total / elapsed, 3),
        "fairness": round(max(per) / min(per), 3) if min(per) > 0 else None,
        "per_contender": per,
        "handoffs": len(handoffs),
    }
    if pending:
        # Measured until the stop; some contenders were still waiting with the lock free.
        out["seconds"] = round(seconds, 3)
        out["grants_per_s"] = round(total / seconds, 3)
        out["stalled"] = len(pending)
        out["note"] = (
            f"{len(pending)} of {n} contenders were never granted within {STALL_S:g} s after the "
            "others stopped, with the lock free (a lost wake-up)"
        )
    out.update(pct("wait_", waits))
    out.update(pct("handoff_", handoffs))
    return out


async def herd(lib, waiters):
    name = lock_name("herd")
    holder = await lib.connect(shared=True)
    held = await holder.lock(name)
    rss_before = rss_kib()
    t0 = time.monotonic()
    sessions = [await lib.connect(shared=True) for _ in range(waiters)]
    called = asyncio.Semaphore(0)

    async def wait(s):
        fut = asyncio.ensure_future(s.lock(name))
        called.release()
        await release_blocking_or_async(await fut)
        return time.monotonic()

    tasks = [asyncio.create_task(wait(s)) for s in sessions]
    for _ in range(waiters):
        await called.acquire()
    await asyncio.sleep(0.5 + waiters * 0.002)
    enqueue_s = time.monotonic() - t0
    rss_after = rss_kib()
    released_at = time.monotonic()
    await release_blocking_or_async(held)
    pending, ends = set(tasks), []
    while pending:
        done, pending = await asyncio.wait(pending, timeout=STALL_S)
        if not done:
            return {
                "scenario": "herd",
                "waiters": waiters,
                "releases": waiters + 1 - len(pending),
                "error": f"stalled: {len(pending)} of {waiters} waiters still not granted "
                f"{STALL_S:g} s after the last grant, with the lock free (a lost wake-up)",
            }
        ends.extend(t.result() for t in done)
    drain = max(ends) - released_at
    await close_all(sessions + [holder])
    return {
        "scenario": "herd",
        "waiters": waiters,
        "releases": waiters + 1,
        "drain_s": round(drain, 3),
        "enqueue_s": round(enqueue_s, 3),
        "rss_kib_per_waiter": round((rss_after - rss_before) / waiters, 3),
        "sharing": lib.sharing,
    }


async def per_entity(lib, names, tasks, clients, seconds):
    """TASKS tasks over CLIENTS sessions, each looping lock -> release on a uniformly
    random one of NAMES names for SECONDS."""
    prefix = lock_name("entity")
    sessions = [await lib.connect() for _ in range(clients)]
    stop = False
    waits = []

    async def run(t):
        rng = random.Random(os.getpid() * 1000003 + t)
        s = sessions[t % clients]
        while not stop:
            name = f"{prefix}/e{rng.randrange(names)}"
            asked = time.monotonic()
            release = await s.lock(name)
            waits.append((time.monotonic() - asked) * 1000)
            await release_blocking_or_async(release)

    window("start")
    started = time.monotonic()
    running = [asyncio.create_task(run(t)) for t in range(tasks)]
    await asyncio.sleep(seconds)
    stop = True
    _, pending = await asyncio.wait(running, timeout=STALL_S)
    elapsed = time.monotonic() - started
    window("end")
    out = {
        "scenario": "per-entity",
        "names": names,
        "tasks": tasks,
        "clients": clients,
        "seconds": round(elapsed, 3),
        "grants": len(waits),
        "grants_per_s": round(len(waits) / elapsed, 3),
    }
    if pending:
        out["error"] = (
            f"stalled: {len(pending)} of {tasks} tasks still waiting {STALL_S:g} s after the stop "
            "(a lost wake-up)"
        )
    else:
        await close_all(sessions)
    out.update(pct("acquire_", waits))
    return out


async def footprint(lib, locks):
    s = await lib.connect(shared=True)
    prefix = lock_name("footprint")
    gate = asyncio.Semaphore(64)

    async def take(i):
        async with gate:
            return await s.lock(f"{prefix}/{i}")

    t = time.monotonic()
    held = await asyncio.gather(*(take(i) for i in range(locks)))
    acquire_s = time.monotonic() - t
    print(json.dumps({"holding": len(held)}), flush=True)
    await blocking(sys.stdin.readline)

    async def give(r):
        async with gate:
            await release_blocking_or_async(r)

    await asyncio.gather(*(give(r) for r in held))
    await close_all([s])
    return {"scenario": "footprint", "locks": locks, "acquire_s": round(acquire_s, 3)}


async def main():
    libname, backend, endpoint, scenario, *args = sys.argv[1:]
    libs = {
        "kazoo": ("zookeeper", Kazoo),
        "aetcd": ("etcd", Aetcd),
        "etcd3": ("etcd", Etcd3),
        "redispy": ("redis", RedisPyLib),
        "redis-lock": ("redis", RedisLockLib),
        "pottery": ("redis", PotteryLib),
    }
    want, cls = libs[libname]
    if backend != want:
        sys.exit(f"{libname} runs on {want}, not {backend}")
    n = int(args[0])
    # Blocking libraries: one thread per contender (1,000 herd waiters need 1,000).
    threads = {"contended": n, "herd": n, "per-entity": int(args[1]) if scenario == "per-entity" else 0}
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads.get(scenario, 64) + 16)
    )
    lib = cls(endpoint)
    if scenario == "uncontended":
        out = await uncontended(lib, n)
    elif scenario == "contended":
        out = await contended(lib, n, float(args[1]))
    elif scenario == "herd":
        out = await herd(lib, n)
    elif scenario == "footprint":
        out = await footprint(lib, n)
    elif scenario == "per-entity":
        if len(args) < 4:
            sys.exit("usage: locks.py LIB BACKEND ENDPOINT per-entity NAMES TASKS CLIENTS SECONDS")
        out = await per_entity(lib, n, int(args[1]), int(args[2]), float(args[3]))
    else:
        sys.exit(f"unknown scenario {scenario}")
    if lib.note and "error" not in out:
        out["note"] = out["note"] + "; " + lib.note if "note" in out else lib.note
    print(json.dumps(out), flush=True)
    os._exit(0)  # client threads (kazoo, gRPC) must not delay the exit


if __name__ == "__main__":
    asyncio.run(main())
