package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

type entry struct {
	index uint64
	ops   []Op
}

func TestApplySemantics(t *testing.T) {
	const p = 3
	tests := []struct {
		name string
		// setup is applied entry by entry, each committed on its own.
		setup []entry
		// batch is applied in one Batch.
		batch []entry
		want  [][]Result
		state map[string]kv
	}{
		{
			name:  "put new key",
			batch: []entry{{5, []Op{put("a", "1")}}},
			want:  [][]Result{{{Version: 5, OK: true}}},
			state: map[string]kv{"a": {"1", 5}},
		},
		{
			name:  "put overwrites",
			setup: []entry{{1, []Op{put("a", "1")}}},
			batch: []entry{{2, []Op{put("a", "2")}}},
			want:  [][]Result{{{Version: 2, OK: true}}},
			state: map[string]kv{"a": {"2", 2}},
		},
		{
			name:  "put empty value",
			batch: []entry{{1, []Op{put("a", "")}}},
			want:  [][]Result{{{Version: 1, OK: true}}},
			state: map[string]kv{"a": {"", 1}},
		},
		{
			name:  "delete existing",
			setup: []entry{{1, []Op{put("a", "1"), put("b", "1")}}},
			batch: []entry{{2, []Op{del("a")}}},
			want:  [][]Result{{{Version: 2, OK: true}}},
			state: map[string]kv{"b": {"1", 1}},
		},
		{
			name:  "delete absent writes nothing",
			batch: []entry{{1, []Op{del("a")}}},
			want:  [][]Result{{{Version: 0, OK: true}}},
			state: map[string]kv{},
		},
		{
			name:  "cas expect 0 on absent",
			batch: []entry{{1, []Op{cas("a", "x", 0)}}},
			want:  [][]Result{{{Version: 1, OK: true}}},
			state: map[string]kv{"a": {"x", 1}},
		},
		{
			name:  "cas expect 0 on present fails",
			setup: []entry{{1, []Op{put("a", "1")}}},
			batch: []entry{{2, []Op{cas("a", "x", 0)}}},
			want:  [][]Result{{{Version: 1, OK: false}}},
			state: map[string]kv{"a": {"1", 1}},
		},
		{
			name:  "cas matching version",
			setup: []entry{{4, []Op{put("a", "1")}}},
			batch: []entry{{9, []Op{cas("a", "x", 4)}}},
			want:  [][]Result{{{Version: 9, OK: true}}},
			state: map[string]kv{"a": {"x", 9}},
		},
		{
			name:  "cas wrong version fails",
			setup: []entry{{4, []Op{put("a", "1")}}},
			batch: []entry{{9, []Op{cas("a", "x", 3)}}},
			want:  [][]Result{{{Version: 4, OK: false}}},
			state: map[string]kv{"a": {"1", 4}},
		},
		{
			name:  "cas on absent with version fails",
			batch: []entry{{9, []Op{cas("a", "x", 3)}}},
			want:  [][]Result{{{Version: 0, OK: false}}},
			state: map[string]kv{},
		},
		{
			name:  "compare-and-delete matching",
			setup: []entry{{4, []Op{put("a", "1")}}},
			batch: []entry{{5, []Op{cad("a", 4)}}},
			want:  [][]Result{{{Version: 5, OK: true}}},
			state: map[string]kv{},
		},
		{
			name:  "compare-and-delete mismatch",
			setup: []entry{{4, []Op{put("a", "1")}}},
			batch: []entry{{5, []Op{cad("a", 2)}}},
			want:  [][]Result{{{Version: 4, OK: false}}},
			state: map[string]kv{"a": {"1", 4}},
		},
		{
			name:  "compare-and-delete expect 0 on absent",
			batch: []entry{{5, []Op{cad("a", 0)}}},
			want:  [][]Result{{{Version: 0, OK: true}}},
			state: map[string]kv{},
		},
		{
			name: "cas sees put earlier in the batch",
			batch: []entry{
				{5, []Op{put("a", "1")}},
				{6, []Op{cas("a", "2", 5)}},
				{7, []Op{cas("a", "3", 5)}},
			},
			want: [][]Result{
				{{Version: 5, OK: true}},
				{{Version: 6, OK: true}},
				{{Version: 6, OK: false}},
			},
			state: map[string]kv{"a": {"2", 6}},
		},
		{
			name:  "cas sees delete earlier in the batch",
			setup: []entry{{1, []Op{put("a", "1")}}},
			batch: []entry{
				{2, []Op{del("a")}},
				{3, []Op{cas("a", "new", 0)}},
			},
			want: [][]Result{
				{{Version: 2, OK: true}},
				{{Version: 3, OK: true}},
			},
			state: map[string]kv{"a": {"new", 3}},
		},
		{
			name: "ops within one entry see each other",
			batch: []entry{{8, []Op{
				put("a", "1"), cas("a", "2", 8), del("a"), cas("a", "3", 0), cad("b", 0),
			}}},
			want:  [][]Result{{{8, true}, {8, true}, {8, true}, {8, true}, {0, true}}},
			state: map[string]kv{"a": {"3", 8}},
		},
		{
			name:  "empty entry advances applied index only",
			setup: []entry{{1, []Op{put("a", "1")}}},
			batch: []entry{{2, nil}, {3, []Op{}}},
			want:  [][]Result{{}, {}},
			state: map[string]kv{"a": {"1", 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := openEngine(t, vfs.NewMem(), "e", nil)
			// A neighbour partition must be unaffected.
			mustApply(t, e, p+1, 1, 1, put("a", "neighbour"))
			for _, en := range tc.setup {
				mustApply(t, e, p, en.index, 1, en.ops...)
			}
			b := e.NewBatch()
			defer b.Close()
			var got [][]Result
			for _, en := range tc.batch {
				res, err := b.Apply(p, en.index, 2, en.ops, nil)
				if err != nil {
					t.Fatalf("Apply(%d): %v", en.index, err)
				}
				got = append(got, res)
			}
			// Not visible before Commit.
			if len(tc.setup) == 0 && len(tc.batch[0].ops) > 0 {
				if _, _, err := e.Get(p, tc.batch[0].ops[0].Key); !errors.Is(err, ErrNotFound) {
					t.Fatalf("Get before Commit: %v, want ErrNotFound", err)
				}
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if got[i] == nil {
					got[i] = []Result{}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("results = %v, want %v", got, tc.want)
			}
			if st := partitionData(t, e, p); !reflect.DeepEqual(st, tc.state) {
				t.Fatalf("state = %v, want %v", st, tc.state)
			}
			for k, want := range tc.state {
				v, ver, err := e.Get(p, []byte(k))
				if err != nil || string(v) != want.Value || ver != want.Version {
					t.Fatalf("Get(%q) = %q, %d, %v; want %q, %d", k, v, ver, err, want.Value, want.Version)
				}
			}
			last := tc.batch[len(tc.batch)-1].index
			if a := e.Applied(p); a.Index != last || a.Term != 2 {
				t.Fatalf("Applied = %+v, want index %d term 2", a, last)
			}
			if v, _, err := e.Get(p+1, []byte("a")); err != nil || string(v) != "neighbour" {
				t.Fatalf("neighbour partition: %q, %v", v, err)
			}
		})
	}
}

func TestApplyRejects(t *testing.T) {
	const p = 1
	long := strings.Repeat("k", 65)
	tests := []struct {
		name    string
		index   uint64
		ops     []Op
		wantErr error
	}{
		{"empty key", 10, []Op{put("ok", "1"), {Kind: OpPut, Value: []byte("v")}}, ErrInvalidOp},
		{"zero kind", 10, []Op{{Key: []byte("a")}}, ErrInvalidOp},
		{"unknown kind", 10, []Op{{Kind: 99, Key: []byte("a")}}, ErrInvalidOp},
		{"key too long", 10, []Op{put(long, "1")}, ErrInvalidOp},
		{"value too long", 10, []Op{put("a", strings.Repeat("v", 129))}, ErrInvalidOp},
		{"delete with value", 10, []Op{{Kind: OpDelete, Key: []byte("a"), Value: []byte("x")}}, ErrInvalidOp},
		{"put with expect", 10, []Op{{Kind: OpPut, Key: []byte("a"), Expect: 1}}, ErrInvalidOp},
		{"index equal to applied", 5, []Op{put("a", "1")}, ErrStaleIndex},
		{"index below applied", 4, nil, ErrStaleIndex},
		{"index zero", 0, nil, ErrStaleIndex},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := openEngine(t, vfs.NewMem(), "e", &Options{MaxKeySize: 64, MaxValueSize: 128})
			mustApply(t, e, p, 5, 1, put("a", "orig"))
			before := rawDump(t, e)

			b := e.NewBatch()
			defer b.Close()
			dst := []Result{{Version: 77}}
			got, err := b.Apply(p, tc.index, 1, tc.ops, dst)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Apply error = %v, want %v", err, tc.wantErr)
			}
			if len(got) != 1 || got[0].Version != 77 {
				t.Fatalf("dst changed on error: %v", got)
			}
			// The batch is still usable and the rejected entry left no trace.
			if _, err := b.Apply(p, 6, 1, []Op{cas("a", "new", 5)}, nil); err != nil {
				t.Fatalf("Apply after rejected op: %v", err)
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			if a := e.Applied(p); a.Index != 6 {
				t.Fatalf("applied = %d, want 6", a.Index)
			}
			if rawDump(t, e) == before {
				t.Fatal("valid entry after a rejected one was not applied")
			}
			if v, _, _ := e.Get(p, []byte("a")); string(v) != "new" {
				t.Fatalf("a = %q, want new", v)
			}
		})
	}
}

