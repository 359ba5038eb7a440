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
		wantSync  time.Duration
		wantErrs  []string
	}{
		{
			name:      "defaults",
			cfg:       Config{},
			wantDelay: 2 * time.Millisecond,
			wantSync:  800 * time.Microsecond,
			wantErrs:  []string{"NodeID must not be 0", "WAL is required", "Engine is required", "Transport is required"},
		},
		{
			name:      "hint delay follows a short heartbeat",
			cfg:       Config{NodeID: 1, TickInterval: time.Millisecond, HeartbeatTicks: 1},
			wantDelay: 500 * time.Microsecond,
			wantSync:  500 * time.Microsecond,
			wantErrs:  []string{"WAL is required"},
		},
		{
			name:      "hint delay at the heartbeat period",
			cfg:       Config{NodeID: 1, TickInterval: 10 * time.Millisecond, HeartbeatTicks: 1, CommitHintDelay: 10 * time.Millisecond},
			wantDelay: 10 * time.Millisecond,
			wantSync:  800 * time.Microsecond,
			wantErrs:  []string{"CommitHintDelay 10ms must be below the heartbeat period 10ms", "WAL is required"},
		},
		{
			name:      "sync interval at the heartbeat period, busy threshold negative",
			cfg:       Config{NodeID: 1, SyncInterval: 100 * time.Millisecond, BusySyncEntries: -1},
			wantDelay: 2 * time.Millisecond,
			wantSync:  100 * time.Millisecond,
			wantErrs: []string{"SyncInterval 100ms must be below the heartbeat period 100ms",
				"BusySyncEntries -1 must be at least 1", "WAL is required"},
		},
		{
			name:      "hints and sync pacing off",
			cfg:       Config{NodeID: 1, CommitHintDelay: -1, SyncInterval: -1},
			wantDelay: -1,
			wantSync:  -1,
			wantErrs:  []string{"WAL is required"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg.EnsureDefaults()
			if c.CommitHintDelay != tt.wantDelay {
				t.Errorf("CommitHintDelay %v, want %v", c.CommitHintDelay, tt.wantDelay)
			}
			if c.SyncInterval != tt.wantSync {
				t.Errorf("SyncInterval %v, want %v", c.SyncInterval, tt.wantSync)
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
