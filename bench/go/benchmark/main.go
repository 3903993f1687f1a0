// Command benchmark drives an etcd v3 endpoint (ours or a real etcd) with etcd's Go client, as etcd's own
// tools/benchmark does: --conns gRPC connections (one clientv3.Client each), --clients closed-loop clients
// spread over them round-robin, put or range of --key-size keys and --val-size values, or lease-keepalive:
// each client grants one lease, then renews it with KeepAliveOnce (a keepalive stream per renewal), as etcd's
// benchmark lease-keepalive does. Because it is Go, it
// takes far less CPU per request than the Python load tool, so on a small machine the server gets the cores.
//
// It is built by `kvstore bench go ...` (bench/gobench.py) against Debian's golang-etcd-server-dev sources
// (GOPATH mode, offline) and prints ops/s and latency percentiles, or a JSON object with --json.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
)

// populateClientsMax bounds the concurrency of the range workload's key load before the run.
const populateClientsMax = 64

// leaseTTLS is the TTL of the lease-keepalive workload's leases (etcd's benchmark grants 100 s).
const leaseTTLS = 100

type options struct {
	workload    string
	endpoints   []string
	conns       int
	clients     int
	total       int
	seconds     float64
	keySize     int
	valSize     int
	keySpace    int
	seqKeys     bool
	consistency string
	prefix      string
	timeoutS    float64
	populate    bool
	verify      bool
	jsonOut     bool
	seed        int64
	procs       int
	user        string
	tls         transport.TLSInfo
}

type latencyMs struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
}

type result struct {
	Driver      string    `json:"driver"`
	Workload    string    `json:"workload"`
	Endpoints   []string  `json:"endpoints"`
	Conns       int       `json:"conns"`
	Clients     int       `json:"clients"`
	KeySize     int       `json:"key_size"`
	ValSize     int       `json:"val_size"`
	KeySpace    int       `json:"key_space"`
	Consistency string    `json:"consistency,omitempty"`
	Procs       int       `json:"procs"`
	Ops         int       `json:"ops"`
	Errors      int       `json:"errors"`
	FirstError  string    `json:"first_error,omitempty"`
	Seconds     float64   `json:"seconds"`
	OpsPerS     float64   `json:"ops_per_s"`
	LatencyMs   latencyMs `json:"latency_ms"`
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmark:", err)
		os.Exit(2)
	}
	if o.procs > 0 {
		// On a machine the server shares, idle Ps spin looking for work: one P leaves it the CPU.
		runtime.GOMAXPROCS(o.procs)
	}
	// The clients' own logs (balancer, retries) would drown the result.
	clientv3.SetLogger(grpclog.NewLoggerV2(discard{}, discard{}, os.Stderr))
	res, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmark:", err)
		os.Exit(1)
	}
	if o.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", " ")
		_ = enc.Encode(res)
	} else {
		printResult(res)
	}
	if res.Ops == 0 {
		os.Exit(1)
	}
}

