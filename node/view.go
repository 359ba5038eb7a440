package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// The cluster view. A node knows the raft state only of the groups it
// holds. To answer /cluster for every partition, to tell which groups are
// still moving, and to notice dead nodes, every node polls every other
// active node's /internal/groups, where each reports the groups it leads.
// For each group the report with the highest term wins.

// groupReport is what a group's leader says about it.
type groupReport struct {
	Group    uint64   `json:"group"`
	Leader   uint64   `json:"leader"`
	Term     uint64   `json:"term"`
	Commit   uint64   `json:"commit"`
	Voters   []uint64 `json:"voters"`
	Learners []uint64 `json:"learners,omitempty"`
}

// nodeReport is one node's answer to /internal/groups.
type nodeReport struct {
	Node     uint64        `json:"node"`
	Replicas int           `json:"replicas"`
	Ready    bool          `json:"ready"`
	Leads    []groupReport `json:"leads"`
	// SnapshotsSent and SnapshotBytesSent count this node's snapshot
	// streams since it started (rebalance progress).
	SnapshotsSent     uint64 `json:"snapshots_sent"`
	SnapshotBytesSent uint64 `json:"snapshot_bytes_sent"`
	// StartedAt names the node's process: a different value means it
	// restarted (see view.lastSeenBefore).
	StartedAt time.Time `json:"started_at,omitzero"`
}

// localReport builds this node's report.
func (n *Node) localReport(ctx context.Context) nodeReport {
	r := nodeReport{Node: n.id, StartedAt: n.startedAt}
	groups := n.host.Groups()
	r.Replicas = len(groups)
	r.Ready = n.readiness() == nil
	tm := n.tr.Metrics().Total
	r.SnapshotsSent, r.SnapshotBytesSent = tm.SnapshotsSent, tm.SnapshotBytesSent
	for _, g := range groups {
		st, err := n.host.Status(g)
		if err != nil || !st.IsLeader {
			continue
		}
		r.Leads = append(r.Leads, groupReport{Group: g, Leader: n.id, Term: st.Term, Commit: st.Commit,
			Voters: st.Voters, Learners: st.Learners})
	}
	return r
}

type view struct {
	mu      sync.Mutex
	reports map[uint64]nodeReport
	lastOK  map[uint64]time.Time
	lastErr map[uint64]string
	// movingHistory samples the number of moving groups over the last
	// minute, for the rebalance time estimate.
	movingHistory []movingSample
	// ready is this node's readiness at the last poll.
	ready, readyKnown bool
	// incarnation is the StartedAt of each node's last report, and
	// prevLastOK when the view last heard from the process before it: how
	// long a restarted node was away, even when the view saw its new
	// process before its rejoin request arrived.
	incarnation map[uint64]time.Time
	prevLastOK  map[uint64]time.Time
	// rejoined is the StartedAt of each node's last announced rejoin, so
	// that a rejoin retried (its answer was lost) is announced once.
	rejoined map[uint64]time.Time
	// health is the meta leader's judgement of the cluster (health.go).
	health healthState
}

type movingSample struct {
	at     time.Time
	moving int
}

func newView() *view {
	return &view{reports: map[uint64]nodeReport{}, lastOK: map[uint64]time.Time{}, lastErr: map[uint64]string{},
		incarnation: map[uint64]time.Time{}, prevLastOK: map[uint64]time.Time{}, rejoined: map[uint64]time.Time{}}
}

// noteReport records a node's answer to a poll. v.mu must be held.
func (v *view) noteReport(id uint64, r nodeReport, at time.Time) {
	if inc, ok := v.incarnation[id]; ok && !inc.Equal(r.StartedAt) {
		if last, ok := v.lastOK[id]; ok {
			v.prevLastOK[id] = last
		}
	}
	v.incarnation[id] = r.StartedAt
	v.reports[id], v.lastOK[id] = r, at
	delete(v.lastErr, id)
}

// lastSeenBefore returns when the view last heard from node id's process
// before the one started at started, if it ever did.
func (v *view) lastSeenBefore(id uint64, started time.Time) (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if inc, ok := v.incarnation[id]; ok && inc.Equal(started) {
		// The view already polled the new process.
		t, ok := v.prevLastOK[id]
		return t, ok
	}
	t, ok := v.lastOK[id]
	return t, ok
}

