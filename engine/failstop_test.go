package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// opKinds is an errorfs predicate matching a set of operation kinds.
type opKinds []errorfs.OpKind

func (k opKinds) Evaluate(op errorfs.Op) bool {
	for _, kind := range k {
		if op.Kind == kind {
			return true
		}
	}
	return false
}

func (k opKinds) String() string { return fmt.Sprintf("(OpKinds %v)", []errorfs.OpKind(k)) }

// failStopChildEnv marks the child process that runs TestFailStop's
// scenarios.
const failStopChildEnv = "KVNODE_ENGINE_FAILSTOP_CHILD"

// TestFailStop injects errors into writes or syncs of the engine's WAL and
// checks promise P5: the failure is returned, every later call returns the
// same sticky error, and what was synced before survives.
//
// Pebble reports these failures by panicking, possibly while holding its
// own mutexes, so the engine abandons the DB instead of closing it and its
// goroutines run until the process exits. The scenarios therefore run in a
// child process, which keeps this process's goroutine leak check honest.
func TestFailStop(t *testing.T) {
	if os.Getenv(failStopChildEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFailStop$", "-test.v", "-test.count=1", "-test.timeout=2m")
		cmd.Env = append(os.Environ(), failStopChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child process: %v\n%s", err, out)
		}
		if n := strings.Count(string(out), "--- PASS: TestFailStop/"); n != len(failStopCases) {
			t.Fatalf("child process passed %d scenarios, want %d:\n%s", n, len(failStopCases), out)
		}
		return
	}
	runFailStop(t)
}

func runFailStop(t *testing.T) {
	for _, tc := range failStopCases {
		t.Run(tc.name, func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			path := tc.path
			if path == "" {
				path = "/e/db/*.log"
			}
			toggle := &errorfs.Toggle{Injector: errorfs.ErrInjected.If(
				errorfs.And(errorfs.PathMatch(path), tc.kinds))}
			e, err := Open("/e", &Options{FS: errorfs.Wrap(mem, toggle), MemTableSize: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			next := uint64(1)
			mustApply(t, e, 1, next, 1, put("durable", "yes"))
			mustApply(t, e, 2, 1, 1, put("other", "x"))
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
			src := openEngine(t, vfs.NewMem(), "src", nil)
			mustApply(t, src, 3, 1, 1, put("s", "1"))
			stream, _ := snapshotBytes(t, src, 3)

			toggle.On()
			sticky := tc.trigger(t, e, &next)
			toggle.Off() // the engine must stay stopped even when the disk recovers
			if sticky == nil {
				t.Fatal("no error with injected WAL failures")
			}
			if !errors.Is(sticky, ErrFailStop) || !strings.Contains(sticky.Error(), "injected error") {
				t.Fatalf("error = %v, want ErrFailStop caused by the injected error", sticky)
			}

			calls := map[string]error{}
			_, calls["Apply"] = e.Apply(1, next+100, 1, []Op{put("k", "v")})
			b := e.NewBatch()
			_, calls["Batch.Apply"] = b.Apply(1, next+100, 1, nil, nil)
			calls["Batch.Commit"] = b.Commit()
			b.Close()
			calls["Sync"] = e.Sync()
			calls["DropPartition"] = e.DropPartition(1)
			_, _, calls["Get"] = e.Get(1, []byte("durable"))
			_, _, calls["PartitionStats"] = e.PartitionStats(1)
			_, calls["NewSnapshot"] = e.NewSnapshot(1)
			_, calls["InstallSnapshot"] = e.InstallSnapshot(bytes.NewReader(stream))
			for name, err := range calls {
				if err != sticky {
					t.Errorf("%s after failure: %v, want the sticky error %v", name, err, sticky)
				}
			}
			if s := e.SyncedApplied(1); s < 1 {
				t.Errorf("SyncedApplied(1) = %d, want at least the synced index 1", s)
			}
			if err := e.Close(); err != sticky {
				t.Errorf("Close = %v, want the sticky error", err)
			}

			// What was synced before the failure is intact on the disk. The
			// abandoned DB still holds its lock on mem, so reopen a crash
			// image of it, which keeps only synced data.
			re := openEngine(t, mem.CrashClone(vfs.CrashCloneCfg{}), "/e", nil)
			if v, _, err := re.Get(1, []byte("durable")); err != nil || string(v) != "yes" {
				t.Fatalf("synced data after restart: %q, %v", v, err)
			}
			if a := re.Applied(1); a.Index < 1 {
				t.Fatalf("applied after restart = %d", a.Index)
			}
		})
	}
}

var failStopCases = []struct {
	name  string
	kinds opKinds
	// trigger runs after injection is on and must fail.
	trigger func(t *testing.T, e *Engine, next *uint64) error
	// path is the errorfs path pattern; default: the WAL files.
	path string
}{
	{
		name:  "wal write fails under commits",
		kinds: opKinds{errorfs.OpFileWrite, errorfs.OpFileWriteAt},
		trigger: func(t *testing.T, e *Engine, next *uint64) error {
			// A NoSync commit hands its record to the WAL writer, which
			// writes in the background; the failure surfaces on a later
			// commit or at the latest on Sync.
			for range 20 {
				*next++
				if _, err := e.Apply(1, *next, 1, []Op{put("k", strings.Repeat("v", 4096))}); err != nil {
					return err
				}
			}
			return e.Sync()
		},
	},
	{
		name:  "wal sync fails",
		kinds: opKinds{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo},
		trigger: func(t *testing.T, e *Engine, next *uint64) error {
			*next++
			if _, err := e.Apply(1, *next, 1, []Op{put("k", "unsynced")}); err != nil {
				return err
			}
			return e.Sync()
		},
	},
	{
		name:  "wal sync fails during DropPartition",
		kinds: opKinds{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo},
		trigger: func(t *testing.T, e *Engine, next *uint64) error {
			return e.DropPartition(2)
		},
	},
	{
		// Not a panic inside Pebble: IngestAndExcise returns the error, so
		// Pebble is not wedged and Close must close it.
		name:  "ingestion cannot read the staged sstable",
		kinds: opKinds{errorfs.OpOpen},
		path:  "/e/staging/*",
		trigger: func(t *testing.T, e *Engine, next *uint64) error {
			src := openEngine(t, vfs.NewMem(), "src", nil)
			mustApply(t, src, 1, *next+10, 1, put("from", "snapshot"))
			stream, _ := snapshotBytes(t, src, 1)
			_, err := e.InstallSnapshot(bytes.NewReader(stream))
			return err
		},
	},
}
