package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Operator endpoints: events, rebalance status, node removal.

// handleEvents streams the node's events as server-sent events: the recent
// ones after ?since=SEQ (or the Last-Event-ID header), then new ones as
// they happen. With ?format=json it returns the recent ones as an array.
func (n *Node) handleEvents(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("format") == "json" {
		// The recent events as one JSON array, for scripts and tests.
		writeJSON(w, http.StatusOK, n.events.recent())
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	after := uint64(0)
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		after, _ = strconv.ParseUint(s, 10, 64)
	} else if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("since %q is not an event sequence number", s))
			return
		}
		after = v
	}
	past, ch, cancel := n.events.subscribe(after)
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	send := func(e Event) bool {
		b, _ := json.Marshal(e)
		_, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, b)
		return err == nil
	}
	for _, e := range past {
		if !send(e) {
			return
		}
	}
	fl.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-n.ctx.Done():
			return
		case e, ok := <-ch:
			if !ok || !send(e) {
				return
			}
			fl.Flush()
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

// moveStatus is one group on the way to its desired replicas.
type moveStatus struct {
	Partition string   `json:"partition"`
	Current   []string `json:"current"`
	Desired   []string `json:"desired"`
	Learners  []string `json:"learners,omitempty"`
}

// rebalanceStatus is replica movement as this node's view sees it. GET
// /rebalance returns it, and GET /cluster embeds it as "rebalance", so that
// one look at the cluster shows whether it is still settling.
type rebalanceStatus struct {
	Rebalancing      bool         `json:"rebalancing"`
	PartitionsMoving int          `json:"partitions_moving"`
	Moves            []moveStatus `json:"moves"`
	// SnapshotBytesSent and SnapshotsSent add up every node's snapshot
	// streams since it started: the bytes a rebalance has moved so far.
	SnapshotBytesSent uint64 `json:"snapshot_bytes_sent"`
	SnapshotsSent     uint64 `json:"snapshots_sent"`
	// ETASeconds is absent until the rate of completed moves is known.
	ETASeconds *float64 `json:"eta_seconds,omitempty"`
}

// rebalanceStatus reports what is moving, the snapshot bytes sent so far
// by every node, and an estimate of the time left from the recent rate of
// completed moves.
func (n *Node) rebalanceStatus(m *metaState) rebalanceStatus {
	moving := n.movingGroups(m)
	st := rebalanceStatus{Moves: []moveStatus{}}
	for _, g := range m.sortedGroups() {
		if !moving[g] {
			continue
		}
		ms := moveStatus{Partition: partitionName(g)}
		for _, id := range m.Groups[g].Voters {
			ms.Desired = append(ms.Desired, m.nodeName(id))
		}
		if gr, ok := n.view.leaderOf(g); ok {
			for _, id := range gr.Voters {
				ms.Current = append(ms.Current, m.nodeName(id))
			}
			for _, id := range gr.Learners {
				ms.Learners = append(ms.Learners, m.nodeName(id))
			}
		}
		st.Moves = append(st.Moves, ms)
	}
	st.Rebalancing, st.PartitionsMoving = len(st.Moves) > 0, len(st.Moves)
	for _, id := range m.sortedNodes() {
		if rep, ok := n.view.report(id); ok {
			st.SnapshotBytesSent += rep.SnapshotBytesSent
			st.SnapshotsSent += rep.SnapshotsSent
		}
	}
	if eta, ok := n.rebalanceETA(len(st.Moves)); ok {
		secs := eta.Seconds()
		st.ETASeconds = &secs
	}
	return st
}

func (n *Node) handleRebalance(w http.ResponseWriter, r *http.Request) {
	m, err := n.meta.load()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, n.rebalanceStatus(m))
}

// rebalanceETA estimates the time left from how fast the number of moving
// groups has been falling.
func (n *Node) rebalanceETA(moving int) (time.Duration, bool) {
	if moving == 0 {
		return 0, true
	}
	n.view.mu.Lock()
	defer n.view.mu.Unlock()
	h := n.view.movingHistory
	if len(h) < 2 {
		return 0, false
	}
	first, last := h[0], h[len(h)-1]
	done := first.moving - last.moving
	el := last.at.Sub(first.at)
	if done <= 0 || el <= 0 {
		return 0, false
	}
	return time.Duration(float64(el) / float64(done) * float64(moving)), true
}

// handleRemove removes a node: a live one is drained (placement moves its
// replicas to the others, each removed only after its replacement caught
// up), a dead one is forgotten the same way. Refused if the remaining
// active nodes could not hold every partition's replicas, unless
// ?force=true.
func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("node")
	if name == "" {
		writeError(w, http.StatusBadRequest, "missing ?node=NODE_ID")
		return
	}
	force := r.URL.Query().Get("force") == "true"
	if !n.isMetaLeader() {
		n.forwardToMetaLeader(w, r, nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.RequestTimeout)
	defer cancel()
	var prev string
	_, err := n.updateMeta(ctx, func(m *metaState) error {
		ni := m.nodeByName(name)
		if ni == nil {
			return &joinError{status: http.StatusNotFound, msg: fmt.Sprintf("no node %q in the cluster", name)}
		}
		if ni.State == nodeRemoved {
			return errNoChange
		}
		active := m.activeNodes()
		remaining := len(active)
		if slices.Contains(active, ni.ID) {
			remaining--
		}
		if remaining < 1 {
			return &joinError{status: http.StatusConflict, msg: "cannot remove the last active node"}
		}
		if remaining < m.ReplicationFactor && !force {
			return &joinError{status: http.StatusConflict, msg: fmt.Sprintf(
				"removing %q would leave %d active nodes for a replication factor of %d; add a node first, or pass force=true",
				name, remaining, m.ReplicationFactor)}
		}
		prev = ni.State
		ni.State, ni.Since = nodeRemoved, time.Now().UTC()
		place(m, placementInput{moving: map[uint64]bool{}})
		return nil
	})
	if err != nil {
		var je *joinError
		if errors.As(err, &je) {
			writeError(w, je.status, je.msg)
			return
		}
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if prev != "" {
		n.placedByRemove.Store(true)
		n.events.emit(Event{Type: EventNodeLeave, Node: name, Reason: "removed",
			Message: fmt.Sprintf("removed by an operator (was %s); its replicas move to the other nodes", prev)})
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"node": name, "state": nodeRemoved,
		"message": "replicas are moving away; follow GET /rebalance"})
}
