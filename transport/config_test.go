package transport

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

type nopHandler struct{}

func (nopHandler) HandleMessages(uint64, []Message) {}
func (nopHandler) HandleSnapshot(context.Context, uint64, Message, io.Reader) error {
	return nil
}
func (nopHandler) PeerUnreachable(uint64) {}

func validConfig() Config {
	return Config{
		NodeID:    1,
		ClusterID: func() uint64 { return 1 },
		Resolve:   func(uint64) (string, error) { return "", nil },
		Handler:   nopHandler{},
	}
}

func TestConfigDefaults(t *testing.T) {
	in := validConfig()
	c := in.EnsureDefaults()
	if in.Logger != nil || in.QueueSize != 0 {
		t.Fatal("EnsureDefaults modified its receiver")
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"Preamble", string(c.Preamble), DefaultPreamble},
		{"QueueSize", c.QueueSize, 4096},
		{"MaxFrameSize", c.MaxFrameSize, 64 << 20},
		{"CompressThreshold", c.CompressThreshold, 4 << 10},
		{"DialTimeout", c.DialTimeout, time.Second},
		{"BackoffMin", c.BackoffMin, 20 * time.Millisecond},
		{"BackoffMax", c.BackoffMax, time.Second},
		{"WriteTimeout", c.WriteTimeout, 5 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("%s default: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if c.Logger == nil {
		t.Error("Logger default is nil")
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if nc := (*Config)(nil).EnsureDefaults(); nc.QueueSize != defaultQueueSize {
		t.Fatal("EnsureDefaults on nil")
	}
	// The transport keeps its own copy of the preamble.
	p := []byte("MINE0001")
	in.Preamble = p
	c = in.EnsureDefaults()
	p[0] = 'X'
	if !bytes.Equal(c.Preamble, []byte("MINE0001")) {
		t.Fatal("Preamble aliases the caller's slice")
	}
	// A BackoffMin above the default BackoffMax raises the default.
	in.BackoffMin = 3 * time.Second
	if c := in.EnsureDefaults(); c.BackoffMax != 3*time.Second || c.Validate() != nil {
		t.Fatalf("BackoffMax default with a large BackoffMin: %v", c.BackoffMax)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error; nil = valid
	}{
		{"valid", func(*Config) {}, nil},
		{"compression disabled", func(c *Config) { c.CompressThreshold = -1 }, nil},
		{"everything required missing", func(c *Config) { *c = Config{} },
			[]string{"NodeID is 0", "ClusterID is nil", "Resolve is nil", "Handler is nil"}},
		{"bad sizes", func(c *Config) {
			c.QueueSize = -1
			c.MaxFrameSize = 100
			c.Preamble = bytes.Repeat([]byte("p"), 65)
		}, []string{"QueueSize -1", "MaxFrameSize 100", "Preamble is 65 bytes"}},
		{"frame size too big", func(c *Config) { c.MaxFrameSize = 2 << 30 }, []string{"MaxFrameSize 2147483648"}},
		{"bad durations", func(c *Config) {
			c.DialTimeout = -time.Second
			c.BackoffMin = -1
			c.WriteTimeout = -1
		}, []string{"DialTimeout -1s", "BackoffMin -1ns", "WriteTimeout -1ns"}},
		{"backoff inverted", func(c *Config) {
			c.BackoffMin = time.Second
			c.BackoffMax = time.Millisecond
		}, []string{"BackoffMax 1ms is below BackoffMin 1s"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			err := c.EnsureDefaults().Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := New(c); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

func TestNewKeepsLoggerDefaultDiscard(t *testing.T) {
	c := validConfig()
	tr, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.log.Handler().Enabled(context.Background(), slog.LevelError) {
		t.Fatal("default logger is not discarding")
	}
}
