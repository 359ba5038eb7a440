package engine

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestConcurrentUse runs one writer per partition alongside readers,
// syncs, snapshots and stats on the same engine (meant for -race), then
// closes the engine while readers are still calling it.
func TestConcurrentUse(t *testing.T) {
	e, err := Open("e", &Options{FS: vfs.NewMem(), MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	dst := openEngine(t, vfs.NewMem(), "dst", nil)
	const parts = 4
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		failure = make(chan error, 16)
	)
	report := func(err error) {
		select {
		case failure <- err:
		default:
		}
	}
	for p := range uint64(parts) {
		wg.Go(func() {
			for idx := uint64(1); idx <= 200; idx++ {
				b := e.NewBatch()
				_, err := b.Apply(p, idx, 1, []Op{put(fmt.Sprint("k", idx%17), "v"), cas("c", "x", idx-1)}, nil)
				if err == nil {
					err = b.Commit()
				}
				b.Close()
				if err != nil {
					report(fmt.Errorf("writer %d: %w", p, err))
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	for r := range 3 {
		readers.Go(func() {
			for i := 0; !stop.Load(); i++ {
				p := uint64(i % parts)
				switch r {
				case 0:
					if _, _, err := e.Get(p, []byte("c")); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) {
						report(err)
					}
					// Synced first: both only grow, so reading applied
					// second can only widen the gap, never invert it.
					s := e.SyncedApplied(p)
					if a := e.Applied(p); s > a.Index {
						report(fmt.Errorf("partition %d synced %d above applied %d", p, s, a.Index))
					}
				case 1:
					if err := e.Sync(); err != nil && !errors.Is(err, ErrClosed) {
						report(err)
					}
					if _, _, err := e.PartitionStats(p); err != nil && !errors.Is(err, ErrClosed) {
						report(err)
					}
				case 2:
					s, err := e.NewSnapshot(p)
					if errors.Is(err, ErrClosed) {
						continue
					}
					if err != nil {
						report(err)
						continue
					}
					var buf bytes.Buffer
					_, err = s.WriteTo(&buf)
					s.Close()
					if err != nil {
						report(err)
						continue
					}
					// Snapshots of the same partition arrive in order of
					// their index; older or equal ones are stale.
					if _, err := dst.InstallSnapshot(&buf); err != nil && !errors.Is(err, ErrStaleIndex) {
						report(err)
					}
				}
			}
		})
	}
	wg.Wait()
	// Close while the readers run: their calls must fail cleanly. Close
	// refuses while a snapshot is open, so retry.
	for {
		err := e.Close()
		if err == nil {
			break
		}
		if errors.Is(err, ErrClosed) {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	readers.Wait()
	close(failure)
	for err := range failure {
		t.Error(err)
	}
	for p := range uint64(parts) {
		if a := dst.Applied(p); a.Index == 0 {
			continue // no snapshot of it got through, which is fine
		}
		if _, _, err := dst.Get(p, []byte("c")); err != nil {
			t.Errorf("partition %d installed without its data: %v", p, err)
		}
	}
}
