package node

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func testMeta(nodes, partitions, rf int, replicas func(g uint64) []uint64) *metaState {
	m := &metaState{Partitions: partitions, ReplicationFactor: rf, Nodes: map[uint64]*nodeInfo{}, Groups: map[uint64]*groupInfo{}}
	for i := 1; i <= nodes; i++ {
		m.Nodes[uint64(i)] = &nodeInfo{ID: uint64(i), Name: fmt.Sprintf("node-%d", i), State: nodeActive}
	}
	m.Groups[metaGroup] = &groupInfo{Voters: []uint64{1}}
	for p := range partitions {
		g := partitionGroup(p)
		m.Groups[g] = &groupInfo{Voters: replicas(g)}
	}
	return m
}

// settle runs placement until it changes nothing (every move it starts
// is taken to complete at once), and returns the number of rounds.
func settle(t *testing.T, m *metaState) int {
	t.Helper()
	for round := 1; round < 1000; round++ {
		if !place(m, placementInput{}) {
			return round
		}
	}
	t.Fatal("placement did not settle in 1000 rounds")
	return 0
}

func loads(m *metaState) (replicas, leaders map[uint64]int) {
	replicas, leaders = map[uint64]int{}, map[uint64]int{}
	for _, gid := range partitionGroups(m) {
		g := m.Groups[gid]
		for _, id := range g.Voters {
			replicas[id]++
		}
		leaders[g.Leader]++
	}
	return replicas, leaders
}

func TestPlacement(t *testing.T) {
	tests := []struct {
		name          string
		nodes, rf     int
		dead, removed []uint64
		start         func(g uint64) []uint64
		// wantReplicas is each active node's replica count (within slack),
		// wantLeaders its leader count (within slack).
		wantReplicas, wantLeaders, slack int
	}{
		{"one node", 1, 3, nil, nil, func(uint64) []uint64 { return []uint64{1} }, 64, 64, 0},
		{"three nodes join the first", 3, 3, nil, nil, func(uint64) []uint64 { return []uint64{1} }, 64, 21, 1},
		{"fourth node", 4, 3, nil, nil, func(uint64) []uint64 { return []uint64{1, 2, 3} }, 48, 16, 1},
		{"ten nodes", 10, 3, nil, nil, func(uint64) []uint64 { return []uint64{1, 2, 3} }, 19, 6, 1},
		{"dead node with a spare", 4, 3, []uint64{2}, nil, func(uint64) []uint64 { return []uint64{1, 2, 3} }, 64, 21, 1},
		{"removed node with a spare", 4, 3, nil, []uint64{3}, func(uint64) []uint64 { return []uint64{1, 2, 3} }, 64, 21, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testMeta(tt.nodes, 64, tt.rf, tt.start)
			for _, id := range tt.dead {
				m.Nodes[id].State = nodeDead
			}
			for _, id := range tt.removed {
				m.Nodes[id].State = nodeRemoved
			}
			rounds := settle(t, m)
			replicas, leaders := loads(m)
			for _, id := range m.activeNodes() {
				if d := replicas[id] - tt.wantReplicas; d < -tt.slack || d > tt.slack {
					t.Errorf("node %d holds %d replicas, want %d±%d", id, replicas[id], tt.wantReplicas, tt.slack)
				}
				if d := leaders[id] - tt.wantLeaders; d < -tt.slack || d > tt.slack {
					t.Errorf("node %d leads %d groups, want %d±%d", id, leaders[id], tt.wantLeaders, tt.slack)
				}
			}
			for _, id := range append(slices.Clone(tt.dead), tt.removed...) {
				if replicas[id] != 0 || leaders[id] != 0 {
					t.Errorf("inactive node %d still holds %d replicas and leads %d", id, replicas[id], leaders[id])
				}
			}
			for _, gid := range partitionGroups(m) {
				g := m.Groups[gid]
				if len(g.Voters) != min(tt.rf, len(m.activeNodes())) {
					t.Errorf("group %d has voters %v", gid, g.Voters)
				}
				if !slices.Contains(g.Voters, g.Leader) {
					t.Errorf("group %d prefers leader %d, not one of its voters %v", gid, g.Leader, g.Voters)
				}
				seen := map[uint64]bool{}
				for _, id := range g.Voters {
					if seen[id] {
						t.Errorf("group %d has node %d twice: %v", gid, id, g.Voters)
					}
					seen[id] = true
				}
			}
			mg := m.Groups[metaGroup]
			if len(mg.Voters) != min(metaVoters, len(m.activeNodes())) || len(mg.Voters)+len(mg.Learners) != len(m.activeNodes()) {
				t.Errorf("meta group voters %v learners %v for %d active nodes", mg.Voters, mg.Learners, len(m.activeNodes()))
			}
			t.Logf("settled in %d rounds", rounds)
		})
	}
}

