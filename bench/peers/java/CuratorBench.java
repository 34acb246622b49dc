import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

/**
 * The queuelock bench harness for Apache Curator's InterProcessMutex (ZooKeeper).
 *
 * <pre>java -cp ... CuratorBench zookeeper ENDPOINT SCENARIO ARGS...</pre>
 *
 * Scenarios and JSON output as in bench/src/scenario.rs (see bench/peers/README.md). One
 * CuratorFramework (one ZooKeeper session) per contender.
 */
public final class CuratorBench {
    static final int TTL_MS = 15_000;
    static String endpoint;

    static CuratorFramework connect() throws Exception {
        CuratorFramework c = CuratorFrameworkFactory.newClient(endpoint, TTL_MS, 10_000, new RetryOneTime(100));
        c.start();
        if (!c.blockUntilConnected(10, java.util.concurrent.TimeUnit.SECONDS)) {
            throw new IllegalStateException("no connection to " + endpoint);
        }
        return c;
    }

    /** Marks the start or end of the measured loop for the driver's CPU reading. */
    static void window(String mark) {
        System.out.println("{\"window\": \"" + mark + "\"}");
        System.out.flush();
    }

    static String lockPath(String scenario) {
        return "/curator-bench/" + scenario + "-" + ProcessHandle.current().pid();
    }

    static double ms(long nanos) {
        return nanos / 1e6;
    }

    static double round3(double x) {
        return Math.round(x * 1000.0) / 1000.0;
    }

    static void pct(Map<String, Object> out, String prefix, List<Double> s) {
        Collections.sort(s);
        String[] names = {"p50_ms", "p99_ms", "max_ms"};
        double[] qs = {0.5, 0.99, 1.0};
        for (int i = 0; i < 3; i++) {
            out.put(prefix + names[i], s.isEmpty() ? null : round3(s.get((int) Math.round((s.size() - 1) * qs[i]))));
        }
    }

    static double rssKiB() throws Exception {
        for (String l : Files.readAllLines(Paths.get("/proc/self/status"))) {
            if (l.startsWith("VmRSS:")) {
                return Double.parseDouble(l.trim().split("\\s+")[1]);
            }
        }
        return 0;
    }

    static Map<String, Object> uncontended(int n) throws Exception {
        CuratorFramework c = connect();
        InterProcessMutex m = new InterProcessMutex(c, lockPath("uncontended"));
        for (int i = 0; i < Math.min(n, 5); i++) {
            m.acquire();
            m.release();
        }
        List<Double> samples = new ArrayList<>();
        window("start");
        long start = System.nanoTime();
        for (int i = 0; i < n; i++) {
            long t = System.nanoTime();
            m.acquire();
            m.release();
            samples.add(ms(System.nanoTime() - t));
        }
        double elapsed = (System.nanoTime() - start) / 1e9;
        window("end");
        c.close();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", "uncontended");
        out.put("count", n);
        out.put("ops_per_s", round3(n / elapsed));
        pct(out, "", samples);
        return out;
    }

    static final Object LAST = new Object();
    static long lastAt = -1;
    static int lastBy = -1;

