package wire

import (
	"crypto/md5"
	"encoding/binary"
	"testing"
)

func TestPartition(t *testing.T) {
	// Literal expectations, computed once (md5sum: "user:123" starts
	// 90db0030, "" d41d8cd9, "hello" 5d41402a): a change to the hash, the
	// byte order or the modulo breaks these even if the reference
	// computation below were changed the same way.
	literal := []struct {
		key  string
		n    int
		want int
	}{
		{"user:123", 64, 48},
		{"", 64, 25},
		{"hello", 64, 42},
		{"user:123", 7, 0},
		{"hello", 1, 0},
	}
	for _, tc := range literal {
		if got := Partition([]byte(tc.key), tc.n); got != tc.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", tc.key, tc.n, got, tc.want)
		}
	}

	// The ClusterKit definition, computed independently.
	reference := func(key []byte, n int) int {
		sum := md5.Sum(key)
		return int(binary.BigEndian.Uint32(sum[:]) % uint32(n))
	}
	keys := []string{"user:123", "user:456", "a", "", "\x00\xff", "partition-0", "a much longer key with spaces and 🙂"}
	for _, n := range []int{1, 3, 64, 1000, 1 << 31} {
		for _, k := range keys {
			if got, want := Partition([]byte(k), n), reference([]byte(k), n); got != want {
				t.Errorf("Partition(%q, %d) = %d, reference %d", k, n, got, want)
			}
		}
	}
}

func TestPartitionPanicsOnBadCount(t *testing.T) {
	for _, n := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Partition(_, %d) did not panic", n)
				}
			}()
			Partition([]byte("k"), n)
		}()
	}
}

func TestPartitionName(t *testing.T) {
	for _, tc := range []struct {
		p    int
		want string
	}{{0, "partition-0"}, {7, "partition-7"}, {63, "partition-63"}} {
		if got := PartitionName(tc.p); got != tc.want {
			t.Errorf("PartitionName(%d) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestCodeStrings(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{OpGet.String(), "Get"},
		{OpCompareAndSet.String(), "CompareAndSet"},
		{OpPing.String(), "Ping"},
		{Op(0).String(), "Op(0)"},
		{Op(200).String(), "Op(200)"},
		{StatusOK.String(), "OK"},
		{StatusNotLeader.String(), "NotLeader"},
		{StatusStopping.String(), "Stopping"},
		{Status(10).String(), "Status(10)"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	// The numbers are the contract (docs/protocol.md); pin them.
	ops := []Op{OpGet, OpSet, OpDelete, OpCompareAndSet, OpMGet, OpMSet, OpPing}
	for i, op := range ops {
		if int(op) != i+1 || !op.Known() {
			t.Errorf("%v = %d, want %d", op, op, i+1)
		}
	}
	if Op(0).Known() || Op(8).Known() {
		t.Error("Known accepts undefined ops")
	}
	statuses := []Status{StatusOK, StatusNotFound, StatusNotLeader, StatusBadRequest, StatusTooLarge,
		StatusUnavailable, StatusUnknownOp, StatusMalformedFrame, StatusInternal, StatusStopping}
	for i, s := range statuses {
		if int(s) != i {
			t.Errorf("%v = %d, want %d", s, s, i)
		}
	}
}
