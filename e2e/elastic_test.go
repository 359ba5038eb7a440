package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"kvnode/client"
	"kvnode/internal/localcluster"
)

// The elastic-cluster tests: nodes join, die, are drained, and the
// cluster balances itself, with every acknowledged write kept.

// layout counts, from /cluster, the replicas each node holds and the
// partitions it leads.
func layout(d clusterDoc) (replicas, leads map[string]int, err error) {
	replicas, leads = map[string]int{}, map[string]int{}
	for name, p := range d.Cluster.PartitionMap.Partitions {
		if p.PrimaryNode == "" {
			return nil, nil, fmt.Errorf("%s has no primary", name)
		}
		leads[p.PrimaryNode]++
		replicas[p.PrimaryNode]++
		for _, r := range p.ReplicaNodes {
			replicas[r]++
		}
	}
	return replicas, leads, nil
}

// balanced checks the bounds: each of the active nodes holds about
// partitions*RF/nodes replicas (±2) and leads about partitions/nodes (±2),
// and nothing is moving.
func balanced(ctx context.Context, n *localcluster.Node, active []string) error {
	var d clusterDoc
	if err := n.GetJSON(ctx, "/cluster", &d); err != nil {
		return err
	}
	replicas, leads, err := layout(d)
	if err != nil {
		return err
	}
	parts, rf := float64(len(d.Cluster.PartitionMap.Partitions)), float64(min(3, len(active)))
	wantRep, wantLead := parts*rf/float64(len(active)), parts/float64(len(active))
	for _, name := range active {
		if r := float64(replicas[name]); r < wantRep-2 || r > wantRep+2 {
			return fmt.Errorf("%s holds %v replicas, want %.1f±2 (%v)", name, r, wantRep, replicas)
		}
		if l := float64(leads[name]); l < wantLead-2 || l > wantLead+2 {
			return fmt.Errorf("%s leads %v partitions, want %.1f±2 (%v)", name, l, wantLead, leads)
		}
	}
	for name := range replicas {
		if !contains(active, name) {
			return fmt.Errorf("%s, not active, still holds %d replicas", name, replicas[name])
		}
	}
	var rb struct {
		Rebalancing bool `json:"rebalancing"`
		Moving      int  `json:"partitions_moving"`
	}
	if err := n.GetJSON(ctx, "/rebalance", &rb); err != nil {
		return err
	}
	if rb.Rebalancing {
		return fmt.Errorf("%d partitions still moving", rb.Moving)
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func waitBalanced(t *testing.T, n *localcluster.Node, active []string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx := context.Background()
	var err error
	for time.Since(start) < timeout {
		if err = balanced(ctx, n, active); err == nil {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("not balanced over %v after %v: %v", active, timeout, err)
	return 0
}

// writer keeps writing unique keys and remembers the acknowledged ones.
type writer struct {
	mu     sync.Mutex
	acks   map[string]string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startWriter(cl *client.Client, prefix string, workers int) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{acks: map[string]string{}, cancel: cancel}
	for i := range workers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := 0; ctx.Err() == nil; j++ {
				k, v := fmt.Sprintf("%s-%d-%d", prefix, i, j), fmt.Sprintf("v%d", j)
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := cl.Set(wctx, k, []byte(v))
				wcancel()
				if err == nil {
					w.mu.Lock()
					w.acks[k] = v
					w.mu.Unlock()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return w
}

func (w *writer) stop() map[string]string {
	w.cancel()
	w.wg.Wait()
	return w.acks
}

// checkAll reads every acknowledged key back, linearizably.
func checkAll(t *testing.T, cl *client.Client, acks map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keys := make([]string, 0, len(acks))
	for k := range acks {
		keys = append(keys, k)
	}
	for start := 0; start < len(keys); start += 500 {
		batch := keys[start:min(start+500, len(keys))]
		items, err := cl.MGet(ctx, batch)
		if err != nil {
			t.Fatalf("reading back: %v", err)
		}
		for i, it := range items {
			if !it.Found || string(it.Value) != acks[batch[i]] {
				t.Fatalf("acknowledged %s=%s reads back %+v", batch[i], acks[batch[i]], it)
			}
		}
	}
	if len(acks) == 0 {
		t.Fatal("nothing was acknowledged")
	}
}

// events collects the recent events of every running node.
func events(t *testing.T, c *localcluster.Cluster) []map[string]any {
	t.Helper()
	var all []map[string]any
	for _, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		resp, err := http.Get("http://" + n.HTTPAddr + "/events?format=json")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var evs []map[string]any
		if err := json.Unmarshal(b, &evs); err != nil {
			t.Fatalf("%s /events: %v", n.Name, err)
		}
		all = append(all, evs...)
	}
	return all
}

// hasEvent reports whether some event has the given type and fields
// (substring match on each).
func hasEvent(evs []map[string]any, typ string, fields map[string]string) bool {
	for _, e := range evs {
		if e["type"] != typ {
			continue
		}
		ok := true
		for k, v := range fields {
			s, _ := e[k].(string)
			if !strings.Contains(s, v) {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func requireEvents(t *testing.T, c *localcluster.Cluster, want []struct {
	typ    string
	fields map[string]string
}) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := events(t, c)
		var missing []string
		for _, w := range want {
			if !hasEvent(evs, w.typ, w.fields) {
				missing = append(missing, fmt.Sprintf("%s%v", w.typ, w.fields))
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events missing: %v", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type ev = struct {
	typ    string
	fields map[string]string
}

// TestJoinFourthNode adds a fourth node to a loaded 3-node cluster: it is
// balanced within bounds, and every key reads back.
func TestJoinFourthNode(t *testing.T) {
	c := startCluster(t, 3)
	waitTopology(t, c)
	cl := newClient(t, c)
	w := startWriter(cl, "join", 4)
	time.Sleep(time.Second)
	ctx := context.Background()
	if _, err := c.AddNode(ctx, true); err != nil {
		t.Fatal(err)
	}
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3", "node-4"}, 2*time.Minute)
	t.Logf("a fourth node was balanced in %v", took)
	acks := w.stop()
	checkAll(t, cl, acks)
	requireEvents(t, c, []ev{
		{"node_join", map[string]string{"node": "node-4"}},
		{"rebalance_start", nil},
		{"rebalance_complete", nil},
		{"partition_change", map[string]string{"to": "node-4"}},
		{"partition_change", map[string]string{"reason": "removed"}},
	})
	t.Logf("%d acknowledged writes during the join, all read back", len(acks))
}

// TestDeadNode kills one node of four with a short dead-node timeout: its
// replicas are re-created on the others, and every key reads back.
func TestDeadNode(t *testing.T) {
	c := startCluster(t, 4, "DEAD_NODE_TIMEOUT=3s")
	waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3", "node-4"}, 2*time.Minute)
	cl := newClient(t, c)
	w := startWriter(cl, "dead", 4)
	time.Sleep(time.Second)
	if err := c.Node(3).Kill(); err != nil {
		t.Fatal(err)
	}
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3"}, 2*time.Minute)
	t.Logf("the dead node's replicas were re-created in %v after the kill", took)
	var d clusterDoc
	c.Node(0).GetJSON(context.Background(), "/cluster", &d)
	for _, n := range d.Cluster.Nodes {
		if n.ID == "node-4" && n.Status != "dead" {
			t.Errorf("node-4's status is %q, want dead", n.Status)
		}
	}
	acks := w.stop()
	checkAll(t, cl, acks)
	requireEvents(t, c, []ev{
		{"node_leave", map[string]string{"node": "node-4", "reason": "dead"}},
		{"rebalance_start", nil},
		{"rebalance_complete", nil},
		{"partition_change", map[string]string{"from": "node-4"}},
	})
}

// TestDrain removes a live node while writes run: its replicas move away
// first, nothing acknowledged is lost, and the drained node may not come
// back with its old data.
func TestDrain(t *testing.T) {
	c := startCluster(t, 4)
	waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3", "node-4"}, 2*time.Minute)
	cl := newClient(t, c)
	w := startWriter(cl, "drain", 4)
	time.Sleep(time.Second)
	code, body := httpDo(t, "POST", "http://"+c.Node(1).HTTPAddr+"/remove?node=node-4", nil)
	if code != http.StatusAccepted {
		t.Fatalf("remove: %d %s", code, body)
	}
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3"}, 2*time.Minute)
	t.Logf("node-4 drained in %v", took)
	acks := w.stop()
	checkAll(t, cl, acks)
	requireEvents(t, c, []ev{
		{"node_leave", map[string]string{"node": "node-4", "reason": "removed"}},
		{"partition_change", map[string]string{"from": "node-4"}},
	})
	// Removing below the replication factor is refused.
	if code, body := httpDo(t, "POST", "http://"+c.Node(0).HTTPAddr+"/remove?node=node-3", nil); code != http.StatusConflict ||
		!strings.Contains(body, "replication factor") {
		t.Fatalf("removing a third of three nodes: %d %s", code, body)
	}
	// The removed node, restarted with its old data, is refused.
	n4 := c.Node(3)
	if _, err := n4.Stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n4.Restart(); err != nil {
		t.Fatal(err)
	}
	code4, err := n4.ExitCode(30 * time.Second)
	if err != nil || code4 == 0 {
		t.Fatalf("the removed node restarted: exit %d %v", code4, err)
	}
	logs, _ := os.ReadFile(n4.LogPath)
	if !strings.Contains(string(logs), "was removed") {
		t.Fatalf("no clear refusal in the removed node's log")
	}
}

// TestBringUp grows a cluster from one node to five, one at a time, with
// writes running; it ends balanced and nothing acknowledged is lost.
func TestBringUp(t *testing.T) {
	c := startCluster(t, 1)
	cl := newClient(t, c)
	w := startWriter(cl, "grow", 4)
	ctx := context.Background()
	names := []string{"node-1"}
	for i := 2; i <= 5; i++ {
		n, err := c.AddNode(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n.Name)
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err = c.WaitReady(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if i == 3 || i == 5 {
			took := waitBalanced(t, c.Node(0), names, 3*time.Minute)
			t.Logf("balanced over %d nodes in %v", i, took)
		}
	}
	acks := w.stop()
	checkAll(t, cl, acks)
	t.Logf("%d acknowledged writes while growing from 1 to 5 nodes, all read back", len(acks))
}
