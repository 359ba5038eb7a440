// Package chaos is the fault harness of the multi-process tests: a cluster
// of real kvnode processes whose raft traffic goes through a proxy
// (package netproxy), nemesis operations on it (kill -9, SIGSTOP, network
// cuts, delays and black holes, storage faults, bit flips), and the
// workloads whose checks prove that nothing acknowledged is lost (Ledger)
// and that single-key operations stay linearizable (Register).
//
// A scenario starts a Cluster, starts both workloads, injects faults for
// a while, heals everything, then checks. Every fault and its time goes to
// the cluster's event log, which a failing test saves with the node logs.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/client"
	"kvnode/internal/localcluster"
	"kvnode/internal/netproxy"
)

// DefaultEnv is the nodes' environment: a fast raft clock (elections in
// 200-400 ms), a request timeout short enough for faults to show within a
// short run, and a dead-node timeout long enough never to move replicas.
var DefaultEnv = []string{
	"TICK_INTERVAL=20ms",
	"REQUEST_TIMEOUT=2s",
	"DEAD_NODE_TIMEOUT=10m",
	"LOG_LEVEL=info",
}

// Options configure a Cluster.
type Options struct {
	// Binary is the kvnode executable. Required.
	Binary string
	// Dir holds the nodes' data and logs. Required (a test's TempDir).
	Dir string
	// Nodes: default 3.
	Nodes int
	// Env is added to DefaultEnv for every node.
	Env []string
	// NodeEnv adds node i's own variables.
	NodeEnv func(i int) []string
	// Seed seeds the nemesis' choices.
	Seed uint64
	// Logf receives the event log as it happens (t.Logf). Optional.
	Logf func(format string, args ...any)
	// Output receives every node's log lines. Optional.
	Output io.Writer
}

// Cluster is a kvnode cluster under test, with a proxy on every directed
// pair of nodes.
type Cluster struct {
	*localcluster.Cluster
	Mesh *netproxy.Mesh
	Rand *rand.Rand
	opts Options

	start  time.Time
	faults atomic.Int64

	evMu   sync.Mutex
	events bytes.Buffer
}

