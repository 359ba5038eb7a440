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
