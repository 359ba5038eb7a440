package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"kvnode/replication"
)

// Reconciliation: every node, on a short period, moves what it is
// responsible for toward the cluster state.
//
//   - Its replicas: it starts an (empty) replica of every group placement
//     gives it, and deletes a replica once placement no longer lists it and
//     its group's configuration no longer includes it.
//   - The groups it leads: one configuration change at a time toward the
//     desired members: add a missing one as a learner, promote a learner
//     that has caught up, demote or remove an extra member once the new
//     ones are in, and hand leadership to the preferred leader.
//
// The meta group's leader also runs placement (placementLoop).

const (
	reconcileInterval = 20 * time.Millisecond
	// caughtUpLag is how far behind the leader a learner may be and still
	// be promoted: close enough that it will not hold up commits.
	caughtUpLag = 64
	// transferCooldown spaces leadership transfers of one group, so that a
	// transfer that does not take (the target is slow) is not retried in a
	// tight loop.
	transferCooldown = 3 * time.Second
)

func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	t := time.NewTicker(reconcileInterval)
	defer t.Stop()
	lastTransfer := map[uint64]time.Time{}
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.host.Done():
			if err := n.host.Err(); err != nil {
				n.fail(err)
			}
			return
		case <-t.C:
		}
		if n.stopping.Load() {
			continue
		}
		m, err := n.meta.load()
		if err != nil {
			continue
		}
		n.reconcileReplicas(m)
		n.driveGroups(m, lastTransfer)
	}
}

