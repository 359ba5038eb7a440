package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"kvnode/wire"
)

// TestClusterForms starts three in-process nodes the way the README does
// (one bootstraps, two join it) and checks /cluster on every node: the
// ClusterKit shape, every partition with a primary and two replicas on
// distinct nodes, and leaders spread over the nodes.
func TestClusterForms(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.Partitions = 64 })
	deadline := time.Now().Add(15 * time.Second)
	for i := range c.nodes {
		for {
			err := checkClusterShape(c.clusterJSON(i), 64, 3)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: %v", i+1, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func checkClusterShape(v map[string]any, partitions, nodes int) error {
	cl, _ := v["cluster"].(map[string]any)
	hc, _ := v["hash_config"].(map[string]any)
	if cl == nil || hc == nil {
		return fmt.Errorf("missing cluster or hash_config: %v", v)
	}
	if hc["algorithm"] != "md5" || hc["modulo"] != float64(partitions) || hc["format"] != "partition-%d" {
		return fmt.Errorf("hash_config %v", hc)
	}
	ns, _ := cl["nodes"].([]any)
	if len(ns) != nodes {
		return fmt.Errorf("%d nodes, want %d", len(ns), nodes)
	}
	for _, x := range ns {
		n := x.(map[string]any)
		svc, _ := n["services"].(map[string]any)
		if n["id"] == "" || n["status"] != "alive" || svc["kv"] == nil || svc["http"] == nil {
			return fmt.Errorf("node entry %v", n)
		}
	}
	cfg, _ := cl["config"].(map[string]any)
	if cfg["partition_count"] != float64(partitions) || cfg["replication_factor"] != float64(3) {
		return fmt.Errorf("config %v", cfg)
	}
	parts := cl["partition_map"].(map[string]any)["partitions"].(map[string]any)
	if len(parts) != partitions {
		return fmt.Errorf("%d partitions, want %d", len(parts), partitions)
	}
	leads := map[string]int{}
	for name, x := range parts {
		p := x.(map[string]any)
		primary, _ := p["primary_node"].(string)
		reps, _ := p["replica_nodes"].([]any)
		if p["id"] != name || primary == "" || len(reps) != 2 {
			return fmt.Errorf("%s: %v", name, p)
		}
		seen := map[string]bool{primary: true}
		for _, r := range reps {
			if seen[r.(string)] {
				return fmt.Errorf("%s: node %v twice", name, r)
			}
			seen[r.(string)] = true
		}
		leads[primary]++
	}
	for name, n := range leads {
		if n < 15 || n > 28 {
			return fmt.Errorf("%s leads %d partitions, want 15-28 (%v)", name, n, leads)
		}
	}
	if len(leads) != nodes {
		return fmt.Errorf("leaders on %d nodes: %v", len(leads), leads)
	}
	return nil
}

// TestHTTPAPI runs the REST and ClusterKit-path API against every node:
// any node serves any key (forwarding to the leader when it must).
func TestHTTPAPI(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.MaxKeySize = 64; cfg.MaxValueSize = 1024 })
	type step struct {
		node         int
		method, path string
		body         string
		wantCode     int
		wantBody     string // substring
		wantHeader   [2]string
	}
	steps := []step{
		{0, "GET", "/kv/absent", "", 404, `"error":"key not found"`, [2]string{}},
		{1, "PUT", "/kv/user:123", "John Doe", 200, `"version":`, [2]string{}},
		{2, "GET", "/kv/user:123", "", 200, "John Doe", [2]string{}},
		// A linearizable read on node-1 makes its replica apply the write,
		// so the stale read after it sees it too.
		{0, "GET", "/kv/user:123", "", 200, "John Doe", [2]string{}},
		{0, "GET", "/kv/user:123?consistency=stale", "", 200, "John Doe", [2]string{}},
		{0, "GET", "/kv/user:123?consistency=bogus", "", 400, "consistency", [2]string{}},
		{2, "PUT", "/kv/user:123?if_version=1", "nope", 409, "version mismatch", [2]string{}},
		{2, "PUT", "/kv/user:123?if_version=abc", "nope", 400, "if_version", [2]string{}},
		{1, "GET", "/kv/user:123", "", 200, "John Doe", [2]string{}},
		{0, "PUT", "/kv/new?if_version=0", "fresh", 200, `"version":`, [2]string{}},
		{1, "PUT", "/kv/new?if_version=0", "again", 409, "version mismatch", [2]string{}},
		{2, "DELETE", "/kv/new", "", 200, `"deleted":true`, [2]string{}},
		{0, "DELETE", "/kv/new", "", 200, `"deleted":false`, [2]string{}},
		{0, "GET", "/kv/new", "", 404, "", [2]string{}},
		// ClusterKit example paths.
		{0, "POST", "/kv/set", `{"key":"ck","value":"v1"}`, 200, `"status":"ok"`, [2]string{}},
		{1, "GET", "/kv/get?key=ck", "", 200, `"value":"v1"`, [2]string{}},
		{2, "DELETE", "/kv/delete?key=ck", "", 200, `"deleted":true`, [2]string{}},
		{0, "GET", "/kv/get?key=ck", "", 404, "", [2]string{}},
		{0, "GET", "/kv/stats", "", 200, `"node":"node-1"`, [2]string{}},
		// Bad input: a clear error, nothing changed.
		{0, "POST", "/kv/set", `{"key":"x"`, 400, "JSON", [2]string{}},
		{0, "POST", "/kv/set", `{"key":"x","value":1}`, 400, "JSON", [2]string{}},
		{0, "POST", "/kv/set", `{"key":"x"}`, 400, `both \"key\" and \"value\"`, [2]string{}},
		{0, "POST", "/kv/set", `{"key":"x","value":"v","extra":1}`, 400, "unknown field", [2]string{}},
		{0, "GET", "/kv/get?key=", "", 400, "empty key", [2]string{}},
		{0, "PUT", "/kv/" + strings.Repeat("k", 65), "v", 413, "exceeds the limit of 64 bytes (--max-key-size)", [2]string{}},
		{1, "PUT", "/kv/big", strings.Repeat("v", 1025), 413, "exceeds the limit of 1024 bytes (--max-value-size)", [2]string{}},
		{1, "GET", "/kv/big", "", 404, "", [2]string{}},
		{2, "POST", "/join", `not json`, 400, "join body", [2]string{}},
		{0, "GET", "/health", "", 200, `"status":"ok"`, [2]string{}},
		{0, "GET", "/ready", "", 200, `"ready":true`, [2]string{}},
		// The router's own errors are JSON too, and say what to do.
		{0, "GET", "/nope", "", 404, "no such endpoint: GET /nope", [2]string{}},
		{0, "PATCH", "/kv/x", "v", 405, "method PATCH not allowed on /kv/x", [2]string{"Allow", "DELETE"}},
		{0, "GET", "/remove", "", 405, "allowed: POST", [2]string{"Allow", "POST"}},
		{1, "PUT", "/kv/delete-me", "v", 200, `"version":`, [2]string{}},
		{1, "GET", "/kv/delete?key=delete-me", "", 405, "DELETE or POST /kv/delete", [2]string{"Allow", "DELETE, POST"}},
		{1, "GET", "/kv/delete-me", "", 200, "v", [2]string{}},
		{1, "POST", "/kv/delete?key=delete-me", "", 200, `"deleted":true`, [2]string{}},
	}
	for i, s := range steps {
		code, hdr, body := c.do(s.node, s.method, s.path, s.body)
		if code != s.wantCode || !strings.Contains(body, s.wantBody) {
			t.Fatalf("step %d: node-%d %s %s: %d %s, want %d with %q", i, s.node+1, s.method, s.path, code, body, s.wantCode, s.wantBody)
		}
		if code == 200 && s.method == "GET" && strings.HasPrefix(s.path, "/kv/user") && hdr.Get("X-Kvnode-Version") == "" {
			t.Fatalf("step %d: no version header", i)
		}
		if code >= 400 && (!strings.Contains(body, `"error"`) || hdr.Get("Content-Type") != "application/json") {
			t.Fatalf("step %d: error body is not JSON {\"error\"}: %s %s", i, hdr.Get("Content-Type"), body)
		}
		if k := s.wantHeader[0]; k != "" && !strings.Contains(hdr.Get(k), s.wantHeader[1]) {
			t.Fatalf("step %d: header %s = %q, want it to contain %q", i, k, hdr.Get(k), s.wantHeader[1])
		}
	}
	// The metrics endpoint counts what happened.
	_, _, metrics := c.do(0, "GET", "/metrics", "")
	for _, name := range []string{"kvnode_wal_syncs_total", "kvnode_http_requests_total", "kvnode_leaders"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestNoQuorum stops two of three nodes: the survivor answers writes and
// linearizable reads with 503 and Retry-After after the request timeout,
// and acknowledges nothing.
func TestNoQuorum(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.RequestTimeout = 500 * time.Millisecond })
	if code, _, body := c.do(0, "PUT", "/kv/before", "1"); code != 200 {
		t.Fatalf("write before: %d %s", code, body)
	}
	c.stop(1)
	c.stop(2)
	for _, req := range []struct{ method, path string }{{"PUT", "/kv/during"}, {"GET", "/kv/before"}} {
		start := time.Now()
		code, hdr, body := c.do(0, req.method, req.path, "x")
		if code != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(body, "error") {
			t.Fatalf("%s %s without quorum: %d %v %s", req.method, req.path, code, hdr, body)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("%s took %v", req.method, el)
		}
	}
	// A stale read is still served from the local replica.
	if code, _, body := c.do(0, "GET", "/kv/before?consistency=stale", ""); code != 200 || body != "1" {
		t.Fatalf("stale read without quorum: %d %s", code, body)
	}
}

