package node

import (
	"cmp"
	"slices"
)

// Placement decides where every group's replicas should live and which
// replica should lead it. It is a pure function of the cluster state, run by
// the meta group's leader; each group's own leader then moves the group's
// raft configuration toward it, one change at a time (reconcile.go).
//
// The rules, in order:
//   - A replica on a node that is no longer active is dropped from the
//     desired set only once a replacement can take its place; the group's
//     leader removes it only after the replacement has caught up.
//   - A group short of replicas gets them on the active nodes holding the
//     fewest replicas.
//   - While every group has its replicas, at most one replica at a time is
//     moved from the most loaded node to the least loaded one, until loads
//     differ by at most one.
//   - Each group's preferred leader is one of its voters, chosen so that
//     leader counts differ by at most one.
//
// The meta group has metaVoters voters and every other active node as a
// learner, so that every node holds the cluster state.

// placementInput is what placement needs besides the meta state: which
// groups are still moving (their raft configuration differs from the
// desired one), so that it starts no new move while one is under way.
type placementInput struct {
	moving map[uint64]bool
}

// place updates m's desired placement in place and reports whether it
// changed anything.
func place(m *metaState, in placementInput) bool {
	active := m.activeNodes()
	if len(active) == 0 {
		return false
	}
	changed := false
	isActive := func(id uint64) bool { _, ok := slices.BinarySearch(active, id); return ok }

	// The meta group: voters first (keep the current active ones), then
	// everyone else as a learner.
	if g := m.Groups[metaGroup]; g != nil {
		want := min(metaVoters, len(active))
		voters := keepActive(g.Voters, isActive)
		for _, id := range active {
			if len(voters) >= want {
				break
			}
			if !slices.Contains(voters, id) {
				voters = append(voters, id)
			}
		}
		var learners []uint64
		for _, id := range active {
			if !slices.Contains(voters, id) {
				learners = append(learners, id)
			}
		}
		changed = setGroup(g, voters, learners) || changed
	}

	// Partition groups: fill the missing replicas.
	rf := min(m.ReplicationFactor, len(active))
	load := replicaLoad(m, active)
	groups := partitionGroups(m)
	for _, gid := range groups {
		g := m.Groups[gid]
		voters := keepActive(g.Voters, isActive)
		if len(voters) == len(g.Voters) && len(voters) >= rf {
			continue
		}
		for len(voters) < rf {
			best := leastLoaded(active, load, voters)
			voters = append(voters, best)
			load[best]++
		}
		// Too few active nodes to replace them all: keep the dead replicas
		// (they may come back) rather than shrink the group. Removed
		// nodes are never kept.
		for _, id := range g.Voters {
			if len(voters) >= m.ReplicationFactor {
				break
			}
			if n := m.Nodes[id]; n != nil && n.State == nodeDead && !slices.Contains(voters, id) {
				voters = append(voters, id)
			}
		}
		changed = setGroup(g, voters, nil) || changed
	}

	// Rebalance: one move at a time, only when nothing is moving.
	if len(in.moving) == 0 && !changed {
		changed = rebalanceOne(m, active, groups, load) || changed
	}

	// Leaders.
	changed = assignLeaders(m, active, groups) || changed
	return changed
}

// partitionGroups lists the partition groups in order.
func partitionGroups(m *metaState) []uint64 {
	var gs []uint64
	for id := range m.Groups {
		if id != metaGroup {
			gs = append(gs, id)
		}
	}
	slices.Sort(gs)
	return gs
}

// replicaLoad counts the partition replicas each active node should hold.
func replicaLoad(m *metaState, active []uint64) map[uint64]int {
	load := make(map[uint64]int, len(active))
	for _, id := range active {
		load[id] = 0
	}
	for gid, g := range m.Groups {
		if gid == metaGroup {
			continue
		}
		for _, id := range g.Voters {
			load[id]++
		}
	}
	return load
}

