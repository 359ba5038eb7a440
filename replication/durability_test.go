package replication

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"kvnode/engine"
	"kvnode/internal/faultfs"
)

// syncGate holds back the fsyncs of one node's raft log while it is shut,
// so that a test can see what that node and its peers do while its WAL
// write is in flight. Everything else on the node's disk goes through.
type syncGate struct {
	mu      sync.Mutex
	ch      chan struct{} // non-nil while shut; closed on open
	waiting atomic.Int64  // fsyncs held back right now
}

func (g *syncGate) fs() vfs.FS {
	return faultfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") && filepath.Base(filepath.Dir(op.Path)) == "wal" {
				g.wait()
			}
		}
		return nil
	}))
}

func (g *syncGate) wait() {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch == nil {
		return
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	<-ch
}

func (g *syncGate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

func (g *syncGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// newGatedCluster is newTestCluster with a syncGate on every node's WAL.
func newGatedCluster(t *testing.T, n, ngroups int, cfg func(*Config)) (*testCluster, map[uint64]*syncGate) {
	gates := make(map[uint64]*syncGate)
	for i := 1; i <= n; i++ {
		gates[uint64(i)] = &syncGate{}
	}
	c := newTestClusterFS(t, n, ngroups, cfg, func(id uint64) vfs.FS { return gates[id].fs() })
	// Registered after the cluster's own cleanup, so it runs first: a shut
	// gate would keep the nodes from stopping.
	t.Cleanup(func() {
		for _, g := range gates {
			g.open()
		}
	})
	return c, gates
}

// walIndexes returns the first and last index of the group's log on nd.
func walIndexes(t *testing.T, nd *testNode, group uint64) (first, last uint64) {
	t.Helper()
	st, err := nd.wal.Storage(group)
	if err != nil {
		t.Fatal(err)
	}
	if first, err = st.FirstIndex(); err == nil {
		last, err = st.LastIndex()
	}
	if err != nil {
		t.Fatal(err)
	}
	return first, last
}

func walLastIndex(t *testing.T, nd *testNode, group uint64) uint64 {
	t.Helper()
	_, last := walIndexes(t, nd, group)
	return last
}

func walFirstIndex(t *testing.T, nd *testNode, group uint64) uint64 {
	t.Helper()
	first, _ := walIndexes(t, nd, group)
	return first
}

// warmGatedCluster starts a gated cluster of one group with slow elections
// (nothing in the test may change leaders), writes once and waits until
// every node applied it: what each WAL holds from then on comes from the
// test. It returns the group's leader too.
func warmGatedCluster(t *testing.T, ctx context.Context) (c *testCluster, gates map[uint64]*syncGate, g uint64, ld *testNode) {
	t.Helper()
	g = 1
	c, gates = newGatedCluster(t, 3, 1, func(cfg *Config) { cfg.ElectionTicks = 50 })
	ver, err := c.put(ctx, g, "warm", "up")
	if err != nil {
		t.Fatal(err)
	}
	c.waitApplied(g, ver, 10*time.Second)
	return c, gates, g, c.leader(g, 5*time.Second)
}

// walHasPut reports whether the node's WAL holds, at index, the put of key.
func walHasPut(t *testing.T, nd *testNode, group, index uint64, key string) bool {
	t.Helper()
	st, err := nd.wal.Storage(group)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := st.Entries(index, index+1, 1<<20)
	if err != nil || len(ents) != 1 {
		return false
	}
	_, ops, err := decodeCommand(ents[0].GetData(), nil)
	return err == nil && len(ops) == 1 && string(ops[0].Key) == key
}

// others returns the nodes other than the given one, in id order.
func (c *testCluster) others(id uint64) []*testNode {
	var out []*testNode
	for i := uint64(1); i <= uint64(len(c.nodes)); i++ {
		if nd, ok := c.nodes[i]; ok && i != id {
			out = append(out, nd)
		}
	}
	return out
}

func putOp(key, value string) []engine.Op {
	return []engine.Op{{Kind: engine.OpPut, Key: []byte(key), Value: []byte(value)}}
}

// TestAppendOrdering pins the two orderings of the write path. A follower
// acknowledges an append only after its own fsync: with the other
// follower cut off, a write cannot commit while the remaining follower's
// fsync is held back. A leader sends its appends before its own fsync
// completes: with the leader's fsync held back, the followers still
// receive and store the entry.
func TestAppendOrdering(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, gates, g, ld := warmGatedCluster(t, ctx)
	fs := c.others(ld.id)

	t.Run("follower acknowledges after its fsync", func(t *testing.T) {
		f, cut := fs[0], fs[1]
		c.isolate(cut.id)
		defer c.heal(cut.id)
		gates[f.id].shut()
		defer gates[f.id].open()
		before := walLastIndex(t, f, g)
		done := make(chan error, 1)
		go func() {
			_, err := ld.h().Propose(ctx, g, putOp("f", "1"))
			done <- err
		}()
		// The entry reaches the follower, whose fsync is now held back.
		deadline := time.Now().Add(5 * time.Second)
		for gates[f.id].waiting.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the follower never started its fsync")
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case err := <-done:
			t.Fatalf("the write was acknowledged (err %v) while the only follower able to ack had not fsynced it", err)
		case <-time.After(300 * time.Millisecond):
		}
		if got := walLastIndex(t, f, g); got != before {
			t.Fatalf("follower's WAL moved from %d to %d with its fsync held back", before, got)
		}
		gates[f.id].open()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the write did not complete once the follower's fsync went through")
		}
	})

	t.Run("leader sends before its fsync", func(t *testing.T) {
		if c.leader(g, 5*time.Second) != ld {
			t.Skip("leadership moved")
		}
		st, _ := ld.h().Status(g)
		c.waitApplied(g, st.Commit, 10*time.Second)
		gates[ld.id].shut()
		defer gates[ld.id].open()
		before := walLastIndex(t, ld, g)
		done := make(chan error, 1)
		go func() {
			_, err := ld.h().Propose(ctx, g, putOp("l", "1"))
			done <- err
		}()
		deadline := time.Now().Add(5 * time.Second)
		for _, f := range fs {
			for !walHasPut(t, f, g, before+1, "l") {
				if time.Now().After(deadline) {
					t.Fatalf("follower %d did not receive the entry while the leader's fsync was held back", f.id)
				}
				time.Sleep(time.Millisecond)
			}
		}
		if gates[ld.id].waiting.Load() == 0 {
			t.Fatal("the leader's fsync is not in flight")
		}
		if got := walLastIndex(t, ld, g); got != before {
			t.Fatalf("leader's WAL moved from %d to %d with its fsync held back", before, got)
		}
		// The leader applies only what it holds durably itself.
		select {
		case err := <-done:
			t.Fatalf("the leader acknowledged (err %v) before its own fsync", err)
		default:
		}
		gates[ld.id].open()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestCompactionWaitsForEngineSync: a group's log is compacted only below
// what the engine holds durably (SyncedApplied), not below what it has
// merely applied. With the engine's periodic sync off, the log keeps
// growing past the compaction threshold untouched; once the engine syncs,
// compaction catches up, and still never passes SyncedApplied.
func TestCompactionWaitsForEngineSync(t *testing.T) {
	const threshold, retain = 10, 1
	c := newTestCluster(t, 3, 2, func(cfg *Config) {
		cfg.CompactThreshold = threshold
		cfg.LogRetainEntries = retain
		cfg.EngineSyncInterval = time.Hour
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, g := range c.groups {
		if _, err := c.put(ctx, g, "first", "v"); err != nil {
			t.Fatal(err)
		}
	}
	// One sync, so that SyncedApplied is past the bootstrap snapshot and
	// the invariant below is meaningful from the start.
	for _, nd := range c.nodes {
		if err := nd.eng.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	first0 := map[string]uint64{}
	for id, nd := range c.nodes {
		for _, g := range c.groups {
			first0[fmt.Sprint(id, "/", g)] = walFirstIndex(t, nd, g)
		}
	}
	// check asserts the invariant on every node and group, and returns the
	// smallest compaction point it saw.
	check := func(when string) (minCompacted uint64) {
		minCompacted = ^uint64(0)
		for id, nd := range c.nodes {
			for _, g := range c.groups {
				// FirstIndex first: SyncedApplied only grows.
				compacted := walFirstIndex(t, nd, g) - 1
				synced := nd.eng.SyncedApplied(g)
				if compacted > synced {
					t.Fatalf("%s: node %d group %d: log compacted through %d, above the engine's SyncedApplied %d (applied %d)",
						when, id, g, compacted, synced, nd.eng.Applied(g).Index)
				}
				minCompacted = min(minCompacted, compacted)
			}
		}
		return minCompacted
	}

	const writes = 40
	var last [3]uint64
	var wg sync.WaitGroup
	for _, g := range c.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range writes {
				v, err := c.put(ctx, g, fmt.Sprintf("k%d", i), "v")
				if err != nil {
					t.Error(err)
					return
				}
				last[g] = v
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, g := range c.groups {
		c.waitApplied(g, last[g], 10*time.Second)
	}
	// Compaction runs every 8 ticks (80ms here): give it several rounds,
	// checking all along.
	for range 10 {
		check("engine not synced")
		time.Sleep(40 * time.Millisecond)
	}
	for id, nd := range c.nodes {
		for _, g := range c.groups {
			if applied, first := nd.eng.Applied(g).Index, walFirstIndex(t, nd, g); applied < first+threshold+retain {
				t.Fatalf("node %d group %d: applied %d, first index %d: not enough log for compaction to be due", id, g, applied, first)
			}
			if f := walFirstIndex(t, nd, g); f != first0[fmt.Sprint(id, "/", g)] {
				t.Fatalf("node %d group %d: log compacted (first index %d -> %d) with no engine sync since", id, g, first0[fmt.Sprint(id, "/", g)], f)
			}
		}
	}

	// Once the engine is synced, compaction proceeds, to just below it.
	for _, nd := range c.nodes {
		if err := nd.eng.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := check("after the engine sync")
		if m >= writes/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no compaction after the engine sync: lowest compaction point %d", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConfChangeSurvivesPowerLoss grows a group the way a new cluster
// does: node 1 bootstraps it as the only voter, then adds and promotes
// nodes 2 and 3. Node 1 then loses power, keeping none of its unsynced
// writes. It must restart at all (its log's compaction point is the
// bootstrap state, so that state must be durable in the engine), and it
// must come back knowing the last configuration it applied: had it come
// back as the group's only voter, it could elect itself and commit writes
// the others never see. Both failed before the engine was synced after a
// bootstrap and after every configuration change.
func TestConfChangeSurvivesPowerLoss(t *testing.T) {
	mem := vfs.NewCrashableMem()
	c := newTestClusterFS(t, 3, 0, fastConfig, func(id uint64) vfs.FS {
		if id == 1 {
			return mem
		}
		return nil
	})
	const g = 1
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n1 := c.node(1)
	if err := n1.h().Bootstrap(ctx, g, []uint64{1}); err != nil {
		t.Fatal(err)
	}
	// A power loss right after the bootstrap must keep it: the log already
	// records it as its snapshot.
	boot, err := engine.Open(filepath.Join(n1.dir, "engine"), &engine.Options{FS: mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})})
	if err != nil {
		t.Fatal(err)
	}
	if st := boot.Applied(g); st.Index == 0 {
		t.Fatal("the bootstrap did not survive a power loss in the engine")
	}
	boot.Close()
	c.leader(g, 5*time.Second)
	for _, id := range []uint64{2, 3} {
		if err := c.node(id).h().AddReplica(ctx, g); err != nil {
			t.Fatal(err)
		}
		if err := n1.h().AddLearner(ctx, g, id); err != nil {
			t.Fatal(err)
		}
		// Promote once the learner has caught up (raft refuses nothing
		// here, but a voter that cannot vote yet would stall the group).
		st, err := n1.h().Status(g)
		if err != nil {
			t.Fatal(err)
		}
		for {
			if ls, err := c.node(id).h().Status(g); err == nil && ls.Applied >= st.Applied {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("node %d did not catch up to %d", id, st.Applied)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := n1.h().PromoteVoter(ctx, g, id); err != nil {
			t.Fatal(err)
		}
	}

	c.isolate(1)
	clone := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	c.stop(n1)
	n1.fs = clone
	c.start(n1)
	st, err := n1.h().Status(g)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Voters, []uint64{1, 2, 3}) {
		t.Fatalf("after power loss node 1 restarted with voters %v (applied %d), want [1 2 3]", st.Voters, st.Applied)
	}
}
