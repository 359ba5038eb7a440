package wal

import (
	"bytes"
	"math"
	"testing"
)

func TestEntryKeyOrder(t *testing.T) {
	// Byte order must be numeric order of (group, index): that is what makes
	// a group's log one key range.
	keys := [][2]uint64{{0, 0}, {0, 1}, {0, 255}, {0, 256}, {0, math.MaxUint64}, {1, 0}, {256, 1}, {math.MaxUint64, 0}}
	for i := 1; i < len(keys); i++ {
		a := entryKey(keys[i-1][0], keys[i-1][1])
		b := entryKey(keys[i][0], keys[i][1])
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("entryKey%v=%x not below entryKey%v=%x", keys[i-1], a, keys[i], b)
		}
	}
	for _, g := range []uint64{0, 7, math.MaxUint64} {
		lo, hi := entryBounds(g, 0, 0)
		for _, idx := range []uint64{0, 1, math.MaxUint64} {
			k := entryKey(g, idx)
			if bytes.Compare(k, lo) < 0 || bytes.Compare(k, hi) >= 0 {
				t.Errorf("entryKey(%d,%d) outside the group's bounds [%x,%x)", g, idx, lo, hi)
			}
		}
		if g != math.MaxUint64 {
			if other := entryKey(g+1, 0); bytes.Compare(other, hi) < 0 {
				t.Errorf("next group's key %x inside bounds of group %d", other, g)
			}
		}
		// Hard states and snapshots sort after every entry.
		if bytes.Compare(hardStateKey(0), hi) < 0 {
			t.Errorf("hard state key inside the entry range of group %d", g)
		}
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	tests := []struct {
		name string
		fn   func() error
	}{
		{"short entry key", func() error { _, _, err := decodeEntryKey([]byte{kindEntry, 1}); return err }},
		{"entry key wrong kind", func() error { _, _, err := decodeEntryKey(hardStateKey(1)); return err }},
		{"group key wrong kind", func() error { _, _, err := decodeGroupKey(entryKey(1, 1)[:groupKeyLen]); return err }},
		{"group key long", func() error { _, _, err := decodeGroupKey(entryKey(1, 1)); return err }},
		{"short entry value", func() error { _, _, _, err := decodeEntryValue(make([]byte, 8)); return err }},
		{"short hard state", func() error { _, _, _, err := decodeHardStateValue(make([]byte, 23)); return err }},
		{"long hard state", func() error { _, _, _, err := decodeHardStateValue(make([]byte, 25)); return err }},
		{"short snapshot", func() error { _, _, _, err := decodeSnapshotValue(make([]byte, 15)); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fn() == nil {
				t.Fatal("malformed input decoded without error")
			}
		})
	}
}

// FuzzKeyRoundTrip checks that every key and value encoding decodes to
// what was encoded, and that decoding arbitrary bytes never panics. Its
// seed corpus runs with `go test`.
func FuzzKeyRoundTrip(f *testing.F) {
	f.Add(uint64(0), uint64(0), uint64(0), uint8(0), []byte(nil), []byte{})
	f.Add(uint64(1), uint64(1), uint64(5), uint8(1), []byte("payload"), []byte{kindEntry, 0, 0})
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64), uint64(math.MaxUint64), uint8(255), bytes.Repeat([]byte{0xff}, 300), entryKey(3, 4))
	f.Add(uint64(64), uint64(1<<40), uint64(7), uint8(2), []byte{0}, hardStateKey(9))
	f.Fuzz(func(t *testing.T, group, index, term uint64, typ uint8, data, garbage []byte) {
		g, i, err := decodeEntryKey(entryKey(group, index))
		if err != nil || g != group || i != index {
			t.Fatalf("entry key (%d,%d) round-tripped to (%d,%d,%v)", group, index, g, i, err)
		}
		for _, kind := range []byte{kindHardState, kindSnapshot} {
			k, g, err := decodeGroupKey(groupKey(kind, group))
			if err != nil || k != kind || g != group {
				t.Fatalf("group key (%d,%d) round-tripped to (%d,%d,%v)", kind, group, k, g, err)
			}
		}
		tm, ty, d, err := decodeEntryValue(appendEntryValue(nil, term, typ, data))
		if err != nil || tm != term || ty != typ || !bytes.Equal(d, data) {
			t.Fatalf("entry value round trip: got (%d,%d,%x,%v)", tm, ty, d, err)
		}
		a, b, c, err := decodeHardStateValue(appendHardStateValue(nil, term, index, group))
		if err != nil || a != term || b != index || c != group {
			t.Fatalf("hard state round trip: got (%d,%d,%d,%v)", a, b, c, err)
		}
		si, st, cs, err := decodeSnapshotValue(appendSnapshotValue(nil, index, term, data))
		if err != nil || si != index || st != term || !bytes.Equal(cs, data) {
			t.Fatalf("snapshot value round trip: got (%d,%d,%x,%v)", si, st, cs, err)
		}
		// Arbitrary bytes: errors are fine, panics are not.
		_, _, _ = decodeEntryKey(garbage)
		_, _, _ = decodeGroupKey(garbage)
		_, _, _, _ = decodeEntryValue(garbage)
		_, _, _, _ = decodeHardStateValue(garbage)
		_, _, _, _ = decodeSnapshotValue(garbage)
	})
}
