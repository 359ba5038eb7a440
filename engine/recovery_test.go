package engine

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// partModel is the expected state of one partition after some index.
type partModel struct {
	data model
	term uint64
	conf string
}

// TestCrashRecovery applies random batches to an engine on a crashable
// in-memory file system and, at random points, takes a crash image that
// keeps a random share of the unsynced writes. The engine reopened on the
// image must hold exactly the state after some committed batch (a prefix of
// the batches: every partition's data equal to the model at that
// partition's recovered applied index), no older than the last completed
// Sync, and must accept new writes.
func TestCrashRecovery(t *testing.T) {
	seeds := 16
	if testing.Short() {
		seeds = 4
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			runCrashSeed(t, uint64(seed))
		})
	}
}

func runCrashSeed(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	fs := vfs.NewCrashableMem()
	// A 1 MiB memtable and values up to 8 KiB make memtable rotations and
	// flushes happen during the run.
	e := openEngine(t, fs, "e", &Options{MemTableSize: 1 << 20})
	parts := []uint64{0, 1, 2, math.MaxUint64}

	cur := map[uint64]*partModel{}
	hist := map[uint64]map[uint64]partModel{}
	applied := map[uint64]uint64{}
	for _, p := range parts {
		cur[p] = &partModel{data: model{}}
		hist[p] = map[uint64]partModel{0: {data: model{}}}
	}
	snapshotVector := func() []uint64 {
		v := make([]uint64, len(parts))
		for i, p := range parts {
			v[i] = applied[p]
		}
		return v
	}
	// vectors[i] is every partition's applied index after the i-th commit.
	vectors := [][]uint64{snapshotVector()}
	syncedPos := 0
	crashes := 0

	crashCheck := func(pct int) {
		t.Helper()
		crashes++
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng})
		e2, err := Open("e", &Options{FS: clone, MemTableSize: 1 << 20, CacheSize: 1 << 20})
		if err != nil {
			t.Fatalf("crash %d (%d%% unsynced kept): Open: %v", crashes, pct, err)
		}
		defer func() {
			if err := e2.Close(); err != nil {
				t.Fatal(err)
			}
		}()
		got := make([]uint64, len(parts))
		var wantParts []uint64
		for i, p := range parts {
			got[i] = e2.Applied(p).Index
			if got[i] > 0 {
				wantParts = append(wantParts, p)
			}
		}
		match := slices.IndexFunc(vectors[syncedPos:], func(v []uint64) bool { return slices.Equal(v, got) })
		if match < 0 {
			t.Fatalf("crash %d (%d%% unsynced kept): recovered applied indexes %v are not the state after "+
				"any commit since the last sync %v (latest %v)", crashes, pct, got, vectors[syncedPos], vectors[len(vectors)-1])
		}
		for i, p := range parts {
			want := hist[p][got[i]]
			if data := partitionData(t, e2, p); !reflect.DeepEqual(data, map[string]kv(want.data)) {
				t.Fatalf("crash %d: partition %d at index %d: key versions %v, model %v",
					crashes, p, got[i], versions(data), versions(want.data))
			}
			if a := e2.Applied(p); a.Term != want.term || string(a.ConfState) != want.conf {
				t.Fatalf("crash %d: partition %d at index %d: applied %+v, model term %d conf %q",
					crashes, p, got[i], a, want.term, want.conf)
			}
			if s := e2.SyncedApplied(p); s != got[i] {
				t.Fatalf("crash %d: partition %d: SyncedApplied %d after Open, applied %d", crashes, p, s, got[i])
			}
		}
		if ps := e2.Partitions(); !slices.Equal(ps, wantParts) {
			t.Fatalf("crash %d: Partitions = %v, want %v", crashes, ps, wantParts)
		}
		// The recovered engine takes new entries.
		if _, err := e2.Apply(parts[0], got[0]+1, 99, []Op{put("after-crash", "x")}); err != nil {
			t.Fatalf("crash %d: Apply after recovery: %v", crashes, err)
		}
	}

	for range 150 {
		switch r := rng.IntN(20); {
		case r < 14:
			b := e.NewBatch()
			for range 1 + rng.IntN(4) {
				p := parts[rng.IntN(len(parts))]
				idx := applied[p] + 1 + uint64(rng.IntN(2))
				term := 1 + idx/16
				ops := randomOps(rng, cur[p].data, 8, 8<<10)
				want := cur[p].data.apply(idx, ops)
				res, err := b.Apply(p, idx, term, ops, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(res) == 0 {
					res = []Result{}
				}
				if !reflect.DeepEqual(res, want) {
					t.Fatalf("partition %d entry %d: results %v, model %v", p, idx, res, want)
				}
				if rng.IntN(5) == 0 {
					cur[p].conf = fmt.Sprintf("conf@%d", idx)
					if err := b.SetConfState(p, []byte(cur[p].conf)); err != nil {
						t.Fatal(err)
					}
				}
				applied[p], cur[p].term = idx, term
				hist[p][idx] = partModel{data: cur[p].data.clone(), term: term, conf: cur[p].conf}
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			b.Close()
			vectors = append(vectors, snapshotVector())
		case r < 17:
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
			syncedPos = len(vectors) - 1
			for _, p := range parts {
				if s := e.SyncedApplied(p); s != applied[p] {
					t.Fatalf("after Sync: SyncedApplied(%d) = %d, applied %d", p, s, applied[p])
				}
			}
		default:
			crashCheck(rng.IntN(101))
		}
	}
	crashCheck(0)
	crashCheck(100)
}

// versions summarizes a partition's data for failure messages: values can be
// kilobytes long.
func versions[M ~map[string]kv](m M) map[string]uint64 {
	v := make(map[string]uint64, len(m))
	for k, e := range m {
		v[k] = e.Version
	}
	return v
}

// TestConfStateBatchSynced: a batch that sets a ConfState survives a power
// loss that keeps none of the unsynced writes, with the entries applied in
// it; a plain batch after it does not (Commit does not fsync those).
func TestConfStateBatchSynced(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := openEngine(t, fs, "e", nil)
	b := e.NewBatch()
	if _, err := b.Apply(7, 1, 1, []Op{put("k", "v")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.SetConfState(7, []byte("voters 1 2 3")); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if got := e.SyncedApplied(7); got != 1 {
		t.Errorf("SyncedApplied %d after a ConfState batch, want 1", got)
	}
	mustApply(t, e, 7, 2, 1, put("k", "unsynced"))

	crashed := openEngine(t, fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}), "e", nil)
	st := crashed.Applied(7)
	if st.Index != 1 || string(st.ConfState) != "voters 1 2 3" {
		t.Fatalf("after the crash: applied %d, conf state %q; want 1 and the synced one", st.Index, st.ConfState)
	}
}

// TestOpenRefusesCorruptState checks that Open fails with ErrCorrupt, rather
// than starting a partition from the wrong applied index, when the state
// keys it loads do not decode. (Open once dropped load's error.)
func TestOpenRefusesCorruptState(t *testing.T) {
	tests := []struct {
		name       string
		key, value []byte
	}{
		{"short applied state", appliedStateKey(5), make([]byte, appliedLen-1)},
		{"long applied state", appliedStateKey(5), make([]byte, appliedLen+1)},
		{"unknown kind", stateKey(5, 0x07), []byte("x")},
		{"state key with trailing bytes", append(appliedStateKey(6), 0x00), make([]byte, appliedLen)},
		{"key shorter than a header", []byte{0x00, 0x01}, []byte("x")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			e := openEngine(t, fs, "e", nil)
			mustApply(t, e, 5, 1, 1, put("k", "v"))
			if err := e.db.Set(tc.key, tc.value, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			e2, err := Open("e", &Options{FS: fs})
			if err == nil {
				_ = e2.Close()
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
		})
	}
}
