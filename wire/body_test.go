package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// bodies is one value of every body type, with fields set, used by the
// round-trip test and as fuzz seeds.
func bodies() []any {
	big := bytes.Repeat([]byte{0xab}, 70000) // bin32
	return []any{
		&GetRequest{Key: []byte("user:123")},
		&GetRequest{Key: []byte("user:123"), Stale: true},
		&GetResponse{Value: []byte("John Doe"), Version: 42},
		&GetResponse{Value: big, Version: 1<<64 - 1},
		&SetRequest{Key: []byte("k"), Value: []byte{}},
		&SetRequest{Key: []byte{0, 0xff, 0xc1}, Value: big[:300]}, // bin16
		&SetResponse{Version: 7},
		&DeleteRequest{Key: []byte("k")},
		&DeleteResponse{Version: 0},
		&CASRequest{Key: []byte("k"), Value: []byte("v"), Expect: 0},
		&CASRequest{Key: []byte("k"), Value: []byte("v"), Expect: 1 << 40},
		&CASResponse{OK: true, Version: 9},
		&CASResponse{OK: false, Version: 0},
		&MGetRequest{Keys: [][]byte{[]byte("a"), []byte("b"), {}}, Stale: true},
		&MGetResponse{Items: []MGetItem{{Found: true, Value: []byte("x"), Version: 3}, {Found: false}}},
		&MGetResponse{Items: []MGetItem{}},
		&MSetItem{Key: []byte("k"), Value: []byte("v")},
		&MSetRequest{Items: []MSetItem{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Value: big[:20]}}},
		&MSetResponse{Versions: []uint64{1, 2, 1 << 63}},
		&MGetItem{Found: true, Value: []byte("v"), Version: 1},
		&PingRequest{},
		&PingResponse{},
		&ErrorBody{Code: StatusNotLeader, Msg: "not the leader", Leader: "node-2", LeaderAddr: "127.0.0.1:9081"},
		&ErrorBody{Code: StatusTooLarge, Msg: "value is 70000000 bytes, limit 16777216"},
	}
}

func TestBodyRoundTrip(t *testing.T) {
	for _, in := range bodies() {
		t.Run(reflect.TypeOf(in).Elem().Name(), func(t *testing.T) {
			b, err := Encode(nil, in)
			if err != nil {
				t.Fatal(err)
			}
			out := reflect.New(reflect.TypeOf(in).Elem()).Interface()
			if err := Decode(b, out); err != nil {
				t.Fatalf("Decode(%x): %v", b, err)
			}
			if !reflect.DeepEqual(normalize(in), normalize(out)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
			}
			// The decoded value must not alias the body: a server reuses its
			// frame buffer as soon as the body is decoded.
			for i := range b {
				b[i] = 0xc1
			}
			if !reflect.DeepEqual(normalize(in), normalize(out)) {
				t.Fatal("decoded value changed with the body: it aliases it")
			}
		})
	}
}

// normalize maps empty byte slices to nil: msgpack does not tell an absent
// value from an empty one, and neither does the protocol.
func normalize(v any) any {
	rv := reflect.ValueOf(v)
	c := reflect.New(rv.Elem().Type())
	c.Elem().Set(rv.Elem())
	normalizeValue(c.Elem())
	return c.Interface()
}

func normalizeValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			normalizeValue(v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		if v.Type().Elem().Kind() != reflect.Uint8 {
			c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			reflect.Copy(c, v)
			for i := 0; i < c.Len(); i++ {
				normalizeValue(c.Index(i))
			}
			v.Set(c)
		}
	}
}

