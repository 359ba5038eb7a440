package engine

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// openEngine opens an engine and closes it at the end of the test unless the
// test closed it itself.
func openEngine(t testing.TB, fs vfs.FS, dir string, opts *Options) *Engine {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	o.FS = fs
	if o.MemTableSize == 0 {
		o.MemTableSize = 1 << 20
	}
	if o.CacheSize == 0 {
		o.CacheSize = 1 << 20
	}
	e, err := Open(dir, &o)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func mustApply(t testing.TB, e *Engine, p, index, term uint64, ops ...Op) []Result {
	t.Helper()
	res, err := e.Apply(p, index, term, ops)
	if err != nil {
		t.Fatalf("Apply(p=%d, index=%d): %v", p, index, err)
	}
	return res
}

func put(k, v string) Op { return Op{Kind: OpPut, Key: []byte(k), Value: []byte(v)} }
func del(k string) Op    { return Op{Kind: OpDelete, Key: []byte(k)} }
func cas(k, v string, expect uint64) Op {
	return Op{Kind: OpCompareAndSet, Key: []byte(k), Value: []byte(v), Expect: expect}
}
func cad(k string, expect uint64) Op {
	return Op{Kind: OpCompareAndDelete, Key: []byte(k), Expect: expect}
}

// kv is a user-visible entry of a partition.
type kv struct {
	Value   string
	Version uint64
}

// partitionData returns the user data of partition p, read with the engine's
// own Pebble instance so tests see exactly what is stored.
func partitionData(t testing.TB, e *Engine, p uint64) map[string]kv {
	t.Helper()
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: dataStart(p), UpperBound: dataEnd(p)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	m := make(map[string]kv)
	for valid := it.First(); valid; valid = it.Next() {
		_, _, uk, err := decodeKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		ver, v, err := decodeDataValue(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		m[string(uk)] = kv{Value: string(v), Version: ver}
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return m
}

// rawDump returns every key and value in the engine's Pebble instance.
func rawDump(t testing.TB, e *Engine) string {
	t.Helper()
	it, err := e.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var b bytes.Buffer
	for valid := it.First(); valid; valid = it.Next() {
		fmt.Fprintf(&b, "%x=%x\n", it.Key(), it.Value())
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// partitionDump renders a partition's whole state, including applied and
// conf state as stored, for equality checks.
func partitionDump(t testing.TB, e *Engine, p uint64) string {
	t.Helper()
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: partitionStart(p), UpperBound: partitionEnd(p)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var b bytes.Buffer
	for valid := it.First(); valid; valid = it.Next() {
		fmt.Fprintf(&b, "%x=%x\n", it.Key(), it.Value())
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func stagingFiles(t testing.TB, e *Engine) []string {
	t.Helper()
	names, err := e.fs.List(e.stagingDir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
