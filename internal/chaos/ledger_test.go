package chaos

import "testing"

// TestKeyRecordWritten pins what the ledger accepts from a replica that is
// catching up: any value some write of the key carried, including acked
// values older than the last one (a pause-leader run once reported those as
// corruption), and nothing else.
func TestKeyRecordWritten(t *testing.T) {
	rec := &keyRecord{
		acked:     true,
		ackValue:  "v3",
		ackVer:    30,
		everAcked: map[string]bool{"v1": true, "v3": true},
		unknown:   map[string]bool{"v2": true},
		failed:    map[string]bool{"v4": true},
	}
	for _, tc := range []struct {
		value string
		want  bool
	}{
		{"v1", true}, // an older acknowledged value
		{"v2", true}, // outcome unknown
		{"v3", true}, // the last acknowledged value
		{"v4", true}, // reported failed: phantom, not corruption, if it stays
		{"v5", false},
		{"", false},
	} {
		if got := rec.written(tc.value); got != tc.want {
			t.Errorf("written(%q) = %v, want %v", tc.value, got, tc.want)
		}
	}
	if (&keyRecord{}).written("v1") {
		t.Error("a key with no writes accepts a value")
	}
}
