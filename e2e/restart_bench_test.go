package e2e

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"kvnode/client"
)

var restartKeys = flag.Int("restart.keys", 1_000_000, "keys loaded before BenchmarkRestart kills a node")

// BenchmarkRestart loads -restart.keys keys of 256 bytes into a 3-node
// cluster, kills a node with SIGKILL, restarts it, and measures how long
// until it reports ready (caught up, every partition led): the time a
// node holding that much data is out after a crash. Run it with
// make bench-restart.
func BenchmarkRestart(b *testing.B) {
	for range b.N {
		c := startCluster(b, 3)
		cl, err := client.New(client.Config{Endpoints: c.HTTPEndpoints(), RequestTimeout: 30 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		value := make([]byte, 256)
		start := time.Now()
		bulkLoad(b, cl, *restartKeys, 500, 16, func(j int) client.KV {
			return client.KV{Key: fmt.Sprintf("key-%09d", j), Value: value}
		})
		cl.Close()
		b.Logf("loaded %d keys in %v", *restartKeys, time.Since(start).Round(time.Millisecond))
		n := c.Node(1)
		if err := n.Kill(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start = time.Now()
		if err := n.Restart(); err != nil {
			b.Fatal(err)
		}
		for {
			if err := n.Ready(ctx); err == nil {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatal("not ready after 5 minutes")
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(start)
		b.StopTimer()
		b.ReportMetric(took.Seconds(), "s-to-ready")
		b.Logf("%s, holding %d keys, was ready %v after a kill -9 and restart", n.Name, *restartKeys, took.Round(time.Millisecond))
		c.Close()
	}
}
