package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"kvnode/client"
	"kvnode/internal/localcluster"
	"kvnode/wire"
)

type clusterDoc struct {
	Cluster struct {
		ID    string `json:"id"`
		Nodes []struct {
			ID       string            `json:"id"`
			Status   string            `json:"status"`
			Services map[string]string `json:"services"`
		} `json:"nodes"`
		PartitionMap struct {
			Partitions map[string]struct {
				ID           string   `json:"id"`
				PrimaryNode  string   `json:"primary_node"`
				ReplicaNodes []string `json:"replica_nodes"`
			} `json:"partitions"`
		} `json:"partition_map"`
		Config struct {
			PartitionCount    int `json:"partition_count"`
			ReplicationFactor int `json:"replication_factor"`
		} `json:"config"`
	} `json:"cluster"`
	HashConfig struct {
		Algorithm string `json:"algorithm"`
		Modulo    int    `json:"modulo"`
		Format    string `json:"format"`
	} `json:"hash_config"`
}

// checkTopology: 64 partitions, each with a primary and 2 replicas on
// distinct nodes, and each node leading 15 to 28 of them.
func checkTopology(d clusterDoc) error {
	ps := d.Cluster.PartitionMap.Partitions
	if len(ps) != 64 || d.Cluster.Config.PartitionCount != 64 || d.HashConfig.Modulo != 64 || d.HashConfig.Algorithm != "md5" {
		return fmt.Errorf("%d partitions, config %+v, hash %+v", len(ps), d.Cluster.Config, d.HashConfig)
	}
	if len(d.Cluster.Nodes) != 3 {
		return fmt.Errorf("%d nodes", len(d.Cluster.Nodes))
	}
	leads := map[string]int{}
	for name, p := range ps {
		if p.PrimaryNode == "" || len(p.ReplicaNodes) != 2 || slices.Contains(p.ReplicaNodes, p.PrimaryNode) ||
			p.ReplicaNodes[0] == p.ReplicaNodes[1] {
			return fmt.Errorf("%s: primary %q replicas %v", name, p.PrimaryNode, p.ReplicaNodes)
		}
		leads[p.PrimaryNode]++
	}
	for n, c := range leads {
		if c < 15 || c > 28 {
			return fmt.Errorf("%s leads %d partitions (%v)", n, c, leads)
		}
	}
	if len(leads) != 3 {
		return fmt.Errorf("leaders on %d nodes: %v", len(leads), leads)
	}
	return nil
}