func TestStaleIndexWithinBatch(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	b := e.NewBatch()
	defer b.Close()
	if _, err := b.Apply(1, 5, 1, []Op{put("a", "1")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, idx := range []uint64{5, 3} {
		if _, err := b.Apply(1, idx, 1, []Op{put("a", "2")}, nil); !errors.Is(err, ErrStaleIndex) {
			t.Fatalf("Apply(%d) error = %v, want ErrStaleIndex", idx, err)
		}
	}
	// Other partitions have their own index.
	if _, err := b.Apply(2, 1, 1, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if v, ver, _ := e.Get(1, []byte("a")); string(v) != "1" || ver != 5 {
		t.Fatalf("a = %q@%d, want 1@5", v, ver)
	}
}

func TestBatchFull(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	e.maxBatchBytes = 4 << 10
	b := e.NewBatch()
	defer b.Close()
	big := strings.Repeat("v", 1500)
	var err error
	idx := uint64(0)
	for err == nil {
		idx++
		_, err = b.Apply(1, idx, 1, []Op{put(fmt.Sprint("k", idx), big)}, nil)
	}
	if !errors.Is(err, ErrBatchFull) {
		t.Fatalf("Apply error = %v, want ErrBatchFull", err)
	}
	if idx < 2 {
		t.Fatalf("batch full after %d entries", idx-1)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	// The refused entry applies in a new batch.
	if _, err := e.Apply(1, idx, 1, []Op{put(fmt.Sprint("k", idx), big)}); err != nil {
		t.Fatal(err)
	}
	if a := e.Applied(1); a.Index != idx {
		t.Fatalf("applied %d, want %d", a.Index, idx)
	}
	// An entry that could never fit is invalid, not a full batch.
	_, err = e.Apply(1, idx+1, 1, []Op{put("a", big), put("b", big), put("c", big)})
	if !errors.Is(err, ErrInvalidOp) {
		t.Fatalf("oversized entry: %v, want ErrInvalidOp", err)
	}
}

func TestBatchConflict(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	mustApply(t, e, 1, 1, 1, put("a", "1"))

	b1, b2 := e.NewBatch(), e.NewBatch()
	defer b1.Close()
	defer b2.Close()
	if _, err := b1.Apply(1, 2, 1, []Op{cas("a", "from-b1", 1)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Apply(1, 2, 1, []Op{cas("a", "from-b2", 1)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b2.Commit(); !errors.Is(err, ErrBatchConflict) {
		t.Fatalf("second Commit error = %v, want ErrBatchConflict", err)
	}
	if err := b2.Commit(); err == nil {
		t.Fatal("a failed batch committed on retry")
	}
	if v, _, _ := e.Get(1, []byte("a")); string(v) != "from-b1" {
		t.Fatalf("a = %q, want from-b1", v)
	}
	if _, err := b1.Apply(1, 3, 1, nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply on committed batch: %v, want ErrClosed", err)
	}
}

func TestApplyDoesNotRetainOps(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	b := e.NewBatch()
	defer b.Close()
	key, val := []byte("key"), []byte("value")
	if _, err := b.Apply(1, 1, 1, []Op{{Kind: OpPut, Key: key, Value: val}}, nil); err != nil {
		t.Fatal(err)
	}
	copy(key, "XXX")
	copy(val, "YYYYY")
	cs := []byte("conf")
	if err := b.SetConfState(1, cs); err != nil {
		t.Fatal(err)
	}
	copy(cs, "ZZZZ")
	// A read through the overlay must still find the original key.
	res, err := b.Apply(1, 2, 1, []Op{cas("key", "v2", 1)}, nil)
	if err != nil || !res[0].OK {
		t.Fatalf("cas through overlay: %v %v", res, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if v, _, err := e.Get(1, []byte("key")); err != nil || string(v) != "v2" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if cs := e.Applied(1).ConfState; string(cs) != "conf" {
		t.Fatalf("conf state = %q", cs)
	}
	v, _, _ := e.Get(1, []byte("key"))
	v[0] = 'Q'
	if v2, _, _ := e.Get(1, []byte("key")); string(v2) != "v2" {
		t.Fatal("Get returned a slice aliasing engine memory")
	}
}

// model is a reference implementation of one partition, used to check the
// engine and to generate expectations.
type model map[string]kv

func (m model) apply(index uint64, ops []Op) []Result {
	res := make([]Result, len(ops))
	for i, op := range ops {
		cur := m[string(op.Key)].Version
		r := Result{Version: cur, OK: true}
		switch op.Kind {
		case OpPut:
			m[string(op.Key)] = kv{string(op.Value), index}
			r.Version = index
		case OpDelete:
			if cur != 0 {
				delete(m, string(op.Key))
				r.Version = index
			}
		case OpCompareAndSet:
			if cur == op.Expect {
				m[string(op.Key)] = kv{string(op.Value), index}
				r.Version = index
			} else {
				r.OK = false
			}
		case OpCompareAndDelete:
			if cur != op.Expect {
				r.OK = false
			} else if cur != 0 {
				delete(m, string(op.Key))
				r.Version = index
			}
		}
		res[i] = r
	}
	return res
}

func (m model) clone() model { return model(mapsClone(m)) }

func mapsClone[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// randomOps returns ops over a small key space, with compare ops that hit
// and miss.
func randomOps(rng *rand.Rand, m model, nkeys, maxValue int) []Op {
	ops := make([]Op, rng.IntN(5))
	for i := range ops {
		k := []byte{'k', byte('a' + rng.IntN(nkeys))}
		cur := m[string(k)].Version
		expect := cur
		if rng.IntN(3) == 0 {
			expect = uint64(rng.IntN(4))
		}
		v := make([]byte, rng.IntN(maxValue))
		for j := range v {
			v[j] = byte('a' + rng.IntN(26))
		}
		switch rng.IntN(4) {
		case 0:
			ops[i] = Op{Kind: OpPut, Key: k, Value: v}
		case 1:
			ops[i] = Op{Kind: OpDelete, Key: k}
		case 2:
			ops[i] = Op{Kind: OpCompareAndSet, Key: k, Value: v, Expect: expect}
		case 3:
			ops[i] = Op{Kind: OpCompareAndDelete, Key: k, Expect: expect}
		}
	}
	return ops
}

// TestDeterminism feeds the same entries to an engine on a real disk and
// one in memory, cut into batches differently, and requires identical
// results and identical stored bytes, equal to the model's.
func TestDeterminism(t *testing.T) {
	diskE := openEngine(t, vfs.Default, t.TempDir(), nil)
	memE := openEngine(t, vfs.NewMem(), "e", nil)
	engines := []*Engine{diskE, memE}

	rng := rand.New(rand.NewPCG(1, 2))
	partitions := []uint64{0, 1, 63, math.MaxUint64}
	models := map[uint64]model{}
	next := map[uint64]uint64{}
	type applied struct {
		p, index uint64
		ops      []Op
		want     []Result
	}
	var entries []applied
	for range 600 {
		p := partitions[rng.IntN(len(partitions))]
		if models[p] == nil {
			models[p] = model{}
		}
		next[p] += 1 + uint64(rng.IntN(2))
		ops := randomOps(rng, models[p], 6, 40)
		entries = append(entries, applied{p, next[p], ops, models[p].apply(next[p], ops)})
	}

	for ei, e := range engines {
		brng := rand.New(rand.NewPCG(uint64(ei), 99))
		b := e.NewBatch()
		for i, en := range entries {
			got, err := b.Apply(en.p, en.index, 1, en.ops, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 {
				got = []Result{}
			}
			if !reflect.DeepEqual(got, en.want) {
				t.Fatalf("engine %d entry %d (p=%d index=%d ops=%v): results %v, model %v",
					ei, i, en.p, en.index, en.ops, got, en.want)
			}
			if brng.IntN(8) == 0 || i == len(entries)-1 {
				if err := b.Commit(); err != nil {
					t.Fatal(err)
				}
				b.Close()
				b = e.NewBatch()
			}
		}
		b.Close()
	}
	if a, b := rawDump(t, diskE), rawDump(t, memE); a != b {
		t.Fatalf("engines differ:\n%s\nvs\n%s", a, b)
	}
	for p, m := range models {
		for _, e := range engines {
			if got := partitionData(t, e, p); !reflect.DeepEqual(got, map[string]kv(m)) {
				t.Fatalf("partition %d = %v, model %v", p, got, m)
			}
			if a := e.Applied(p); a.Index != next[p] {
				t.Fatalf("partition %d applied %d, want %d", p, a.Index, next[p])
			}
		}
	}
}

func TestReopenPartitionsAndDrop(t *testing.T) {
	fs := vfs.NewMem()
	e := openEngine(t, fs, "e", nil)
	mustApply(t, e, 1, 3, 2, put("a", "1"), put("b", "2"))
	mustApply(t, e, 7, 1, 1) // only an applied index
	mustApply(t, e, math.MaxUint64, 9, 4, put("z", "last"))
	b := e.NewBatch()
	if _, err := b.Apply(1, 4, 2, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.SetConfState(1, []byte("voters=1,2,3")); err != nil {
		t.Fatal(err)
	}
	if err := b.SetConfState(8, []byte("conf-only")); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()

	wantParts := []uint64{1, 7, 8, math.MaxUint64}
	if got := e.Partitions(); !slices.Equal(got, wantParts) {
		t.Fatalf("Partitions = %v, want %v", got, wantParts)
	}
	wantApplied := map[uint64]AppliedState{}
	for _, p := range wantParts {
		wantApplied[p] = e.Applied(p)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e = openEngine(t, fs, "e", nil)
	if got := e.Partitions(); !slices.Equal(got, wantParts) {
		t.Fatalf("after reopen Partitions = %v, want %v", got, wantParts)
	}
	for _, p := range wantParts {
		if got := e.Applied(p); !reflect.DeepEqual(got, wantApplied[p]) {
			t.Fatalf("after reopen Applied(%d) = %+v, want %+v", p, got, wantApplied[p])
		}
		if got := e.SyncedApplied(p); got != wantApplied[p].Index {
			t.Fatalf("after reopen SyncedApplied(%d) = %d, want %d", p, got, wantApplied[p].Index)
		}
	}
	if a := e.Applied(1); a.Index != 4 || a.Term != 2 || string(a.ConfState) != "voters=1,2,3" {
		t.Fatalf("Applied(1) = %+v", a)
	}

	if err := e.DropPartition(1); err != nil {
		t.Fatal(err)
	}
	if err := e.DropPartition(12345); err != nil {
		t.Fatalf("dropping a partition without state: %v", err)
	}
	if _, _, err := e.Get(1, []byte("a")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after drop: %v", err)
	}
	if a := e.Applied(1); !reflect.DeepEqual(a, AppliedState{}) {
		t.Fatalf("Applied after drop = %+v", a)
	}
	// The partition can come back, from index 1.
	mustApply(t, e, 1, 1, 5, put("c", "3"))
	if err := e.DropPartition(7); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e = openEngine(t, fs, "e", nil)
	if got, want := e.Partitions(), []uint64{1, 8, math.MaxUint64}; !slices.Equal(got, want) {
		t.Fatalf("after drop and reopen Partitions = %v, want %v", got, want)
	}
	if got := partitionData(t, e, 1); !reflect.DeepEqual(got, map[string]kv{"c": {"3", 1}}) {
		t.Fatalf("partition 1 = %v", got)
	}
	if v, _, err := e.Get(math.MaxUint64, []byte("z")); err != nil || string(v) != "last" {
		t.Fatalf("partition max: %q, %v", v, err)
	}
}

func TestPartitionStats(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	mustApply(t, e, 2, 1, 1, put("a", "123"), put("bb", "45"), put("c", ""))
	mustApply(t, e, 2, 2, 1, del("c"))
	mustApply(t, e, 3, 1, 1, put("zzz", strings.Repeat("x", 100)))
	tests := []struct {
		p           uint64
		keys, bytes int64
	}{
		{2, 2, 1 + 3 + 2 + 2},
		{3, 1, 103},
		{4, 0, 0},
	}
	for _, tc := range tests {
		keys, n, err := e.PartitionStats(tc.p)
		if err != nil || keys != tc.keys || n != tc.bytes {
			t.Errorf("PartitionStats(%d) = %d, %d, %v; want %d, %d", tc.p, keys, n, err, tc.keys, tc.bytes)
		}
	}
}

func TestClosed(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "e", nil)
	mustApply(t, e, 1, 1, 1, put("a", "1"))
	s, err := e.NewSnapshot(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err == nil {
		t.Fatal("Close with an open snapshot succeeded")
	}
	// Still usable.
	if _, _, err := e.Get(1, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b := e.NewBatch()
	defer b.Close()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]error{
		"Close": e.Close(),
		"Sync":  e.Sync(),
		"Drop":  e.DropPartition(1),
	}
	_, _, calls["Get"] = e.Get(1, []byte("a"))
	_, calls["Apply"] = e.Apply(1, 2, 1, nil)
	_, calls["Batch.Apply"] = b.Apply(1, 2, 1, nil, nil)
	_, calls["NewBatch.Apply"] = e.NewBatch().Apply(1, 2, 1, nil, nil)
	calls["Batch.Commit"] = b.Commit()
	_, calls["NewSnapshot"] = e.NewSnapshot(1)
	_, calls["ReceiveSnapshot"] = e.ReceiveSnapshot(bytes.NewReader(nil))
	_, _, calls["PartitionStats"] = e.PartitionStats(1)
	for name, err := range calls {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		wants []string // substrings of the joined error; none means valid
	}{
		{"defaults", Options{}, nil},
		{"negative cache", Options{CacheSize: -1}, []string{"CacheSize"}},
		{"every problem reported", Options{MaxKeySize: -1, MaxValueSize: 2 << 30, MemTableSize: 10},
			[]string{"MaxKeySize", "MaxValueSize", "MemTableSize"}},
		{"conf state too big", Options{MaxConfStateSize: 2 << 30}, []string{"MaxConfStateSize"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			err := o.EnsureDefaults().Validate()
			if len(tc.wants) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if o.FS == nil || o.Logger == nil || o.MemTableSize != 64<<20 || o.CacheSize != 64<<20 ||
					o.MaxKeySize != 64<<10 || o.MaxValueSize != 64<<20 {
					t.Fatalf("defaults not applied: %+v", o)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
			if _, err := Open("x", &tc.opts); err == nil {
				t.Fatal("Open accepted invalid options")
			}
		})
	}
}

// TestFormatMajorVersion pins the properties the engine relies on; see
// formatMajorVersion.
func TestFormatMajorVersion(t *testing.T) {
	for _, need := range []pebble.FormatMajorVersion{
		pebble.FormatVirtualSSTables, pebble.FormatFlushableIngestExcises, pebble.FormatWALSyncChunks,
	} {
		if formatMajorVersion < need {
			t.Errorf("formatMajorVersion %d below %d", formatMajorVersion, need)
		}
	}
	e := openEngine(t, vfs.NewMem(), "e", nil)
	if got := e.db.FormatMajorVersion(); got != formatMajorVersion {
		t.Fatalf("store opened at format %d, want %d", got, formatMajorVersion)
	}
}
