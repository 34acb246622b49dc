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

func newClient() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second})
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
	start := time.Now()
	for i := 0; i < n; i++ {
		t := time.Now()
		lockRelease(ctx, m)
		samples = append(samples, ms(time.Since(t)))
	}
	elapsed := time.Since(start).Seconds()
	s.Close()
	cli.Close()
	out := map[string]interface{}{"scenario": "uncontended", "count": n, "ops_per_s": round3(float64(n) / elapsed)}
	pct(out, "", samples)
	return out
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
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	for i := range sessions {
		sessions[i].Close()
		clients[i].Close()
	}
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
	default:
		die(fmt.Errorf("unknown scenario %s", os.Args[3]))
	}
	b, err := json.Marshal(out)
	if err != nil {
		die(err)
	}
	fmt.Println(string(b))
}
