package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"kvnode/engine"
	"kvnode/wal"
)

type ack struct {
	group, version uint64
	key, value     string
}

// writeLoad runs writers that put unique keys into random groups until ctx
// ends, and returns every acknowledged write.
func writeLoad(ctx context.Context, c *testCluster, writers int, prefix string) []ack {
	var mu sync.Mutex
	var acks []ack
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				g := c.groups[(w*7+i)%len(c.groups)]
				k, v := fmt.Sprintf("%s-w%d-%d", prefix, w, i), fmt.Sprintf("v%d-%d", w, i)
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				ver, err := c.put(pctx, g, k, v)
				cancel()
				if err == nil {
					mu.Lock()
					acks = append(acks, ack{g, ver, k, v})
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return acks
}

// checkReadable reads every acknowledged write back, linearizably, from
// the given node.
func checkReadable(t *testing.T, c *testCluster, nd *testNode, acks []ack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, a := range acks {
		var v []byte
		var ver uint64
		var err error
		for {
			v, ver, err = nd.h().Get(ctx, a.group, []byte(a.key), false)
			if !errors.Is(err, ErrReadDropped) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil || string(v) != a.value || ver != a.version {
			t.Fatalf("node %d: acknowledged %s=%s@%d in group %d reads back %q@%d (%v)",
				nd.id, a.key, a.value, a.version, a.group, v, ver, err)
		}
	}
}

// TestQuorumDurability is P1: a 3-node, 64-group cluster takes writes in
// every group; after the nodes stop, every acknowledged write is in the
// WAL of at least two nodes, at the index it was acknowledged with.
func TestQuorumDurability(t *testing.T) {
	c := newTestCluster(t, 3, 64, func(cfg *Config) { cfg.CompactThreshold = 1 << 40 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var acks []ack
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, g := range c.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				k, v := fmt.Sprintf("g%d-k%d", g, i), fmt.Sprintf("value-%d-%d", g, i)
				ver, err := c.put(ctx, g, k, v)
				if err != nil {
					t.Errorf("group %d: %v", g, err)
					return
				}
				mu.Lock()
				acks = append(acks, ack{g, ver, k, v})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	c.stopAll()
	copies := make(map[ack]int)
	for _, nd := range c.nodes {
		w, err := wal.Open(filepath.Join(nd.dir, "wal"), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range acks {
			st, err := w.Storage(a.group)
			if err != nil {
				t.Fatal(err)
			}
			ents, err := st.Entries(a.version, a.version+1, 1<<30)
			if err != nil || len(ents) != 1 {
				continue
			}
			_, ops, err := decodeCommand(ents[0].GetData(), nil)
			if err == nil && len(ops) == 1 && string(ops[0].Key) == a.key && string(ops[0].Value) == a.value {
				copies[a]++
			}
		}
		w.Close()
	}
	for _, a := range acks {
		if copies[a] < 2 {
			t.Errorf("acknowledged write %s in group %d at index %d is in %d WALs, want >= 2", a.key, a.group, a.version, copies[a])
		}
	}
	t.Logf("%d acknowledged writes over %d groups, each found in >= 2 WALs", len(acks), len(c.groups))
}

// TestLeaderFailure stops the node leading the most groups while writes
// run: every group gets a new leader within a few election timeouts, and
// no acknowledged write is lost.
func TestLeaderFailure(t *testing.T) {
	c := newTestCluster(t, 3, 64, nil)
	counts := map[uint64]int{}
	for _, g := range c.groups {
		counts[c.leader(g, 5*time.Second).id]++
	}
	var victim uint64
	for id, n := range counts {
		if victim == 0 || n > counts[victim] {
			victim = id
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var acks []ack
	done := make(chan struct{})
	go func() { acks = writeLoad(ctx, c, 16, "lf"); close(done) }()
	time.Sleep(300 * time.Millisecond)

	t.Logf("stopping node %d, leader of %d groups", victim, counts[victim])
	c.stop(c.node(victim))
	start := time.Now()
	electionTimeout := 10 * 10 * time.Millisecond // fastConfig: 10 ticks of 10ms
	for _, g := range c.groups {
		c.leader(g, 10*electionTimeout)
	}
	elapsed := time.Since(start)
	t.Logf("every group had a leader %v after the stop (%.1f election timeouts)", elapsed, float64(elapsed)/float64(electionTimeout))
	if elapsed > 6*electionTimeout {
		t.Errorf("re-election took %v, more than 6 election timeouts", elapsed)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-done
	if len(acks) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for id, nd := range c.nodes {
		if id != victim {
			checkReadable(t, c, nd, acks)
		}
	}
	// The stopped node comes back and catches up from the log.
	c.start(c.node(victim))
	checkReadable(t, c, c.node(victim), acks)
	t.Logf("%d acknowledged writes, all readable on every node", len(acks))
}

// TestNetworkPartition cuts a node off at the transport: the minority side
// acknowledges nothing, the majority carries on, and after healing every
// node converges.
func TestNetworkPartition(t *testing.T) {
	c := newTestCluster(t, 3, 8, nil)
	// Make node 1 lead group 1, then cut it off.
	g := uint64(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ld := c.leader(g, 5*time.Second)
	if ld.id != 1 {
		if err := ld.h().TransferLeadership(ctx, g, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.put(ctx, g, "before", "1"); err != nil {
		t.Fatal(err)
	}
	c.isolate(1)
	n1 := c.node(1)

	// The minority: a proposal on the cut-off leader is never acknowledged.
	pctx, pcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err := n1.h().Propose(pctx, g, []engine.Op{{Kind: engine.OpPut, Key: []byte("minority"), Value: []byte("x")}})
	pcancel()
	if err == nil {
		t.Fatal("the isolated node acknowledged a write")
	}
	t.Logf("isolated node's write: %v", err)
	// It steps down (CheckQuorum) instead of claiming leadership forever.
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, _ := n1.h().Status(g)
		if !st.IsLeader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("isolated leader did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The majority carries on.
	var acks []ack
	for i := range 20 {
		for _, grp := range c.groups {
			k := fmt.Sprintf("maj-%d", i)
			var ver uint64
			for {
				ld := c.leader(grp, 5*time.Second)
				if ld.id == 1 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				var res []engine.Result
				res, err = ld.h().Propose(ctx, grp, []engine.Op{{Kind: engine.OpPut, Key: []byte(k), Value: []byte("m")}})
				if err == nil {
					ver = res[0].Version
					acks = append(acks, ack{grp, ver, k, "m"})
					break
				}
				if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrProposalDropped) {
					t.Fatal(err)
				}
			}
			_ = ver
		}
	}
	// The minority's linearizable reads fail rather than return stale data.
	rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, _, err = n1.h().Get(rctx, g, []byte("maj-0"), false)
	rcancel()
	if err == nil {
		t.Fatal("the isolated node served a linearizable read")
	}

	c.heal(1)
	for _, grp := range c.groups {
		var last uint64
		for _, a := range acks {
			if a.group == grp && a.version > last {
				last = a.version
			}
		}
		c.waitApplied(grp, last, 10*time.Second)
	}
	checkReadable(t, c, n1, acks)
	if _, _, err := n1.h().Get(ctx, g, []byte("minority"), false); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the write the isolated node never acknowledged: %v, want ErrNotFound", err)
	}
}

// TestFollowerRestart crashes a follower while writes continue. It catches
// up from the log; and, once the leader has compacted past it, from a
// snapshot.
func TestFollowerRestart(t *testing.T) {
	for _, tt := range []struct {
		name     string
		compact  bool
		wantSnap bool
	}{
		{"from the log", false, false},
		{"from a snapshot", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCluster(t, 3, 4, func(cfg *Config) {
				if tt.compact {
					cfg.CompactThreshold = 50
					cfg.LogRetainEntries = 10
					cfg.EngineSyncInterval = 20 * time.Millisecond
				} else {
					cfg.CompactThreshold = 1 << 40
				}
			})
			var follower *testNode
			for _, nd := range c.nodes {
				isLeader := false
				for _, g := range c.groups {
					if c.leader(g, 5*time.Second) == nd {
						isLeader = true
					}
				}
				if !isLeader {
					follower = nd
					break
				}
			}
			if follower == nil {
				// Every node leads something; any will do.
				follower = c.node(3)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var acks []ack
			done := make(chan struct{})
			go func() { acks = writeLoad(ctx, c, 8, "fr"); close(done) }()
			time.Sleep(200 * time.Millisecond)
			c.stop(follower)
			time.Sleep(800 * time.Millisecond)
			snapsBefore := snapshotsInstalled(follower)
			c.start(follower)
			time.Sleep(500 * time.Millisecond)
			cancel()
			<-done
			checkReadable(t, c, follower, acks)
			// Stale reads on the follower see the data too, once applied.
			for _, g := range c.groups {
				var last uint64
				for _, a := range acks {
					if a.group == g && a.version > last {
						last = a.version
					}
				}
				c.waitApplied(g, last, 10*time.Second)
			}
			for _, a := range acks {
				v, _, err := follower.h().Get(context.Background(), a.group, []byte(a.key), true)
				if err != nil || !bytes.Equal(v, []byte(a.value)) {
					t.Fatalf("stale read of %s on the restarted follower: %q %v", a.key, v, err)
				}
			}
			snaps := snapshotsInstalled(follower) - snapsBefore
			t.Logf("%d acknowledged writes; follower installed %d snapshots", len(acks), snaps)
			if tt.wantSnap && snaps == 0 {
				t.Fatal("the follower caught up without a snapshot although the log was compacted")
			}
			if !tt.wantSnap && snaps != 0 {
				t.Fatalf("the follower needed %d snapshots although the log was kept", snaps)
			}
		})
	}
}

func snapshotsInstalled(nd *testNode) uint64 {
	h := nd.h()
	if h == nil {
		return 0
	}
	return h.Metrics().SnapshotsInstalled
}

// TestMembership adds a learner on a fourth node (it catches up through a
// snapshot), promotes it, removes an original voter, destroys that replica
// and transfers leadership to the new node.
func TestMembership(t *testing.T) {
	c := newTestCluster(t, 3, 1, nil)
	g := uint64(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var acks []ack
	for i := range 50 {
		k := fmt.Sprintf("m%d", i)
		ver, err := c.put(ctx, g, k, "v")
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, ack{g, ver, k, "v"})
	}
	n4 := &testNode{c: c, id: 4, dir: filepath.Join(t.TempDir(), "n4")}
	c.nodes[4] = n4
	c.start(n4)
	if err := n4.h().AddReplica(ctx, g); err != nil {
		t.Fatal(err)
	}
	ld := c.leader(g, 5*time.Second)
	if err := ld.h().AddLearner(ctx, g, 4); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(g, acks[len(acks)-1].version, 10*time.Second)
	if st, _ := n4.h().Status(g); len(st.Learners) != 1 || st.Learners[0] != 4 {
		t.Fatalf("learner's own view of the configuration: %+v", st)
	}
	if snapshotsInstalled(n4) == 0 {
		t.Fatal("the new learner did not catch up through a snapshot")
	}
	ld = c.leader(g, 5*time.Second)
	if err := ld.h().PromoteVoter(ctx, g, 4); err != nil {
		t.Fatal(err)
	}
	// (A second change while one is in flight is refused, not lost:
	// TestConfChangeInFlight.)
	victim := uint64(1)
	if ld.id == victim {
		victim = 2
	}
	if err := ld.h().RemoveReplica(ctx, g, victim); err != nil {
		t.Fatal(err)
	}
	st, _ := ld.h().Status(g)
	if len(st.Voters) != 3 {
		t.Fatalf("voters after promote and remove: %v", st.Voters)
	}
	if err := c.node(victim).h().DestroyReplica(ctx, g); err != nil {
		t.Fatal(err)
	}
	if err := ld.h().TransferLeadership(ctx, g, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := c.put(ctx, g, "after", "x"); err != nil {
		t.Fatal(err)
	}
	checkReadable(t, c, n4, acks)
	if _, err := c.node(victim).h().Status(g); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("destroyed replica still present: %v", err)
	}
	_ = raftpb.ConfChangeType_ConfChangeAddNode
}