// TestBinaryProtocol drives the KV port with raw frames: good requests,
// and bad ones that must get a clear error without changing anything.
func TestBinaryProtocol(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.MaxKeySize = 64; cfg.MaxValueSize = 1024 })
	kv := c.nodes[0].KVAddr()

	t.Run("requests", func(t *testing.T) {
		conn := dialClient(t, kv)
		defer conn.close()
		// A write may land on a follower: follow the leader hint.
		key := []byte("bin-key")
		st, body := conn.call(t, wire.OpSet, &wire.SetRequest{Key: key, Value: []byte("v")})
		if st == wire.StatusNotLeader {
			var eb wire.ErrorBody
			wire.Decode(body, &eb)
			if eb.LeaderAddr == "" || eb.Leader == "" {
				t.Fatalf("not-leader answer without a hint: %+v", eb)
			}
			conn.close()
			conn = dialClient(t, eb.LeaderAddr)
			st, body = conn.call(t, wire.OpSet, &wire.SetRequest{Key: key, Value: []byte("v")})
		}
		if st != wire.StatusOK {
			t.Fatalf("set: %v %x", st, body)
		}
		st, body = conn.call(t, wire.OpGet, &wire.GetRequest{Key: key})
		var gr wire.GetResponse
		if st != wire.StatusOK || wire.Decode(body, &gr) != nil || string(gr.Value) != "v" || gr.Version == 0 {
			t.Fatalf("get: %v %+v", st, gr)
		}
		st, _ = conn.call(t, wire.OpGet, &wire.GetRequest{Key: []byte("nope")})
		if st != wire.StatusNotFound {
			t.Fatalf("get absent: %v", st)
		}
		st, body = conn.call(t, wire.OpCompareAndSet, &wire.CASRequest{Key: key, Value: []byte("w"), Expect: gr.Version})
		var cr wire.CASResponse
		if st != wire.StatusOK || wire.Decode(body, &cr) != nil || !cr.OK {
			t.Fatalf("cas: %v %+v", st, cr)
		}
		st, _ = conn.call(t, wire.OpPing, &wire.PingRequest{})
		if st != wire.StatusOK {
			t.Fatalf("ping: %v", st)
		}
	})

	bad := []struct {
		name     string
		op       wire.Op
		body     []byte
		wantSt   wire.Status
		wantText string
	}{
		{"unknown op", 99, nil, wire.StatusUnknownOp, "unknown operation"},
		{"empty key", wire.OpSet, mustEncode(&wire.SetRequest{Key: nil, Value: []byte("v")}), wire.StatusBadRequest, "empty key"},
		{"key too large", wire.OpSet, mustEncode(&wire.SetRequest{Key: make([]byte, 65), Value: []byte("v")}), wire.StatusTooLarge, "64 bytes"},
		{"value too large", wire.OpSet, mustEncode(&wire.SetRequest{Key: []byte("k"), Value: make([]byte, 1025)}), wire.StatusTooLarge, "1024 bytes"},
		{"garbage body", wire.OpSet, []byte{0xc1, 0xff, 0x00}, wire.StatusBadRequest, ""},
		{"wrong field type", wire.OpGet, mustEncode(map[string]any{"k": 42}), wire.StatusBadRequest, ""},
	}
	t.Run("bad requests keep the connection", func(t *testing.T) {
		conn := dialClient(t, kv)
		defer conn.close()
		for _, b := range bad {
			st, body := conn.callRaw(t, b.op, b.body)
			var eb wire.ErrorBody
			if st != b.wantSt || wire.Decode(body, &eb) != nil || !strings.Contains(eb.Msg, b.wantText) {
				t.Fatalf("%s: status %v body %+v, want %v with %q", b.name, st, eb, b.wantSt, b.wantText)
			}
			// The connection still serves.
			if st, _ := conn.call(t, wire.OpPing, &wire.PingRequest{}); st != wire.StatusOK {
				t.Fatalf("%s: connection unusable after the error: %v", b.name, st)
			}
		}
		if st, _ := conn.call(t, wire.OpGet, &wire.GetRequest{Key: []byte("k")}); st != wire.StatusNotFound {
			t.Fatalf("a refused write left a value behind: %v", st)
		}
	})
	t.Run("broken frames close the connection", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			raw  []byte
		}{
			{"declared length too large", []byte{0x7f, 0xff, 0xff, 0xff}},
			{"declared length too short", []byte{0, 0, 0, 3, 1, 2, 3}},
		} {
			conn := dialClient(t, kv)
			conn.write(t, tc.raw)
			f, err := conn.read()
			if err != nil || f.Status() != wire.StatusMalformedFrame {
				t.Fatalf("%s: %v %v", tc.name, f.Status(), err)
			}
			if _, err := conn.read(); err == nil {
				t.Fatalf("%s: connection still open", tc.name)
			}
			conn.close()
		}
	})
	t.Run("truncated frame and garbage preamble", func(t *testing.T) {
		conn := dialClient(t, kv)
		frame := wire.AppendFrame(nil, 1, uint8(wire.OpPing), []byte{0x80})
		conn.write(t, frame[:len(frame)-1])
		conn.close() // the server sees a half-written frame and moves on
		raw := dialRaw(t, kv)
		raw.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := raw.Read(make([]byte, 1)); err == nil {
			t.Fatal("a connection with a foreign preamble was not closed")
		}
		raw.Close()
		// The node still serves.
		if code, _, _ := c.do(0, "GET", "/health", ""); code != 200 {
			t.Fatal("node unhealthy after bad frames")
		}
	})
}

