package wal

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// crashResult is what one simulated power loss showed.
type crashResult struct {
	acked, started int   // ops durable before the crash, ops begun by it
	recovered      int   // the op count whose model matches, or -1
	err            error // why no model matched
}

// crashOnce runs the workload against a WAL on a crashable in-memory
// filesystem, takes a CrashClone at a random moment while Appends are in
// flight, and reopens the clone. Pebble recovers a prefix of its commits,
// so the reopened WAL must equal the model after some op count k with
// acked <= k <= started: every Append that returned is there, in order.
func crashOnce(t *testing.T, seed uint64, noSync bool) crashResult {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	fs := vfs.NewCrashableMem()
	opts := &Options{FS: fs, unsafeNoSync: noSync}
	if rng.IntN(3) == 0 {
		// A small memtable makes Pebble flush and rotate its own WAL
		// during the run, so the crash can land in those too.
		opts.MemTableSize = 1 << 20
	}
	w, err := Open("wal", opts)
	if err != nil {
		t.Fatal(err)
	}
	wl := newWorkload(seed, 1+rng.IntN(8))
	models := []walModel{{}}
	var mu sync.Mutex // guards models
	var durable, started atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			o, m := wl.next()
			mu.Lock()
			models = append(models, m)
			mu.Unlock()
			started.Store(int64(i))
			if err := o.apply(w); err != nil {
				done <- fmt.Errorf("op %d: %w", i, err)
				return
			}
			if o.compact == nil {
				// A synced Append makes every earlier op durable too.
				durable.Store(int64(i))
			}
		}
	}()
	time.Sleep(time.Duration(rng.IntN(30000)) * time.Microsecond)
	lo := int(durable.Load())
	clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
	hi := int(started.Load())
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w2, err := Open("wal", &Options{FS: clone})
	if err != nil {
		t.Fatalf("seed %d: reopening the crashed WAL: %v", seed, err)
	}
	defer w2.Close()
	res := crashResult{acked: lo, started: hi, recovered: -1}
	mu.Lock()
	defer mu.Unlock()
	for k := hi; k >= lo; k-- {
		err := diff(w2, models[k])
		if err == nil {
			res.recovered = k
			return res
		}
		res.err = fmt.Errorf("k=%d: %w; %v", k, err, res.err)
	}
	return res
}

// TestCrashRecovery is P3 for the log: after a power loss at any instant,
// every Append that returned is present, entries are contiguous, and the
// hard state is the one last written with them.
func TestCrashRecovery(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 10
	}
	var acked int
	for seed := range uint64(seeds) {
		res := crashOnce(t, seed, false)
		if res.recovered < 0 {
			t.Errorf("seed %d: no state between op %d (last durable) and op %d (last started) matches: %v",
				seed, res.acked, res.started, res.err)
		}
		acked += res.acked
	}
	t.Logf("%d crashes, %d acknowledged ops checked", seeds, acked)
	if acked == 0 {
		t.Fatal("no op was acknowledged before any crash: the test checked nothing")
	}
}

// TestCrashRecoveryDetectsMissingSync proves the crash test can fail: with
// fsync turned off in the WAL, acknowledged appends must go missing for at
// least one seed.
func TestCrashRecoveryDetectsMissingSync(t *testing.T) {
	lost := 0
	for seed := range uint64(20) {
		if res := crashOnce(t, seed, true); res.recovered < 0 {
			lost++
		}
	}
	t.Logf("without fsync, %d of 20 crashes lost acknowledged appends", lost)
	if lost == 0 {
		t.Fatal("the crash test did not notice a WAL that never fsyncs")
	}
}

// TestWorkloadModel checks the workload's model against a WAL that does
// not crash, live and after a clean reopen, so that a crash-test failure
// can only mean lost or corrupted data, not a wrong model.
func TestWorkloadModel(t *testing.T) {
	for seed := range uint64(5) {
		fs := vfs.NewMem()
		w, err := Open("wal", &Options{FS: fs, EntryCacheSize: int64(seed) * 500})
		if err != nil {
			t.Fatal(err)
		}
		wl := newWorkload(seed, 5)
		for i := range 600 {
			o, m := wl.next()
			if err := o.apply(w); err != nil {
				t.Fatalf("seed %d op %d: %v", seed, i, err)
			}
			if i%20 == 0 {
				if err := diff(w, m); err != nil {
					t.Fatalf("seed %d op %d: %v", seed, i, err)
				}
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w, err = Open("wal", &Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		if err := diff(w, wl.m); err != nil {
			t.Fatalf("seed %d after reopen: %v", seed, err)
		}
		w.Close()
	}
}
