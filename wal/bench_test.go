package wal

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.etcd.io/raft/v3/raftpb"
	"kvnode/internal/faultfs"
)

// syncCounter counts the fsyncs Pebble issues on its log files, so that a
// benchmark can report how many entries each fsync carried.
type syncCounter struct{ n atomic.Int64 }

func (c *syncCounter) fs() vfs.FS {
	return faultfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") {
				c.n.Add(1)
			}
		}
		return nil
	}))
}

const benchValueSize = 256

// BenchmarkWALAppend measures synced appends on the real disk under
// b.TempDir().
//
// single: one single-entry Append at a time, each timed against a raw
// write+fsync of the same size to a plain file in the same directory, in
// the same loop so that both see the same disk and noise. Reports
// wal-us/op, fsync-us/op and their ratio.
//
// concurrent: appenders over 64 groups, 256-byte entries, one entry per
// call; Pebble group-commits them. Reports entries/s and entries/fsync.
func BenchmarkWALAppend(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		dir := b.TempDir()
		w, err := Open(filepath.Join(dir, "wal"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		f, err := os.Create(filepath.Join(dir, "raw"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		data := make([]byte, benchValueSize)
		// What the WAL writes per entry: Pebble's record and batch headers,
		// the key and the entry header. Compare like with like.
		raw := make([]byte, benchValueSize+entryKeyLen+entryValueHeader+7+12+3)
		var walTime, rawTime time.Duration
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			if err := w.Append([]Update{{Group: 1, Entries: []*raftpb.Entry{newEntry(uint64(i+1), 1, data)}}}); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := f.Write(raw); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			rawTime += time.Since(t1)
			walTime += t1.Sub(t0)
		}
		b.StopTimer()
		b.ReportMetric(float64(walTime.Microseconds())/float64(b.N), "wal-us/op")
		b.ReportMetric(float64(rawTime.Microseconds())/float64(b.N), "fsync-us/op")
		b.ReportMetric(float64(walTime)/float64(rawTime), "wal/fsync")
	})
	for _, appenders := range []int{1, 16, 64, 256} {
		b.Run("concurrent/groups=64/appenders="+itoa(appenders), func(b *testing.B) {
			var syncs syncCounter
			w, err := Open(filepath.Join(b.TempDir(), "wal"), &Options{FS: syncs.fs()})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			data := make([]byte, benchValueSize)
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			b.ResetTimer()
			start := time.Now()
			syncs0 := syncs.n.Load()
			for a := range appenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Each appender owns the groups a, a+appenders, ...
					// (raft's rule: one writer per group), and keeps its own
					// per-group next index.
					var owned []uint64
					for g := a; g < 64; g += appenders {
						owned = append(owned, uint64(g+1))
					}
					if len(owned) == 0 {
						owned = []uint64{uint64(64 + a + 1)}
					}
					idx := make([]uint64, len(owned))
					for i := 0; ; i++ {
						if next.Add(1) > int64(b.N) {
							return
						}
						k := i % len(owned)
						idx[k]++
						if err := w.Append([]Update{{Group: owned[k], Entries: []*raftpb.Entry{newEntry(idx[k], 1, data)}}}); err != nil {
							failed.Store(&err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if p := failed.Load(); p != nil {
				b.Fatal(*p)
			}
			n := syncs.n.Load() - syncs0
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
			if n > 0 {
				b.ReportMetric(float64(b.N)/float64(n), "entries/fsync")
			}
		})
	}
	// The scheduler's shape: one Append carrying one entry for each of 64
	// groups, so one fsync covers 64 entries by construction.
	b.Run("batched/groups=64", func(b *testing.B) {
		var syncs syncCounter
		w, err := Open(filepath.Join(b.TempDir(), "wal"), &Options{FS: syncs.fs()})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		data := make([]byte, benchValueSize)
		ups := make([]Update, 64)
		b.ResetTimer()
		start := time.Now()
		syncs0 := syncs.n.Load()
		entries := 0
		for i := 0; entries < b.N; i++ {
			for g := range ups {
				ups[g] = Update{Group: uint64(g + 1), Entries: []*raftpb.Entry{newEntry(uint64(i+1), 1, data)}}
			}
			if err := w.Append(ups); err != nil {
				b.Fatal(err)
			}
			entries += len(ups)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(entries)/elapsed.Seconds(), "entries/s")
		if n := syncs.n.Load() - syncs0; n > 0 {
			b.ReportMetric(float64(entries)/float64(n), "entries/fsync")
		}
	})
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
