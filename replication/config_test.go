package replication

import (
	"strings"
	"testing"
	"time"
)

// TestConfigDefaultsAndValidate checks the defaults that depend on other
// fields, and that Validate reports every problem at once.
func TestConfigDefaultsAndValidate(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cfg       Config
		wantDelay time.Duration
		wantErrs  []string
	}{
		{
			name:      "defaults",
			cfg:       Config{},
			wantDelay: 2 * time.Millisecond,
			wantErrs:  []string{"NodeID must not be 0", "WAL is required", "Engine is required", "Transport is required"},
		},
		{
			name:      "hint delay follows a short heartbeat",
			cfg:       Config{NodeID: 1, TickInterval: time.Millisecond, HeartbeatTicks: 2},
			wantDelay: time.Millisecond,
			wantErrs:  []string{"WAL is required"},
		},
		{
			name:      "hint delay at the heartbeat period",
			cfg:       Config{NodeID: 1, TickInterval: 10 * time.Millisecond, HeartbeatTicks: 1, CommitHintDelay: 10 * time.Millisecond},
			wantDelay: 10 * time.Millisecond,
			wantErrs:  []string{"CommitHintDelay 10ms must be below the heartbeat period 10ms", "WAL is required"},
		},
		{
			name:      "hints off",
			cfg:       Config{NodeID: 1, CommitHintDelay: -1},
			wantDelay: -1,
			wantErrs:  []string{"WAL is required"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg.EnsureDefaults()
			if c.CommitHintDelay != tt.wantDelay {
				t.Errorf("CommitHintDelay %v, want %v", c.CommitHintDelay, tt.wantDelay)
			}
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted a config without stores")
			}
			for _, want := range tt.wantErrs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not report %q", err, want)
				}
			}
		})
	}
}
