package client

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"kvnode/wire"
)

func TestParseTopology(t *testing.T) {
	const nodes = `"nodes": [
		{"id": "node-1", "ip": "127.0.0.1", "name": "node-1", "status": "alive", "services": {"kv": "h1:9080", "http": "h1:8080"}},
		{"id": "node-2", "status": "alive", "services": {"kv": "h2:9081", "http": "h2:8081"}},
		{"id": "node-3", "status": "dead", "services": {"kv": "h3:9082"}},
		{"id": "node-4", "status": "alive", "services": {"http": "h4:8083"}}]`
	doc := func(parts, hash string) string {
		return `{"cluster": {"id": "c", "name": "c", ` + nodes + `,
			"partition_map": {"partitions": {` + parts + `}},
			"config": {"cluster_name": "c", "partition_count": 4, "replication_factor": 3}},
			"hash_config": ` + hash + `}`
	}
	const md5x4 = `{"algorithm": "md5", "modulo": 4, "format": "partition-%d"}`
	for _, tc := range []struct {
		name    string
		json    string
		wantErr string
		check   func(t *testing.T, tp *topology)
	}{
		{
			name: "ClusterKit's shape",
			json: doc(`"partition-0": {"id": "partition-0", "primary_node": "node-1", "replica_nodes": ["node-2", "node-3"]},
				"partition-1": {"primary_node": "", "replica_nodes": ["node-1", "node-2"]},
				"partition-2": {"primary_node": "node-4", "replica_nodes": ["node-2", "node-9"]},
				"partition-3": {"primary_node": "node-2", "replica_nodes": ["node-2", "node-1"]}`, md5x4),
			check: func(t *testing.T, tp *topology) {
				want := []partition{
					// node-3 is dead: not a replica to read from.
					{leader: "node-1", leaderAddr: "h1:9080", replicas: []string{"h1:9080", "h2:9081"}},
					// No leader known: ops go to a replica, which hints.
					{replicas: []string{"h1:9080", "h2:9081"}},
					// A leader without a KV service, an unknown replica.
					{replicas: []string{"h2:9081"}},
					// The primary listed again among the replicas.
					{leader: "node-2", leaderAddr: "h2:9081", replicas: []string{"h2:9081", "h1:9080"}},
				}
				if tp.n != 4 || len(tp.parts) != 4 {
					t.Fatalf("n %d, %d parts", tp.n, len(tp.parts))
				}
				for p, w := range want {
					got := tp.parts[p]
					if got.leader != w.leader || got.leaderAddr != w.leaderAddr || strings.Join(got.replicas, ",") != strings.Join(w.replicas, ",") {
						t.Errorf("partition %d = %+v, want %+v", p, got, w)
					}
				}
				if strings.Join(tp.httpAddrs, ",") != "h1:8080,h2:8081,h4:8083" {
					t.Errorf("http addresses %v", tp.httpAddrs)
				}
			},
		},
		{
			name: "modulo from config, missing partitions",
			json: doc(`"partition-1": {"primary_node": "node-1"}`, `{}`),
			check: func(t *testing.T, tp *topology) {
				if tp.n != 4 || tp.parts[0].leaderAddr != "" || tp.parts[1].leaderAddr != "h1:9080" {
					t.Errorf("got n %d, parts %+v", tp.n, tp.parts)
				}
			},
		},
		{
			name: "another name format",
			json: doc(`"p/2": {"primary_node": "node-2"}`, `{"modulo": 4, "format": "p/%d"}`),
			check: func(t *testing.T, tp *topology) {
				if tp.parts[2].leaderAddr != "h2:9081" {
					t.Errorf("parts %+v", tp.parts)
				}
			},
		},
		{name: "unknown hash", json: doc(``, `{"algorithm": "sha1", "modulo": 4}`), wantErr: "hash algorithm"},
		{name: "no partitions", json: `{"cluster": {}, "hash_config": {"algorithm": "md5"}}`, wantErr: "partition count 0"},
		{name: "absurd modulo", json: doc(``, `{"modulo": 1000000000}`), wantErr: "partition count"},
		{name: "bad format", json: doc(``, `{"modulo": 4, "format": "p-%s-%d"}`), wantErr: "format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d clusterDoc
			if err := json.Unmarshal([]byte(tc.json), &d); err != nil {
				t.Fatal(err)
			}
			tp, err := parseTopology(&d)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, tp)
		})
	}
}

func TestTopologyTarget(t *testing.T) {
	tp := &topology{n: 2, parts: []partition{
		{leader: "a", leaderAddr: "A", replicas: []string{"A", "B", "C"}},
		{replicas: []string{"B", "C"}},
	}}
	for _, tc := range []struct {
		p     int
		stale bool
		rr    uint64
		want  string
	}{
		{0, false, 0, "A"},
		{0, false, 1, "A"},
		{0, true, 0, "A"},
		{0, true, 1, "B"},
		{0, true, 2, "C"},
		{1, false, 0, "C"}, // no leader known: a replica (rr + p)
		{1, false, 1, "B"},
	} {
		if got := tp.target(tc.p, tc.stale, tc.rr); got != tc.want {
			t.Errorf("target(%d, stale %v, rr %d) = %q, want %q", tc.p, tc.stale, tc.rr, got, tc.want)
		}
	}
	nt := tp.withLeader(1, "c", "C")
	if nt.parts[1].leaderAddr != "C" || strings.Join(nt.parts[1].replicas, ",") != "C,B" {
		t.Errorf("withLeader: %+v", nt.parts[1])
	}
	if tp.parts[1].leaderAddr != "" {
		t.Error("withLeader modified the original")
	}
}

// Two nodes that name each other leader (an election in progress) must not
// burn through the retries without backing off.
func TestHintPingPongBacksOff(t *testing.T) {
	fc := newFakeCluster(t, 2)
	for i, nd := range fc.nodes {
		other := fc.nodes[1-i]
		nd.setHook(func(fakeReq) fakeAction {
			return fakeAction{status: wire.StatusNotLeader, leader: other.id, leaderAddr: other.addr()}
		})
	}
	c := newTestClient(t, fc, func(cfg *Config) { cfg.MaxRetries = 6 })
	start := time.Now()
	err := c.Set(ctxTimeout(t, 10*time.Second), "k", nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	// Backoffs after attempts 1, 3 and 5: at least 5/2 + 20/2 + 80/2 ms.
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("gave up after %v: retries without backoff", d)
	}
	if n := fc.nodes[0].received.Load() + fc.nodes[1].received.Load(); n != 7 {
		t.Errorf("%d requests, want 7 (MaxRetries 6)", n)
	}
}