// TestGracefulStop checks that a node stopping cleanly hands its
// leaderships over, and comes back as the same member.
func TestGracefulStop(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	if code, _, body := c.do(0, "PUT", "/kv/k", "v"); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	// The others must have seen node-1 up to say, once it is back, how
	// long it was away.
	for _, n := range c.nodes[1:] {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, ok := n.view.alive(c.nodes[0].ID()); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never heard from node-1", n.cfg.NodeID)
			}
		}
	}
	c.stop(0)
	for _, g := range c.nodes[1].host.Groups() {
		st, err := c.nodes[1].host.Status(g)
		if err != nil || st.Leader == c.nodes[0].ID() {
			t.Fatalf("group %d still led by the stopped node: %+v", g, st)
		}
	}
	c.restart(0)
	c.waitReady(30 * time.Second)
	if code, _, body := c.do(0, "GET", "/kv/k", ""); code != 200 || body != "v" {
		t.Fatalf("after restart: %d %s", code, body)
	}
	// A restart well under the dead-node timeout is still announced, with
	// how long the node was away.
	rejoin := c.waitEvent("node_rejoin", 10*time.Second, func(e Event) bool {
		return e.Type == EventNodeRejoin && e.Node == "node-1"
	})
	if d, err := time.ParseDuration(rejoin.Offline); err != nil || d <= 0 || d > 30*time.Second ||
		!strings.Contains(rejoin.Message, "restarted") {
		t.Fatalf("node_rejoin after a quick restart: %+v", rejoin)
	}
}

