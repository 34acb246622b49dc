// Command etcdmutex is the queuelock bench harness for etcd's Go concurrency.Mutex (the
// code behind `etcdctl lock`), measured in-process, without etcdctl's start-up.
//
//	etcdmutex etcd ENDPOINT SCENARIO ARGS...
//
// Scenarios and JSON output as in bench/src/scenario.rs (see bench/peers/README.md).
// Built by scripts/lib/peers.sh with GO111MODULE=off against Debian's etcd 3.4 sources.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

const ttl = 15

var endpoint string

func die(err error) {
	fmt.Fprintln(os.Stderr, "etcdmutex:", err)
	os.Exit(1)
}

// window marks the start or end of the measured loop for the driver's CPU reading.
func window(mark string) {
	fmt.Printf("{\"window\": \"%s\"}\n", mark)
}

func newClient() *clientv3.Client {
	// ENDPOINT may list several members, comma-separated (scripts/bench --cluster).
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoint, ","), DialTimeout: 10 * time.Second})
	if err != nil {
		die(err)
	}
	return cli
}

func newSession(cli *clientv3.Client) *concurrency.Session {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		die(err)
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func pct(out map[string]interface{}, prefix string, s []float64) {
	sort.Float64s(s)
	pick := func(q float64) interface{} {
		if len(s) == 0 {
			return nil
		}
		return round3(s[int(math.Round(float64(len(s)-1)*q))])
	}
	out[prefix+"p50_ms"] = pick(0.5)
	out[prefix+"p99_ms"] = pick(0.99)
	out[prefix+"max_ms"] = pick(1.0)
}

func lockName(scenario string) string {
	return fmt.Sprintf("/bench/%s-%d", scenario, os.Getpid())
}

func rssKiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}

func lockRelease(ctx context.Context, m *concurrency.Mutex) {
	if err := m.Lock(ctx); err != nil {
		die(err)
	}
	if err := m.Unlock(ctx); err != nil {
		die(err)
	}
}

func uncontended(n int) map[string]interface{} {
	ctx := context.Background()
	cli := newClient()
	s := newSession(cli)
	m := concurrency.NewMutex(s, lockName("uncontended"))
	for i := 0; i < 5 && i < n; i++ {
		lockRelease(ctx, m)
	}
	samples := make([]float64, 0, n)
	window("start")
	start := time.Now()
	for i := 0; i < n; i++ {
		t := time.Now()
		lockRelease(ctx, m)
		samples = append(samples, ms(time.Since(t)))
	}
	elapsed := time.Since(start).Seconds()
	window("end")
	s.Close()
	cli.Close()
	out := map[string]interface{}{"scenario": "uncontended", "count": n, "ops_per_s": round3(float64(n) / elapsed)}
	pct(out, "", samples)
	return out
}

// runFor lets the loops run for seconds, stops them, waits for them and marks the end of
// the measured window; returns the seconds since start.
func runFor(seconds float64, stop *int32, wg *sync.WaitGroup, start time.Time) float64 {
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	atomic.StoreInt32(stop, 1)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	window("end")
	return elapsed
}

func closeAll(sessions []*concurrency.Session, clients []*clientv3.Client) {
	for i := range sessions {
		sessions[i].Close()
		clients[i].Close()
	}
}

type lastRelease struct {
	at time.Time
	by int
}

