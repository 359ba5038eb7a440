package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"kvnode/engine"
	"kvnode/internal/faultfs"
	"kvnode/wal"
)

// TestDiskFailureFailStop is P5 across the cluster: node 1's disk starts
// failing fsyncs while writes run. Node 1 stops acknowledging and its host
// stops cleanly with the WAL's error (raft does not crash the process on
// the failed storage); the two others carry on.
func TestDiskFailureFailStop(t *testing.T) {
	for _, kind := range []string{"sync", "write"} {
		t.Run(kind, func(t *testing.T) {
			var armed atomic.Bool
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if !armed.Load() || !strings.HasSuffix(op.Path, ".log") || !strings.Contains(op.Path, "wal") {
					return nil
				}
				switch op.Kind {
				case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
					if kind == "sync" {
						return errorfs.ErrInjected
					}
				case errorfs.OpFileWrite, errorfs.OpFileWriteAt:
					if kind == "write" {
						return errorfs.ErrInjected
					}
				}
				return nil
			})
			c := newTestClusterFS(t, 3, 4, nil, func(id uint64) vfs.FS {
				if id == 1 {
					return faultfs.Wrap(vfs.Default, inj)
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range 20 {
				if _, err := c.put(ctx, 1, fmt.Sprintf("before-%d", i), "v"); err != nil {
					t.Fatal(err)
				}
			}
			n1 := c.node(1).h()
			armed.Store(true)
			// Whatever node 1 leads fails now; keep writing through
			// whoever leads until node 1's host has stopped.
		wait:
			for i := 0; ; i++ {
				select {
				case <-n1.Done():
					break wait
				case <-ctx.Done():
					t.Fatal("node 1 never stopped")
				default:
				}
				pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
				c.put(pctx, uint64(i%4)+1, "poke", "x")
				pcancel()
			}
			if err := n1.Err(); !errors.Is(err, wal.ErrFailed) {
				t.Fatalf("node 1 stopped with %v, want an error wrapping wal.ErrFailed", err)
			}
			if _, err := n1.Propose(ctx, 1, []engine.Op{{Kind: engine.OpPut, Key: []byte("k"), Value: []byte("v")}}); !errors.Is(err, wal.ErrFailed) {
				t.Fatalf("a proposal after the failure: %v", err)
			}
			// The others carry on.
			for g := uint64(1); g <= 4; g++ {
				ld := c.leader(g, 10*time.Second)
				if ld.id == 1 {
					t.Fatalf("group %d still led by the failed node", g)
				}
				if _, err := c.put(ctx, g, "after", "v"); err != nil {
					t.Fatalf("group %d after node 1 failed: %v", g, err)
				}
			}
			armed.Store(false)
		})
	}
}
