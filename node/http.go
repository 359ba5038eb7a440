package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"kvnode/engine"
	"kvnode/wire"
)

// The HTTP API. Errors are JSON {"error": "..."} with a status that says
// what kind: 400 bad input, 404 absent key, 409 version mismatch, 413 too
// large, 503 (with Retry-After) no leader or no quorum in time.

const forwardedHeader = "X-Kvnode-Forwarded"

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cluster", n.handleCluster)
	mux.HandleFunc("GET /health", n.handleHealth)
	mux.HandleFunc("GET /ready", n.handleReady)
	mux.HandleFunc("POST /join", n.handleJoin)
	mux.HandleFunc("GET /internal/groups", n.handleInternalGroups)
	mux.HandleFunc("GET /events", n.handleEvents)
	mux.HandleFunc("GET /rebalance", n.handleRebalance)
	mux.HandleFunc("POST /remove", n.handleRemove)
	mux.Handle("GET /metrics", n.metrics.handler())
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)

	// The ClusterKit example's paths. A key literally named "set", "get",
	// "delete" or "stats" is reached with ?key= instead.
	mux.HandleFunc("POST /kv/set", n.handleCKSet)
	mux.HandleFunc("GET /kv/get", n.handleCKGet)
	mux.HandleFunc("DELETE /kv/delete", n.handleCKDelete)
	mux.HandleFunc("POST /kv/delete", n.handleCKDelete)
	// Without this, GET /kv/delete?key=k would read a key named "delete"
	// (404) and look like a delete that found nothing. A delete must not be
	// a GET (crawlers and prefetchers replay GETs), so say how to do it.
	mux.HandleFunc("GET /kv/delete", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "DELETE, POST")
		writeError(w, http.StatusMethodNotAllowed, "delete with DELETE or POST /kv/delete?key=..., not GET (to read a key named \"delete\", use GET /kv/get?key=delete)")
	})
	mux.HandleFunc("GET /kv/stats", n.handleStats)

	mux.HandleFunc("GET /kv/{key...}", n.handleGet)
	mux.HandleFunc("PUT /kv/{key...}", n.handlePut)
	mux.HandleFunc("DELETE /kv/{key...}", n.handleDelete)
	return n.metrics.instrument(jsonMuxErrors(mux))
}

// jsonMuxErrors makes the mux's own 404 (no such path) and 405 (a path
// served, but not with this method) JSON {"error"} like every other error
// of the API, instead of Go's plain text.
func jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(&muxErrorWriter{ResponseWriter: w, r: r}, r)
	})
}

// muxErrorWriter replaces the body of a 404 or 405 written by the mux.
type muxErrorWriter struct {
	http.ResponseWriter
	r        *http.Request
	replaced bool
}

func (w *muxErrorWriter) WriteHeader(code int) {
	var msg string
	switch code {
	case http.StatusNotFound:
		msg = fmt.Sprintf("no such endpoint: %s %s", w.r.Method, w.r.URL.Path)
	case http.StatusMethodNotAllowed:
		msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", w.r.Method, w.r.URL.Path, w.Header().Get("Allow"))
	default: // a redirect to the canonical path, say: as the mux wrote it
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.replaced = true
	w.Header().Del("X-Content-Type-Options")
	writeError(w.ResponseWriter, code, msg)
}

func (w *muxErrorWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the mux's plain-text body, already replaced
	}
	return w.ResponseWriter.Write(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

// writeOpError maps an operation error to its status.
func writeOpError(w http.ResponseWriter, err error) {
	var nl *notLeaderError
	switch {
	case errors.Is(err, errBadRequest):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, errTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, engine.ErrNotFound):
		writeError(w, http.StatusNotFound, "key not found")
	case errors.As(err, &nl), errors.Is(err, errUnavailable), errors.Is(err, errStopping),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// writeContext is the context a write runs under: the request's, without
// its cancellation. Go's server cancels a request whose client half-closes
// its connection after sending it (or goes away); the write may be in the
// log already, so it runs to its outcome (within the request timeout) and
// the answer goes to whoever still reads.
func writeContext(r *http.Request) context.Context {
	return context.WithoutCancel(r.Context())
}

// keyFromPath returns the {key...} of a /kv/ path, unescaped.
func keyFromPath(r *http.Request) []byte { return []byte(r.PathValue("key")) }

// readValue reads a request body up to the value limit.
func (n *Node) readValue(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, int64(n.cfg.MaxValueSize)+1)
	v, err := io.ReadAll(body)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) || len(v) > n.cfg.MaxValueSize {
		return nil, fmt.Errorf("%w: value exceeds the limit of %d bytes (--max-value-size)", errTooLarge, n.cfg.MaxValueSize)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading the body: %v", errBadRequest, err)
	}
	return v, nil
}

// forward sends a request this node cannot serve to the node that can,
// and reports whether it did. body is the request body already read.
func (n *Node) forward(w http.ResponseWriter, r *http.Request, err error, body []byte) bool {
	var nl *notLeaderError
	if !errors.As(err, &nl) || nl.Leader == nil || nl.Leader.ID == n.id {
		return false
	}
	hops, _ := strconv.Atoi(r.Header.Get(forwardedHeader))
	if hops >= 2 {
		return false // leadership is moving; let the client retry
	}
	url := "http://" + nl.Leader.HTTPAddr + r.URL.RequestURI()
	req, rerr := http.NewRequestWithContext(r.Context(), r.Method, url, bytes.NewReader(body))
	if rerr != nil {
		return false
	}
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	req.Header.Set(forwardedHeader, strconv.Itoa(hops+1))
	resp, ferr := n.fwd.Do(req)
	if ferr != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("forwarding to the leader %s: %v", nl.Leader.Name, ferr))
		return true
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Retry-After", versionHeader} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.Header().Set("X-Kvnode-Served-By", nl.Leader.Name)
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	n.metrics.forwards.Inc()
	return true
}