func contended(n int, seconds float64) map[string]interface{} {
	ctx := context.Background()
	name := lockName(fmt.Sprintf("contended%d", n))
	clients := make([]*clientv3.Client, n)
	mutexes := make([]*concurrency.Mutex, n)
	sessions := make([]*concurrency.Session, n)
	for i := range mutexes {
		clients[i] = newClient()
		sessions[i] = newSession(clients[i])
		mutexes[i] = concurrency.NewMutex(sessions[i], name)
		lockRelease(ctx, mutexes[i])
	}
	var stop int32
	var mu sync.Mutex
	var last *lastRelease
	per := make([]int, n)
	var waits, handoffs []float64
	var wg sync.WaitGroup
	window("start")
	start := time.Now()
	for i := range mutexes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			m := mutexes[i]
			for atomic.LoadInt32(&stop) == 0 {
				asked := time.Now()
				if err := m.Lock(ctx); err != nil {
					die(err)
				}
				granted := time.Now()
				per[i]++
				mu.Lock()
				waits = append(waits, ms(granted.Sub(asked)))
				if last != nil && last.by != i && !last.at.Before(asked) {
					handoffs = append(handoffs, ms(granted.Sub(last.at)))
				}
				last = &lastRelease{at: time.Now(), by: i}
				mu.Unlock()
				if err := m.Unlock(ctx); err != nil {
					die(err)
				}
			}
		}(i)
	}
	elapsed := runFor(seconds, &stop, &wg, start)
	closeAll(sessions, clients)
	total, max, min := 0, 0, math.MaxInt32
	for _, g := range per {
		total += g
		if g > max {
			max = g
		}
		if g < min {
			min = g
		}
	}
	out := map[string]interface{}{
		"scenario": "contended", "contenders": n, "seconds": round3(elapsed), "grants": total,
		"grants_per_s": round3(float64(total) / elapsed), "per_contender": per, "handoffs": len(handoffs),
		"fairness": nil,
	}
	if min > 0 {
		out["fairness"] = round3(float64(max) / float64(min))
	}
	pct(out, "wait_", waits)
	pct(out, "handoff_", handoffs)
	return out
}

func herd(n int) map[string]interface{} {
	ctx := context.Background()
	name := lockName("herd")
	cli := newClient() // one connection; a session (lease) per waiter
	holder := concurrency.NewMutex(newSession(cli), name)
	if err := holder.Lock(ctx); err != nil {
		die(err)
	}
	rssBefore := rssKiB()
	t0 := time.Now()
	mutexes := make([]*concurrency.Mutex, n)
	for i := range mutexes {
		mutexes[i] = concurrency.NewMutex(newSession(cli), name)
	}
	ends := make([]time.Time, n)
	var called, done sync.WaitGroup
	for i := range mutexes {
		called.Add(1)
		done.Add(1)
		go func(i int) {
			defer done.Done()
			called.Done()
			lockRelease(ctx, mutexes[i])
			ends[i] = time.Now()
		}(i)
	}
	called.Wait()
	time.Sleep(time.Duration(500+2*n) * time.Millisecond)
	enqueue := time.Since(t0).Seconds()
	rssAfter := rssKiB()
	releasedAt := time.Now()
	if err := holder.Unlock(ctx); err != nil {
		die(err)
	}
	done.Wait()
	lastEnd := releasedAt
	for _, e := range ends {
		if e.After(lastEnd) {
			lastEnd = e
		}
	}
	return map[string]interface{}{
		"scenario": "herd", "waiters": n, "releases": n + 1,
		"drain_s": round3(lastEnd.Sub(releasedAt).Seconds()), "enqueue_s": round3(enqueue),
		"rss_kib_per_waiter": round3((rssAfter - rssBefore) / float64(n)),
		"sharing":            "one clientv3.Client (gRPC connection) for all; a concurrency.Session (lease, keep-alive) per waiter",
	}
}

func footprint(n int) map[string]interface{} {
	ctx := context.Background()
	cli := newClient()
	s := newSession(cli)
	prefix := lockName("footprint")
	mutexes := make([]*concurrency.Mutex, n)
	gate := make(chan struct{}, 64)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range mutexes {
		mutexes[i] = concurrency.NewMutex(s, fmt.Sprintf("%s/%d", prefix, i))
		wg.Add(1)
		gate <- struct{}{}
		go func(m *concurrency.Mutex) {
			defer func() { <-gate; wg.Done() }()
			if err := m.Lock(ctx); err != nil {
				die(err)
			}
		}(mutexes[i])
	}
	wg.Wait()
	acquire := time.Since(start).Seconds()
	b, _ := json.Marshal(map[string]interface{}{"holding": n})
	fmt.Println(string(b))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	for _, m := range mutexes {
		wg.Add(1)
		gate <- struct{}{}
		go func(m *concurrency.Mutex) {
			defer func() { <-gate; wg.Done() }()
			if err := m.Unlock(ctx); err != nil {
				die(err)
			}
		}(m)
	}
	wg.Wait()
	s.Close()
	return map[string]interface{}{"scenario": "footprint", "locks": n, "acquire_s": round3(acquire)}
}

