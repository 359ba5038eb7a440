package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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

// traffic keeps writing unique keys and reading acknowledged ones back
// while the cluster changes, and measures whether both kept working:
// failures, the longest time with no write acknowledged (any worker), the
// longest one worker waited for its next acknowledgement (a partition
// stuck), and the longest time with no read answered.
type traffic struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	acks      map[string]string
	ackKeys   []string // the keys of acks, for readers to sample
	start     time.Time
	lastAck   time.Time
	lastRead  time.Time
	st        trafficStats
	failedMsg []string // the first few failures, for the log
}

type trafficStats struct {
	Writes, WriteFailures int
	Reads, ReadFailures   int
	// WriteStall is the longest time no worker got a write acknowledged;
	// WorkerStall the longest one worker went between acknowledgements;
	// ReadStall the longest time no read was answered.
	WriteStall, WorkerStall, ReadStall time.Duration
	// Wrong lists reads of an acknowledged key that did not return its
	// value: never allowed.
	Wrong []string
}

// startTraffic starts writers workers writing and readers workers reading
// linearizably, through cl.
func startTraffic(cl *client.Client, prefix string, writers, readers int) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	now := time.Now()
	w := &traffic{acks: map[string]string{}, cancel: cancel, start: now, lastAck: now}
	for i := range writers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			lastMine := now
			for j := 0; ctx.Err() == nil; j++ {
				k, v := fmt.Sprintf("%s-%d-%d", prefix, i, j), fmt.Sprintf("v%d", j)
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := cl.Set(wctx, k, []byte(v))
				wcancel()
				at := time.Now()
				w.mu.Lock()
				switch {
				case err == nil:
					w.st.Writes++
					w.acks[k] = v
					w.ackKeys = append(w.ackKeys, k)
					w.st.WriteStall = max(w.st.WriteStall, at.Sub(w.lastAck))
					w.st.WorkerStall = max(w.st.WorkerStall, at.Sub(lastMine))
					w.lastAck, lastMine = at, at
				case ctx.Err() == nil:
					// Not stopping: a write the cluster did not take.
					w.st.WriteFailures++
					w.noteFailure("write %s: %v", k, err)
				}
				w.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	for r := range readers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(now.UnixNano()), uint64(r)))
			for ctx.Err() == nil {
				w.mu.Lock()
				if w.lastRead.IsZero() && len(w.ackKeys) > 0 {
					w.lastRead = time.Now() // the read clock starts with the first key to read
				}
				var k, want string
				if len(w.ackKeys) > 0 {
					k = w.ackKeys[rng.IntN(len(w.ackKeys))]
					want = w.acks[k]
				}
				w.mu.Unlock()
				if k == "" {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				got, err := cl.Get(rctx, k)
				rcancel()
				at := time.Now()
				w.mu.Lock()
				switch {
				case err == nil && string(got) != want:
					w.st.Wrong = append(w.st.Wrong, fmt.Sprintf("%s=%q, acknowledged %q", k, got, want))
				case err == nil:
					w.st.Reads++
					w.st.ReadStall = max(w.st.ReadStall, at.Sub(w.lastRead))
					w.lastRead = at
				case errors.Is(err, client.ErrNotFound):
					w.st.Wrong = append(w.st.Wrong, fmt.Sprintf("%s not found, acknowledged %q", k, want))
				case ctx.Err() == nil:
					w.st.ReadFailures++
					w.noteFailure("read %s: %v", k, err)
				}
				w.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return w
}

// noteFailure keeps the first few failures for the log. w.mu is held.
func (w *traffic) noteFailure(format string, args ...any) {
	if len(w.failedMsg) < 5 {
		w.failedMsg = append(w.failedMsg, fmt.Sprintf("%v: ", time.Since(w.start).Round(time.Millisecond))+fmt.Sprintf(format, args...))
	}
}

// stop ends the traffic and returns the acknowledged writes and the
// figures. A stall still under way when it stops counts too.
func (w *traffic) stop(t *testing.T) (map[string]string, trafficStats) {
	t.Helper()
	w.cancel()
	w.wg.Wait()
	end := time.Now()
	st := w.st
	st.WriteStall = max(st.WriteStall, end.Sub(w.lastAck))
	if !w.lastRead.IsZero() {
		st.ReadStall = max(st.ReadStall, end.Sub(w.lastRead))
	}
	t.Logf("traffic: %d writes acknowledged, %d failed; %d reads, %d failed; longest stall: writes %v, one writer %v, reads %v",
		st.Writes, st.WriteFailures, st.Reads, st.ReadFailures,
		st.WriteStall.Round(time.Millisecond), st.WorkerStall.Round(time.Millisecond), st.ReadStall.Round(time.Millisecond))
	if len(w.failedMsg) > 0 {
		t.Logf("first failures: %v", w.failedMsg)
	}
	return w.acks, st
}

// requireFlowing asserts that writes and reads kept working: no read of
// an acknowledged key returned anything else, at most maxFailures
// operations failed, and neither writes nor reads stalled longer than
// maxStall.
func requireFlowing(t *testing.T, st trafficStats, maxStall time.Duration, maxFailures int) {
	t.Helper()
	if len(st.Wrong) > 0 {
		t.Fatalf("%d reads of acknowledged keys returned something else, first: %s", len(st.Wrong), st.Wrong[0])
	}
	if st.Writes == 0 || st.Reads == 0 {
		t.Fatalf("%d writes, %d reads succeeded", st.Writes, st.Reads)
	}
	// The client retries what it can within the 5s operation deadline; a
	// failure is an operation stuck that long, or a write whose outcome
	// is unknown because its node died under it.
	if st.WriteFailures+st.ReadFailures > maxFailures {
		t.Errorf("%d writes and %d reads failed, of %d and %d", st.WriteFailures, st.ReadFailures, st.Writes, st.Reads)
	}
	for _, s := range []struct {
		what string
		d    time.Duration
	}{{"writes", st.WriteStall}, {"one writer", st.WorkerStall}, {"reads", st.ReadStall}} {
		if s.d > maxStall {
			t.Errorf("%s stalled for %v, more than %v", s.what, s.d, maxStall)
		}
	}
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

var eventsClient = &http.Client{Timeout: 2 * time.Second}

// events collects the recent events of every running node.
func events(t *testing.T, c *localcluster.Cluster) []map[string]any {
	t.Helper()
	var all []map[string]any
	for _, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		// A paused node (SIGSTOP) accepts the connection and never
		// answers: bound the wait.
		resp, err := eventsClient.Get("http://" + n.HTTPAddr + "/events?format=json")
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

// findEvent returns an event with the given type and fields (substring
// match on each) that happened after after, or nil.
func findEvent(evs []map[string]any, typ string, fields map[string]string, after time.Time) map[string]any {
	for _, e := range evs {
		if e["type"] != typ || !eventTime(e).After(after) {
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
			return e
		}
	}
	return nil
}

func eventTime(e map[string]any) time.Time {
	s, _ := e["time"].(string)
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func hasEvent(evs []map[string]any, typ string, fields map[string]string) bool {
	return findEvent(evs, typ, fields, time.Time{}) != nil
}

// waitEvent waits up to timeout for an event after after, and returns it.
func waitEvent(t *testing.T, c *localcluster.Cluster, timeout time.Duration, after time.Time, typ string,
	fields map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if e := findEvent(events(t, c), typ, fields, after); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s%v event after %v within %v", typ, fields, after.Format(time.StampMilli), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func requireEvents(t *testing.T, c *localcluster.Cluster, want []ev) {
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

// The longest that writes or reads may stall while the cluster grows,
// drains or replaces a node. Measured on a shared 2-core machine: a join,
// drain or bring-up stalled no write for more than 0.1s, one writer for
// 0.2s and reads for 0.1s (0.7s and 0.5s with two busy loops competing
// for the cores); a SIGKILLed node's partitions wait for an election,
// 0.3-0.5s. The limits leave several times that for a loaded machine,
// and still catch a partition unavailable for seconds: far under the
// tests' own deadlines (minutes) and the client's 5s operation timeout.
const (
	maxStall     = 3 * time.Second
	maxKillStall = 4 * time.Second
)

// TestJoinFourthNode adds a fourth node to a loaded 3-node cluster: it is
// balanced within bounds, writes and reads keep working throughout, and
// every key reads back.
func TestJoinFourthNode(t *testing.T) {
	c := startCluster(t, 3)
	waitTopology(t, c)
	cl := newClient(t, c)
	w := startTraffic(cl, "join", 4, 2)
	time.Sleep(time.Second)
	ctx := context.Background()
	if _, err := c.AddNode(ctx, true); err != nil {
		t.Fatal(err)
	}
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3", "node-4"}, 2*time.Minute)
	t.Logf("a fourth node was balanced in %v", took)
	acks, st := w.stop(t)
	requireFlowing(t, st, maxStall, 0)
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

type clusterNode struct {
	Status string `json:"status"`
	RaftID uint64 `json:"raft_id"`
}

// clusterNodes lists /cluster's nodes by name.
func clusterNodes(t *testing.T, n *localcluster.Node) map[string]clusterNode {
	t.Helper()
	var d struct {
		Cluster struct {
			Nodes []struct {
				ID string `json:"id"`
				clusterNode
			} `json:"nodes"`
		} `json:"cluster"`
	}
	if err := n.GetJSON(context.Background(), "/cluster", &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]clusterNode{}
	for _, nd := range d.Cluster.Nodes {
		out[nd.ID] = nd.clusterNode
	}
	return out
}

// TestDeadNode kills one node of four with a short dead-node timeout: its
// replicas are re-created on the others and the meta leader reports the
// cluster degraded, then healthy. The dead node is then forgotten (POST
// /remove) and started again with an empty data dir: it joins as a new
// member and the cluster balances over four nodes again. Writes and reads
// run throughout, and every acknowledged key reads back.
func TestDeadNode(t *testing.T) {
	c := startCluster(t, 4, "DEAD_NODE_TIMEOUT=3s")
	four := []string{"node-1", "node-2", "node-3", "node-4"}
	waitBalanced(t, c.Node(0), four, 2*time.Minute)
	oldID := clusterNodes(t, c.Node(0))["node-4"].RaftID
	cl := newClient(t, c)
	w := startTraffic(cl, "dead", 4, 2)
	time.Sleep(time.Second)
	n4 := c.Node(3)
	if err := n4.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3"}, 2*time.Minute)
	t.Logf("the dead node's replicas were re-created in %v after the kill", took)
	if st := clusterNodes(t, c.Node(0))["node-4"].Status; st != "dead" {
		t.Errorf("node-4's status is %q, want dead", st)
	}
	requireEvents(t, c, []ev{
		{"node_leave", map[string]string{"node": "node-4", "reason": "dead"}},
		{"rebalance_start", nil},
		{"rebalance_complete", nil},
		{"partition_change", map[string]string{"from": "node-4"}},
	})
	// The meta leader saw the cluster degraded by node-4's loss, and
	// healthy again once its replicas were re-created.
	degraded := waitEvent(t, c, 10*time.Second, killed, "cluster_health_change",
		map[string]string{"health": "degraded", "message": "node-4"})
	healthy := waitEvent(t, c, 10*time.Second, eventTime(degraded), "cluster_health_change",
		map[string]string{"health": "healthy"})
	t.Logf("cluster degraded %v after the kill (%s), healthy %v later", eventTime(degraded).Sub(killed).Round(time.Millisecond),
		degraded["message"], eventTime(healthy).Sub(eventTime(degraded)).Round(time.Millisecond))

	// Forget the dead node: it leaves /cluster and its node_leave says so.
	if code, body := httpDo(t, "POST", "http://"+c.Node(1).HTTPAddr+"/remove?node=node-4", nil); code != http.StatusAccepted {
		t.Fatalf("removing the dead node-4: %d %s", code, body)
	}
	removed := time.Now()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, ok := clusterNodes(t, c.Node(0))["node-4"]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-4 still in /cluster after its removal")
		}
	}
	requireEvents(t, c, []ev{{"node_leave", map[string]string{"node": "node-4", "reason": "removed"}}})

	// Started fresh, it joins again as a new member, and the cluster
	// balances over four nodes.
	if err := os.RemoveAll(n4.DataDir); err != nil {
		t.Fatal(err)
	}
	if err := n4.Restart(); err != nil {
		t.Fatal(err)
	}
	took = waitBalanced(t, c.Node(0), four, 2*time.Minute)
	t.Logf("node-4, started fresh, joined and the cluster balanced in %v", took)
	nd, ok := clusterNodes(t, c.Node(0))["node-4"]
	if !ok || nd.Status != "alive" || nd.RaftID == oldID {
		t.Fatalf("node-4 after joining fresh: %+v (its old raft id %d)", nd, oldID)
	}
	waitEvent(t, c, 10*time.Second, removed, "node_join",
		map[string]string{"node": "node-4", "message": fmt.Sprintf("raft id %d", nd.RaftID)})

	acks, st := w.stop(t)
	// The kill stalls what node-4 led until the others elect new leaders,
	// and cuts the requests it was serving: at most one per worker.
	requireFlowing(t, st, maxKillStall, 6)
	checkAll(t, cl, acks)
}

// TestDeadNodeAnswersAgain pauses a node (SIGSTOP) past the dead-node
// timeout: it is declared dead and its replicas are re-created on the
// others. Resumed, it answers again without restarting, so it sends no
// join request: the meta leader must bring it back itself (node_rejoin),
// and the cluster balances over four nodes again. Left dead, it would hold
// nothing for good. Nothing acknowledged meanwhile is lost.
func TestDeadNodeAnswersAgain(t *testing.T) {
	c := startCluster(t, 4, "DEAD_NODE_TIMEOUT=3s")
	four := []string{"node-1", "node-2", "node-3", "node-4"}
	waitBalanced(t, c.Node(0), four, 2*time.Minute)
	cl := newClient(t, c)
	w := startTraffic(cl, "pause", 4, 2)
	time.Sleep(time.Second)
	n4 := c.Node(3)
	if err := n4.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3"}, 2*time.Minute)
	waitEvent(t, c, 10*time.Second, paused, "node_leave", map[string]string{"node": "node-4", "reason": "dead"})
	if err := n4.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	took := waitBalanced(t, c.Node(0), four, 2*time.Minute)
	t.Logf("paused %v; after SIGCONT node-4 came back and the cluster balanced over four in %v",
		resumed.Sub(paused).Round(time.Millisecond), took)
	waitEvent(t, c, 10*time.Second, resumed, "node_rejoin", map[string]string{"node": "node-4", "message": "without restarting"})
	if st := clusterNodes(t, c.Node(0))["node-4"].Status; st != "alive" {
		t.Errorf("node-4's status is %q, want alive", st)
	}
	acks, st := w.stop(t)
	// Requests node-4 held when it stopped, and those sent to it before
	// the client learned of new leaders, wait out their 5s deadline.
	if len(st.Wrong) > 0 {
		t.Fatalf("%d reads of acknowledged keys returned something else, first: %s", len(st.Wrong), st.Wrong[0])
	}
	checkAll(t, cl, acks)
}

// TestDrain removes a live node while writes run: its replicas move away
// first, writes and reads keep working, nothing acknowledged is lost, and
// the drained node may not come back with its old data.
func TestDrain(t *testing.T) {
	c := startCluster(t, 4)
	waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3", "node-4"}, 2*time.Minute)
	cl := newClient(t, c)
	w := startTraffic(cl, "drain", 4, 2)
	time.Sleep(time.Second)
	removed := time.Now()
	code, body := httpDo(t, "POST", "http://"+c.Node(1).HTTPAddr+"/remove?node=node-4", nil)
	if code != http.StatusAccepted {
		t.Fatalf("remove: %d %s", code, body)
	}
	took := waitBalanced(t, c.Node(0), []string{"node-1", "node-2", "node-3"}, 2*time.Minute)
	t.Logf("node-4 drained in %v", took)
	acks, st := w.stop(t)
	requireFlowing(t, st, maxStall, 0)
	checkAll(t, cl, acks)
	requireEvents(t, c, []ev{
		{"node_leave", map[string]string{"node": "node-4", "reason": "removed"}},
		{"partition_change", map[string]string{"from": "node-4"}},
	})
	// The drain is one rebalance, started and completed after the removal.
	start := waitEvent(t, c, 10*time.Second, removed, "rebalance_start", nil)
	waitEvent(t, c, 10*time.Second, eventTime(start), "rebalance_complete", nil)
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
	w := startTraffic(cl, "grow", 4, 2)
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
	acks, st := w.stop(t)
	requireFlowing(t, st, maxStall, 0)
	checkAll(t, cl, acks)
	requireEvents(t, c, []ev{
		{"node_join", map[string]string{"node": "node-1", "message": "bootstrapped"}},
		{"node_join", map[string]string{"node": "node-2"}},
		{"node_join", map[string]string{"node": "node-3"}},
		{"node_join", map[string]string{"node": "node-4"}},
		{"node_join", map[string]string{"node": "node-5"}},
		{"rebalance_start", nil},
		{"rebalance_complete", nil},
		{"partition_change", map[string]string{"to": "node-5"}},
		{"partition_change", map[string]string{"reason": "removed"}},
	})
	t.Logf("%d acknowledged writes while growing from 1 to 5 nodes, all read back", len(acks))
}
