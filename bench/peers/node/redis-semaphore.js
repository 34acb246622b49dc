#!/usr/bin/env node
// queuelock bench harness for node's redis-semaphore `Mutex` (npm `redis-semaphore`
// over `ioredis`), see bench/peers/README.md:
//
//   node redis-semaphore.js BACKEND ENDPOINT SCENARIO ARGS...
//
// BACKEND must be redis. Every contender is a `Mutex` on ONE shared ioredis connection
// (commands pipeline on it; node is single-threaded); per-entity task i uses connection
// i mod CLIENTS. The mutex runs with its default
// waiting settings (it polls `SET NX PX` every retryInterval = 10 ms) and a 15 s
// lockTimeout (the TTL every implementation uses; refreshed at 80 %); acquireTimeout is
// raised from its 10 s default to an hour so that a lock call waits until it is granted,
// as every other implementation's does. Scenarios and JSON output as in
// bench/src/scenario.rs.
'use strict';

const TTL_MS = 15000;
const STALL_S = parseFloat(process.env.QUEUELOCK_BENCH_STALL_S || '15');

function out(v) {
  process.stdout.write(JSON.stringify(v) + '\n');
}

function windowMark(mark) {
  out({ window: mark });
}

function pct(prefix, samples) {
  const s = [...samples].sort((a, b) => a - b);
  const pick = (q) => (s.length ? Math.round(s[Math.round((s.length - 1) * q)] * 1000) / 1000 : null);
  return { [`${prefix}p50_ms`]: pick(0.5), [`${prefix}p99_ms`]: pick(0.99), [`${prefix}max_ms`]: pick(1.0) };
}

const r3 = (x) => Math.round(x * 1000) / 1000;
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

function rssKib() {
  const status = require('fs').readFileSync('/proc/self/status', 'utf8');
  const line = status.split('\n').find((l) => l.startsWith('VmRSS:'));
  return line ? parseInt(line.split(/\s+/)[1], 10) : null;
}

function lockName(scenario) {
  return `bench/${scenario}-${process.pid}`;
}

class Lib {
  constructor(endpoint) {
    const Redis = require('ioredis');
    const [host, port] = endpoint.split(',')[0].split(':');
    this.open = () => new Redis({ host, port: parseInt(port, 10), lazyConnect: true, maxRetriesPerRequest: null });
    this.conns = [this.open()];
    this.sharing =
      'one ioredis connection for all (node is single-threaded); a Mutex per waiter, polling SET NX every 10 ms (the default)';
  }

  async start() {
    await this.conns[0].connect();
  }

  // `k` connections in all (the per-entity scenario's clients).
  async clients(k) {
    while (this.conns.length < k) {
      const c = this.open();
      await c.connect();
      this.conns.push(c);
    }
  }

  // Returns a release function once granted; `client` picks the connection.
  async lock(name, client = 0) {
    const { Mutex } = require('redis-semaphore');
    const m = new Mutex(this.conns[client], 'redis-semaphore-bench:' + name, {
      lockTimeout: TTL_MS,
      acquireTimeout: 3600 * 1000,
    });
    await m.acquire();
    return () => m.release();
  }

  async close() {
    await Promise.all(this.conns.map((c) => c.quit()));
  }
}

async function uncontended(lib, iterations) {
  const name = lockName('uncontended');
  const op = async () => {
    const release = await lib.lock(name);
    await release();
  };
  for (let i = 0; i < Math.min(iterations, 5); i++) await op();
  const samples = [];
  windowMark('start');
  const started = now();
  for (let i = 0; i < iterations; i++) {
    const t = now();
    await op();
    samples.push(now() - t);
  }
  const elapsed = (now() - started) / 1000;
  windowMark('end');
  return { scenario: 'uncontended', count: iterations, ops_per_s: r3(iterations / elapsed), ...pct('', samples) };
}

// Resolves with the tasks' results, or after STALL_S with what finished and how many did not.
async function waitAll(tasks, stallS) {
  let done = 0;
  tasks.forEach((t) => t.then(() => done++, () => done++));
  const all = Promise.all(tasks).then(() => null);
  const timer = sleep(stallS * 1000).then(() => 'stalled');
  const r = await Promise.race([all, timer]);
  return r === 'stalled' ? tasks.length - done : 0;
}

