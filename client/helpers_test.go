package client

import (
	"context"
	"fmt"
	"testing"
	"time"

	"kvnode/wire"
)

// newTestClient returns a client of fc, closed when the test ends. Periodic
// refreshes are off unless the test turns them on, so that tests see only
// the refreshes the client's logic triggers.
func newTestClient(t testing.TB, fc *fakeCluster, edit func(*Config)) *Client {
	t.Helper()
	cfg := fc.config()
	cfg.RefreshInterval = -1
	if edit != nil {
		edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return c
}

// keyIn returns a key of partition p (of fakePartitions), distinct for each
// i.
func keyIn(p, i int) string {
	for n := 0; ; n++ {
		k := fmt.Sprintf("k%d-%d-%d", p, i, n)
		if wire.Partition([]byte(k), fakePartitions) == p {
			return k
		}
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or a few seconds pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
