package engine

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

func TestDataKeyRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		p    uint64
		key  []byte
	}{
		{"zero partition", 0, []byte("a")},
		{"max partition", math.MaxUint64, []byte("key")},
		{"binary key", 63, []byte{0x00, 0xff, 0x10, 0x01}},
		{"key looks like a header", 1, appliedStateKey(2)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := appendDataKey(nil, tc.p, tc.key)
			p, kind, uk, err := decodeKey(k)
			if err != nil {
				t.Fatal(err)
			}
			if p != tc.p || kind != kindData || !bytes.Equal(uk, tc.key) {
				t.Fatalf("decodeKey(%x) = %d, %#x, %x; want %d, %#x, %x", k, p, kind, uk, tc.p, kindData, tc.key)
			}
			if bytes.Compare(k, partitionStart(tc.p)) < 0 || bytes.Compare(k, partitionEnd(tc.p)) >= 0 {
				t.Fatalf("data key %x outside partition span", k)
			}
			if bytes.Compare(k, dataStart(tc.p)) < 0 || bytes.Compare(k, dataEnd(tc.p)) >= 0 {
				t.Fatalf("data key %x outside data span", k)
			}
		})
	}
}

func TestStateKeys(t *testing.T) {
	for _, p := range []uint64{0, 1, 63, math.MaxUint64} {
		for _, kind := range []byte{kindAppliedState, kindConfState} {
			k := stateKey(p, kind)
			gp, gkind, uk, err := decodeKey(k)
			if err != nil || gp != p || gkind != kind || uk != nil {
				t.Fatalf("decodeKey(%x) = %d, %#x, %x, %v", k, gp, gkind, uk, err)
			}
			if bytes.Compare(k, dataStart(p)) >= 0 {
				t.Fatalf("state key %x does not sort before the data of its partition", k)
			}
		}
	}
}

func TestDecodeKeyRejects(t *testing.T) {
	tests := []struct {
		name string
		key  []byte
	}{
		{"empty", nil},
		{"short", []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{"unknown kind", stateKey(1, 0x03)},
		{"span end kind", partitionEnd(1)},
		{"data without user key", dataStart(1)},
		{"state with trailing bytes", append(appliedStateKey(1), 'x')},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := decodeKey(tc.key); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeKey(%x) error = %v, want ErrCorrupt", tc.key, err)
			}
		})
	}
}

func TestValueEncodings(t *testing.T) {
	v := appendDataValue(nil, 42, []byte("hello"))
	ver, val, err := decodeDataValue(v)
	if err != nil || ver != 42 || string(val) != "hello" {
		t.Fatalf("decodeDataValue = %d, %q, %v", ver, val, err)
	}
	for _, bad := range [][]byte{nil, {1, 2, 3}, appendDataValue(nil, 0, nil)} {
		if _, _, err := decodeDataValue(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decodeDataValue(%x) error = %v, want ErrCorrupt", bad, err)
		}
	}
	idx, term, err := decodeAppliedState(encodeAppliedState(7, 3))
	if err != nil || idx != 7 || term != 3 {
		t.Fatalf("decodeAppliedState = %d, %d, %v", idx, term, err)
	}
	if _, _, err := decodeAppliedState(make([]byte, 15)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short applied state: error = %v", err)
	}
}

// FuzzKeyRoundTrip checks that data keys decode to what was encoded, that
// key order is (partition, user key) order, which snapshots and excises rely
// on, and that decodeKey never panics on arbitrary bytes.
func FuzzKeyRoundTrip(f *testing.F) {
	f.Add(uint64(0), []byte("a"), uint64(0), []byte("b"))
	f.Add(uint64(1), []byte("a"), uint64(0), []byte("zzzz"))
	f.Add(uint64(math.MaxUint64), []byte{0xff}, uint64(math.MaxUint64-1), []byte{0xff, 0xff})
	f.Add(uint64(5), []byte{0x00}, uint64(5), []byte{0x00, 0x00})
	f.Add(uint64(1<<56), []byte("k"), uint64(1), []byte("k"))
	f.Fuzz(func(t *testing.T, p1 uint64, k1 []byte, p2 uint64, k2 []byte) {
		for _, raw := range [][]byte{k1, k2} {
			_, _, _, _ = decodeKey(raw) // must not panic
		}
		if len(k1) == 0 || len(k2) == 0 {
			return
		}
		e1, e2 := appendDataKey(nil, p1, k1), appendDataKey(nil, p2, k2)
		gp, kind, uk, err := decodeKey(e1)
		if err != nil || gp != p1 || kind != kindData || !bytes.Equal(uk, k1) {
			t.Fatalf("round trip of (%d, %x): %d, %#x, %x, %v", p1, k1, gp, kind, uk, err)
		}
		want := 0
		switch {
		case p1 < p2:
			want = -1
		case p1 > p2:
			want = 1
		default:
			want = bytes.Compare(k1, k2)
		}
		if got := bytes.Compare(e1, e2); got != want {
			t.Fatalf("order of (%d, %x) vs (%d, %x): encoded %d, want %d", p1, k1, p2, k2, got, want)
		}
		for _, p := range []uint64{p1, p2} {
			in := bytes.Compare(e1, partitionStart(p)) >= 0 && bytes.Compare(e1, partitionEnd(p)) < 0
			if in != (p == p1) {
				t.Fatalf("key of partition %d in span of %d: %v", p1, p, in)
			}
		}
	})
}