// perEntity: tasks goroutines over clients clients (one clientv3.Client and one
// concurrency.Session each), each looping Lock -> Unlock on a uniformly random one of
// names mutex names for seconds.
func perEntity(names, tasks, clients int, seconds float64) map[string]interface{} {
	ctx := context.Background()
	prefix := lockName("entity")
	cls := make([]*clientv3.Client, clients)
	sessions := make([]*concurrency.Session, clients)
	for i := range cls {
		cls[i] = newClient()
		sessions[i] = newSession(cls[i])
	}
	var stop int32
	var mu sync.Mutex
	var waits []float64
	grants := 0
	var wg sync.WaitGroup
	window("start")
	start := time.Now()
	for t := 0; t < tasks; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(os.Getpid())*1000003 + int64(t)))
			s := sessions[t%clients]
			var mine []float64
			for atomic.LoadInt32(&stop) == 0 {
				m := concurrency.NewMutex(s, fmt.Sprintf("%s/e%d", prefix, rng.Intn(names)))
				asked := time.Now()
				if err := m.Lock(ctx); err != nil {
					die(err)
				}
				mine = append(mine, ms(time.Since(asked)))
				if err := m.Unlock(ctx); err != nil {
					die(err)
				}
			}
			mu.Lock()
			waits = append(waits, mine...)
			grants += len(mine)
			mu.Unlock()
		}(t)
	}
	elapsed := runFor(seconds, &stop, &wg, start)
	closeAll(sessions, cls)
	out := map[string]interface{}{
		"scenario": "per-entity", "names": names, "tasks": tasks, "clients": clients,
		"seconds": round3(elapsed), "grants": grants, "grants_per_s": round3(float64(grants) / elapsed),
	}
	pct(out, "acquire_", waits)
	return out
}

func atoi(i int) int {
	if len(os.Args) <= i {
		die(fmt.Errorf("missing argument %d", i))
	}
	v, err := strconv.Atoi(os.Args[i])
	if err != nil {
		die(err)
	}
	return v
}

func main() {
	if len(os.Args) < 5 {
		die(fmt.Errorf("usage: etcdmutex etcd ENDPOINT SCENARIO N [SECONDS]"))
	}
	if os.Args[1] != "etcd" {
		die(fmt.Errorf("concurrency.Mutex runs on etcd, not %s", os.Args[1]))
	}
	endpoint = os.Args[2]
	n, err := strconv.Atoi(os.Args[4])
	if err != nil {
		die(err)
	}
	var out map[string]interface{}
	switch os.Args[3] {
	case "uncontended":
		out = uncontended(n)
	case "contended":
		secs := 3.0
		if len(os.Args) > 5 {
			if secs, err = strconv.ParseFloat(os.Args[5], 64); err != nil {
				die(err)
			}
		}
		out = contended(n, secs)
	case "herd":
		out = herd(n)
	case "footprint":
		out = footprint(n)
	case "per-entity":
		if len(os.Args) < 8 {
			die(fmt.Errorf("usage: etcdmutex etcd ENDPOINT per-entity NAMES TASKS CLIENTS SECONDS"))
		}
		secs, err := strconv.ParseFloat(os.Args[7], 64)
		if err != nil {
			die(err)
		}
		out = perEntity(n, atoi(5), atoi(6), secs)
	default:
		die(fmt.Errorf("unknown scenario %s", os.Args[3]))
	}
	b, err := json.Marshal(out)
	if err != nil {
		die(err)
	}
	fmt.Println(string(b))
}
