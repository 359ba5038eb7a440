package replication

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// TestProposeErrors: each way a proposal can fail reports the error the
// API promises.
func TestProposeErrors(t *testing.T) {
	const g = 1
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		// Slow elections, so that an isolated leader keeps leading (and
		// a follower keeps its leader) for the length of the test.
		cfg.ElectionTicks = 50
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.put(ctx, g, "warm", "up"); err != nil {
		t.Fatal(err)
	}
	ld := c.leader(g, 5*time.Second)
	f := c.others(ld.id)[0]

	t.Run("on a follower: ErrNotLeader naming the leader", func(t *testing.T) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if l, _ := f.h().Leader(g); l == ld.id {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("follower %d never learned leader %d", f.id, ld.id)
			}
			time.Sleep(5 * time.Millisecond)
		}
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"Propose", func() error { _, err := f.h().Propose(ctx, g, putOp("k", "v")); return err }},
			{"ProposeConfChange", func() error { return f.h().AddLearner(ctx, g, 9) }},
		} {
			err := tc.call()
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("%s on follower %d: %v, want ErrNotLeader", tc.name, f.id, err)
			}
			if hint, ok := LeaderHint(err); !ok || hint != ld.id {
				t.Fatalf("%s on follower %d: leader hint %d (%v), want %d", tc.name, f.id, hint, ok, ld.id)
			}
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		if _, err := ld.h().Propose(cctx, g, putOp("k", "v")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Propose with a cancelled context: %v, want context.Canceled", err)
		}
	})

	// From here on the leader is cut off: nothing it proposes can commit.
	c.isolate(ld.id)
	defer c.heal(ld.id)

	t.Run("deadline", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer dcancel()
		start := time.Now()
		_, err := ld.h().Propose(dctx, g, putOp("k", "v"))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Propose on an isolated leader: %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Propose returned %v after its deadline", d)
		}
	})

	t.Run("Close: ErrStopped", func(t *testing.T) {
		h := ld.h()
		inflight := make(chan error, 1)
		go func() {
			_, err := h.Propose(context.Background(), g, putOp("k", "v"))
			inflight <- err
		}()
		time.Sleep(50 * time.Millisecond)
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-inflight:
			if !errors.Is(err, ErrStopped) {
				t.Fatalf("in-flight Propose at Close: %v, want ErrStopped", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("in-flight Propose did not return after Close")
		}
		if _, err := h.Propose(ctx, g, putOp("k", "v")); !errors.Is(err, ErrStopped) {
			t.Fatalf("Propose after Close: %v, want ErrStopped", err)
		}
		if err := h.AddLearner(ctx, g, 9); !errors.Is(err, ErrStopped) {
			t.Fatalf("ProposeConfChange after Close: %v, want ErrStopped", err)
		}
		// A follower's host says it is stopped too, not that it is not
		// the leader.
		fh := f.h()
		fh.Close()
		if _, err := fh.Propose(ctx, g, putOp("k", "v")); !errors.Is(err, ErrStopped) {
			t.Fatalf("Propose on a closed follower: %v, want ErrStopped", err)
		}
	})
}

