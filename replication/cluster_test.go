package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"kvnode/engine"
	"kvnode/transport"
	"kvnode/wal"
)

// testCluster runs n Hosts in this process, each with its own WAL and
// engine on a real disk (or a crashable in-memory FS), talking over real
// TCP on 127.0.0.1.
type testCluster struct {
	t      testing.TB
	groups []uint64
	cfg    func(*Config)

	mu    sync.Mutex
	addrs map[uint64]string
	nodes map[uint64]*testNode
}

type testNode struct {
	c    *testCluster
	id   uint64
	dir  string
	fs   vfs.FS // nil: the real disk
	wal  *wal.WAL
	eng  *engine.Engine
	tr   *transport.Transport
	ln   net.Listener
	host *Host
	// handler forwards to host once it exists: the transport needs a
	// handler before the host can be built with the transport.
	handler *lateHandler
	serveWG sync.WaitGroup
}

type lateHandler struct {
	h atomic.Pointer[Host]
	// drop, if set, discards the received messages it returns true for.
	drop atomic.Pointer[func(transport.Message) bool]
}

func (l *lateHandler) HandleMessages(from uint64, msgs []transport.Message) {
	if drop := l.drop.Load(); drop != nil {
		msgs = slices.DeleteFunc(slices.Clone(msgs), *drop)
	}
	if h := l.h.Load(); h != nil {
		h.HandleMessages(from, msgs)
	}
}

func (l *lateHandler) HandleSnapshot(ctx context.Context, from uint64, m transport.Message, body io.Reader) error {
	if h := l.h.Load(); h != nil {
		return h.HandleSnapshot(ctx, from, m, body)
	}
	return errors.New("host not started")
}

func (l *lateHandler) PeerUnreachable(to uint64) {
	if h := l.h.Load(); h != nil {
		h.PeerUnreachable(to)
	}
}