// Start starts the proxies, then the nodes (node i dials its peers through
// the mesh), and returns once every node is ready.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	mesh, err := netproxy.NewMesh(opts.Nodes)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		Mesh:  mesh,
		Rand:  rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		opts:  opts,
		start: time.Now(),
	}
	lopts := localcluster.Options{
		Binary: opts.Binary,
		Nodes:  1, // the others join one at a time, below
		Dir:    opts.Dir,
		Env:    append(append([]string(nil), DefaultEnv...), opts.Env...),
		NodeEnv: func(i int) []string {
			env := []string{"KVNODE_TEST_PEER_ADDRS=" + mesh.PeerAddrs(i)}
			if opts.NodeEnv != nil {
				env = append(env, opts.NodeEnv(i)...)
			}
			return env
		},
		BeforeStart:  func(i int, n *localcluster.Node) { mesh.SetTarget(i, n.KVAddr) },
		Output:       opts.Output,
		ReadyTimeout: 90 * time.Second,
	}
	lc, err := localcluster.Start(ctx, lopts)
	if err != nil {
		mesh.Close()
		return nil, err
	}
	c.Cluster = lc
	// Raft ids follow join order, and the proxies are wired by raft id:
	// node i must join as i+1, so each joins only after the previous one
	// has.
	for i := 1; i < opts.Nodes; i++ {
		n, err := lc.AddNode(ctx, true)
		if err == nil {
			err = waitRaftID(ctx, n, uint64(i+1))
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := lc.WaitReady(rctx); err != nil {
		c.Close()
		return nil, err
	}
	c.Event("cluster of %d nodes ready (seed %d)", opts.Nodes, opts.Seed)
	return c, nil
}

// waitRaftID waits until n has joined (its /health answers) and checks
// that it got raft id want.
func waitRaftID(ctx context.Context, n *localcluster.Node, want uint64) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var h struct {
			RaftID uint64 `json:"raft_id"`
		}
		err := n.GetJSON(ctx, "/health", &h)
		if err == nil {
			if h.RaftID != want {
				return fmt.Errorf("%s joined as raft id %d, want %d: the proxies would be miswired", n.Name, h.RaftID, want)
			}
			return nil
		}
		if !n.Running() {
			return fmt.Errorf("%s exited while joining (log: %s)", n.Name, n.LogPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not join: %v (log: %s)", n.Name, err, n.LogPath)
		}
		if !Sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// Close stops the nodes and the proxies.
func (c *Cluster) Close() {
	c.Cluster.Close()
	c.Mesh.Close()
}

// Event appends a line to the event log.
func (c *Cluster) Event(format string, args ...any) {
	line := fmt.Sprintf("%8.3fs %s", time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
	c.evMu.Lock()
	c.events.WriteString(line + "\n")
	c.evMu.Unlock()
	if c.opts.Logf != nil {
		c.opts.Logf("%s", line)
	}
}

// Fault counts one injected fault and logs it.
func (c *Cluster) Fault(format string, args ...any) {
	c.faults.Add(1)
	c.Event("FAULT "+format, args...)
}

// Faults is the number of faults injected so far.
func (c *Cluster) Faults() int64 { return c.faults.Load() }

// Since is the time since the cluster started, the event log's clock.
func (c *Cluster) Since() time.Duration { return time.Since(c.start) }

// SaveArtifacts copies the node logs and the event log into dir.
func (c *Cluster) SaveArtifacts(dir string) error {
	var errs []error
	for _, n := range c.Nodes() {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, os.WriteFile(filepath.Join(dir, filepath.Base(n.LogPath)), b, 0o644))
	}
	c.evMu.Lock()
	ev := append([]byte(nil), c.events.Bytes()...)
	c.evMu.Unlock()
	errs = append(errs, os.WriteFile(filepath.Join(dir, "events.log"), ev, 0o644))
	return errors.Join(errs...)
}

// NewClient returns a Go client of the cluster with short timeouts, as a
// workload uses it.
// Each option, if any, may change the configuration first.
func (c *Cluster) NewClient(ctx context.Context, opts ...func(*client.Config)) (*client.Client, error) {
	cfg := client.Config{
		Endpoints:       c.HTTPEndpoints(),
		DialTimeout:     time.Second,
		RequestTimeout:  3 * time.Second,
		RefreshInterval: time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cl.Sync(sctx); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// Nemesis operations. Node indexes are 0-based.

// Kill kills node i with SIGKILL.
func (c *Cluster) Kill(i int) error {
	n := c.Node(i)
	if err := n.Kill(); err != nil {
		return err
	}
	c.Fault("kill -9 %s", n.Name)
	return nil
}

// KillAll kills every running node at once, in parallel.
func (c *Cluster) KillAll() error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes()))
	for i, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		n.Resume()
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.Kill() }()
	}
	wg.Wait()
	c.Fault("kill -9 of every node at once")
	return errors.Join(errs...)
}

// Restart starts node i again with its data dir.
func (c *Cluster) Restart(i int) error {
	n := c.Node(i)
	if err := n.Restart(); err != nil {
		return err
	}
	c.Event("restarted %s", n.Name)
	return nil
}

// Pause stops node i with SIGSTOP; Resume continues it.
func (c *Cluster) Pause(i int) error {
	n := c.Node(i)
	if err := n.Pause(); err != nil {
		return err
	}
	c.Fault("SIGSTOP %s", n.Name)
	return nil
}

func (c *Cluster) Resume(i int) error {
	n := c.Node(i)
	if err := n.Resume(); err != nil {
		return err
	}
	c.Event("SIGCONT %s", n.Name)
	return nil
}

// Isolate cuts node i's raft traffic both ways (mode Cut or Blackhole).
func (c *Cluster) Isolate(i int, mode netproxy.Mode) {
	c.Mesh.Isolate(i, mode)
	c.Fault("isolate %s (%v): %s", c.Node(i).Name, mode, c.Mesh.Describe())
}

