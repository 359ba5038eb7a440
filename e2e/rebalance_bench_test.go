package e2e

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kvnode/client"
)

var rebalanceBytes = flag.Int64("rebalance.bytes", 1<<30, "data loaded before BenchmarkRebalance adds a node")

// BenchmarkRebalance loads a 3-node cluster with -rebalance.bytes of data
// (64 KiB values, incompressible), adds a fourth node, and measures how
// fast the cluster moves a quarter of the partitions' replicas to it: the
// snapshot bytes streamed over the time until the cluster is balanced.
// Run it with make bench-rebalance.
func BenchmarkRebalance(b *testing.B) {
	for range b.N {
		benchRebalance(b)
	}
}

func benchRebalance(b *testing.B) {
	c := startCluster(b, 3)
	cl, err := client.New(client.Config{Endpoints: c.HTTPEndpoints(), RequestTimeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	const valueSize = 64 << 10
	keys := int(*rebalanceBytes / valueSize)
	start := time.Now()
	bulkLoad(b, cl, keys, 8, 8, func(j int) client.KV {
		// Every value distinct: repeated ones would compress away in the
		// snapshot stream and flatter the figure.
		value := make([]byte, valueSize)
		rand.Read(value)
		return client.KV{Key: fmt.Sprintf("bulk-%08d", j), Value: value}
	})
	loaded := time.Since(start)
	b.Logf("loaded %d MiB in %v (%.0f MB/s through the write path)", *rebalanceBytes>>20, loaded.Round(time.Millisecond),
		float64(*rebalanceBytes)/loaded.Seconds()/1e6)

	var before struct {
		Bytes uint64 `json:"snapshot_bytes_sent"`
	}
	if err := c.Node(0).GetJSON(ctx, "/rebalance", &before); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start = time.Now()
	if _, err := c.AddNode(ctx, true); err != nil {
		b.Fatal(err)
	}
	active := []string{"node-1", "node-2", "node-3", "node-4"}
	for {
		if err := balanced(ctx, c.Node(0), active); err == nil {
			break
		}
		if time.Since(start) > 30*time.Minute {
			b.Fatal("not balanced after 30 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	var after struct {
		Bytes     uint64 `json:"snapshot_bytes_sent"`
		Snapshots uint64 `json:"snapshots_sent"`
	}
	if err := c.Node(0).GetJSON(ctx, "/rebalance", &after); err != nil {
		b.Fatal(err)
	}
	moved := after.Bytes - before.Bytes
	b.ReportMetric(float64(moved)/took.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(moved)/1e6, "MB-moved")
	b.ReportMetric(took.Seconds(), "s-to-balance")
	b.Logf("moved %d MB in %d snapshots in %v", moved/1e6, after.Snapshots, took.Round(time.Millisecond))
	if os.Getenv("KVNODE_KEEP_LOGS") != "" {
		for _, n := range c.Nodes() {
			data, _ := os.ReadFile(n.LogPath)
			os.WriteFile(filepath.Join(os.Getenv("KVNODE_KEEP_LOGS"), n.Name+".log"), data, 0o644)
		}
	}
}

// bulkLoad writes n keys through MSet requests of batch items, with up to
// parallel requests in flight, and fails the benchmark on any error.
func bulkLoad(b *testing.B, cl *client.Client, n, batch, parallel int, kv func(i int) client.KV) {
	b.Helper()
	ctx := context.Background()
	sem := make(chan struct{}, parallel)
	errc := make(chan error, 1)
	for i := 0; i < n; i += batch {
		kvs := make([]client.KV, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			kvs = append(kvs, kv(j))
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			if _, err := cl.MSet(ctx, kvs); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}()
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
}
