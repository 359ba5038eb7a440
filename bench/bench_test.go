package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"kvnode/client"
	"kvnode/node"
)

// The end-to-end benchmarks: 3 nodes in this process (node.Open, real disk
// under the temp dir, loopback, the default 64 partitions and raft clock),
// driven by the real Go client through the same runner and workloads as
// `kvnode bench`. One cluster serves every benchmark of the run (starting
// one takes seconds); TestMain stops it.
//
//	go test -run '^$' -bench . -benchtime 5s ./bench
//
// Each reports ops/s and the p50 and p99 latency in ms; ns/op is wall time
// over operations, i.e. 1/throughput, not a latency.

const benchKeys = 10_000

func BenchmarkSet(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			runBenchmark(b, WorkloadWrite, clients)
		})
	}
}

func BenchmarkGet(b *testing.B) {
	b.Run("clients=64", func(b *testing.B) { runBenchmark(b, WorkloadRead, 64) })
}

func BenchmarkStaleGet(b *testing.B) {
	b.Run("clients=64", func(b *testing.B) { runBenchmark(b, WorkloadStaleRead, 64) })
}

func runBenchmark(b *testing.B, w Workload, clients int) {
	c := sharedCluster(b)
	keys := KeySpace{Prefix: DefaultKeyPrefix, Chooser: NewKeyChooser(Uniform, benchKeys)}
	b.ResetTimer()
	res, err := Run(context.Background(), RunConfig{
		Name:    string(w),
		Clients: clients,
		Total:   int64(b.N),
		Warmup:  -1, // the framework's own ramp-up runs (b.N = 1, 100, ...) warm it
	}, NewOpFactory(c.client, w, keys, DefaultValueSize, 0))
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.Errors > 0 {
		b.Fatalf("%d of %d operations failed; first: %v", res.Errors, res.Errors+res.Ops, res.FirstError)
	}
	b.ReportMetric(res.Throughput(), "ops/s")
	b.ReportMetric(float64(res.Percentile(50))/float64(time.Millisecond), "p50-ms")
	b.ReportMetric(float64(res.Percentile(99))/float64(time.Millisecond), "p99-ms")
}

// inProcessCluster is 3 nodes of this process and a client of them.
type inProcessCluster struct {
	dir    string
	nodes  []*node.Node
	client *client.Client
}

var (
	sharedMu sync.Mutex
	shared   *inProcessCluster
)

// sharedCluster starts the cluster on first use and preloads benchKeys
// keys, so that reads find what they look for.
func sharedCluster(b *testing.B) *inProcessCluster {
	b.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		return shared
	}
	c, err := startInProcessCluster(3)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Preload(ctx, c.client, PreloadOptions{Prefix: DefaultKeyPrefix, Keys: benchKeys, ValueSize: DefaultValueSize}); err != nil {
		c.close()
		b.Fatal(err)
	}
	shared = c
	return c
}

func closeSharedCluster() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.close()
		shared = nil
	}
}

// startInProcessCluster opens n nodes the way node's own tests do: the
// first bootstraps, the others join it; ports 0, loopback, data dirs on the
// real disk. It returns once every node is ready.
func startInProcessCluster(n int) (_ *inProcessCluster, err error) {
	dir, err := os.MkdirTemp("", "kvnode-bench-")
	if err != nil {
		return nil, err
	}
	c := &inProcessCluster{dir: dir}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("KVNODE_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range n {
		name := fmt.Sprintf("node-%d", i+1)
		cfg := node.Config{
			NodeID:   name,
			DataDir:  filepath.Join(dir, name),
			BindHost: "127.0.0.1",
			Logger:   logger.With("n", name),
		}
		if i > 0 {
			cfg.JoinAddr = c.nodes[0].HTTPAddr()
		}
		nd, err := node.Open(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", name, err)
		}
		c.nodes = append(c.nodes, nd)
	}
	for {
		var notReady error
		for _, nd := range c.nodes {
			if err := nd.Ready(); err != nil {
				notReady = err
				break
			}
		}
		if notReady == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster not ready: %v", notReady)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var eps []string
	for _, nd := range c.nodes {
		eps = append(eps, nd.HTTPAddr())
	}
	c.client, err = client.New(client.Config{Endpoints: eps})
	if err != nil {
		return nil, err
	}
	if err := c.client.Sync(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *inProcessCluster) close() {
	if c.client != nil {
		c.client.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(c.nodes) - 1; i >= 0; i-- {
		c.nodes[i].Close(ctx) //nolint:errcheck // best effort: the dir goes next
	}
	os.RemoveAll(c.dir)
}
