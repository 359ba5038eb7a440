package history

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type event struct {
	client    int
	in        Input
	out       Output
	call, ret int64
}

func TestModel(t *testing.T) {
	put := func(c int, k, v string, ver uint64, call, ret int64) event {
		return event{c, Input{Kind: Put, Key: k, Value: v}, Output{Version: ver}, call, ret}
	}
	get := func(c int, k, v string, ver uint64, call, ret int64) event {
		return event{c, Input{Kind: Get, Key: k}, Output{Found: v != "", Value: v, Version: ver}, call, ret}
	}
	cas := func(c int, k string, expect uint64, v string, ok bool, ver uint64, call, ret int64) event {
		return event{c, Input{Kind: CAS, Key: k, Value: v, Expect: expect}, Output{OK: ok, Version: ver}, call, ret}
	}
	unknownPut := func(c int, k, v string, call int64) event {
		return event{c, Input{Kind: Put, Key: k, Value: v}, Output{Unknown: true}, call, 1 << 62}
	}
	tests := []struct {
		name string
		ops  []event
		ok   bool
	}{
		{"sequential", []event{put(0, "x", "a", 5, 0, 1), get(1, "x", "a", 5, 2, 3)}, true},
		{"read of absent key", []event{get(0, "x", "", 0, 0, 1)}, true},
		{"stale read", []event{put(0, "x", "a", 5, 0, 1), put(0, "x", "b", 6, 2, 3), get(1, "x", "a", 5, 4, 5)}, false},
		{"lost write", []event{put(0, "x", "a", 5, 0, 1), get(1, "x", "", 0, 2, 3)}, false},
		{"concurrent read may see either", []event{put(0, "x", "a", 5, 0, 1), put(0, "x", "b", 6, 2, 5), get(1, "x", "a", 5, 3, 4)}, true},
		{"versions must grow", []event{put(0, "x", "a", 5, 0, 1), put(0, "x", "b", 4, 2, 3)}, false},
		{"wrong version read", []event{put(0, "x", "a", 5, 0, 1), get(1, "x", "a", 7, 2, 3)}, false},
		{"cas succeeds on match", []event{put(0, "x", "a", 5, 0, 1), cas(1, "x", 5, "b", true, 9, 2, 3), get(0, "x", "b", 9, 4, 5)}, true},
		{"cas cannot succeed on mismatch", []event{put(0, "x", "a", 5, 0, 1), cas(1, "x", 4, "b", true, 9, 2, 3)}, false},
		{"cas fails on mismatch", []event{put(0, "x", "a", 5, 0, 1), cas(1, "x", 4, "b", false, 5, 2, 3), get(0, "x", "a", 5, 4, 5)}, true},
		{"cas cannot fail on match", []event{put(0, "x", "a", 5, 0, 1), cas(1, "x", 5, "b", false, 5, 2, 3)}, false},
		{"cas create", []event{cas(0, "x", 0, "a", true, 3, 0, 1), get(1, "x", "a", 3, 2, 3)}, true},
		{"unknown write seen", []event{unknownPut(0, "x", "a", 0), get(1, "x", "a", 8, 2, 3), get(1, "x", "a", 8, 4, 5)}, true},
		{"unknown write not seen", []event{unknownPut(0, "x", "a", 0), get(1, "x", "", 0, 2, 3)}, true},
		{"unknown write cannot vanish", []event{unknownPut(0, "x", "a", 0), get(1, "x", "a", 8, 2, 3), get(1, "x", "", 0, 4, 5)}, false},
		{"unknown version then cas", []event{unknownPut(0, "x", "a", 0), get(1, "x", "a", 8, 2, 3), cas(1, "x", 8, "b", true, 9, 4, 5)}, true},
		{"keys independent", []event{put(0, "x", "a", 5, 0, 1), put(1, "y", "b", 6, 0, 1), get(0, "y", "b", 6, 2, 3), get(1, "x", "a", 5, 2, 3)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ops []porcupine.Operation
			for _, e := range tt.ops {
				ops = append(ops, porcupine.Operation{ClientId: e.client, Input: e.in, Output: e.out, Call: e.call, Return: e.ret})
			}
			if got := porcupine.CheckOperations(Model(), ops); got != tt.ok {
				t.Fatalf("linearizable = %v, want %v", got, tt.ok)
			}
		})
	}
}

func TestRecorderWritesVisualization(t *testing.T) {
	r := NewRecorder()
	r.Begin(0, Input{Kind: Put, Key: "x", Value: "a"}).End(Output{Version: 5})
	r.Begin(1, Input{Kind: Get, Key: "x"}).End(Output{})
	path := filepath.Join(t.TempDir(), "viz.html")
	res, err := r.Check(10*time.Second, func() string { return path })
	if res != porcupine.Illegal || err == nil {
		t.Fatalf("a lost write checked as %v (%v)", res, err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("no visualization written: %v", err)
	}
	def, unk := r.Counts()
	if def != 2 || unk != 0 {
		t.Fatalf("counts %d/%d", def, unk)
	}
}
