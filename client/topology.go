package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"kvnode/wire"
)

// topology is an immutable view of the cluster: who replicates and who
// leads each partition, and where nodes listen. A new view replaces the
// old one whole (Client.topo), so readers never lock.
type topology struct {
	n     int // partition count: the hash modulo
	parts []partition
	nodes map[string]nodeInfo // by node id
	// httpAddrs are the nodes' HTTP addresses, for fetching /cluster when
	// the configured endpoints fail.
	httpAddrs []string
}

type partition struct {
	leader     string   // node id; "" if unknown
	leaderAddr string   // the leader's KV address; "" if unknown
	replicas   []string // KV addresses of every replica, the leader first
}

type nodeInfo struct {
	kv, http, status string
}

// target returns the KV address to send an op on partition p to, or "" if
// no node is known. rr spreads the choices among replicas.
func (t *topology) target(p int, stale bool, rr uint64) string {
	part := &t.parts[p]
	if !stale && part.leaderAddr != "" {
		return part.leaderAddr
	}
	// A stale read may go to any replica. An op whose leader is unknown goes
	// to a replica too: the node will serve it or answer with a leader hint,
	// which is quicker than waiting for /cluster to catch up.
	if len(part.replicas) == 0 {
		return ""
	}
	return part.replicas[(rr+uint64(p))%uint64(len(part.replicas))]
}

// withLeader returns a copy of t in which partition p is led by the given
// node. Only the partition table is copied; the rest is shared.
func (t *topology) withLeader(p int, leader, addr string) *topology {
	nt := *t
	nt.parts = append([]partition(nil), t.parts...)
	part := &nt.parts[p]
	part.leader, part.leaderAddr = leader, addr
	replicas := []string{addr}
	for _, r := range part.replicas {
		if r != addr {
			replicas = append(replicas, r)
		}
	}
	part.replicas = replicas
	return &nt
}

// clusterDoc is the JSON of GET /cluster (ClusterKit's shape). Only the
// fields the client uses are declared.
type clusterDoc struct {
	Cluster struct {
		Nodes []struct {
			ID       string            `json:"id"`
			Status   string            `json:"status"`
			Services map[string]string `json:"services"`
		} `json:"nodes"`
		PartitionMap struct {
			Partitions map[string]struct {
				PrimaryNode  string   `json:"primary_node"`
				ReplicaNodes []string `json:"replica_nodes"`
			} `json:"partitions"`
		} `json:"partition_map"`
		Config struct {
			PartitionCount int `json:"partition_count"`
		} `json:"config"`
	} `json:"cluster"`
	HashConfig struct {
		Algorithm string `json:"algorithm"`
		Modulo    int    `json:"modulo"`
		Format    string `json:"format"`
	} `json:"hash_config"`
}

// maxPartitions bounds the partition count a topology may declare, so that
// a broken document cannot make the client allocate a huge table.
const maxPartitions = 1 << 16

// parseTopology builds a topology from a /cluster document.
func parseTopology(doc *clusterDoc) (*topology, error) {
	if a := doc.HashConfig.Algorithm; a != "" && !strings.EqualFold(a, "md5") {
		return nil, fmt.Errorf("unsupported hash algorithm %q", a)
	}
	n := doc.HashConfig.Modulo
	if n == 0 {
		n = doc.Cluster.Config.PartitionCount
	}
	if n <= 0 || n > maxPartitions {
		return nil, fmt.Errorf("partition count %d out of range [1, %d]", n, maxPartitions)
	}
	name := wire.PartitionName
	if f := doc.HashConfig.Format; f != "" && f != "partition-%d" {
		if strings.Count(f, "%") != 1 || !strings.Contains(f, "%d") {
			return nil, fmt.Errorf("unsupported partition name format %q", f)
		}
		name = func(p int) string { return fmt.Sprintf(f, p) }
	}

	t := &topology{n: n, parts: make([]partition, n), nodes: map[string]nodeInfo{}}
	for _, nd := range doc.Cluster.Nodes {
		info := nodeInfo{kv: nd.Services["kv"], http: nd.Services["http"], status: nd.Status}
		t.nodes[nd.ID] = info
		if info.http != "" {
			t.httpAddrs = append(t.httpAddrs, info.http)
		}
	}
	for p := range t.parts {
		pm, ok := doc.Cluster.PartitionMap.Partitions[name(p)]
		if !ok {
			continue // unknown for now: ops on it wait for a later topology
		}
		part := &t.parts[p]
		if info, ok := t.nodes[pm.PrimaryNode]; ok && info.kv != "" {
			part.leader, part.leaderAddr = pm.PrimaryNode, info.kv
			part.replicas = append(part.replicas, info.kv)
		}
		for _, id := range pm.ReplicaNodes {
			info, ok := t.nodes[id]
			if !ok || info.kv == "" || info.kv == part.leaderAddr || info.status == "dead" {
				continue
			}
			part.replicas = append(part.replicas, info.kv)
		}
	}
	return t, nil
}

// maxClusterDoc bounds the size of a /cluster document.
const maxClusterDoc = 16 << 20