// fastConfig makes elections quick so tests do not wait on timeouts.
func fastConfig(c *Config) {
	c.TickInterval = 10 * time.Millisecond
	c.HeartbeatTicks = 1
	c.ElectionTicks = 10
	c.EngineSyncInterval = 100 * time.Millisecond
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("KVNODE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newTestCluster starts n nodes (ids 1..n) and bootstraps groups 1..ngroups
// with all of them as voters.
func newTestCluster(t testing.TB, n, ngroups int, cfg func(*Config)) *testCluster {
	t.Helper()
	return newTestClusterFS(t, n, ngroups, cfg, nil)
}

// newTestClusterFS is newTestCluster with a filesystem chosen per node
// (nil from fsFor: the real disk).
func newTestClusterFS(t testing.TB, n, ngroups int, cfg func(*Config), fsFor func(id uint64) vfs.FS) *testCluster {
	t.Helper()
	c := &testCluster{t: t, cfg: cfg, addrs: map[uint64]string{}, nodes: map[uint64]*testNode{}}
	for g := 1; g <= ngroups; g++ {
		c.groups = append(c.groups, uint64(g))
	}
	base := t.TempDir()
	for i := 1; i <= n; i++ {
		c.nodes[uint64(i)] = &testNode{c: c, id: uint64(i), dir: filepath.Join(base, fmt.Sprintf("n%d", i))}
	}
	for id, nd := range c.nodes {
		if fsFor != nil {
			nd.fs = fsFor(id)
		}
		c.start(nd)
	}
	var voters []uint64
	for i := 1; i <= n; i++ {
		voters = append(voters, uint64(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, nd := range c.nodes {
		for _, g := range c.groups {
			if err := nd.h().Bootstrap(ctx, g, voters); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *testCluster) resolve(id uint64) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.addrs[id]
	if !ok {
		return "", fmt.Errorf("no address for node %d", id)
	}
	return a, nil
}

// start opens a node's stores and starts its transport and host.
func (c *testCluster) start(nd *testNode) {
	t := c.t
	t.Helper()
	fs := nd.fs
	if fs == nil {
		fs = vfs.Default
	}
	// Pebble creates the directories and syncs their parents; creating
	// them here without syncing would let a power loss drop the lot.
	var err error
	nd.wal, err = wal.Open(filepath.Join(nd.dir, "wal"), &wal.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	nd.eng, err = engine.Open(filepath.Join(nd.dir, "engine"), &engine.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	// Reuse the node's address across restarts when the port is free.
	addr := "127.0.0.1:0"
	c.mu.Lock()
	if a, ok := c.addrs[nd.id]; ok {
		addr = a
	}
	c.mu.Unlock()
	nd.ln, err = net.Listen("tcp", addr)
	if err != nil {
		nd.ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	c.addrs[nd.id] = nd.ln.Addr().String()
	c.mu.Unlock()
	nd.handler = &lateHandler{}
	nd.tr, err = transport.New(transport.Config{
		NodeID:    nd.id,
		ClusterID: func() uint64 { return 42 },
		Resolve:   c.resolve,
		Handler:   nd.handler,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{NodeID: nd.id, WAL: nd.wal, Engine: nd.eng, Transport: nd.tr, Logger: testLogger(t).With("n", nd.id)}
	fastConfig(&cfg)
	if c.cfg != nil {
		c.cfg(&cfg)
	}
	host, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nd.handler.h.Store(host)
	c.mu.Lock()
	nd.host = host
	c.mu.Unlock()
	nd.serveWG.Add(1)
	go func() {
		defer nd.serveWG.Done()
		_ = nd.tr.Serve(nd.ln)
	}()
}

// stop closes a node: host, transport, stores. Everything that returned
// is on disk; this is a crash as far as the protocol is concerned.
func (c *testCluster) stop(nd *testNode) {
	c.mu.Lock()
	host := nd.host
	nd.host = nil
	c.mu.Unlock()
	if host == nil {
		return
	}
	host.Close()
	nd.tr.Close()
	nd.ln.Close()
	nd.serveWG.Wait()
	nd.wal.Close()
	nd.eng.Close()
}

// h returns the node's running host, or nil while it is stopped.
func (nd *testNode) h() *Host {
	nd.c.mu.Lock()
	defer nd.c.mu.Unlock()
	return nd.host
}

func (c *testCluster) stopAll() {
	for _, nd := range c.nodes {
		c.stop(nd)
	}
}

func (c *testCluster) node(id uint64) *testNode { return c.nodes[id] }

// isolate cuts a node off at the transport, both ways.
func (c *testCluster) isolate(id uint64) {
	for oid, nd := range c.nodes {
		if nd.h() == nil || oid == id {
			continue
		}
		nd.tr.Block(id)
		c.nodes[id].tr.Block(oid)
	}
}

func (c *testCluster) heal(id uint64) {
	for oid, nd := range c.nodes {
		if nd.h() == nil || oid == id {
			continue
		}
		nd.tr.Unblock(id)
		c.nodes[id].tr.Unblock(oid)
	}
}

// leader waits until some running node leads group and returns it.
func (c *testCluster) leader(group uint64, timeout time.Duration) *testNode {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			if h := nd.h(); h != nil {
				if st, err := h.Status(group); err == nil && st.IsLeader {
					return nd
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("no leader for group %d within %v", group, timeout)
	return nil
}

// put writes key=value to group through its leader, retrying on
// leadership changes, and returns the version.
func (c *testCluster) put(ctx context.Context, group uint64, key, value string) (uint64, error) {
	for {
		var target *Host
		for _, nd := range c.nodes {
			if h := nd.h(); h != nil {
				if st, err := h.Status(group); err == nil && st.IsLeader {
					target = h
					break
				}
			}
		}
		if target != nil {
			res, err := target.Propose(ctx, group, []engine.Op{{Kind: engine.OpPut, Key: []byte(key), Value: []byte(value)}})
			if err == nil {
				return res[0].Version, nil
			}
			if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrProposalDropped) {
				return 0, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitApplied waits until every running node has applied at least index
// of group.
func (c *testCluster) waitApplied(group, index uint64, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, nd := range c.nodes {
			h := nd.h()
			if h == nil {
				continue
			}
			st, err := h.Status(group)
			if err != nil || st.Applied < index {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("group %d: not every node applied %d within %v", group, index, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