// SetLinks applies f to the mesh and logs the result as one fault.
func (c *Cluster) SetLinks(what string, f func(m *netproxy.Mesh)) {
	f(c.Mesh)
	c.Fault("%s: %s", what, c.Mesh.Describe())
}

// HealNetwork puts every link back to pass.
func (c *Cluster) HealNetwork() {
	c.Mesh.Heal()
	c.Event("network healed")
}

// HealAll resumes paused nodes, restarts dead ones (with the environment
// they have now), heals the network, and waits for every node to be
// ready.
func (c *Cluster) HealAll(ctx context.Context, timeout time.Duration) error {
	c.HealNetwork()
	for i, n := range c.Nodes() {
		if n.Running() {
			n.Resume()
			continue
		}
		if err := c.Restart(i); err != nil {
			return err
		}
	}
	return c.WaitReady(ctx, timeout)
}

// WaitReady waits until every running node is ready.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if err := c.Cluster.WaitReady(ctx); err != nil {
		return err
	}
	c.Event("every running node ready (after %v)", time.Since(start).Round(time.Millisecond))
	return nil
}

// clusterDoc is the part of /cluster the harness reads.
type clusterDoc struct {
	Cluster struct {
		PartitionMap struct {
			Partitions map[string]struct {
				PrimaryNode string `json:"primary_node"`
			} `json:"partitions"`
		} `json:"partition_map"`
	} `json:"cluster"`
}

// Leaders returns how many partitions each node leads, as the first
// running node that answers /cluster sees it.
func (c *Cluster) Leaders(ctx context.Context) (map[string]int, error) {
	var last error
	for _, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		var d clusterDoc
		if err := n.GetJSON(ctx, "/cluster", &d); err != nil {
			last = err
			continue
		}
		out := map[string]int{}
		for _, p := range d.Cluster.PartitionMap.Partitions {
			if p.PrimaryNode != "" {
				out[p.PrimaryNode]++
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("no node answered /cluster: %v", last)
}

// TopLeader returns the index of the running node that leads the most
// partitions (ties broken by the seed), or a random running node if no
// node answers.
func (c *Cluster) TopLeader(ctx context.Context) int {
	counts, err := c.Leaders(ctx)
	var running []int
	for i, n := range c.Nodes() {
		if n.Running() {
			running = append(running, i)
		}
	}
	if len(running) == 0 {
		return 0
	}
	c.Rand.Shuffle(len(running), func(a, b int) { running[a], running[b] = running[b], running[a] })
	if err != nil {
		return running[0]
	}
	best := running[0]
	for _, i := range running {
		if counts[c.Node(i).Name] > counts[c.Node(best).Name] {
			best = i
		}
	}
	return best
}

// Follower returns a running node other than the top leader, preferring
// the one that leads the fewest partitions.
func (c *Cluster) Follower(ctx context.Context) int {
	counts, _ := c.Leaders(ctx)
	idx := []int{}
	for i, n := range c.Nodes() {
		if n.Running() {
			idx = append(idx, i)
		}
	}
	c.Rand.Shuffle(len(idx), func(a, b int) { idx[a], idx[b] = idx[b], idx[a] })
	sort.SliceStable(idx, func(a, b int) bool { return counts[c.Node(idx[a]).Name] < counts[c.Node(idx[b]).Name] })
	if len(idx) == 0 {
		return 0
	}
	return idx[0]
}

// DescribeLeaders formats Leaders for the event log.
func (c *Cluster) DescribeLeaders(ctx context.Context) string {
	counts, err := c.Leaders(ctx)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for n, k := range counts {
		parts = append(parts, fmt.Sprintf("%s:%d", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// Sleep waits d or until ctx ends, and reports whether it waited it all.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Jitter returns a duration uniformly in [lo, hi).
func (c *Cluster) Jitter(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(c.Rand.Int64N(int64(hi-lo)))
}
