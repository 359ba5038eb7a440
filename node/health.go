package node

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Cluster health. The meta group's leader judges the whole cluster after
// every view poll. The cluster is degraded while
//   - an active node does not answer,
//   - a group has a voter on a node that does not answer (it has fewer
//     live replicas than placement gave it, until the replica is
//     re-created elsewhere and the lost one removed), or
//   - a group has no known leader.
//
// Growing and draining are not degradations: every voter answers while
// replicas move. A node declared dead whose replicas were all re-created
// leaves the cluster healthy (the event says it is still a member).
//
// A new verdict must hold for healthSettle before it is announced as a
// cluster_health_change event: the view lags (a leadership that moved
// between two nodes' reports looks like a leaderless group for one poll),
// and an event per poll would bury the real changes.

const healthSettle = time.Second

// healthState is the meta leader's last announced verdict.
type healthState struct {
	// leading says this node judged as meta leader at its last poll; a
	// node that becomes meta leader starts from "healthy", so it
	// announces a degraded cluster it inherits.
	leading  bool
	degraded bool
	// pending is when the opposite verdict was first seen, zero if the
	// last judgement agreed with the announced one.
	pending time.Time
}

// answering reports whether node id answered the view's recent polls (this
// node always does).
func (n *Node) answering(id uint64) bool {
	if id == n.id {
		return true
	}
	last, ok := n.view.alive(id)
	return ok && time.Since(last) < 3*viewPollInterval+time.Second
}

// judgeCluster returns why the cluster is degraded, or nothing if it is
// healthy.
func (n *Node) judgeCluster(m *metaState) []string {
	var reasons, unreachable []string
	for _, id := range m.sortedNodes() {
		if ni := m.Nodes[id]; ni.State == nodeActive && !n.answering(id) {
			unreachable = append(unreachable, ni.Name)
		}
	}
	if len(unreachable) > 0 {
		reasons = append(reasons, "unreachable: "+strings.Join(unreachable, ", "))
	}
	var short, leaderless, lostOn []string
	for _, g := range m.sortedGroups() {
		gr, ok := n.view.leaderOf(g)
		if !ok {
			leaderless = append(leaderless, partitionName(g))
			continue
		}
		missing := false
		for _, id := range gr.Voters {
			if !n.answering(id) {
				missing = true
				if name := m.nodeName(id); !slices.Contains(lostOn, name) {
					lostOn = append(lostOn, name)
				}
			}
		}
		if missing {
			short = append(short, partitionName(g))
		}
	}
	if len(short) > 0 {
		reasons = append(reasons, fmt.Sprintf("%d partitions under-replicated (%s), replicas lost on %s",
			len(short), abbreviate(short), strings.Join(lostOn, ", ")))
	}
	if len(leaderless) > 0 {
		reasons = append(reasons, fmt.Sprintf("%d partitions without a known leader (%s)", len(leaderless), abbreviate(leaderless)))
	}
	return reasons
}

// abbreviate lists the first few names: an event line stays readable when
// a whole node's worth of partitions is affected.
func abbreviate(names []string) string {
	const show = 4
	if len(names) <= show {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:show], ", "), len(names)-show)
}

// noteClusterHealth judges the cluster on the meta leader and emits a
// cluster_health_change event when the verdict has changed for
// healthSettle.
func (n *Node) noteClusterHealth(m *metaState, now time.Time) {
	if !n.isMetaLeader() {
		n.view.mu.Lock()
		n.view.health = healthState{}
		n.view.mu.Unlock()
		return
	}
	reasons := n.judgeCluster(m)
	degraded := len(reasons) > 0
	n.view.mu.Lock()
	h := &n.view.health
	if !h.leading {
		*h = healthState{leading: true}
	}
	switch {
	case degraded == h.degraded:
		h.pending = time.Time{}
		n.view.mu.Unlock()
		return
	case h.pending.IsZero():
		h.pending = now
		n.view.mu.Unlock()
		return
	case now.Sub(h.pending) < healthSettle:
		n.view.mu.Unlock()
		return
	}
	h.degraded, h.pending = degraded, time.Time{}
	n.view.mu.Unlock()

	e := Event{Type: EventClusterHealthChange, Health: "healthy",
		Message: "every active node answers; every partition has a leader and all its replicas"}
	if degraded {
		e.Health, e.Message = "degraded", strings.Join(reasons, "; ")
	} else {
		var dead []string
		for _, id := range m.sortedNodes() {
			if ni := m.Nodes[id]; ni.State == nodeDead {
				dead = append(dead, ni.Name)
			}
		}
		if len(dead) > 0 {
			e.Message += fmt.Sprintf(" (still members though dead: %s; POST /remove forgets them)", strings.Join(dead, ", "))
		}
	}
	n.events.emit(e)
}