const versionHeader = "X-Kvnode-Version"

// forwardToMetaLeader sends a request that only the meta group's leader
// can serve (joins, removals) to it.
func (n *Node) forwardToMetaLeader(w http.ResponseWriter, r *http.Request, body []byte) {
	var ld *nodeInfo
	if m, err := n.meta.load(); err == nil {
		ld, _ = n.metaLeader(m)
	}
	if ld == nil || !n.forward(w, r, &notLeaderError{Group: metaGroup, Leader: ld}, body) {
		writeError(w, http.StatusServiceUnavailable, "the cluster has no meta leader right now; retry")
	}
}

func (n *Node) handleGet(w http.ResponseWriter, r *http.Request) {
	key := keyFromPath(r)
	stale, err := parseConsistency(r)
	if err != nil {
		writeOpError(w, err)
		return
	}
	v, ver, err := n.get(r.Context(), key, stale)
	if err != nil {
		if !n.forward(w, r, err, nil) {
			writeOpError(w, err)
		}
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(versionHeader, strconv.FormatUint(ver, 10))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(v)
}

func parseConsistency(r *http.Request) (stale bool, err error) {
	switch c := r.URL.Query().Get("consistency"); c {
	case "", "linearizable", "strong":
		return false, nil
	case "stale":
		return true, nil
	default:
		return false, fmt.Errorf("%w: consistency %q is not one of linearizable, stale", errBadRequest, c)
	}
}

func (n *Node) handlePut(w http.ResponseWriter, r *http.Request) {
	key := keyFromPath(r)
	value, err := n.readValue(w, r)
	if err != nil {
		writeOpError(w, err)
		return
	}
	var ver uint64
	if iv := r.URL.Query().Get("if_version"); iv != "" {
		expect, perr := strconv.ParseUint(iv, 10, 64)
		if perr != nil {
			writeOpError(w, fmt.Errorf("%w: if_version %q is not a version number", errBadRequest, iv))
			return
		}
		var ok bool
		ok, ver, err = n.cas(writeContext(r), key, value, expect)
		if err == nil && !ok {
			writeJSON(w, http.StatusConflict, map[string]any{
				"error": fmt.Sprintf("version mismatch: the key's version is %d, not %d", ver, expect), "version": ver})
			return
		}
	} else {
		ver, err = n.put(writeContext(r), key, value)
	}
	if err != nil {
		if !n.forward(w, r, err, value) {
			writeOpError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"version": ver})
}

func (n *Node) handleDelete(w http.ResponseWriter, r *http.Request) {
	n.deleteKey(w, r, keyFromPath(r))
}

func (n *Node) deleteKey(w http.ResponseWriter, r *http.Request, key []byte) {
	ver, err := n.del(writeContext(r), key)
	if err != nil {
		if !n.forward(w, r, err, nil) {
			writeOpError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"version": ver, "deleted": ver != 0})
}

// ClusterKit example aliases.

func (n *Node) handleCKSet(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(n.cfg.MaxValueSize)*2+int64(n.cfg.MaxKeySize)+1024))
	if err != nil {
		writeOpError(w, fmt.Errorf("%w: request body too large", errTooLarge))
		return
	}
	var req struct {
		Key   *string `json:"key"`
		Value *string `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeOpError(w, fmt.Errorf("%w: body must be JSON {\"key\": string, \"value\": string}: %v", errBadRequest, err))
		return
	}
	if req.Key == nil || req.Value == nil {
		writeOpError(w, fmt.Errorf("%w: body must have both \"key\" and \"value\"", errBadRequest))
		return
	}
	ver, err := n.put(writeContext(r), []byte(*req.Key), []byte(*req.Value))
	if err != nil {
		if !n.forward(w, r, err, body) {
			writeOpError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "key": *req.Key, "version": ver})
}

func (n *Node) handleCKGet(w http.ResponseWriter, r *http.Request) {
	if !r.URL.Query().Has("key") {
		r.SetPathValue("key", "get")
		n.handleGet(w, r)
		return
	}
	key := r.URL.Query().Get("key")
	stale, err := parseConsistency(r)
	if err != nil {
		writeOpError(w, err)
		return
	}
	v, ver, err := n.get(r.Context(), []byte(key), stale)
	if err != nil {
		if !n.forward(w, r, err, nil) {
			writeOpError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": key, "value": string(v), "version": ver})
}

func (n *Node) handleCKDelete(w http.ResponseWriter, r *http.Request) {
	if !r.URL.Query().Has("key") {
		if r.Method == http.MethodDelete {
			n.deleteKey(w, r, []byte("delete"))
			return
		}
		writeOpError(w, fmt.Errorf("%w: missing ?key=", errBadRequest))
		return
	}
	n.deleteKey(w, r, []byte(r.URL.Query().Get("key")))
}

func (n *Node) handleStats(w http.ResponseWriter, r *http.Request) {
	var keys, bytes int64
	led := 0
	groups := n.host.Groups()
	for _, g := range groups {
		if g == metaGroup {
			continue
		}
		if k, b, err := n.eng.PartitionStats(g); err == nil {
			keys += k
			bytes += b
		}
		if st, err := n.host.Status(g); err == nil && st.IsLeader {
			led++
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"node":             n.cfg.NodeID,
		"replicas":         len(groups),
		"partitions_led":   led,
		"local_keys":       keys,
		"local_bytes":      bytes,
		"writes":           n.metrics.writesTotal(),
		"reads":            n.metrics.readsTotal(),
		"forwarded":        n.metrics.forwardsTotal(),
		"ready":            n.readiness() == nil,
		"max_key_size":     n.cfg.MaxKeySize,
		"max_value_size":   n.cfg.MaxValueSize,
		"request_timeout":  n.cfg.RequestTimeout.String(),
		"replication_mode": "raft quorum (fsync before ack)",
	})
}

// /cluster, in ClusterKit's shape.

type ckNode struct {
	ID       string            `json:"id"`
	IP       string            `json:"ip"`
	Name     string            `json:"name"`
	Status   string            `json:"status"`
	Services map[string]string `json:"services"`
	RaftID   uint64            `json:"raft_id"`
}

type ckPartition struct {
	ID           string   `json:"id"`
	PrimaryNode  string   `json:"primary_node"`
	ReplicaNodes []string `json:"replica_nodes"`
	// LearnerNodes are replicas being added and still catching up (not
	// voting yet): where a rebalance is moving this partition to. Not in
	// ClusterKit's shape, so absent when empty.
	LearnerNodes []string `json:"learner_nodes,omitempty"`
}

func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	m, err := n.meta.load()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	nodes := []ckNode{}
	for _, id := range m.sortedNodes() {
		ni := m.Nodes[id]
		if ni.State == nodeRemoved {
			continue
		}
		host := ni.HTTPAddr
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
		nodes = append(nodes, ckNode{ID: ni.Name, IP: host, Name: ni.Name, Status: n.nodeStatus(ni),
			Services: map[string]string{"kv": ni.KVAddr, "http": ni.HTTPAddr}, RaftID: id})
	}
	parts := map[string]ckPartition{}
	for p := range m.Partitions {
		g := partitionGroup(p)
		name := wire.PartitionName(p)
		cp := ckPartition{ID: name, ReplicaNodes: []string{}}
		var members []uint64
		if gr, ok := n.view.leaderOf(g); ok {
			cp.PrimaryNode = m.nodeName(gr.Leader)
			members = gr.Voters
			for _, id := range gr.Learners {
				cp.LearnerNodes = append(cp.LearnerNodes, m.nodeName(id))
			}
			slices.Sort(cp.LearnerNodes)
			if id, err := n.host.Leader(g); err == nil && id != 0 && id != gr.Leader {
				// This node holds a replica and knows better (fresher).
				cp.PrimaryNode = m.nodeName(id)
			}
		} else if ld := n.leaderOf(g); ld != nil {
			cp.PrimaryNode = ld.Name
		}
		if members == nil && m.Groups[g] != nil {
			members = m.Groups[g].Voters
		}
		for _, id := range members {
			if name := m.nodeName(id); name != cp.PrimaryNode {
				cp.ReplicaNodes = append(cp.ReplicaNodes, name)
			}
		}
		slices.Sort(cp.ReplicaNodes)
		parts[name] = cp
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"cluster": map[string]any{
			"id":            m.ClusterID,
			"name":          m.ClusterName,
			"nodes":         nodes,
			"partition_map": map[string]any{"partitions": parts},
			"config": map[string]any{
				"cluster_name":       m.ClusterName,
				"partition_count":    m.Partitions,
				"replication_factor": m.ReplicationFactor,
			},
		},
		"hash_config": map[string]any{"algorithm": "md5", "modulo": m.Partitions, "format": "partition-%d"},
		// Rebalance progress, the same as GET /rebalance, next to the
		// layout it is changing.
		"rebalance": n.rebalanceStatus(m),
	})
}

// nodeStatus is a node's health as this node sees it.
func (n *Node) nodeStatus(ni *nodeInfo) string {
	if ni.State != nodeActive {
		return ni.State
	}
	if n.answering(ni.ID) {
		return "alive"
	}
	return "unreachable"
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	status, code := "ok", http.StatusOK
	if err := n.Err(); err != nil {
		status, code = "failed: "+err.Error(), http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"status": status, "node": n.cfg.NodeID, "raft_id": n.id})
}

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	if err := n.readiness(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "node": n.cfg.NodeID, "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true, "node": n.cfg.NodeID})
}

// readiness says why the node is not ready, or nil: it has joined, holds
// every replica placement gives it as a caught-up voter (learners for the
// meta group on nodes that are not meta voters), and each of those groups
// has a leader.
func (n *Node) readiness() error {
	if err := n.Err(); err != nil {
		return err
	}
	if n.stopping.Load() {
		return errStopping
	}
	m, err := n.meta.load()
	if err != nil {
		return err
	}
	me := m.Nodes[n.id]
	if me == nil || me.State != nodeActive {
		return errors.New("not an active member yet")
	}
	for _, g := range m.groupsOf(n.id) {
		st, err := n.host.Status(g)
		if err != nil {
			return fmt.Errorf("%s: no local replica yet", partitionName(g))
		}
		wantVoter := slices.Contains(m.Groups[g].Voters, n.id)
		if wantVoter && !slices.Contains(st.Voters, n.id) {
			return fmt.Errorf("%s: not a voter yet", partitionName(g))
		}
		if !wantVoter && !slices.Contains(st.Learners, n.id) && !slices.Contains(st.Voters, n.id) {
			return fmt.Errorf("%s: not a member yet", partitionName(g))
		}
		if st.Leader == 0 {
			return fmt.Errorf("%s: no leader", partitionName(g))
		}
		if st.Applied+caughtUpLag < st.Commit {
			return fmt.Errorf("%s: catching up (applied %d of %d)", partitionName(g), st.Applied, st.Commit)
		}
	}
	return nil
}

// Ready reports whether the node is ready (see /ready).
func (n *Node) Ready() error { return n.readiness() }

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "join body must be JSON {node_id, http_addr, kv_addr[, raft_id]}: "+err.Error())
		return
	}
	if req.Name == "" || req.HTTPAddr == "" || req.KVAddr == "" {
		writeError(w, http.StatusBadRequest, "join needs node_id, http_addr and kv_addr")
		return
	}
	if !n.isMetaLeader() {
		body, _ := json.Marshal(req)
		n.forwardToMetaLeader(w, r, body)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.RequestTimeout)
	defer cancel()
	resp, err := n.admit(ctx, req)
	if err != nil {
		var je *joinError
		if errors.As(err, &je) {
			writeError(w, je.status, je.msg)
			return
		}
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (n *Node) handleInternalGroups(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, n.localReport(ctx))
}