// firstRejoin reports whether the rejoin of node id's process started at
// started has not been announced yet, and marks it announced.
func (v *view) firstRejoin(id uint64, started time.Time) bool {
	if started.IsZero() {
		return true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if prev, ok := v.rejoined[id]; ok && prev.Equal(started) {
		return false
	}
	v.rejoined[id] = started
	return true
}

// holdsReplicas reports whether some group's leader, as last reported,
// counts node id among its members.
func (v *view) holdsReplicas(id uint64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range v.reports {
		for _, gr := range r.Leads {
			if slices.Contains(gr.Voters, id) || slices.Contains(gr.Learners, id) {
				return true
			}
		}
	}
	return false
}

// leaderOf returns the freshest report of group g.
func (v *view) leaderOf(g uint64) (groupReport, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var best groupReport
	found := false
	for _, r := range v.reports {
		for _, gr := range r.Leads {
			if gr.Group == g && (!found || gr.Term > best.Term) {
				best, found = gr, true
			}
		}
	}
	return best, found
}

// alive reports when a node last answered, and whether it ever did.
func (v *view) alive(id uint64) (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t, ok := v.lastOK[id]
	return t, ok
}

func (v *view) report(id uint64) (nodeReport, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.reports[id]
	return r, ok
}

// pollLoop refreshes the view from every active node.
func (n *Node) pollLoop() {
	defer n.wg.Done()
	t := time.NewTicker(fastPollInterval)
	defer t.Stop()
	last := time.Time{}
	for {
		// The meta leader polls fast while groups move: it is what notices
		// that a move finished, so the next can start.
		interval := viewPollInterval
		if n.isMetaLeader() && n.rebalancing.Load() {
			interval = fastPollInterval
		}
		if time.Since(last) >= interval {
			last = time.Now()
			n.pollOnce()
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
	}
}

const fastPollInterval = 20 * time.Millisecond

const viewPollInterval = 300 * time.Millisecond

func (n *Node) pollOnce() {
	n.noteHealth()
	m, err := n.meta.load()
	if err != nil {
		return
	}
	now := time.Now()
	var wg sync.WaitGroup
	for _, id := range m.sortedNodes() {
		ni := m.Nodes[id]
		if ni.State == nodeRemoved && !n.view.holdsReplicas(id) {
			// A removed node is still polled while it holds replicas (it
			// is being drained, or was forgotten dead): the groups it
			// leads, and whether its replicas are reachable, still count.
			n.view.mu.Lock()
			delete(n.view.reports, id)
			n.view.mu.Unlock()
			continue
		}
		if id == n.id {
			ctx, cancel := context.WithTimeout(n.ctx, time.Second)
			r := n.localReport(ctx)
			cancel()
			n.view.mu.Lock()
			n.view.noteReport(id, r, now)
			n.view.mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := n.fetchReport(ni.HTTPAddr)
			n.view.mu.Lock()
			defer n.view.mu.Unlock()
			if err != nil {
				n.view.lastErr[id] = err.Error()
				// A node that stopped answering leads nothing we know of.
				delete(n.view.reports, id)
				return
			}
			if r.Node != id {
				n.view.lastErr[id] = fmt.Sprintf("address %s answers as node %d", ni.HTTPAddr, r.Node)
				delete(n.view.reports, id)
				return
			}
			n.view.noteReport(id, r, time.Now())
		}()
	}
	wg.Wait()
	moving := len(n.movingGroups(m))
	n.view.mu.Lock()
	h := append(n.view.movingHistory, movingSample{at: now, moving: moving})
	for len(h) > 0 && now.Sub(h[0].at) > time.Minute {
		h = h[1:]
	}
	if moving == 0 {
		h = h[:0]
	}
	n.view.movingHistory = h
	n.view.mu.Unlock()
	n.noteClusterHealth(m, time.Now())
}

func (n *Node) fetchReport(addr string) (nodeReport, error) {
	ctx, cancel := context.WithTimeout(n.ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/internal/groups", nil)
	if err != nil {
		return nodeReport{}, err
	}
	resp, err := n.fwd.Do(req)
	if err != nil {
		return nodeReport{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeReport{}, fmt.Errorf("%s", resp.Status)
	}
	var r nodeReport
	err = json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&r)
	return r, err
}

// movingGroups lists the groups whose raft configuration differs from
// their desired placement, or whose leader is not known.
func (n *Node) movingGroups(m *metaState) map[uint64]bool {
	moving := map[uint64]bool{}
	for gid, g := range m.Groups {
		gr, ok := n.view.leaderOf(gid)
		if !ok {
			moving[gid] = true
			continue
		}
		if !sameSet(gr.Voters, g.Voters) || !sameSet(gr.Learners, g.Learners) {
			moving[gid] = true
		}
	}
	return moving
}

func sameSet(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// noteHealth emits a health_change event when this node's readiness
// flips, with the reason it is not ready.
func (n *Node) noteHealth() {
	err := n.readiness()
	ready := err == nil
	n.view.mu.Lock()
	prev, known := n.view.ready, n.view.readyKnown
	n.view.ready, n.view.readyKnown = ready, true
	n.view.mu.Unlock()
	if known && prev == ready {
		return
	}
	e := Event{Type: EventHealthChange, Node: n.cfg.NodeID, Message: "ready"}
	if !ready {
		e.Message = "not ready: " + err.Error()
	}
	if known || !ready {
		n.events.emit(e)
	}
}