async function contended(lib, n, seconds) {
  const name = lockName(`contended${n}`);
  for (let i = 0; i < n; i++) await (await lib.lock(name))();
  let stop = false;
  let last = null; // [release time, releaser]
  const per = new Array(n).fill(0);
  const waits = [];
  const handoffs = [];
  const run = async (i) => {
    while (!stop) {
      const asked = now();
      const release = await lib.lock(name);
      const granted = now();
      per[i]++;
      waits.push(granted - asked);
      if (last !== null && last[1] !== i && last[0] >= asked) handoffs.push(granted - last[0]);
      last = [now(), i];
      await release();
    }
  };
  windowMark('start');
  const started = now();
  const tasks = per.map((_, i) => run(i));
  await sleep(seconds * 1000);
  stop = true;
  const pending = await waitAll(tasks, STALL_S);
  const elapsed = (now() - started) / 1000;
  windowMark('end');
  const total = per.reduce((a, b) => a + b, 0);
  const min = Math.min(...per);
  const res = {
    scenario: 'contended',
    contenders: n,
    seconds: r3(elapsed),
    grants: total,
    grants_per_s: r3(total / elapsed),
    fairness: min > 0 ? r3(Math.max(...per) / min) : null,
    per_contender: per,
    handoffs: handoffs.length,
  };
  if (pending) {
    res.seconds = r3(seconds);
    res.grants_per_s = r3(total / seconds);
    res.stalled = pending;
    res.note = `${pending} of ${n} contenders were never granted within ${STALL_S} s after the others stopped`;
  }
  return { ...res, ...pct('wait_', waits), ...pct('handoff_', handoffs) };
}

async function herd(lib, waiters) {
  const name = lockName('herd');
  const held = await lib.lock(name);
  const rssBefore = rssKib();
  const t0 = now();
  const tasks = [];
  for (let i = 0; i < waiters; i++) {
    tasks.push(
      lib.lock(name).then(async (release) => {
        await release();
        return now();
      })
    );
  }
  await sleep(500 + waiters * 2);
  const enqueueS = (now() - t0) / 1000;
  const rssAfter = rssKib();
  const releasedAt = now();
  await held();
  const ends = [];
  tasks.forEach((t) => t.then((e) => ends.push(e)));
  // Stalled: no grant for STALL_S.
  for (;;) {
    const before = ends.length;
    const pending = await waitAll(tasks, STALL_S);
    if (!pending) break;
    if (ends.length === before) {
      return {
        scenario: 'herd',
        waiters,
        releases: waiters + 1 - pending,
        error: `stalled: ${pending} of ${waiters} waiters still not granted ${STALL_S} s after the last grant`,
      };
    }
  }
  const ends2 = await Promise.all(tasks);
  return {
    scenario: 'herd',
    waiters,
    releases: waiters + 1,
    drain_s: r3((Math.max(...ends2) - releasedAt) / 1000),
    enqueue_s: r3(enqueueS),
    rss_kib_per_waiter: r3((rssAfter - rssBefore) / waiters),
    sharing: lib.sharing,
  };
}

async function perEntity(lib, names, tasks, clients, seconds) {
  await lib.clients(clients);
  const prefix = lockName('entity');
  let stop = false;
  const waits = [];
  let seed = process.pid;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const run = async (t) => {
    while (!stop) {
      const name = `${prefix}/e${Math.floor(rnd() * names)}`;
      const asked = now();
      const release = await lib.lock(name, t % clients);
      waits.push(now() - asked);
      await release();
    }
  };
  windowMark('start');
  const started = now();
  const running = [];
  for (let t = 0; t < tasks; t++) running.push(run(t));
  await sleep(seconds * 1000);
  stop = true;
  const pending = await waitAll(running, STALL_S);
  const elapsed = (now() - started) / 1000;
  windowMark('end');
  const res = {
    scenario: 'per-entity',
    names,
    tasks,
    clients,
    seconds: r3(elapsed),
    grants: waits.length,
    grants_per_s: r3(waits.length / elapsed),
  };
  if (pending) res.error = `stalled: ${pending} of ${tasks} tasks still waiting ${STALL_S} s after the stop`;
  return { ...res, ...pct('acquire_', waits) };
}

async function footprint(lib, locks) {
  const prefix = lockName('footprint');
  const t = now();
  const held = [];
  let next = 0;
  const worker = async () => {
    while (next < locks) {
      const i = next++;
      held.push(await lib.lock(`${prefix}/${i}`));
    }
  };
  await Promise.all(Array.from({ length: 64 }, worker));
  const acquireS = (now() - t) / 1000;
  out({ holding: held.length });
  await new Promise((res) => process.stdin.once('data', res));
  await Promise.all(held.map((r) => r()));
  return { scenario: 'footprint', locks, acquire_s: r3(acquireS) };
}

async function main() {
  const [backend, endpoint, scenario, ...args] = process.argv.slice(2);
  if (backend !== 'redis') {
    console.error(`redis-semaphore runs on redis, not ${backend}`);
    process.exit(2);
  }
  const lib = new Lib(endpoint);
  await lib.start();
  const n = parseInt(args[0], 10);
  let res;
  try {
    if (scenario === 'uncontended') res = await uncontended(lib, n);
    else if (scenario === 'contended') res = await contended(lib, n, parseFloat(args[1]));
    else if (scenario === 'herd') res = await herd(lib, n);
    else if (scenario === 'footprint') res = await footprint(lib, n);
    else if (scenario === 'per-entity')
      res = await perEntity(lib, n, parseInt(args[1], 10), parseInt(args[2], 10), parseFloat(args[3]));
    else {
      console.error(`unknown scenario ${scenario}`);
      process.exit(2);
    }
  } catch (e) {
    res = { scenario, error: String(e && e.message ? e.message : e) };
  }
  out(res);
  process.exit(0);
}

main();