// TestProposalsBatched: concurrent proposals to one group share raft
// messages and fsyncs.
//
// Everything proposed to a group while the loop is busy goes to raft as
// ONE MsgProp: here the loop is held on a task while the proposals queue.
// And with the loop free-running, concurrent proposals still share WAL
// appends (one fsync each) on every replica, instead of one each.
func TestProposalsBatched(t *testing.T) {
	const g, n = 1, 200
	c := newTestCluster(t, 3, 1, func(cfg *Config) { cfg.ElectionTicks = 50 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.put(ctx, g, "warm", "up"); err != nil {
		t.Fatal(err)
	}
	ld := c.leader(g, 5*time.Second)
	h := ld.h()
	// proposeAll runs n concurrent proposals, calling queued once they
	// are all in the loop's inbox.
	proposeAll := func(prefix string, queued func()) {
		t.Helper()
		start := make(chan struct{})
		errs := make(chan error, n)
		for i := range n {
			go func() {
				<-start
				_, err := h.Propose(ctx, g, putOp(fmt.Sprintf("%s%d", prefix, i), "v"))
				errs <- err
			}()
		}
		close(start)
		if queued != nil {
			deadline := time.Now().Add(10 * time.Second)
			for {
				h.inbox.Lock()
				q := len(h.inbox.props)
				h.inbox.Unlock()
				if q == n {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d proposals queued", q, n)
				}
				time.Sleep(time.Millisecond)
			}
			queued()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("one MsgProp per busy cycle", func(t *testing.T) {
		before := h.Metrics()
		entered, release := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			held <- h.runTask(ctx, func() error { close(entered); <-release; return nil })
		}()
		<-entered
		proposeAll("busy", func() { close(release) })
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		after := h.Metrics()
		props, batches := after.Proposals-before.Proposals, after.ProposalBatches-before.ProposalBatches
		t.Logf("%d proposals queued behind a busy loop went to raft in %d MsgProps", props, batches)
		if props != n || batches != 1 {
			t.Fatalf("%d proposals queued behind a busy loop went to raft in %d MsgProps, want %d in 1", props, batches, n)
		}
	})

	t.Run("shared fsyncs", func(t *testing.T) {
		before := map[uint64]Metrics{}
		for id, nd := range c.nodes {
			before[id] = nd.h().Metrics()
		}
		proposeAll("free", nil)
		after := h.Metrics()
		t.Logf("%d concurrent proposals: %d MsgProps, %d cycles on the leader", n,
			after.ProposalBatches-before[ld.id].ProposalBatches, after.Cycles-before[ld.id].Cycles)
		// Every replica has them all (and so appended them all).
		st, err := h.Status(g)
		if err != nil {
			t.Fatal(err)
		}
		c.waitApplied(g, st.Commit, 10*time.Second)
		for id, nd := range c.nodes {
			appends := nd.h().Metrics().WALAppends - before[id].WALAppends
			t.Logf("node %d: %d WAL appends", id, appends)
			if appends == 0 || appends > n/4 {
				t.Errorf("node %d: %d concurrent proposals cost %d WAL appends, want at most %d", id, n, appends, n/4)
			}
		}
	})
}

// TestConfChangeInFlight: raft allows one configuration change in flight
// per group. A second one proposed while the first is not yet applied is
// refused with ErrProposalDropped (not silently lost), and the first still
// applies. The leader's fsync is held back to keep the first in flight.
func TestConfChangeInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, gates, g, ld := warmGatedCluster(t, ctx)
	f := c.others(ld.id)[0]
	before := walLastIndex(t, f, g)

	gates[ld.id].shut()
	defer gates[ld.id].open()
	first := make(chan error, 1)
	go func() { first <- ld.h().AddLearner(ctx, g, 4) }()
	// The leader appended it: it reached a follower (the leader sends
	// before its own fsync, which is held back, so it cannot apply it).
	deadline := time.Now().Add(5 * time.Second)
	for walLastIndex(t, f, g) <= before {
		if time.Now().After(deadline) {
			t.Fatal("the first conf change never reached a follower")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-first:
		t.Fatalf("the first conf change returned (%v) while the leader could not apply it", err)
	default:
	}

	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	err := ld.h().AddLearner(sctx, g, 5)
	if !errors.Is(err, ErrProposalDropped) {
		t.Fatalf("second conf change while one is in flight: %v, want ErrProposalDropped", err)
	}

	gates[ld.id].open()
	if err := <-first; err != nil {
		t.Fatalf("the first conf change: %v", err)
	}
	st, err := ld.h().Status(g)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Learners) != 1 || st.Learners[0] != 4 || len(st.Voters) != 3 {
		t.Fatalf("configuration after the two changes: voters %v learners %v, want learners [4]", st.Voters, st.Learners)
	}
	// The group still takes both kinds of proposal.
	if _, err := c.put(ctx, g, "after", "x"); err != nil {
		t.Fatal(err)
	}
	typ, node := raftpb.ConfChangeType_ConfChangeRemoveNode, uint64(4)
	if err := ld.h().ProposeConfChange(ctx, g, &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: &typ, NodeId: &node}}}); err != nil {
		t.Fatal(err)
	}
}