// The encoding is the contract: pin the exact bytes of a few bodies so that
// a codec upgrade or a handle option cannot silently change them.
func TestBodyEncodingIsPinned(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		// {"k": bin "user:123"}
		{&GetRequest{Key: []byte("user:123")}, "81a16bc408757365723a313233"},
		// {"k": bin "k", "stale": true}
		{&GetRequest{Key: []byte("k"), Stale: true}, "82a16bc4016ba57374616c65c3"},
		// {"ok": true, "ver": 9}
		{&CASResponse{OK: true, Version: 9}, "82a26f6bc3a376657209"},
		// {"code": 2, "leader": "n2", "msg": "m"}: the codec orders fields by name
		{&ErrorBody{Code: StatusNotLeader, Msg: "m", Leader: "n2"}, "83a4636f646502a66c6561646572a26e32a36d7367a16d"},
		// {}
		{&PingResponse{}, "80"},
	} {
		got, err := Encode(nil, tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("Encode(%+v) = %x, want %s", tc.v, got, tc.want)
		}
	}
}

func TestEncodeAppends(t *testing.T) {
	v := &SetResponse{Version: 5}
	alone, _ := Encode(nil, v)

	// Appends after existing content, in place when there is room.
	dst := make([]byte, 3, 64)
	copy(dst, "abc")
	got, err := Encode(dst, v)
	if err != nil {
		t.Fatal(err)
	}
	if string(got[:3]) != "abc" || !bytes.Equal(got[3:], alone) {
		t.Fatalf("Encode(abc) = %x", got)
	}
	if &got[0] != &dst[0] {
		t.Error("Encode reallocated although dst had room")
	}

	// And when there is no room.
	dst = []byte("abc")
	got, _ = Encode(dst[:3:3], v)
	if string(got[:3]) != "abc" || !bytes.Equal(got[3:], alone) {
		t.Fatalf("Encode(full abc) = %x", got)
	}
}

func TestDecodeAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		hex  string
		into any
		want any
	}{
		{"empty body", "", &GetRequest{}, &GetRequest{}},
		{"empty map", "80", &CASRequest{}, &CASRequest{}},
		{"unknown fields are skipped", "82a16bc4016ba46e6578749291c0c3", &GetRequest{}, &GetRequest{Key: []byte("k")}},
		{"str for bytes", "81a16ba3616263", &GetRequest{}, &GetRequest{Key: []byte("abc")}},
		{"nil for bytes", "81a16bc0", &GetRequest{}, &GetRequest{}},
		{"map16", "de0001a3766572cd0100", &SetResponse{}, &SetResponse{Version: 256}},
		{"uint64 version", "81a3766572cfffffffffffffffff", &SetResponse{}, &SetResponse{Version: 1<<64 - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := hex.DecodeString(tc.hex)
			if err != nil {
				t.Fatal(err)
			}
			if err := Decode(in, tc.into); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(tc.into), normalize(tc.want)) {
				t.Fatalf("got %+v, want %+v", tc.into, tc.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		hex  string
		into any
	}{
		{"not a map: array", "91c3", &CASResponse{}},
		{"not a map: nil", "c0", &CASResponse{}},
		{"not a map: int", "01", &CASResponse{}},
		{"not a map: str", "a16b", &GetRequest{}},
		{"truncated map", "82a26f6bc3", &CASResponse{}},
		{"truncated key", "81a36f6b", &CASResponse{}},
		{"truncated uint64", "81a3766572cf0000", &SetResponse{}},
		{"trailing bytes", "81a26f6bc3c0", &CASResponse{}},
		{"two maps", "8080", &CASResponse{}},
		{"reserved byte 0xc1", "81a26f6bc1", &CASResponse{}},
		{"bin32 longer than the body", "81a16bc6ffffffff00", &GetRequest{}},
		{"str32 longer than the body", "81a16bdb7fffffff00", &GetRequest{}},
		{"bin8 longer than the body", "81a16bc40561", &GetRequest{}},
		{"array32 count beyond the body", "81a46b657973ddffffffff", &MGetRequest{}},
		{"map32 count beyond the body", "df7fffffff", &MGetRequest{}},
		{"ext32 longer than the body", "81a16bc9ffffffff01", &GetRequest{}},
		{"too deep", "81a178" + strings.Repeat("91", maxDepth) + "c0", &GetRequest{}},
		{"string for uint", "81a3766572a131", &SetResponse{}},
		{"negative for uint", "81a3766572ff", &SetResponse{}},
		{"float for uint", "81a3766572cb3ff0000000000000", &SetResponse{}},
		{"string for bool", "81a26f6ba474727565", &CASResponse{}},
		{"int for bytes", "81a16b05", &GetRequest{}},
		{"map for bytes", "81a16b80", &GetRequest{}},
		{"int key", "8101c3", &CASResponse{}},
		{"status out of range", "81a4636f6465cd012c", &ErrorBody{}},
		{"map for array", "81a46b65797380", &MGetRequest{}},
		{"array for bytes", "81a16b9101", &GetRequest{}},
		{"int for bool", "81a26f6b01", &CASResponse{}},
		{"bytes for uint", "81a3766572c40101", &SetResponse{}},
		{"nil body", "c0", &GetRequest{}},
		{"int for a struct in an array", "81a56974656d739101", &MGetResponse{}},
		{"wrong type inside an array", "81a56974656d739181a5666f756e6401", &MGetResponse{}},
		{"bool for a key in an array", "81a46b65797392a161c3", &MGetRequest{}},
		{"truncated after a map key", "81a16b", &GetRequest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := hex.DecodeString(tc.hex)
			if err != nil {
				t.Fatal(err)
			}
			err = Decode(in, tc.into)
			if !errors.Is(err, ErrMalformedBody) {
				t.Fatalf("Decode(%s) = %v (%+v), want ErrMalformedBody", tc.hex, err, tc.into)
			}
			zero := reflect.New(reflect.TypeOf(tc.into).Elem()).Interface()
			if !reflect.DeepEqual(tc.into, zero) {
				t.Fatalf("failed Decode left %+v, want the zero value", tc.into)
			}
		})
	}
}

func TestDecodeZeroesTarget(t *testing.T) {
	v := &CASRequest{Key: []byte("old"), Value: []byte("old"), Expect: 9}
	if err := Decode([]byte{0x80}, v); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v, &CASRequest{}) {
		t.Fatalf("fields absent from the body kept old values: %+v", v)
	}
}

