package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"kvnode/engine"
)

// Joining. A new node POSTs a joinRequest to any member's /join. The
// member forwards it to the meta group's leader, which gives the node a
// raft id (never reused) and records it in the cluster state. Placement
// then gives it replicas, which the groups' leaders add as learners, catch
// up by snapshot, and promote. A node restarting with its data dir sends
// its raft id, so that the cluster learns its new addresses.

type joinRequest struct {
	Name     string `json:"node_id"`
	ID       uint64 `json:"raft_id,omitempty"`
	HTTPAddr string `json:"http_addr"`
	KVAddr   string `json:"kv_addr"`
	// StartedAt names the joining process (its nodeReport says the same),
	// so that the meta leader can tell its view's last sight of the
	// previous process from the new one's, and say how long the node was
	// offline.
	StartedAt time.Time `json:"started_at,omitzero"`
}

type peerInfo struct {
	ID       uint64 `json:"raft_id"`
	Name     string `json:"node_id"`
	HTTPAddr string `json:"http_addr"`
	KVAddr   string `json:"kv_addr"`
}

type joinResponse struct {
	ID                uint64     `json:"raft_id"`
	ClusterID         string     `json:"cluster_id"`
	ClusterName       string     `json:"cluster_name"`
	Partitions        int        `json:"partitions"`
	ReplicationFactor int        `json:"replication_factor"`
	Nodes             []peerInfo `json:"nodes"`
}

func (r *joinResponse) clusterID() uint64 {
	id, _ := strconv.ParseUint(r.ClusterID, 16, 64)
	return id
}

// joinError is a refusal the joining node must not retry.
type joinError struct {
	status int
	msg    string
}

func (e *joinError) Error() string { return e.msg }