// firstError keeps the first error any client saw (errors of every concrete type).
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func parseArgs(args []string) (options, error) {
	fs := flag.NewFlagSet("benchmark", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: benchmark put|range|lease-keepalive [flags]")
		fs.PrintDefaults()
	}
	var o options
	endpoints := fs.String("endpoints", "http://127.0.0.1:2379", "comma-separated client URLs")
	fs.IntVar(&o.conns, "conns", 1, "gRPC connections (one clientv3.Client each)")
	fs.IntVar(&o.clients, "clients", 1, "concurrent closed-loop clients, spread over the connections")
	fs.IntVar(&o.total, "total", 0, "operations over all clients (default 10000 unless --seconds)")
	fs.Float64Var(&o.seconds, "seconds", 0, "run for this many seconds instead of --total operations")
	fs.IntVar(&o.keySize, "key-size", 8, "bytes per key")
	fs.IntVar(&o.valSize, "val-size", 256, "bytes per value")
	fs.IntVar(&o.keySpace, "key-space", 10000, "distinct keys (range: written before the run)")
	fs.BoolVar(&o.seqKeys, "sequential-keys", false, "walk the key space in order instead of at random")
	fs.StringVar(&o.consistency, "consistency", "l", "range: l (linearizable) or s (serializable)")
	fs.StringVar(&o.prefix, "prefix", "/gobench/", "prefix of the benchmark's keys")
	fs.Float64Var(&o.timeoutS, "timeout", 10, "seconds per request")
	fs.BoolVar(&o.populate, "populate", true, "range: write every key of the key space before the run")
	fs.BoolVar(&o.verify, "verify", true, "range: count a Range that misses its key (or value size) as an error")
	fs.BoolVar(&o.jsonOut, "json", false, "print the result as one JSON object")
	fs.Int64Var(&o.seed, "seed", 1, "random seed of the key choice")
	fs.StringVar(&o.tls.TrustedCAFile, "cacert", "", "https:// endpoints: the CA that signed the server's certificate")
	fs.StringVar(&o.tls.CertFile, "cert", "", "client certificate (mutual TLS: the server's --client-cert-auth)")
	fs.StringVar(&o.tls.KeyFile, "key", "", "the client certificate's key")
	fs.StringVar(&o.user, "user", "", "name:password: authenticate (etcd's simple or JWT token on every call), as etcd's benchmark --user")
	fs.IntVar(&o.procs, "procs", 0, "GOMAXPROCS: OS threads running the driver's Go code at once (0: Go's default, every core)")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fs.Usage()
		return o, fmt.Errorf("the first argument is the workload: put, range or lease-keepalive")
	}
	o.workload = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.endpoints = append(o.endpoints, e)
		}
	}
	switch {
	case o.workload != "put" && o.workload != "range" && o.workload != "lease-keepalive":
		return o, fmt.Errorf("unknown workload %q (put, range or lease-keepalive)", o.workload)
	case len(o.endpoints) == 0:
		return o, fmt.Errorf("--endpoints is empty")
	case o.conns < 1 || o.clients < 1:
		return o, fmt.Errorf("--conns and --clients must be at least 1")
	case o.total > 0 && o.seconds > 0:
		return o, fmt.Errorf("--total and --seconds exclude each other")
	case o.total < 0 || o.seconds < 0:
		return o, fmt.Errorf("--total and --seconds must not be negative")
	case o.keySpace < 1:
		return o, fmt.Errorf("--key-space must be at least 1")
	case o.consistency != "l" && o.consistency != "s":
		return o, fmt.Errorf("--consistency must be l or s")
	case o.procs < 0:
		return o, fmt.Errorf("--procs must not be negative")
	}
	if o.total == 0 && o.seconds == 0 {
		o.total = 10000
	}
	return o, nil
}

// key is the i-th key of the key space: the prefix, then i in decimal, padded with 'k' to --key-size.
func key(o options, i int) string {
	k := fmt.Sprintf("%s%d", o.prefix, i)
	if len(k) < o.keySize {
		k += strings.Repeat("k", o.keySize-len(k))
	}
	return k
}