// TestPlacementKeepsDeadWithoutSpare checks that a group whose dead
// replica cannot be replaced keeps it rather than shrinking.
func TestPlacementKeepsDeadWithoutSpare(t *testing.T) {
	m := testMeta(3, 8, 3, func(uint64) []uint64 { return []uint64{1, 2, 3} })
	settle(t, m)
	m.Nodes[3].State = nodeDead
	settle(t, m)
	for _, gid := range partitionGroups(m) {
		if g := m.Groups[gid]; len(g.Voters) != 3 || !slices.Contains(g.Voters, 3) {
			t.Fatalf("group %d voters %v: the dead replica was dropped without a replacement", gid, g.Voters)
		}
		if g := m.Groups[gid]; g.Leader == 3 {
			t.Fatalf("group %d still prefers the dead node as leader", gid)
		}
	}
}

// TestPlacementOneMoveAtATime checks that rebalancing starts no move
// while a group is still moving.
func TestPlacementOneMoveAtATime(t *testing.T) {
	m := testMeta(4, 64, 3, func(uint64) []uint64 { return []uint64{1, 2, 3} })
	m.Groups[metaGroup].Voters = []uint64{1, 2, 3}
	m.Groups[metaGroup].Learners = []uint64{4}
	assignLeaders(m, m.activeNodes(), partitionGroups(m))
	before := m.clone()
	if !place(m, placementInput{}) {
		t.Fatal("no move planned for an empty fourth node")
	}
	moved := 0
	for _, gid := range partitionGroups(m) {
		if !slices.Equal(before.Groups[gid].Voters, m.Groups[gid].Voters) {
			moved++
		}
	}
	if moved != 1 {
		t.Fatalf("%d groups moved in one round, want 1", moved)
	}
	after := m.clone()
	place(m, placementInput{moving: map[uint64]bool{5: true}})
	for _, gid := range partitionGroups(m) {
		if !slices.Equal(after.Groups[gid].Voters, m.Groups[gid].Voters) {
			t.Fatalf("group %d moved while another group was moving", gid)
		}
	}
}

// TestDeadNodeTimer: the dead-node timeout runs on this node's monotonic
// clock. A node's Since in the meta document is wall-clock time written by
// some meta leader; one from a clock that ran ahead (or before this clock
// jumped back) must neither keep a silent node alive nor, from a clock
// behind, kill one that just became active. A dead node that answers a
// poll again comes back active.
func TestDeadNodeTimer(t *testing.T) {
	const timeout = time.Second
	for _, tc := range []struct {
		name     string
		state    string
		since    time.Duration // the document's Since, relative to now (wall)
		seenAgo  time.Duration // when this node first saw that state; 0: now, first look
		answered time.Duration // when the node last answered a poll, ago; 0: never
		want     string        // the state after
	}{
		{"first look, Since far in the past: the timeout starts now", nodeActive, -time.Hour, 0, 0, nodeActive},
		{"first look, Since in the future", nodeActive, 30 * time.Minute, 0, 0, nodeActive},
		{"silent past the timeout, Since in the future", nodeActive, 30 * time.Minute, 2 * timeout, 0, nodeDead},
		{"silent past the timeout, Since ordinary", nodeActive, -2 * timeout, 2 * timeout, 0, nodeDead},
		{"silent less than the timeout", nodeActive, -2 * timeout, timeout / 2, 0, nodeActive},
		{"answered within the timeout", nodeActive, -time.Hour, time.Hour, timeout / 2, nodeActive},
		{"answered, but long ago", nodeActive, -time.Hour, time.Hour, 2 * timeout, nodeDead},
		{"dead, answers again", nodeDead, -time.Hour, 5 * timeout, timeout / 10, nodeActive},
		{"dead, last answer from before it was declared dead", nodeDead, -time.Hour, 5 * timeout, 6 * timeout, nodeDead},
		{"dead, never answered", nodeDead, -time.Hour, 5 * timeout, 0, nodeDead},
		{"dead, first look: an old answer does not bring it back", nodeDead, -time.Hour, 0, timeout / 10, nodeDead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			since := now.Add(tc.since).UTC() // as read back from JSON: no monotonic reading
			n := &Node{
				cfg:        &Config{DeadNodeTimeout: timeout},
				id:         1,
				view:       newView(),
				viewSince:  now.Add(-time.Hour),
				activeSeen: map[uint64]activeMark{},
			}
			if tc.seenAgo > 0 {
				n.activeSeen[2] = activeMark{since: since, at: now.Add(-tc.seenAgo)}
			}
			if tc.answered > 0 {
				n.view.noteReport(2, nodeReport{Node: 2}, now.Add(-tc.answered))
			}
			m := &metaState{Nodes: map[uint64]*nodeInfo{
				1: {ID: 1, Name: "node-1", State: nodeActive},
				2: {ID: 2, Name: "node-2", State: tc.state, Since: since},
			}}
			dead, revived := n.markDeadNodes(m)
			if got := m.Nodes[2].State; got != tc.want {
				t.Fatalf("state %s, want %s (dead %v, revived %v)", got, tc.want, dead, revived)
			}
			changed := tc.state != tc.want
			if got := len(dead)+len(revived) == 1; got != changed {
				t.Fatalf("dead %v, revived %v: one name expected iff the state changed (%v)", dead, revived, changed)
			}
		})
	}
}