// TestJoinRefusals: a second node under an existing name, with an empty
// data dir, is refused with a message saying what to do.
func TestJoinRefusals(t *testing.T) {
	c := newTestCluster(t, 2, nil)
	cfg := testConfig(t, t.TempDir(), "node-2")
	cfg.JoinAddr = c.nodes[0].HTTPAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "already a member") || !strings.Contains(err.Error(), "/remove") {
		t.Fatalf("duplicate join: %v", err)
	}
}

// TestEvents checks the Go API and the server-sent-events stream.
func TestEvents(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	var mu sync.Mutex
	var got []Event
	c.nodes[0].OnEvent(func(e Event) {
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	})
	c.nodes[0].OnEvent(func(Event) { panic("a broken handler") })
	resp, err := http.Get("http://" + c.nodes[0].HTTPAddr() + "/events?since=0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	if !strings.Contains(string(buf[:n]), "event: node_join") {
		t.Fatalf("stream did not replay the bootstrap's join: %q", buf[:n])
	}
	c.nodes[0].events.emit(Event{Type: EventHealthChange, Message: "test"})
	n, _ = resp.Body.Read(buf)
	var e Event
	line := string(buf[:n])
	if i := strings.Index(line, "data: "); i < 0 || json.Unmarshal([]byte(strings.TrimSpace(line[i+6:])), &e) != nil || e.Type != EventHealthChange {
		t.Fatalf("stream: %q", line)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("OnEvent handler not called")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _, _ := c.do(0, "GET", "/health", ""); code != 200 {
		t.Fatal("a panicking handler hurt the node")
	}
}