func run(o options) (result, error) {
	quietLog := zap.NewProductionConfig()
	quietLog.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cfg := clientv3.Config{Endpoints: o.endpoints, DialTimeout: 5 * time.Second, LogConfig: &quietLog}
	if o.user != "" {
		name, password, found := strings.Cut(o.user, ":")
		if !found {
			return result{}, fmt.Errorf("--user is name:password")
		}
		cfg.Username, cfg.Password = name, password
	}
	if !o.tls.Empty() || o.tls.TrustedCAFile != "" {
		tlsConfig, err := o.tls.ClientConfig()
		if err != nil {
			return result{}, fmt.Errorf("TLS: %w", err)
		}
		cfg.TLS = tlsConfig
	}
	clients := make([]*clientv3.Client, o.conns)
	for i := range clients {
		c, err := clientv3.New(cfg)
		if err != nil {
			return result{}, fmt.Errorf("connect %v: %w", o.endpoints, err)
		}
		defer c.Close()
		clients[i] = c
		// The dial does not block: one request first, so that a wrong endpoint fails now, not per request.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.Get(ctx, o.prefix+"probe", clientv3.WithSerializable())
		cancel()
		if err != nil {
			return result{}, fmt.Errorf("first request to %v: %w", o.endpoints, err)
		}
	}
	timeout := time.Duration(o.timeoutS * float64(time.Second))
	value := strings.Repeat("v", o.valSize)
	if o.workload == "range" && o.populate {
		if err := populate(o, clients, value, timeout); err != nil {
			return result{}, err
		}
	}
	leases := make([]clientv3.LeaseID, o.clients)
	if o.workload == "lease-keepalive" { // one lease per client, granted before the run
		for ci := range leases {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			granted, err := clients[ci%len(clients)].Grant(ctx, leaseTTLS)
			cancel()
			if err != nil {
				return result{}, fmt.Errorf("lease grant: %w", err)
			}
			leases[ci] = granted.ID
		}
	}
	var rangeOpts []clientv3.OpOption
	if o.consistency == "s" {
		rangeOpts = append(rangeOpts, clientv3.WithSerializable())
	}

	var remaining int64 = int64(o.total) // operations not yet claimed, with --total
	deadline := time.Time{}
	start := time.Now()
	if o.seconds > 0 {
		deadline = start.Add(time.Duration(o.seconds * float64(time.Second)))
	}
	var seqNext int64 = -1
	lats := make([][]time.Duration, o.clients)
	errs := make([]int, o.clients)
	var firstErr firstError
	var wg sync.WaitGroup
	for ci := 0; ci < o.clients; ci++ {
		wg.Add(1)
		go func(ci int) {
			defer wg.Done()
			c := clients[ci%len(clients)]
			rnd := rand.New(rand.NewSource(o.seed + int64(ci)))
			for {
				if deadline.IsZero() {
					if atomic.AddInt64(&remaining, -1) < 0 {
						return
					}
				} else if !time.Now().Before(deadline) {
					return
				}
				var i int
				if o.seqKeys {
					i = int(atomic.AddInt64(&seqNext, 1) % int64(o.keySpace))
				} else {
					i = rnd.Intn(o.keySpace)
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				t0 := time.Now()
				var err error
				if o.workload == "put" {
					_, err = c.Put(ctx, key(o, i), value)
				} else if o.workload == "lease-keepalive" {
					var resp *clientv3.LeaseKeepAliveResponse
					resp, err = c.KeepAliveOnce(ctx, leases[ci])
					if err == nil && resp.TTL != leaseTTLS {
						err = fmt.Errorf("keepalive of lease %x answered TTL %d, want %d", leases[ci], resp.TTL, leaseTTLS)
					}
				} else {
					var resp *clientv3.GetResponse
					resp, err = c.Get(ctx, key(o, i), rangeOpts...)
					if err == nil && o.verify && (len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) != o.valSize) {
						err = fmt.Errorf("range of %q found %d keys, want the one written before the run", key(o, i), len(resp.Kvs))
					}
				}
				d := time.Since(t0)
				cancel()
				if err != nil {
					errs[ci]++
					firstErr.set(err)
					continue
				}
				lats[ci] = append(lats[ci], d)
			}
		}(ci)
	}
	wg.Wait()
	elapsed := time.Since(start)

	var all []time.Duration
	nerr := 0
	for ci := range lats {
		all = append(all, lats[ci]...)
		nerr += errs[ci]
	}
	res := result{
		Driver: "go-clientv3", Workload: o.workload, Endpoints: o.endpoints, Conns: o.conns, Clients: o.clients,
		KeySize: o.keySize, ValSize: o.valSize, KeySpace: o.keySpace, Procs: runtime.GOMAXPROCS(0),
		Ops: len(all), Errors: nerr, Seconds: elapsed.Seconds(),
		OpsPerS: float64(len(all)) / elapsed.Seconds(), LatencyMs: percentiles(all),
	}
	if o.workload == "range" {
		res.Consistency = o.consistency
	}
	if err := firstErr.get(); err != nil {
		res.FirstError = err.Error()
	}
	return res, nil
}

// populate writes every key of the key space once, so that ranges find a value.
func populate(o options, clients []*clientv3.Client, value string, timeout time.Duration) error {
	var next int64 = -1
	var failed firstError
	var wg sync.WaitGroup
	workers := populateClientsMax
	if o.keySpace < workers {
		workers = o.keySpace
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := clients[w%len(clients)]
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= o.keySpace || failed.get() != nil {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				_, err := c.Put(ctx, key(o, i), value)
				cancel()
				if err != nil {
					failed.set(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if err := failed.get(); err != nil {
		return fmt.Errorf("writing the key space before the run: %w", err)
	}
	return nil
}

func percentiles(all []time.Duration) latencyMs {
	if len(all) == 0 {
		return latencyMs{}
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	at := func(q float64) float64 {
		i := int(q * float64(len(all)))
		if i >= len(all) {
			i = len(all) - 1
		}
		return ms(all[i])
	}
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	return latencyMs{
		Min: ms(all[0]), Mean: ms(sum / time.Duration(len(all))),
		P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: ms(all[len(all)-1]),
	}
}

func printResult(r result) {
	what := r.Workload
	if r.Consistency != "" {
		what += " (consistency " + r.Consistency + ")"
	}
	fmt.Printf("%s: %d ops in %.2f s over %d clients / %d conns to %s\n",
		what, r.Ops, r.Seconds, r.Clients, r.Conns, strings.Join(r.Endpoints, ","))
	fmt.Printf("  %.0f ops/s   errors %d\n", r.OpsPerS, r.Errors)
	if r.FirstError != "" {
		fmt.Printf("  first error: %s\n", r.FirstError)
	}
	l := r.LatencyMs
	fmt.Printf("  latency ms: min %.3f  mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
		l.Min, l.Mean, l.P50, l.P90, l.P99, l.P999, l.Max)
}