// leastLoaded picks the active node with the fewest replicas that is not
// in exclude; ties go to the lowest id, so placement is deterministic.
func leastLoaded(active []uint64, load map[uint64]int, exclude []uint64) uint64 {
	var best uint64
	for _, id := range active {
		if slices.Contains(exclude, id) {
			continue
		}
		if best == 0 || load[id] < load[best] {
			best = id
		}
	}
	return best
}

// rebalanceOne moves one replica from the most loaded node to the least
// loaded one if their loads differ by more than one.
func rebalanceOne(m *metaState, active, groups []uint64, load map[uint64]int) bool {
	if len(active) < 2 {
		return false
	}
	sorted := slices.Clone(active)
	slices.SortFunc(sorted, func(a, b uint64) int {
		return cmp.Or(cmp.Compare(load[a], load[b]), cmp.Compare(a, b))
	})
	lo, hi := sorted[0], sorted[len(sorted)-1]
	if load[hi]-load[lo] <= 1 {
		return false
	}
	// Move a group hi holds and lo does not; prefer one hi does not lead,
	// so no leadership has to move first.
	var pick uint64
	for _, gid := range groups {
		g := m.Groups[gid]
		if !slices.Contains(g.Voters, hi) || slices.Contains(g.Voters, lo) {
			continue
		}
		if pick == 0 || (m.Groups[pick].Leader == hi && g.Leader != hi) {
			pick = gid
		}
	}
	if pick == 0 {
		return false
	}
	g := m.Groups[pick]
	voters := slices.Clone(g.Voters)
	voters[slices.Index(voters, hi)] = lo
	load[hi]--
	load[lo]++
	return setGroup(g, voters, nil)
}

// assignLeaders picks each group's preferred leader among its active
// voters so that leader counts are as even as the groups' voters allow,
// moving as few preferences as it can: a group keeps its leader unless
// another of its voters leads at least two groups fewer.
func assignLeaders(m *metaState, active, groups []uint64) bool {
	isActive := func(id uint64) bool { _, ok := slices.BinarySearch(active, id); return ok }
	count := map[uint64]int{}
	changed := false
	var eligible = func(g *groupInfo) []uint64 { return keepActive(g.Voters, isActive) }
	// Leaders that are no longer eligible get the least loaded voter.
	for _, gid := range groups {
		g := m.Groups[gid]
		if g.Leader != 0 && slices.Contains(eligible(g), g.Leader) {
			count[g.Leader]++
		}
	}
	for _, gid := range groups {
		g := m.Groups[gid]
		el := eligible(g)
		if g.Leader != 0 && slices.Contains(el, g.Leader) {
			continue
		}
		var best uint64
		for _, id := range el {
			if best == 0 || count[id] < count[best] {
				best = id
			}
		}
		if g.Leader != best {
			g.Leader, changed = best, true
		}
		if best != 0 {
			count[best]++
		}
	}
	// Then even out: each move lowers the sum of squared counts, so this
	// ends.
	for moved := true; moved; {
		moved = false
		for _, gid := range groups {
			g := m.Groups[gid]
			if g.Leader == 0 {
				continue
			}
			best := g.Leader
			for _, id := range eligible(g) {
				if count[id] < count[best] {
					best = id
				}
			}
			if count[g.Leader]-count[best] >= 2 {
				count[g.Leader]--
				count[best]++
				g.Leader = best
				changed, moved = true, true
			}
		}
	}
	return changed
}

func keepActive(ids []uint64, isActive func(uint64) bool) []uint64 {
	var out []uint64
	for _, id := range ids {
		if isActive(id) {
			out = append(out, id)
		}
	}
	return out
}

// setGroup sets a group's desired members, reporting whether they changed.
// Voters keep their order (the first ones were there first); learners are
// sorted.
func setGroup(g *groupInfo, voters, learners []uint64) bool {
	slices.Sort(learners)
	if slices.Equal(g.Voters, voters) && slices.Equal(g.Learners, learners) {
		return false
	}
	g.Voters, g.Learners = voters, learners
	if g.Leader != 0 && !slices.Contains(voters, g.Leader) {
		g.Leader = 0
	}
	return true
}