    static Map<String, Object> contended(int n, double seconds) throws Exception {
        String path = lockPath("contended" + n);
        List<CuratorFramework> clients = new ArrayList<>();
        List<InterProcessMutex> mutexes = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            CuratorFramework c = connect();
            InterProcessMutex m = new InterProcessMutex(c, path);
            m.acquire();
            m.release();
            clients.add(c);
            mutexes.add(m);
        }
        AtomicBoolean stop = new AtomicBoolean();
        long[] per = new long[n];
        List<Double> waits = new ArrayList<>();
        List<Double> handoffs = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(n);
        List<Future<?>> tasks = new ArrayList<>();
        window("start");
        long start = System.nanoTime();
        for (int i = 0; i < n; i++) {
            final int id = i;
            final InterProcessMutex m = mutexes.get(i);
            tasks.add(pool.submit(() -> {
                while (!stop.get()) {
                    long asked = System.nanoTime();
                    m.acquire();
                    long granted = System.nanoTime();
                    per[id]++;
                    synchronized (LAST) {
                        waits.add(ms(granted - asked));
                        if (lastBy >= 0 && lastBy != id && lastAt >= asked) {
                            handoffs.add(ms(granted - lastAt));
                        }
                        lastAt = System.nanoTime();
                        lastBy = id;
                    }
                    m.release();
                }
                return null;
            }));
        }
        Thread.sleep((long) (seconds * 1000));
        stop.set(true);
        for (Future<?> f : tasks) {
            f.get();
        }
        double elapsed = (System.nanoTime() - start) / 1e9;
        window("end");
        pool.shutdown();
        for (CuratorFramework c : clients) {
            c.close();
        }
        long total = 0, max = 0, min = Long.MAX_VALUE;
        List<Long> perList = new ArrayList<>();
        for (long g : per) {
            total += g;
            max = Math.max(max, g);
            min = Math.min(min, g);
            perList.add(g);
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", "contended");
        out.put("contenders", n);
        out.put("seconds", round3(elapsed));
        out.put("grants", total);
        out.put("grants_per_s", round3(total / elapsed));
        out.put("fairness", min == 0 ? null : round3((double) max / min));
        out.put("per_contender", perList);
        out.put("handoffs", handoffs.size());
        pct(out, "wait_", waits);
        pct(out, "handoff_", handoffs);
        return out;
    }

