package replication

import (
	"context"
	"testing"
	"time"
)

// TestFlappingFollower: PreVote and CheckQuorum keep a node whose network
// flaps from disrupting the cluster. A follower is cut off long enough for
// its election timer to fire several times, then healed, repeatedly: no
// group of the majority changes leader or term, and the flapping node
// rejoins each group at the same term.
func TestFlappingFollower(t *testing.T) {
	const electionTicks, tick = 20, 10 * time.Millisecond
	c := newTestCluster(t, 3, 4, func(cfg *Config) {
		// A little slower than fastConfig, so that a busy machine does not
		// cause elections of its own during the test.
		cfg.ElectionTicks = electionTicks
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Node 3 flaps; it must lead nothing.
	const flapper = 3
	for _, g := range c.groups {
		if ld := c.leader(g, 5*time.Second); ld.id == flapper {
			if err := ld.h().TransferLeadership(ctx, g, 1); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.put(ctx, g, "k", "v"); err != nil {
			t.Fatal(err)
		}
	}
	type view struct{ leader, term uint64 }
	// views returns what every running node says of every group.
	views := func() map[uint64]map[uint64]view {
		out := map[uint64]map[uint64]view{}
		for id, nd := range c.nodes {
			out[id] = map[uint64]view{}
			for _, g := range c.groups {
				st, err := nd.h().Status(g)
				if err != nil {
					t.Fatal(err)
				}
				out[id][g] = view{st.Leader, st.Term}
			}
		}
		return out
	}
	// agreed waits until every node names the same leader at the same
	// term for every group, and returns that.
	agreed := func() map[uint64]view {
		deadline := time.Now().Add(5 * time.Second)
		for {
			vs := views()
			out, ok := map[uint64]view{}, true
			for _, g := range c.groups {
				v := vs[1][g]
				for id := range c.nodes {
					if vs[id][g] != v || v.leader == 0 {
						ok = false
					}
				}
				out[g] = v
			}
			if ok {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("the nodes do not agree on leaders and terms: %v", vs)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	before := agreed()
	for _, g := range c.groups {
		if before[g].leader == flapper {
			t.Fatalf("group %d: the flapping node leads it", g)
		}
	}

	// Cut off for 2 maximal (randomized) election timeouts, healed for 1.
	cut, healed := 2*2*electionTicks*tick, 2*electionTicks*tick
	for flap := range 3 {
		c.isolate(flapper)
		time.Sleep(cut)
		c.heal(flapper)
		time.Sleep(healed)
		vs := views()
		for id, v := range vs {
			if id == flapper {
				continue
			}
			for _, g := range c.groups {
				if v[g] != before[g] {
					t.Fatalf("flap %d: node %d sees group %d led by %d at term %d, was %d at term %d",
						flap, id, g, v[g].leader, v[g].term, before[g].leader, before[g].term)
				}
			}
		}
	}
	if after := agreed(); len(after) != len(before) {
		t.Fatal("lost groups")
	} else {
		for _, g := range c.groups {
			if after[g] != before[g] {
				t.Fatalf("group %d: %+v after the flaps, %+v before", g, after[g], before[g])
			}
		}
	}
	// And the cluster still takes writes.
	for _, g := range c.groups {
		if _, err := c.put(ctx, g, "after", "v"); err != nil {
			t.Fatal(err)
		}
	}
}
