package replication

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestHardStateCommitWrittenForConfChanges checks which commit indexes the
// WAL records (hardStateNeeded): none that only advance over ordinary
// entries, and every one that passes a configuration change.
func TestHardStateCommitWrittenForConfChanges(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(cfg *Config) { cfg.ElectionTicks = 50 })
	const g = 1
	c.leader(g, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	storedCommit := func(nd *testNode) uint64 {
		t.Helper()
		ws, err := nd.wal.Storage(g)
		if err != nil {
			t.Fatal(err)
		}
		_, _, commit := ws.HardState()
		return commit
	}

	var last uint64
	for i := range 30 {
		v, err := c.put(ctx, g, fmt.Sprintf("k%d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		last = v
	}
	c.waitApplied(g, last, 5*time.Second)
	for id, nd := range c.nodes {
		// A term change (an election) writes the commit index of its
		// moment; the writes after it must not have moved it.
		if got := storedCommit(nd); got >= last {
			t.Errorf("node %d: WAL records commit %d, want below %d: commit-only hard states were written", id, got, last)
		}
	}

	// A configuration change: node 4 need not exist for raft to track it.
	ld := c.leader(g, 5*time.Second)
	if err := ld.h().AddLearner(ctx, g, 4); err != nil {
		t.Fatal(err)
	}
	st, err := ld.h().Status(g)
	if err != nil {
		t.Fatal(err)
	}
	cc := st.Applied
	c.waitApplied(g, cc, 5*time.Second)
	for id, nd := range c.nodes {
		for storedCommit(nd) < cc {
			if ctx.Err() != nil {
				t.Fatalf("node %d: WAL records commit %d after applying the configuration change at %d", id, storedCommit(nd), cc)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