func TestDecodeNeedsPointer(t *testing.T) {
	for _, v := range []any{GetRequest{}, (*GetRequest)(nil), nil} {
		if err := Decode([]byte{0x80}, v); err == nil || errors.Is(err, ErrMalformedBody) {
			t.Errorf("Decode into %T: %v, want a usage error", v, err)
		}
	}
}

// Length prefixes are checked before the codec allocates: a 20-byte body
// that claims a 2 GiB value, or 2^32 keys, costs next to nothing.
func TestDecodeBoundsAllocations(t *testing.T) {
	for _, h := range []string{
		"81a16bc67fffffff" + strings.Repeat("00", 12),
		"81a46b657973ddffffffff" + strings.Repeat("c0", 12),
	} {
		in, _ := hex.DecodeString(h)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 0; i < 10; i++ {
			if err := Decode(in, &MGetRequest{}); err == nil {
				t.Fatalf("Decode(%s) succeeded", h)
			}
		}
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
			t.Errorf("Decode(%s) x10 allocated %d bytes", h, alloc)
		}
	}
}

func TestEncodeInPlaceDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	v := &SetRequest{Key: []byte("user:123"), Value: []byte("John Doe")}
	buf := make([]byte, 0, 256)
	Encode(buf, v) //nolint:errcheck // warm the pool
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Encode(buf, v); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Encode into a buffer with room: %v allocations", n)
	}
}

// Errors say which field is wrong, for the server's BadRequest message.
func TestDecodeErrorNamesTheField(t *testing.T) {
	in, _ := hex.DecodeString("81a56974656d739181a5666f756e6401") // {items: [{found: 1}]}
	err := Decode(in, &MGetResponse{})
	if err == nil || !strings.Contains(err.Error(), `field "items": [0]: field "found": want a bool, got an integer`) {
		t.Fatalf("got %v", err)
	}
}