// fetchTopology asks every endpoint in turn for /cluster, starting with the
// one that answered last, and returns the first valid topology.
func (c *Client) fetchTopology(ctx context.Context) (*topology, error) {
	var errs []error
	for _, ep := range c.endpoints() {
		t, err := c.fetchFrom(ctx, ep)
		if err == nil {
			c.topoMu.Lock()
			c.lastGood = ep
			c.topoMu.Unlock()
			return t, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("%w: no endpoint served the topology: %w", ErrUnavailable, errors.Join(errs...))
}

// endpoints lists the HTTP addresses to try: the last good one first, then
// the configured ones, then those of the nodes in the current topology.
func (c *Client) endpoints() []string {
	c.topoMu.Lock()
	last := c.lastGood
	c.topoMu.Unlock()
	seen := map[string]bool{}
	var eps []string
	add := func(ep string) {
		if ep != "" && !seen[ep] {
			seen[ep] = true
			eps = append(eps, ep)
		}
	}
	add(last)
	for _, ep := range c.cfg.Endpoints {
		add(ep)
	}
	if t := c.topo.Load(); t != nil {
		for _, ep := range t.httpAddrs {
			add(ep)
		}
	}
	return eps
}

func (c *Client) fetchFrom(ctx context.Context, endpoint string) (*topology, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	url := strings.TrimSuffix(endpoint, "/") + "/cluster"
	if !strings.Contains(endpoint, "://") {
		url = "http://" + url
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", endpoint, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err // already names the URL
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) //nolint:errcheck // draining for reuse only
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var doc clusterDoc
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxClusterDoc))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	t, err := parseTopology(&doc)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return t, nil
}

// minRefreshGap spaces triggered refreshes: while a node is down, every
// request to it asks for one, and /cluster should not be hammered for a
// leader that raft has not elected yet.
const minRefreshGap = 20 * time.Millisecond

// refreshLoop owns topology refreshes: the first one, periodic ones, and
// those requests trigger. Running them on one goroutine coalesces bursts.
func (c *Client) refreshLoop() {
	defer c.wg.Done()
	var tick <-chan time.Time
	if c.cfg.RefreshInterval > 0 {
		t := time.NewTicker(c.cfg.RefreshInterval)
		defer t.Stop()
		tick = t.C
	}
	var last time.Time
	failing := false
	for {
		select {
		case <-c.closing:
			return
		case <-c.refreshNow:
		case <-tick:
		}
		if wait := minRefreshGap - time.Since(last); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-c.closing:
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		err := c.refresh(c.ctx)
		last = time.Now()
		switch {
		case err != nil && !failing && c.ctx.Err() == nil:
			c.log.Warn("kvnode client: cannot fetch the topology", "err", err)
		case err == nil && failing:
			c.log.Info("kvnode client: topology fetched again")
		}
		failing = err != nil
	}
}

// triggerRefresh asks refreshLoop for a refresh soon, without waiting.
func (c *Client) triggerRefresh() {
	select {
	case c.refreshNow <- struct{}{}:
	default: // one is already pending
	}
}

// refresh fetches the topology and installs it. Waiters on c.fetched are
// woken either way. Only refreshLoop calls it, so fetches never overlap.
func (c *Client) refresh(ctx context.Context) error {
	seq := c.fetchSeq.Add(1)
	t, err := c.fetchTopology(ctx)
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	if err == nil {
		old := c.topo.Load()
		c.topo.Store(t)
		if old == nil || leadersChanged(old, t) {
			c.log.Debug("kvnode client: topology updated", "partitions", t.n, "nodes", len(t.nodes))
		}
	}
	c.fetchErr = err
	c.doneSeq = seq
	close(c.fetched)
	c.fetched = make(chan struct{})
	return err
}

func leadersChanged(a, b *topology) bool {
	if a.n != b.n {
		return true
	}
	for p := range a.parts {
		if a.parts[p].leaderAddr != b.parts[p].leaderAddr {
			return true
		}
	}
	return false
}

// currentTopology returns the topology, waiting for the first fetch if
// there is none yet. If that fetch fails it returns an error wrapping
// errNoRoute, and the caller retries after a backoff.
func (c *Client) currentTopology(ctx context.Context) (*topology, error) {
	if t := c.topo.Load(); t != nil {
		return t, nil
	}
	c.topoMu.Lock()
	fetched := c.fetched
	c.topoMu.Unlock()
	if t := c.topo.Load(); t != nil { // installed while we took the lock
		return t, nil
	}
	c.triggerRefresh()
	select {
	case <-fetched:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closing:
		return nil, ErrClosed
	}
	if t := c.topo.Load(); t != nil {
		return t, nil
	}
	c.topoMu.Lock()
	err := c.fetchErr
	c.topoMu.Unlock()
	return nil, fmt.Errorf("%w: no topology: %w", errNoRoute, err)
}

// applyHint installs a NotLeader answer's leader hint for partition p. It
// reports whether the route changed, so the caller may retry at once.
func (c *Client) applyHint(p int, leader, leaderAddr string) bool {
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	t := c.topo.Load()
	if t == nil || p >= t.n {
		return false
	}
	addr := leaderAddr
	if addr == "" {
		addr = t.nodes[leader].kv
	}
	if addr == "" || addr == t.parts[p].leaderAddr {
		return false
	}
	c.topo.Store(t.withLeader(p, leader, addr))
	c.log.Debug("kvnode client: leader hint", "partition", p, "leader", leader, "addr", addr)
	return true
}

// awaitFetch waits until a fetch of the topology numbered fresh or later
// has completed, or maxWait has passed (if positive). It reports whether
// such a fetch completed, and that fetch's error; err is set if ctx ended
// or the client closed first.
func (c *Client) awaitFetch(ctx context.Context, fresh uint64, maxWait time.Duration) (done bool, fetchErr, err error) {
	var timeout <-chan time.Time
	if maxWait > 0 {
		timer := time.NewTimer(maxWait)
		defer timer.Stop()
		timeout = timer.C
	}
	for {
		c.topoMu.Lock()
		done, fetchErr, fetched := c.doneSeq >= fresh, c.fetchErr, c.fetched
		c.topoMu.Unlock()
		if done {
			return true, fetchErr, nil
		}
		select {
		case <-fetched:
		case <-timeout:
			return false, nil, nil
		case <-ctx.Done():
			return false, nil, ctx.Err()
		case <-c.closing:
			return false, nil, ErrClosed
		}
	}
}