    static Map<String, Object> herd(int n) throws Exception {
        String path = lockPath("herd");
        CuratorFramework holderClient = connect();
        InterProcessMutex holder = new InterProcessMutex(holderClient, path);
        holder.acquire();
        System.gc();
        double rssBefore = rssKiB();
        long t0 = System.nanoTime();
        List<CuratorFramework> clients = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            clients.add(connect());
        }
        ExecutorService pool = Executors.newFixedThreadPool(n);
        CountDownLatch called = new CountDownLatch(n);
        List<Future<Long>> ends = new ArrayList<>();
        for (CuratorFramework c : clients) {
            ends.add(pool.submit(() -> {
                InterProcessMutex m = new InterProcessMutex(c, path);
                called.countDown();
                m.acquire();
                m.release();
                return System.nanoTime();
            }));
        }
        called.await();
        Thread.sleep(500 + 2L * n);
        double enqueue = (System.nanoTime() - t0) / 1e9;
        double rssAfter = rssKiB();
        long releasedAt = System.nanoTime();
        holder.release();
        long last = releasedAt;
        for (Future<Long> f : ends) {
            last = Math.max(last, f.get());
        }
        pool.shutdown();
        for (CuratorFramework c : clients) {
            c.close();
        }
        holderClient.close();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", "herd");
        out.put("waiters", n);
        out.put("releases", n + 1);
        out.put("drain_s", round3((last - releasedAt) / 1e9));
        out.put("enqueue_s", round3(enqueue));
        out.put("rss_kib_per_waiter", round3((rssAfter - rssBefore) / n));
        out.put("sharing", "a CuratorFramework (ZooKeeper session, own connection) and a thread per waiter");
        return out;
    }

    /**
     * Per-entity locks: TASKS threads over CLIENTS CuratorFrameworks, each looping
     * acquire -> release of an InterProcessMutex on a uniformly random one of NAMES paths.
     */
    static Map<String, Object> perEntity(int names, int tasks, int clients, double seconds) throws Exception {
        String prefix = lockPath("entity");
        List<CuratorFramework> cs = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            cs.add(connect());
        }
        AtomicBoolean stop = new AtomicBoolean();
        List<Double> waits = Collections.synchronizedList(new ArrayList<>());
        ExecutorService pool = Executors.newFixedThreadPool(tasks);
        List<Future<?>> fs = new ArrayList<>();
        window("start");
        long start = System.nanoTime();
        for (int t = 0; t < tasks; t++) {
            final CuratorFramework c = cs.get(t % clients);
            final java.util.Random rng = new java.util.Random(ProcessHandle.current().pid() * 1_000_003L + t);
            fs.add(pool.submit(() -> {
                List<Double> mine = new ArrayList<>();
                while (!stop.get()) {
                    InterProcessMutex m = new InterProcessMutex(c, prefix + "/e" + rng.nextInt(names));
                    long asked = System.nanoTime();
                    m.acquire();
                    mine.add(ms(System.nanoTime() - asked));
                    m.release();
                }
                waits.addAll(mine);
                return null;
            }));
        }
        Thread.sleep((long) (seconds * 1000));
        stop.set(true);
        for (Future<?> f : fs) {
            f.get();
        }
        double elapsed = (System.nanoTime() - start) / 1e9;
        window("end");
        pool.shutdown();
        for (CuratorFramework c : cs) {
            c.close();
        }
        List<Double> all = new ArrayList<>(waits);
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", "per-entity");
        out.put("names", names);
        out.put("tasks", tasks);
        out.put("clients", clients);
        out.put("seconds", round3(elapsed));
        out.put("grants", all.size());
        out.put("grants_per_s", round3(all.size() / elapsed));
        pct(out, "acquire_", all);
        return out;
    }

    static Map<String, Object> footprint(int n) throws Exception {
        CuratorFramework c = connect();
        String prefix = lockPath("footprint");
        List<InterProcessMutex> held = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(64);
        List<Future<InterProcessMutex>> fs = new ArrayList<>();
        long start = System.nanoTime();
        for (int i = 0; i < n; i++) {
            final String p = prefix + "/" + i;
            fs.add(pool.submit(() -> {
                InterProcessMutex m = new InterProcessMutex(c, p);
                m.acquire();
                return m;
            }));
        }
        for (Future<InterProcessMutex> f : fs) {
            held.add(f.get());
        }
        double acquire = (System.nanoTime() - start) / 1e9;
        System.out.println("{\"holding\": " + held.size() + "}");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        // InterProcessMutex must be released by the thread that acquired it; closing the
        // session removes every lock node at once.
        pool.shutdownNow();
        c.close();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", "footprint");
        out.put("locks", n);
        out.put("acquire_s", round3(acquire));
        return out;
    }

    static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof String) {
            return "\"" + v + "\"";
        }
        if (v instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (b.length() > 1) {
                    b.append(", ");
                }
                b.append(json(e.getKey().toString())).append(": ").append(json(e.getValue()));
            }
            return b.append("}").toString();
        }
        if (v instanceof List) {
            StringBuilder b = new StringBuilder("[");
            for (Object o : (List<?>) v) {
                if (b.length() > 1) {
                    b.append(", ");
                }
                b.append(json(o));
            }
            return b.append("]").toString();
        }
        return v.toString();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4 || !args[0].equals("zookeeper")) {
            System.err.println("usage: CuratorBench zookeeper ENDPOINT SCENARIO N [SECONDS]");
            System.exit(2);
        }
        endpoint = args[1];
        int n = Integer.parseInt(args[3]);
        Map<String, Object> out;
        switch (args[2]) {
            case "uncontended": out = uncontended(n); break;
            case "contended": out = contended(n, args.length > 4 ? Double.parseDouble(args[4]) : 3.0); break;
            case "herd": out = herd(n); break;
            case "footprint": out = footprint(n); break;
            case "per-entity":
                if (args.length < 7) {
                    throw new IllegalArgumentException("per-entity NAMES TASKS CLIENTS SECONDS");
                }
                out = perEntity(n, Integer.parseInt(args[4]), Integer.parseInt(args[5]), Double.parseDouble(args[6]));
                break;
            default: throw new IllegalArgumentException("unknown scenario " + args[2]);
        }
        System.out.println(json(out));
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }
}
