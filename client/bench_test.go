package client

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkRoundTrip measures operations against the fake cluster over
// loopback TCP: the client's routing, pipelining and encoding, plus the
// fake's (simple, goroutine-per-request) serving. It is not a measure of
// kvnode, whose cost is raft and fsync.
func BenchmarkRoundTrip(b *testing.B) {
	fc := newFakeCluster(b, 3)
	value := make([]byte, 100)
	for _, bc := range []struct {
		name     string
		parallel int // goroutines per GOMAXPROCS; 0: one caller
		op       func(c *Client, ctx context.Context, i uint64) error
	}{
		{"Get/serial", 0, func(c *Client, ctx context.Context, i uint64) error {
			_, err := c.Get(ctx, fmt.Sprint("key-", i%1000))
			return err
		}},
		{"Get/parallel-64", 64, func(c *Client, ctx context.Context, i uint64) error {
			_, err := c.Get(ctx, fmt.Sprint("key-", i%1000))
			return err
		}},
		{"Set/parallel-64", 64, func(c *Client, ctx context.Context, i uint64) error {
			return c.Set(ctx, fmt.Sprint("key-", i%1000), value)
		}},
		{"MGet16/parallel-16", 16, func(c *Client, ctx context.Context, i uint64) error {
			keys := make([]string, 16)
			for j := range keys {
				keys[j] = fmt.Sprint("key-", (i*16+uint64(j))%1000)
			}
			_, err := c.MGet(ctx, keys)
			return err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newTestClient(b, fc, nil)
			ctx := context.Background()
			for i := uint64(0); i < 1000; i++ {
				if err := c.Set(ctx, fmt.Sprint("key-", i), value); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			if bc.parallel == 0 {
				for i := 0; i < b.N; i++ {
					if err := bc.op(c, ctx, uint64(i)); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				var n atomic.Uint64
				b.SetParallelism(bc.parallel)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := bc.op(c, ctx, n.Add(1)); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
