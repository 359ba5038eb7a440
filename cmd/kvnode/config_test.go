package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, cfgNode, http, kv int, join, dir string, dead time.Duration)
		wantErr []string
	}{
		{
			name: "the example's variables",
			env:  map[string]string{"NODE_ID": "node-2", "HTTP_PORT": "8081", "KV_PORT": "9081", "JOIN_ADDR": "localhost:8080"},
			check: func(t *testing.T, _ int, http, kv int, join, dir string, _ time.Duration) {
				if http != 8081 || kv != 9081 || join != "localhost:8080" {
					t.Fatalf("got http %d kv %d join %q", http, kv, join)
				}
			},
		},
		{
			name: "flags win over variables",
			args: []string{"--http-port", "7000", "--dead-node-timeout", "30s", "--data-dir", "/x"},
			env:  map[string]string{"NODE_ID": "n", "HTTP_PORT": "8081", "DEAD_NODE_TIMEOUT": "5m"},
			check: func(t *testing.T, _ int, http, _ int, _, dir string, dead time.Duration) {
				if http != 7000 || dead != 30*time.Second || dir != "/x" {
					t.Fatalf("got http %d dead %v dir %q", http, dead, dir)
				}
			},
		},
		{
			name:    "every problem at once",
			args:    []string{"--partitions", "0", "--request-timeout", "soon"},
			env:     map[string]string{"HTTP_PORT": "eighty", "JOIN_ADDR": "nohost", "REPLICATION_FACTOR": "9"},
			wantErr: []string{"NODE_ID is required", "$HTTP_PORT", "--partitions", "--request-timeout", "JOIN_ADDR", "replication factor 9"},
		},
		{
			name:    "test peer addresses",
			args:    []string{"--test-peer-addrs", "2=127.0.0.1:1,x=y"},
			env:     map[string]string{"NODE_ID": "n"},
			wantErr: []string{"--test-peer-addrs", `"x=y"`},
		},
		{
			name:    "stray argument",
			args:    []string{"serve"},
			env:     map[string]string{"NODE_ID": "n"},
			wantErr: []string{`unexpected argument "serve"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, 0, cfg.HTTPPort, cfg.KVPort, cfg.JoinAddr, cfg.DataDir, cfg.DeadNodeTimeout)
		})
	}
	if _, _, err := parseConfig([]string{"--help"}, func(string) string { return "" }, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
}

// TestRunBadCommandLine: a command line kvnode cannot use gets one short
// message and exit status 2; only --help prints the usage (status 0).
func TestRunBadCommandLine(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantCode  int
		want      []string
		dontWant  []string
		maxLines  int
		wantUsage bool
	}{
		{name: "unknown flag", args: []string{"--bogus"}, wantCode: 2,
			want: []string{"invalid configuration", "-bogus", "kvnode --help"}, dontWant: []string{"Flags:"}, maxLines: 4},
		{name: "flag without its value", args: []string{"--http-port"}, wantCode: 2,
			want: []string{"invalid configuration", "http-port"}, dontWant: []string{"Flags:"}, maxLines: 4},
		{name: "stray argument", args: []string{"serve"}, wantCode: 2,
			want: []string{"unexpected argument \"serve\""}, dontWant: []string{"Flags:"}, maxLines: 4},
		{name: "help", args: []string{"--help"}, wantCode: 0, want: []string{"Flags:", "NODE_ID"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(tt.args, func(string) string { return "" }, &stdout, &stderr)
			out := stdout.String() + stderr.String()
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, tt.wantCode, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.dontWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
			if n := strings.Count(strings.TrimSpace(out), "\n") + 1; tt.maxLines > 0 && n > tt.maxLines {
				t.Errorf("%d lines of output, want at most %d:\n%s", n, tt.maxLines, out)
			}
		})
	}
}
