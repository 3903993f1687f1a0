// Command autosync is etcd's Go client (clientv3) with endpoint auto-sync, driven line by line on stdin by
// tests/clients/test_go_autosync.py, so that the test sees exactly what a Go application would see.
//
// It connects to the one endpoint given by --endpoint with AutoSyncInterval set, then answers each command
// line with one JSON line on stdout:
//
//	endpoints <seconds> <url,url,...>  wait until client.Endpoints() is exactly that set -> {"ok","endpoints"}
//	put <key> <value> <seconds>        Put, retried until it succeeds or the time is up -> {"ok","failures","error"}
//	get <key>                          Get (linearizable) -> {"ok","value","error"}
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
)

// requestTimeout bounds one request; a request to a killed endpoint fails within it and is retried.
const requestTimeout = 2 * time.Second

type reply struct {
	OK        bool     `json:"ok"`
	Endpoints []string `json:"endpoints,omitempty"`
	Failures  int      `json:"failures"`
	Value     string   `json:"value,omitempty"`
	Error     string   `json:"error,omitempty"`
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func main() {
	endpoint := flag.String("endpoint", "", "the one client URL to start from")
	interval := flag.Duration("auto-sync-interval", 500*time.Millisecond, "clientv3.Config.AutoSyncInterval")
	flag.Parse()
	clientv3.SetLogger(grpclog.NewLoggerV2(discard{}, discard{}, os.Stderr))
	quiet := zap.NewProductionConfig()
	quiet.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	c, err := clientv3.New(clientv3.Config{
		Endpoints:        []string{*endpoint},
		AutoSyncInterval: *interval,
		DialTimeout:      5 * time.Second,
		LogConfig:        &quiet,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "autosync:", err)
		os.Exit(1)
	}
	defer c.Close()
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		var r reply
		switch {
		case f[0] == "endpoints" && len(f) == 3:
			r = waitEndpoints(c, seconds(f[1]), strings.Split(f[2], ","))
		case f[0] == "put" && len(f) == 4:
			r = put(c, f[1], f[2], seconds(f[3]))
		case f[0] == "get" && len(f) == 2:
			r = get(c, f[1])
		default:
			r = reply{Error: fmt.Sprintf("bad command %q", in.Text())}
		}
		_ = out.Encode(r)
	}
}

func seconds(s string) time.Duration {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0
	}
	return time.Duration(v * float64(time.Second))
}

func sorted(eps []string) []string {
	out := append([]string(nil), eps...)
	sort.Strings(out)
	return out
}

func waitEndpoints(c *clientv3.Client, within time.Duration, want []string) reply {
	want = sorted(want)
	deadline := time.Now().Add(within)
	for {
		got := sorted(c.Endpoints())
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return reply{OK: true, Endpoints: got}
		}
		if time.Now().After(deadline) {
			return reply{Endpoints: got, Error: "endpoints did not become " + strings.Join(want, ",")}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func put(c *clientv3.Client, key, value string, within time.Duration) reply {
	deadline := time.Now().Add(within)
	failures := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, err := c.Put(ctx, key, value)
		cancel()
		if err == nil {
			return reply{OK: true, Failures: failures}
		}
		failures++
		if time.Now().After(deadline) {
			return reply{Failures: failures, Error: err.Error()}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func get(c *clientv3.Client, key string) reply {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		return reply{Error: err.Error()}
	}
	if len(resp.Kvs) == 0 {
		return reply{OK: true}
	}
	return reply{OK: true, Value: string(resp.Kvs[0].Value)}
}