// reconcileReplicas starts and deletes this node's replicas.
func (n *Node) reconcileReplicas(m *metaState) {
	want := m.groupsOf(n.id)
	have := n.host.Groups()
	for _, g := range want {
		if _, ok := slices.BinarySearch(have, g); ok {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, time.Second)
		err := n.host.AddReplica(ctx, g)
		cancel()
		if err != nil && !errors.Is(err, replication.ErrGroupExists) {
			n.logger.Warn("starting a replica", "group", g, "err", err)
			continue
		}
		n.logger.Info("started a replica", "group", g)
	}
	for _, g := range have {
		if _, ok := slices.BinarySearch(want, g); ok {
			continue
		}
		if g == metaGroup && len(have) > 1 {
			// The meta replica goes last: a node being drained still needs
			// the cluster state to hand its other groups over.
			continue
		}
		if _, known := m.Groups[g]; !known && g != metaGroup && groupPartition(g) >= m.Partitions {
			continue // not a group of this cluster; leave it to an operator
		}
		st, err := n.host.Status(g)
		if err != nil || st.IsLeader || slices.Contains(st.Voters, n.id) || slices.Contains(st.Learners, n.id) {
			// Still a member: the group's leader removes us first.
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		err = n.host.DestroyReplica(ctx, g)
		cancel()
		if err != nil {
			n.logger.Warn("deleting a replica", "group", g, "err", err)
			continue
		}
		n.events.emit(Event{Type: EventPartitionChange, Partition: partitionName(g), From: m.nodeName(n.id),
			Reason: "replica deleted after leaving the group"})
	}
}

// driveGroups makes one configuration step in every group this node leads.
func (n *Node) driveGroups(m *metaState, lastTransfer map[uint64]time.Time) {
	for _, g := range n.host.Groups() {
		st, err := n.host.Status(g)
		if err != nil || !st.IsLeader {
			continue
		}
		want, ok := m.Groups[g]
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
		// A change that applied may enable the next at once (promoted,
		// so the old replica can go): take up to three steps per pass.
		for step := 0; step < 3; step++ {
			stepped, err := n.driveGroup(ctx, m, g, st, want, lastTransfer)
			if err != nil && ctx.Err() == nil &&
				!errors.Is(err, replication.ErrProposalDropped) && !errors.Is(err, replication.ErrNotLeader) {
				n.logger.Warn("changing a group's members", "group", g, "err", err)
			}
			if err != nil || !stepped {
				break
			}
			if st, err = n.host.Status(g); err != nil || !st.IsLeader {
				break
			}
		}
		cancel()
	}
}

func (n *Node) driveGroup(ctx context.Context, m *metaState, g uint64, st replication.GroupStatus, want *groupInfo,
	lastTransfer map[uint64]time.Time) (stepped bool, err error) {
	if sameSet(st.Voters, want.Voters) && sameSet(st.Learners, want.Learners) && (want.Leader == 0 || want.Leader == n.id) {
		return false, nil // nothing to do: skip the progress query
	}
	members := append(slices.Clone(st.Voters), st.Learners...)
	// 1. Missing members join as learners.
	for _, id := range append(slices.Clone(want.Voters), want.Learners...) {
		if !slices.Contains(members, id) {
			n.logger.Info("adding a learner", "group", g, "node", id)
			if err := n.host.AddLearner(ctx, g, id); err != nil {
				return false, err
			}
			n.events.emit(Event{Type: EventPartitionChange, Partition: partitionName(g), To: m.nodeName(id),
				Reason: "replica added (learner, catching up)"})
			return false, nil // the next step waits for it to catch up
		}
	}
	prog, err := n.host.Progress(ctx, g)
	if err != nil {
		return false, err
	}
	// A member with nothing matched has not even received its snapshot.
	caughtUp := func(id uint64) bool { return prog[id] > 0 && prog[id]+caughtUpLag >= prog[n.id] }
	// 2. Learners that should vote and have caught up are promoted.
	for _, id := range want.Voters {
		if slices.Contains(st.Learners, id) && caughtUp(id) {
			n.logger.Info("promoting a learner", "group", g, "node", id)
			if err := n.host.PromoteVoter(ctx, g, id); err != nil {
				return false, err
			}
			n.events.emit(Event{Type: EventPartitionChange, Partition: partitionName(g), To: m.nodeName(id),
				Reason: "replica caught up and promoted to voter"})
			return true, nil
		}
	}
	// 3. Extra members go, but only once every desired voter votes, so the
	// group never drops below the quorum placement asked for.
	for _, id := range want.Voters {
		if !slices.Contains(st.Voters, id) {
			return false, nil
		}
	}
	for _, id := range st.Voters {
		if slices.Contains(want.Voters, id) {
			continue
		}
		if id == n.id {
			// Leave the leadership to a desired voter first.
			return false, n.transfer(ctx, g, preferredOr(want), lastTransfer)
		}
		if slices.Contains(want.Learners, id) {
			n.logger.Info("demoting a voter to learner", "group", g, "node", id)
			return true, n.host.AddLearner(ctx, g, id)
		}
		n.logger.Info("removing a replica", "group", g, "node", id)
		if err := n.host.RemoveReplica(ctx, g, id); err != nil {
			return false, err
		}
		n.events.emit(Event{Type: EventPartitionChange, Partition: partitionName(g), From: m.nodeName(id),
			Reason: "replica removed after its replacement caught up"})
		return true, nil
	}
	for _, id := range st.Learners {
		if !slices.Contains(want.Learners, id) && !slices.Contains(want.Voters, id) {
			n.logger.Info("removing a learner", "group", g, "node", id)
			return true, n.host.RemoveReplica(ctx, g, id)
		}
	}
	// 4. Leadership goes to the preferred leader once it has caught up.
	if want.Leader != 0 && want.Leader != n.id && slices.Contains(st.Voters, want.Leader) && caughtUp(want.Leader) &&
		n.healthy(m, want.Leader) {
		return false, n.transfer(ctx, g, want.Leader, lastTransfer)
	}
	return false, nil
}

// healthy reports whether a node is active, answered the last poll, and
// says it is ready: a node that is stopping or catching up is not handed
// leadership.
func (n *Node) healthy(m *metaState, id uint64) bool {
	ni := m.Nodes[id]
	if ni == nil || ni.State != nodeActive {
		return false
	}
	last, ok := n.view.alive(id)
	if !ok || time.Since(last) > 2*viewPollInterval+500*time.Millisecond {
		return false
	}
	rep, ok := n.view.report(id)
	return ok && rep.Ready
}

func preferredOr(want *groupInfo) uint64 {
	if want.Leader != 0 {
		return want.Leader
	}
	if len(want.Voters) > 0 {
		return want.Voters[0]
	}
	return 0
}

func (n *Node) transfer(ctx context.Context, g, to uint64, lastTransfer map[uint64]time.Time) error {
	if to == 0 || to == n.id || time.Since(lastTransfer[g]) < transferCooldown {
		return nil
	}
	lastTransfer[g] = time.Now()
	// Do not wait for it here: the loop moves on to other groups, and the
	// next pass sees the outcome.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		tctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
		defer cancel()
		if err := n.host.TransferLeadership(tctx, g, to); err != nil {
			n.logger.Debug("leadership transfer did not complete", "group", g, "to", to, "err", err)
		}
	}()
	return nil
}

