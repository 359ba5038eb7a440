package wal

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// TestOptionsDefaults checks what Open fills in, that what the caller set
// is kept, and that the caller's Options are not modified.
func TestOptionsDefaults(t *testing.T) {
	for _, in := range []*Options{nil, {}} {
		o := in.EnsureDefaults()
		if o == in {
			t.Fatal("EnsureDefaults returned its receiver, not a copy")
		}
		if o.FS != vfs.Default || o.Logger == nil || o.MemTableSize != 32<<20 ||
			o.CacheSize != 16<<20 || o.EntryCacheSize != 4<<20 {
			t.Fatalf("defaults not applied: %+v", o)
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("defaults do not validate: %v", err)
		}
	}
	fs := vfs.NewMem()
	logger := slog.New(slog.DiscardHandler)
	in := Options{FS: fs, Logger: logger, MemTableSize: 2 << 20, CacheSize: 1 << 20, EntryCacheSize: -1}
	orig := in
	o := in.EnsureDefaults()
	if o.FS != fs || o.Logger != logger || o.MemTableSize != 2<<20 || o.CacheSize != 1<<20 || o.EntryCacheSize != -1 {
		t.Fatalf("set fields not kept: %+v", o)
	}
	var empty Options
	_ = empty.EnsureDefaults()
	if in != orig || empty != (Options{}) {
		t.Fatal("EnsureDefaults modified its receiver")
	}
}

// TestOptionsValidate: every invalid Options is refused with every problem
// named at once, and Open refuses it before creating anything.
func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		wants []string // substrings of the joined error; none means valid
	}{
		{"defaults", Options{}, nil},
		{"minimum memtable", Options{MemTableSize: 1 << 20}, nil},
		{"entry cache disabled", Options{EntryCacheSize: -1}, nil},
		{"memtable too small", Options{MemTableSize: 1<<20 - 1}, []string{"MemTableSize 1048575 is below the minimum"}},
		{"memtable too big", Options{MemTableSize: 4 << 30}, []string{"MemTableSize 4294967296 must be below 4 GiB"}},
		{"negative cache", Options{CacheSize: -1}, []string{"CacheSize -1 is negative"}},
		{"every problem reported", Options{MemTableSize: 10, CacheSize: -5},
			[]string{"MemTableSize 10", "CacheSize -5"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.EnsureDefaults().Validate()
			if len(tc.wants) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted invalid options")
			}
			if !strings.HasPrefix(err.Error(), "wal: invalid options: ") {
				t.Errorf("error %q does not say it is about the WAL's options", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			// Open refuses them, and leaves nothing behind, on a real disk
			// and on an injected FS.
			dir := filepath.Join(t.TempDir(), "wal")
			if w, err := Open(dir, &tc.opts); err == nil {
				w.Close()
				t.Fatal("Open accepted invalid options")
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Open with invalid options created %s (%v)", dir, err)
			}
			mem := vfs.NewMem()
			o := tc.opts
			o.FS = mem
			if w, err := Open("wal", &o); err == nil {
				w.Close()
				t.Fatal("Open accepted invalid options on an injected FS")
			}
			if names, _ := mem.List(""); len(names) != 0 {
				t.Fatalf("Open with invalid options created %v", names)
			}
		})
	}
	// Without EnsureDefaults, a missing FS is a problem too.
	err := (&Options{}).Validate()
	if err == nil || !strings.Contains(err.Error(), "FS is nil") || !strings.Contains(err.Error(), "MemTableSize 0") {
		t.Fatalf("Validate of zero Options: %v, want FS and MemTableSize named", err)
	}
}

// TestAppendOneSyncPerCall is the group-commit promise: one Append carrying
// entries and hard states for 64 groups is one fsync of Pebble's log,
// whatever the number of groups.
func TestAppendOneSyncPerCall(t *testing.T) {
	var syncs syncCounter
	w, err := Open(filepath.Join(t.TempDir(), "wal"), &Options{FS: syncs.fs()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for base, groups := range []int{1, 8, 64} {
		for round := uint64(1); round <= 3; round++ {
			ups := make([]Update, groups)
			for g := range ups {
				ups[g] = Update{
					Group:     uint64(base*1000 + g + 1),
					Entries:   []*raftpb.Entry{newEntry(round, 1, []byte("data"))},
					HardState: newHardState(1, 1, round),
				}
			}
			before := syncs.n.Load()
			if err := w.Append(ups); err != nil {
				t.Fatal(err)
			}
			if n := syncs.n.Load() - before; n != 1 {
				t.Fatalf("Append of %d groups (round %d) caused %d syncs of the log, want 1", groups, round, n)
			}
		}
	}
	// The unsynced variant issues none.
	before := syncs.n.Load()
	if err := w.AppendUnsynced([]Update{{Group: 1, HardState: newHardState(1, 1, 3)}}); err != nil {
		t.Fatal(err)
	}
	if n := syncs.n.Load() - before; n != 0 {
		t.Fatalf("AppendUnsynced caused %d syncs", n)
	}
	if m := w.Metrics(); m.Appends != 3*3+1 || m.Entries != 3*(1+8+64) {
		t.Fatalf("metrics %+v", m)
	}
}