// join asks the cluster at addr to admit this node, retrying while the
// cluster is unreachable or busy.
func (n *Node) join(ctx context.Context, addr string) (*joinResponse, error) {
	req := joinRequest{Name: n.cfg.NodeID, HTTPAddr: n.cfg.httpAdvertise(), KVAddr: n.cfg.kvAdvertise(), StartedAt: n.startedAt}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := postJoin(ctx, n.fwd, addr, req)
		if err == nil {
			n.logger.Info("joined the cluster", "via", addr, "raft_id", resp.ID, "cluster_id", resp.ClusterID)
			return resp, nil
		}
		var je *joinError
		if errors.As(err, &je) {
			return nil, fmt.Errorf("joining through %s: %w", addr, err)
		}
		if attempt == 1 || attempt%10 == 0 {
			n.logger.Info("waiting to join the cluster", "via", addr, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("joining through %s: %w (last error: %v)", addr, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func postJoin(ctx context.Context, c *http.Client, addr string, req joinRequest) (*joinResponse, error) {
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/join", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := c.Do(hreq)
	if err != nil {
		return nil, err
	}
	defer hresp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hresp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if hresp.StatusCode != http.StatusOK {
		var eb struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &eb)
		if eb.Error == "" {
			eb.Error = string(b)
		}
		if hresp.StatusCode >= 400 && hresp.StatusCode < 500 {
			return nil, &joinError{status: hresp.StatusCode, msg: eb.Error}
		}
		return nil, fmt.Errorf("%s: %s", hresp.Status, eb.Error)
	}
	var resp joinResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		return nil, fmt.Errorf("bad join answer: %w", err)
	}
	if resp.ID == 0 || resp.clusterID() == 0 {
		return nil, fmt.Errorf("bad join answer: %s", b)
	}
	return &resp, nil
}

// admit handles a join request on the meta leader.
func (n *Node) admit(ctx context.Context, req joinRequest) (*joinResponse, error) {
	var id uint64
	var event *Event
	m, err := n.updateMeta(ctx, func(m *metaState) error {
		now := time.Now().UTC()
		event = nil
		if req.ID == 0 {
			if old := m.nodeByName(req.Name); old != nil && old.State != nodeRemoved {
				return &joinError{status: http.StatusConflict, msg: fmt.Sprintf(
					"node %q is already a member (raft id %d, state %s); restart it with its data dir to rejoin, "+
						"or remove it first (POST /remove?node=%s) to join again with an empty one",
					req.Name, old.ID, old.State, req.Name)}
			}
			id = m.NextNodeID
			m.NextNodeID++
			m.Nodes[id] = &nodeInfo{ID: id, Name: req.Name, HTTPAddr: req.HTTPAddr, KVAddr: req.KVAddr,
				State: nodeActive, JoinedAt: now, Since: now}
			event = &Event{Type: EventNodeJoin, Node: req.Name, Message: fmt.Sprintf("joined as raft id %d", id)}
			return nil
		}
		id = req.ID
		ni := m.Nodes[id]
		switch {
		case ni == nil:
			return &joinError{status: http.StatusNotFound, msg: fmt.Sprintf("raft id %d is not a member of this cluster", id)}
		case ni.Name != req.Name:
			return &joinError{status: http.StatusConflict, msg: fmt.Sprintf("raft id %d belongs to node %q, not %q", id, ni.Name, req.Name)}
		case ni.State == nodeRemoved:
			return &joinError{status: http.StatusForbidden, msg: fmt.Sprintf(
				"node %q (raft id %d) was removed from the cluster; start it with an empty data dir to join as a new node", req.Name, id)}
		}
		// Every rejoin of a known member is an event, a quick restart as
		// much as a return from the dead: operators want to see restarts.
		e := n.rejoinEvent(ni, req, now)
		event = &e
		switch {
		case ni.State == nodeDead:
			ni.State, ni.Since = nodeActive, now
		case ni.HTTPAddr == req.HTTPAddr && ni.KVAddr == req.KVAddr:
			return errNoChange
		}
		ni.HTTPAddr, ni.KVAddr = req.HTTPAddr, req.KVAddr
		return nil
	})
	if err != nil {
		return nil, err
	}
	if event != nil && (event.Type != EventNodeRejoin || n.view.firstRejoin(id, req.StartedAt)) {
		n.events.emit(*event)
	}
	resp := &joinResponse{ID: id, ClusterID: m.ClusterID, ClusterName: m.ClusterName,
		Partitions: m.Partitions, ReplicationFactor: m.ReplicationFactor}
	for _, nid := range m.sortedNodes() {
		ni := m.Nodes[nid]
		resp.Nodes = append(resp.Nodes, peerInfo{ID: ni.ID, Name: ni.Name, HTTPAddr: ni.HTTPAddr, KVAddr: ni.KVAddr})
	}
	return resp, nil
}

// rejoinEvent describes a known member's return. It was offline from the
// last time this node's view heard from its previous process until now;
// a node declared dead that the view never heard from (this node became
// meta leader since) was offline at least since it was declared dead plus
// the dead-node timeout.
func (n *Node) rejoinEvent(ni *nodeInfo, req joinRequest, now time.Time) Event {
	e := Event{Type: EventNodeRejoin, Node: req.Name}
	var what string
	switch {
	case ni.State == nodeDead:
		what = "came back after being declared dead"
	case ni.HTTPAddr != req.HTTPAddr || ni.KVAddr != req.KVAddr:
		what = "restarted with new addresses"
	default:
		what = "restarted"
	}
	if last, ok := n.view.lastSeenBefore(ni.ID, req.StartedAt); ok {
		e.Offline = now.Sub(last).Round(time.Millisecond).String()
		e.Message = fmt.Sprintf("%s; last heard from %s before", what, e.Offline)
	} else if ni.State == nodeDead {
		e.Offline = (now.Sub(ni.Since) + n.cfg.DeadNodeTimeout).Round(time.Millisecond).String()
		e.Message = fmt.Sprintf("%s; offline at least %s", what, e.Offline)
	} else {
		e.Message = what + "; offline time unknown (this node never heard from its previous process)"
	}
	return e
}

// rejoin tells the cluster this restarted node's current addresses. It
// retries until a member answers; a refusal (the node was removed while it
// was down) stops the node.
func (n *Node) rejoin() {
	defer n.wg.Done()
	req := joinRequest{Name: n.cfg.NodeID, ID: n.id, HTTPAddr: n.cfg.httpAdvertise(), KVAddr: n.cfg.kvAdvertise(),
		StartedAt: n.startedAt}
	backoff := 200 * time.Millisecond
	for attempt := 1; n.ctx.Err() == nil; attempt++ {
		for _, addr := range n.joinTargets() {
			ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RequestTimeout)
			_, err := postJoin(ctx, n.fwd, addr, req)
			cancel()
			if err == nil {
				return
			}
			var je *joinError
			if errors.As(err, &je) && je.status == http.StatusForbidden {
				n.logger.Error("the cluster refuses this node; stopping", "err", err)
				n.fail(err)
				return
			}
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// joinTargets lists HTTP addresses to send a rejoin to: the meta leader
// first if known, then every other member, then JOIN_ADDR.
func (n *Node) joinTargets() []string {
	var out []string
	if m, err := n.meta.load(); err == nil {
		if ld, ok := n.metaLeader(m); ok && ld.ID != n.id {
			out = append(out, ld.HTTPAddr)
		}
		for _, id := range m.sortedNodes() {
			if ni := m.Nodes[id]; id != n.id && ni.State != nodeRemoved {
				out = append(out, ni.HTTPAddr)
			}
		}
	}
	if n.cfg.JoinAddr != "" {
		out = append(out, n.cfg.JoinAddr)
	}
	if len(out) == 0 {
		// Alone: we are the meta leader, or will be.
		out = append(out, n.cfg.httpAdvertise())
	}
	return out
}

// createMeta writes the first cluster state.
func (n *Node) createMeta(ctx context.Context, m *metaState) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	res, err := n.host.Propose(ctx, metaGroup, []engine.Op{{Kind: engine.OpCompareAndSet, Key: metaKey, Value: b}})
	if err != nil {
		return err
	}
	if !res[0].OK {
		return errors.New("the cluster state already exists")
	}
	return nil
}