// placementLoop runs placement on the meta group's leader.
func (n *Node) placementLoop() {
	defer n.wg.Done()
	// Placement is cheap when nothing changes (a cached document and a
	// read index), and its period adds to every replica move's latency.
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	rebalancing := false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if n.stopping.Load() || !n.isMetaLeader() {
			continue
		}
		m, err := n.meta.load()
		if err != nil {
			continue
		}
		moving := n.movingGroups(m)
		n.rebalancing.Store(len(moving) > 0)
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
		var detectedDead, revived []string
		next, err := n.updateMeta(ctx, func(m *metaState) error {
			detectedDead, revived = n.markDeadNodes(m)
			if !place(m, placementInput{moving: moving}) && len(detectedDead) == 0 && len(revived) == 0 {
				return errNoChange
			}
			return nil
		})
		cancel()
		if err != nil {
			if !errors.Is(err, replication.ErrNotLeader) {
				n.logger.Debug("placement", "err", err)
			}
			continue
		}
		for _, name := range detectedDead {
			n.events.emit(Event{Type: EventNodeLeave, Node: name, Reason: "dead",
				Message: fmt.Sprintf("unreachable for more than %v", n.cfg.DeadNodeTimeout)})
		}
		for _, name := range revived {
			n.events.emit(Event{Type: EventNodeRejoin, Node: name,
				Message: "answered again after being declared dead, without restarting; it holds no replicas until placement gives it some"})
		}
		// A rebalance starts when placement first changes something and
		// completes when it has nothing left to change and nothing moves:
		// one start and one complete around all its moves. A removal
		// places replicas itself (handleRemove): its moves are a
		// rebalance too.
		changed := next.version != m.version || n.placedByRemove.Swap(false)
		switch {
		case changed && !rebalancing:
			rebalancing = true
			n.events.emit(Event{Type: EventRebalanceStart, Message: "placement changed; moving replicas"})
		case !changed && rebalancing && len(moving) == 0:
			rebalancing = false
			n.events.emit(Event{Type: EventRebalanceComplete, Message: "every group has its desired replicas and leaders"})
		}
	}
}

// activeMark is when this node, as meta leader, first saw a node in its
// current state (active or dead), named by the state's Since.
type activeMark struct {
	since time.Time // the meta document's Since: which activation
	at    time.Time // this node's clock (monotonic) when it first saw it
}

// markDeadNodes declares dead the active nodes that have not answered the
// view poll for longer than the dead-node timeout, and brings back the dead
// ones that answer again. It returns the names of both.
//
// A node can come back without restarting (and so without a join request):
// a partition that heals, a process that was paused, one that was too slow
// to answer its first polls. Left dead, it would hold nothing for good.
// Its replicas were removed from their groups when it was declared dead, so
// it comes back empty, and placement gives it a share again.
func (n *Node) markDeadNodes(m *metaState) (dead, revived []string) {
	now := time.Now()
	for _, id := range m.sortedNodes() {
		ni := m.Nodes[id]
		if (ni.State != nodeActive && ni.State != nodeDead) || id == n.id {
			continue
		}
		// ni.Since (when State last changed) is wall-clock time, written
		// by whichever node led the meta group then: after a clock jump it
		// is worthless as the start of a timeout. What counts is when this
		// node first saw the node in that state (with that Since), on its
		// own monotonic clock. A node that just became meta leader thus
		// gives silent nodes one more timeout: later detection, never a
		// false one.
		seen, ok := n.activeSeen[id]
		if !ok || !seen.since.Equal(ni.Since) {
			seen = activeMark{since: ni.Since, at: now}
			n.activeSeen[id] = seen
		}
		last, answered := n.view.alive(id)
		if ni.State == nodeDead {
			if answered && last.After(seen.at) {
				ni.State, ni.Since = nodeActive, now.UTC()
				revived = append(revived, ni.Name)
			}
			continue
		}
		// Count from the last answer, from when this node started looking
		// (it never heard from it), or from when it saw the node become
		// active (it just joined, or came back from the dead), whichever
		// is latest: a node that joins a cluster whose meta leader has been
		// up longer than the timeout is not dead before its first poll.
		for _, t := range []time.Time{n.viewSince, seen.at} {
			if t.After(last) {
				last = t
			}
		}
		if now.Sub(last) > n.cfg.DeadNodeTimeout {
			ni.State, ni.Since = nodeDead, now.UTC()
			dead = append(dead, ni.Name)
		}
	}
	return dead, revived
}
