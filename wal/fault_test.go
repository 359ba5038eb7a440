package wal

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"kvnode/internal/faultfs"
)

// TestDiskFaults is P5 for the log: a disk that fails a write or a sync
// makes the WAL fail-stop. The failing Append reports an error, every later
// call reports ErrFailed, and the disk still holds every Append that had
// returned: nothing acknowledged is lost, nothing unacknowledged was
// reported durable.
func TestDiskFaults(t *testing.T) {
	tests := []struct {
		name  string
		kinds []errorfs.OpKind
		// okOps is how many ops succeed before the fault is armed.
		okOps int
		// memTable, if set, is small enough that Pebble rotates onto
		// recycled log files before the fault.
		memTable uint64
	}{
		{"sync fails", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}, 50, 0},
		{"write fails", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt}, 50, 0},
		{"sync fails at once", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}, 0, 0},
		{"write fails late", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt}, 400, 0},
		{"sync fails on a recycled log", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}, 3000, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := vfs.NewCrashableMem()
			var armed atomic.Bool
			var injected, reused atomic.Int64
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if op.Kind == errorfs.OpReuseForWrite {
					reused.Add(1)
				}
				if !armed.Load() || !strings.HasSuffix(op.Path, ".log") {
					return nil
				}
				for _, k := range tt.kinds {
					if op.Kind == k {
						injected.Add(1)
						return errorfs.ErrInjected
					}
				}
				return nil
			})
			w, err := Open("wal", &Options{FS: faultfs.Wrap(base, inj), MemTableSize: tt.memTable})
			if err != nil {
				t.Fatal(err)
			}
			wl := newWorkload(7, 4)
			acked := walModel{}
			for range tt.okOps {
				o, m := wl.next()
				if err := o.apply(w); err != nil {
					t.Fatal(err)
				}
				if o.compact == nil {
					acked = m
				}
			}
			st, err := w.Storage(1)
			if err != nil {
				t.Fatal(err)
			}
			armed.Store(true)
			var failedModel walModel
			for i := 0; ; i++ {
				o, m := wl.next()
				err := o.apply(w)
				if err == nil {
					if o.compact == nil {
						t.Fatalf("Append %d after the fault was armed reported success", i)
					}
					continue
				}
				if !errors.Is(err, ErrFailed) {
					t.Fatalf("failed Append: %v, want an error wrapping ErrFailed", err)
				}
				failedModel = m
				break
			}
			if injected.Load() == 0 {
				t.Fatal("no fault was injected")
			}
			if tt.memTable != 0 && reused.Load() == 0 {
				t.Fatal("Pebble never recycled a log file: the case tests nothing more than the others")
			}
			// Fail-stop: everything after reports the failure, even once
			// the disk is healthy again.
			armed.Store(false)
			checks := map[string]error{
				"Append":  w.Append([]Update{{Group: 1, HardState: newHardState(9, 9, 0)}}),
				"Compact": w.Compact(1, 1, nil),
				"Groups":  func() error { _, err := w.Groups(); return err }(),
				"Storage": func() error { _, err := w.Storage(2); return err }(),
				"Entries": func() error { _, err := st.Entries(1, 2, 100); return err }(),
				"Term":    func() error { _, err := st.Term(1); return err }(),
				"Last":    func() error { _, err := st.LastIndex(); return err }(),
				"Initial": func() error { _, _, err := st.InitialState(); return err }(),
				"First":   func() error { _, err := st.FirstIndex(); return err }(),
				"Snap":    func() error { _, err := st.Snapshot(); return err }(),
				"Delete":  w.DeleteGroup(2),
				"AppendU": w.AppendUnsynced([]Update{{Group: 1, HardState: newHardState(9, 9, 0)}}),
				"Close":   w.Close(),
			}
			for name, err := range checks {
				if !errors.Is(err, ErrFailed) {
					t.Errorf("%s after the failure: %v, want ErrFailed", name, err)
				}
			}

			// What a restart finds: the synced state of the disk.
			w2, err := Open("wal", &Options{FS: base.CrashClone(vfs.CrashCloneCfg{})})
			if err != nil {
				t.Fatal(err)
			}
			defer w2.Close()
			if err := diff(w2, acked); err != nil {
				// The failed batch may have reached the disk before the
				// error; it was never acknowledged, so either is correct.
				if err2 := diff(w2, failedModel); err2 != nil {
					t.Fatalf("after restart the WAL matches neither the acknowledged state (%v) nor it plus the failed batch (%v)", err, err2)
				}
			}
		})
	}
}