func waitTopology(t *testing.T, c *localcluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range c.Nodes() {
		for {
			var d clusterDoc
			err := n.GetJSON(ctx, "/cluster", &d)
			if err == nil {
				err = checkTopology(d)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s /cluster: %v", n.Name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func newClient(t *testing.T, c *localcluster.Cluster) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Endpoints: c.HTTPEndpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return cl
}

func httpDo(t *testing.T, method, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestThreeProcesses starts three kvnode processes with the ClusterKit
// example's variables, then reads and writes through HTTP (any node) and
// the Go client, and checks the topology /cluster publishes.
func TestThreeProcesses(t *testing.T) {
	c := startCluster(t, 3)
	waitTopology(t, c)
	ctx := context.Background()
	nodes := c.Nodes()
	for i, n := range nodes {
		key := fmt.Sprintf("http-%d", i)
		if code, body := httpDo(t, "PUT", "http://"+n.HTTPAddr+"/kv/"+key, []byte("v")); code != 200 {
			t.Fatalf("PUT via %s: %d %s", n.Name, code, body)
		}
		for _, m := range nodes {
			if code, body := httpDo(t, "GET", "http://"+m.HTTPAddr+"/kv/"+key, nil); code != 200 || body != "v" {
				t.Fatalf("GET %s via %s: %d %s", key, m.Name, code, body)
			}
		}
	}
	cl := newClient(t, c)
	if err := cl.Set(ctx, "user:123", []byte("John Doe")); err != nil {
		t.Fatal(err)
	}
	v, err := cl.Get(ctx, "user:123")
	if err != nil || string(v) != "John Doe" {
		t.Fatalf("Get: %q %v", v, err)
	}
	if _, err := cl.Get(ctx, "nobody"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get absent: %v", err)
	}
	it, err := cl.GetItem(ctx, "user:123")
	if err != nil {
		t.Fatal(err)
	}
	ok, _, err := cl.CompareAndSet(ctx, "user:123", it.Version, []byte("Jane"))
	if err != nil || !ok {
		t.Fatalf("CAS: %v %v", ok, err)
	}
	ok, _, err = cl.CompareAndSet(ctx, "user:123", it.Version, []byte("stale"))
	if err != nil || ok {
		t.Fatalf("CAS with a stale version: %v %v", ok, err)
	}
	if err := cl.Delete(ctx, "user:123"); err != nil {
		t.Fatal(err)
	}
	if v, err := cl.Get(ctx, "user:123", client.Stale()); !errors.Is(err, client.ErrNotFound) {
		// A stale read may lag; a linearizable one may not.
		if _, err := cl.Get(ctx, "user:123"); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("after Delete: %q %v", v, err)
		}
	}
	var kvs []client.KV
	var keys []string
	for i := range 200 {
		k := fmt.Sprintf("batch-%d", i)
		kvs = append(kvs, client.KV{Key: k, Value: []byte(k)})
		keys = append(keys, k)
	}
	if _, err := cl.MSet(ctx, kvs); err != nil {
		t.Fatal(err)
	}
	items, err := cl.MGet(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if !it.Found || string(it.Value) != keys[i] {
			t.Fatalf("MGet %s: %+v", keys[i], it)
		}
	}

	// The latency of one quorum write, for the record.
	var lat []time.Duration
	for i := range 200 {
		start := time.Now()
		if err := cl.Set(ctx, fmt.Sprintf("lat-%d", i), bytes.Repeat([]byte("x"), 256)); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("single quorum write through the client, 3 processes: p50 %v, p99 %v", lat[len(lat)/2], lat[len(lat)*99/100])
}

// TestKillNine kills a node with SIGKILL while clients write. Writes and
// linearizable reads keep succeeding after re-election; the restarted
// node rejoins and catches up; no acknowledged write is missing.
func TestKillNine(t *testing.T) {
	c := startCluster(t, 3)
	waitTopology(t, c)
	cl := newClient(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	type ack struct{ key, value string }
	var mu sync.Mutex
	var acks []ack
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("w%d-%d", w, i), fmt.Sprintf("value-%d-%d", w, i)
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := cl.Set(wctx, k, []byte(v))
				wcancel()
				if err == nil {
					mu.Lock()
					acks = append(acks, ack{k, v})
					mu.Unlock()
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	time.Sleep(time.Second)
	victim := c.Node(1)
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	before := count()
	t.Logf("killed %s with SIGKILL after %d acknowledged writes", victim.Name, before)
	time.Sleep(3 * time.Second)
	if after := count(); after <= before+10 {
		t.Fatalf("writes stalled after the kill: %d then %d", before, after)
	}
	// Linearizable reads of what was just written succeed.
	mu.Lock()
	recent := acks[len(acks)-1]
	mu.Unlock()
	if v, err := cl.Get(context.Background(), recent.key); err != nil || string(v) != recent.value {
		t.Fatalf("linearizable read after the kill: %q %v", v, err)
	}
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cancel()
	wg.Wait()
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer rcancel()
	if err := c.WaitReady(rctx); err != nil {
		t.Fatal(err)
	}
	// Every acknowledged write, read linearizably through the client and
	// straight from the restarted node's own replica.
	keys := make([]string, len(acks))
	for i, a := range acks {
		keys[i] = a.key
	}
	for start := 0; start < len(keys); start += 500 {
		end := min(start+500, len(keys))
		items, err := cl.MGet(rctx, keys[start:end])
		if err != nil {
			t.Fatal(err)
		}
		for i, it := range items {
			if a := acks[start+i]; !it.Found || string(it.Value) != a.value {
				t.Fatalf("acknowledged %s=%s reads back %+v", a.key, a.value, it)
			}
		}
	}
	missing := 0
	for _, a := range acks {
		code, body := httpDo(t, "GET", "http://"+victim.HTTPAddr+"/kv/"+a.key+"?consistency=stale", nil)
		if code != 200 || body != a.value {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("the restarted node's replica lacks %d of %d acknowledged writes", missing, len(acks))
	}
	t.Logf("%d acknowledged writes, all present after the kill and on the restarted node", len(acks))
}

// TestBadInput sends what a careless or hostile client might: each gets a
// clear error, nothing is stored, and the node keeps serving.
func TestBadInput(t *testing.T) {
	c := startCluster(t, 3, "MAX_KEY_SIZE=128", "MAX_VALUE_SIZE=4096")
	n := c.Node(0)
	base := "http://" + n.HTTPAddr
	httpCases := []struct {
		name, method, path string
		body               []byte
		code               int
		text               string
	}{
		{"oversized key", "PUT", "/kv/" + strings.Repeat("k", 129), []byte("v"), 413, "max-key-size"},
		{"oversized value", "PUT", "/kv/bigval", bytes.Repeat([]byte("v"), 4097), 413, "max-value-size"},
		{"empty key", "GET", "/kv/get?key=", nil, 400, "empty key"},
		{"empty key via set", "POST", "/kv/set", []byte(`{"key":"","value":"v"}`), 400, "empty key"},
		{"malformed JSON", "POST", "/kv/set", []byte(`{"key":`), 400, "JSON"},
		{"JSON of the wrong shape", "POST", "/kv/set", []byte(`["k","v"]`), 400, "JSON"},
		{"bad version", "PUT", "/kv/x?if_version=-1", []byte("v"), 400, "if_version"},
	}
	for _, tc := range httpCases {
		code, body := httpDo(t, tc.method, base+tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.text) || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s, want %d mentioning %q", tc.name, code, body, tc.code, tc.text)
		}
	}
	if code, _ := httpDo(t, "GET", base+"/kv/bigval", nil); code != 404 {
		t.Errorf("the oversized value was stored: %d", code)
	}

	// The binary protocol: garbage, a truncated frame, an absurd length.
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"garbage after the preamble", []byte("\x00\x00\x00\x03abcgarbage")},
		{"truncated frame", wire.AppendFrame(nil, 1, uint8(wire.OpSet), []byte{0x82, 0xa1})[:10]},
		{"declared 2 GiB", []byte{0x80, 0, 0, 0}},
		{"not the protocol at all", nil},
	} {
		conn, err := net.Dial("tcp", n.KVAddr)
		if err != nil {
			t.Fatal(err)
		}
		if tc.raw != nil {
			conn.Write([]byte(wire.ClientPreamble))
			conn.Write(tc.raw)
		} else {
			conn.Write([]byte("SSH-2.0-OpenSSH\r\n"))
		}
		if tc.name == "truncated frame" {
			conn.(*net.TCPConn).CloseWrite()
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(bufio.NewReader(conn))
		conn.Close()
		if err != nil {
			t.Errorf("%s: the server did not close the connection: %v", tc.name, err)
		}
	}
	// Well-framed requests the node must refuse, on one connection, each
	// answered with its request id, a status and a message; a frame too
	// short to be one gets MalformedFrame (id 0) and the connection ends.
	conn, err := net.Dial("tcp", n.KVAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(wire.ClientPreamble))
	fr := wire.NewFrameReader(bufio.NewReader(conn), 0)
	encode := func(id uint64, op wire.Op, body any) []byte {
		f, err := wire.EncodeFrame(nil, id, uint8(op), body)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	for i, tc := range []struct {
		name   string
		frame  func(id uint64) []byte
		status wire.Status
		text   string
	}{
		{"empty key", func(id uint64) []byte {
			return encode(id, wire.OpSet, &wire.SetRequest{Key: nil, Value: []byte("v")})
		}, wire.StatusBadRequest, "empty key"},
		{"oversized key", func(id uint64) []byte {
			return encode(id, wire.OpSet, &wire.SetRequest{Key: bytes.Repeat([]byte("k"), 129), Value: []byte("v")})
		}, wire.StatusTooLarge, "max-key-size"},
		{"oversized value", func(id uint64) []byte {
			return encode(id, wire.OpSet, &wire.SetRequest{Key: []byte("bigval-kv"), Value: bytes.Repeat([]byte("v"), 4097)})
		}, wire.StatusTooLarge, "max-value-size"},
		{"oversized value in MSet", func(id uint64) []byte {
			return encode(id, wire.OpMSet, &wire.MSetRequest{Items: []wire.MSetItem{
				{Key: []byte("mset-ok"), Value: []byte("v")}, {Key: []byte("mset-big"), Value: bytes.Repeat([]byte("v"), 4097)}}})
		}, wire.StatusTooLarge, "max-value-size"},
		{"unknown op", func(id uint64) []byte { return wire.AppendFrame(nil, id, 200, []byte{0x80}) }, wire.StatusUnknownOp, "200"},
		{"body of the wrong shape", func(id uint64) []byte {
			return wire.AppendFrame(nil, id, uint8(wire.OpSet), []byte{0x92, 0x01, 0x02}) // an array, not a map
		}, wire.StatusBadRequest, ""},
	} {
		id := uint64(100 + i)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(tc.frame(id)); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		f, err := readKVResponse(fr)
		if err != nil {
			t.Fatalf("%s: no answer: %v", tc.name, err)
		}
		var eb wire.ErrorBody
		derr := wire.Decode(f.Body, &eb)
		if f.ID != id || f.Status() != tc.status || derr != nil || eb.Code != tc.status || !strings.Contains(eb.Msg, tc.text) {
			t.Errorf("%s: id %d status %v %+v (%v); want id %d status %v mentioning %q", tc.name, f.ID, f.Status(), eb, derr, id, tc.status, tc.text)
		}
	}
	conn.Write([]byte{0, 0, 0, 1, 0}) // a declared length below the header's
	if f, err := readKVResponse(fr); err != nil || f.Status() != wire.StatusMalformedFrame || f.ID != 0 {
		t.Errorf("short frame: %+v %v, want MalformedFrame with id 0", f, err)
	}
	if _, err := fr.Next(); err == nil {
		t.Errorf("the connection stayed open after MalformedFrame")
	}

	cl := newClient(t, c)
	ctx := context.Background()
	for _, k := range []string{"bigval-kv", "mset-ok", "mset-big"} {
		if _, err := cl.Get(ctx, k); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("%s: stored by a refused request (%v)", k, err)
		}
	}
	if err := cl.Set(ctx, strings.Repeat("k", 129), []byte("v")); !errors.Is(err, client.ErrTooLarge) {
		t.Errorf("client oversized key: %v", err)
	}
	if err := cl.Set(ctx, "", []byte("v")); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("client empty key: %v", err)
	}
	// Still serving.
	if err := cl.Set(ctx, "after", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if code, body := httpDo(t, "GET", base+"/kv/after", nil); code != 200 || body != "ok" {
		t.Fatalf("after bad input: %d %s", code, body)
	}
}

// TestCommandLine: --help documents the variables, a bad configuration
// lists every problem and exits 2, SIGTERM stops a node cleanly (exit 0).
func TestCommandLine(t *testing.T) {
	out, err := exec.Command(binary, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, v := range []string{"NODE_ID", "HTTP_PORT", "KV_PORT", "JOIN_ADDR", "DATA_DIR", "DEAD_NODE_TIMEOUT", "-partitions", "-replication-factor", "-bind-host", "-advertise-host"} {
		if !strings.Contains(string(out), v) {
			t.Errorf("--help does not mention %s", v)
		}
	}
	cmd := exec.Command(binary, "--partitions", "0")
	cmd.Env = append(os.Environ(), "HTTP_PORT=eighty", "JOIN_ADDR=nohost")
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("bad config: exit %v, want 2", err)
	}
	for _, want := range []string{"NODE_ID is required", "$HTTP_PORT", "JOIN_ADDR", "--partitions"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bad config message lacks %q:\n%s", want, out)
		}
	}

	c := startCluster(t, 1)
	code, err := c.Node(0).Stop(20 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit %d %v", code, err)
	}
	logs, _ := os.ReadFile(c.Node(0).LogPath)
	if !strings.Contains(string(logs), "stopped cleanly") {
		t.Fatalf("no clean stop in the log:\n%s", logs)
	}
}
