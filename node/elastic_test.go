package node

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// add starts one more node, joining through node-1.
func (c *testCluster) add(adjust func(*Config)) int {
	c.t.Helper()
	cfg := testConfig(c.t, c.dir, fmt.Sprintf("node-%d", len(c.nodes)+1))
	cfg.JoinAddr = c.nodes[0].HTTPAddr()
	if adjust != nil {
		adjust(&cfg)
	}
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, c.open(cfg))
	return len(c.nodes) - 1
}

// allEvents gathers the recent events of every running node.
func (c *testCluster) allEvents() []Event {
	var evs []Event
	for _, n := range c.nodes {
		if n != nil && !n.closed {
			evs = append(evs, n.Events()...)
		}
	}
	return evs
}

// waitEvent waits for an event of any running node that match accepts.
func (c *testCluster) waitEvent(what string, timeout time.Duration, match func(Event) bool) Event {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range c.allEvents() {
			if match(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no %s event after %v; events: %+v", what, timeout, c.allEvents())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clusterWithRebalance is the part of /cluster these tests read.
type clusterWithRebalance struct {
	Cluster struct {
		PartitionMap struct {
			Partitions map[string]struct {
				PrimaryNode  string   `json:"primary_node"`
				ReplicaNodes []string `json:"replica_nodes"`
				LearnerNodes []string `json:"learner_nodes"`
			} `json:"partitions"`
		} `json:"partition_map"`
	} `json:"cluster"`
	Rebalance rebalanceStatus `json:"rebalance"`
}

// TestClusterShowsRebalance grows a loaded one-node cluster to two nodes
// and follows the move in GET /cluster: its rebalance object lists the
// partitions moving toward the new node while they move, then nothing
// moving and the snapshot bytes that were streamed, as GET /rebalance does.
func TestClusterShowsRebalance(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	// Random values: snapshots stream compressed, and the byte count
	// below must not depend on how well repeated bytes compress.
	rng := rand.New(rand.NewPCG(1, 2))
	value := make([]byte, 8<<10)
	for i := range 200 {
		for j := range value {
			value[j] = byte(rng.Uint32())
		}
		if code, _, body := c.do(0, "PUT", fmt.Sprintf("/kv/key-%d", i), string(value)); code != 200 {
			t.Fatalf("PUT: %d %s", code, body)
		}
	}
	c.add(nil)
	var sawMoving, sawLearner int
	var last clusterWithRebalance
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, body := c.do(0, "GET", "/cluster", "")
		if code != 200 {
			t.Fatalf("/cluster: %d %s", code, body)
		}
		var d clusterWithRebalance
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatal(err)
		}
		rb := d.Rebalance
		if rb.Rebalancing != (rb.PartitionsMoving > 0) || rb.PartitionsMoving != len(rb.Moves) {
			t.Fatalf("inconsistent rebalance object: %+v", rb)
		}
		if rb.Rebalancing {
			sawMoving++
			for _, mv := range rb.Moves {
				if mv.Partition != "meta" && !slices.Contains(mv.Desired, "node-2") {
					t.Fatalf("%s moves to %v, not to the new node-2", mv.Partition, mv.Desired)
				}
			}
		}
		for name, p := range d.Cluster.PartitionMap.Partitions {
			for _, l := range p.LearnerNodes {
				if l != "node-2" {
					t.Fatalf("%s has a learner on %s; only node-2 is joining", name, l)
				}
				sawLearner++
			}
		}
		done := !rb.Rebalancing
		for _, p := range d.Cluster.PartitionMap.Partitions {
			if len(p.ReplicaNodes) != 1 || len(p.LearnerNodes) != 0 {
				done = false
			}
		}
		if done && sawMoving > 0 {
			last = d
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled on two nodes after 30s (saw it moving %d times): %s", sawMoving, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if last.Rebalance.SnapshotBytesSent < 1<<20 || last.Rebalance.SnapshotsSent < 16 {
		t.Fatalf("after moving 1.6 MB into 16 partitions, /cluster says %d snapshots, %d bytes sent",
			last.Rebalance.SnapshotsSent, last.Rebalance.SnapshotBytesSent)
	}
	// Each partition's new replica is a learner until its snapshot is in:
	// long enough, at a 5ms poll, to be seen.
	if sawLearner == 0 {
		t.Error("/cluster never showed a partition's learner on node-2")
	}
	var rb rebalanceStatus
	code, _, body := c.do(0, "GET", "/rebalance", "")
	if err := json.Unmarshal([]byte(body), &rb); code != 200 || err != nil {
		t.Fatalf("/rebalance: %d %s", code, body)
	}
	if rb.Rebalancing || rb.SnapshotBytesSent < last.Rebalance.SnapshotBytesSent {
		t.Fatalf("/rebalance %+v disagrees with /cluster's %+v", rb, last.Rebalance)
	}
	t.Logf("/cluster showed the move %d times, learners %d times; %d snapshots, %d bytes",
		sawMoving, sawLearner, rb.SnapshotsSent, rb.SnapshotBytesSent)
}

// TestClusterHealth stops one node of three: the meta leader reports the
// cluster degraded (the node unreachable, its partitions short of a
// replica), and healthy again once it is back; its return is a node_rejoin
// event saying how long it was away.
func TestClusterHealth(t *testing.T) {
	// A long dead-node timeout: this is a restart, not a replacement.
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.DeadNodeTimeout = time.Minute })
	c.stop(2)
	stopped := time.Now()
	degraded := c.waitEvent("degraded", 20*time.Second, func(e Event) bool {
		return e.Type == EventClusterHealthChange && e.Health == "degraded"
	})
	for _, want := range []string{"unreachable: node-3", "under-replicated", "lost on node-3"} {
		if !strings.Contains(degraded.Message, want) {
			t.Errorf("degraded event %q does not say %q", degraded.Message, want)
		}
	}
	restarted := time.Now()
	c.restart(2)
	c.waitReady(30 * time.Second)
	c.waitEvent("healthy", 20*time.Second, func(e Event) bool {
		return e.Type == EventClusterHealthChange && e.Health == "healthy" && e.Time.After(degraded.Time)
	})
	rejoin := c.waitEvent("node_rejoin", 10*time.Second, func(e Event) bool {
		return e.Type == EventNodeRejoin && e.Node == "node-3"
	})
	seen := time.Now()
	offline, err := time.ParseDuration(rejoin.Offline)
	if err != nil {
		t.Fatalf("node_rejoin %+v: offline: %v", rejoin, err)
	}
	// It answered last before stop returned, and rejoined after restart
	// began; the poll period and the rejoin's own latency bound the rest.
	if lo, hi := restarted.Sub(stopped), seen.Sub(stopped)+5*time.Second; offline < lo || offline > hi {
		t.Fatalf("node_rejoin says offline %v, want between %v and %v", offline, lo, hi)
	}
	if !strings.Contains(rejoin.Message, "restarted") {
		t.Errorf("node_rejoin message %q", rejoin.Message)
	}
	n := 0
	for _, e := range c.allEvents() {
		if e.Type == EventNodeRejoin && e.Node == "node-3" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("one restart announced %d times", n)
	}
	t.Logf("degraded: %s; node-3 offline %v", degraded.Message, offline)
}
