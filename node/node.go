package node

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/engine"
	"kvnode/replication"
	"kvnode/transport"
	"kvnode/wal"
	"kvnode/wire"
)

// Node is one kvnode process's worth of cluster member: its stores, its
// raft groups, its listeners and the loops that keep it in line with the
// cluster state. Open starts it; Close stops it.
type Node struct {
	cfg    *Config
	logger *slog.Logger

	wal  *wal.WAL
	eng  *engine.Engine
	tr   *transport.Transport
	host *replication.Host
	meta metaReader
	view *view
	// viewSince is when this node started polling the others: a node it
	// never heard from counts as unreachable since then.
	viewSince time.Time
	// activeSeen is owned by the placement loop (markDeadNodes).
	activeSeen map[uint64]activeMark
	// startedAt is when this process opened the node: it tells the
	// cluster's view one process of the node from the next (restarts).
	startedAt time.Time

	id        uint64        // raft id, fixed once joined
	clusterID atomic.Uint64 // read by the transport on every handshake

	httpLn, kvLn net.Listener
	httpSrv      *http.Server
	fwd          *http.Client // forwards HTTP requests to leaders
	events       *eventBus
	metrics      *metrics

	// seeds are peer addresses learned from the join answer, used until
	// the local meta replica has caught up.
	seedsMu sync.Mutex
	seeds   map[uint64]string

	clients struct {
		sync.Mutex
		conns map[net.Conn]struct{}
	}

	stopping atomic.Bool
	// rebalancing is set by the meta leader's placement loop while groups
	// move, to poll the others faster.
	rebalancing atomic.Bool
	// placedByRemove tells the placement loop that a removal changed the
	// placement, so that it brackets the moves with rebalance events.
	placedByRemove atomic.Bool
	// partitions caches the cluster's partition count (fixed at creation).
	partitions atomic.Int64
	// failed is closed (and failErr set) when the node must stop by
	// itself: its storage failed, or the cluster refused it.
	failOnce sync.Once
	failErr  error
	failed   chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeMu  sync.Mutex
	closed   bool
}

// Failed is closed when the node cannot go on and must be stopped: its
// storage failed (it acknowledges nothing more), or the cluster refused
// it. Err says why.
func (n *Node) Failed() <-chan struct{} { return n.failed }

// Err returns why the node failed, or nil.
func (n *Node) Err() error {
	select {
	case <-n.failed:
		return n.failErr
	default:
		return nil
	}
}

func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr = err
		n.logger.Error("node failed", "err", err)
		close(n.failed)
	})
}

// ID returns the node's raft id.
func (n *Node) ID() uint64 { return n.id }

// HTTPAddr and KVAddr return the addresses the node listens on.
func (n *Node) HTTPAddr() string { return n.httpLn.Addr().String() }
func (n *Node) KVAddr() string   { return n.kvLn.Addr().String() }

// Open starts a node: it listens, opens its stores, then bootstraps a new
// cluster, joins one through cfg.JoinAddr, or restarts as the member its
// data directory says it is. It returns once the node serves; it may not
// be ready (see Ready) until its replicas have caught up.
func Open(ctx context.Context, cfg Config) (_ *Node, err error) {
	c := cfg.EnsureDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	n := &Node{cfg: c, logger: c.Logger.With("node", c.NodeID), seeds: map[uint64]string{}, startedAt: time.Now().UTC()}
	n.clients.conns = map[net.Conn]struct{}{}
	n.failed = make(chan struct{})
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.events = newEventBus(n.logger)
	n.view = newView()
	n.metrics = newMetrics(n)
	// Its own transport, not the process-wide default: Close releases its
	// connections (and their goroutines) with the node.
	n.fwd = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: c.RequestTimeout + time.Second}
	defer func() {
		if err != nil {
			n.abort()
		}
	}()

	if n.httpLn, err = net.Listen("tcp", net.JoinHostPort(c.BindHost, strconv.Itoa(c.HTTPPort))); err != nil {
		return nil, fmt.Errorf("listen on HTTP port: %w", err)
	}
	if n.kvLn, err = net.Listen("tcp", net.JoinHostPort(c.BindHost, strconv.Itoa(c.KVPort))); err != nil {
		return nil, fmt.Errorf("listen on KV port: %w", err)
	}
	// Port 0 means "any": advertise the one we got.
	c.HTTPPort = n.httpLn.Addr().(*net.TCPAddr).Port
	c.KVPort = n.kvLn.Addr().(*net.TCPAddr).Port

	ident, err := loadIdentity(c.FS, c.DataDir)
	if err != nil {
		return nil, err
	}
	if ident != nil && ident.Name != c.NodeID {
		return nil, fmt.Errorf("data dir %s belongs to node %q, not %q", c.DataDir, ident.Name, c.NodeID)
	}
	var joined *joinResponse
	fresh := ident == nil
	switch {
	case ident != nil:
		n.logger.Info("restarting as a member", "raft_id", ident.ID, "cluster_id", fmt.Sprintf("%016x", ident.ClusterID))
	case c.JoinAddr != "":
		if joined, err = n.join(ctx, c.JoinAddr); err != nil {
			return nil, err
		}
		ident = &identity{Name: c.NodeID, ID: joined.ID, ClusterID: joined.clusterID()}
		for _, p := range joined.Nodes {
			n.seeds[p.ID] = p.KVAddr
		}
	default:
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		ident = &identity{Name: c.NodeID, ID: 1, ClusterID: binary.BigEndian.Uint64(b[:]) | 1}
	}
	n.id = ident.ID
	n.clusterID.Store(ident.ClusterID)

	if n.wal, err = wal.Open(c.FS.PathJoin(c.DataDir, "wal"), &wal.Options{FS: c.FS, Logger: n.logger}); err != nil {
		return nil, err
	}
	if n.eng, err = engine.Open(c.FS.PathJoin(c.DataDir, "engine"), &engine.Options{
		FS: c.FS, Logger: n.logger, MaxKeySize: max(c.MaxKeySize, 1<<10), MaxValueSize: max(c.MaxValueSize, 1<<20),
	}); err != nil {
		return nil, err
	}
	n.meta.eng = n.eng
	if m, err := n.meta.load(); err == nil {
		if me := m.Nodes[n.id]; me != nil && me.State == nodeRemoved {
			return nil, fmt.Errorf("node %q (id %d) was removed from cluster %s; to join again, start it with an empty data dir", c.NodeID, n.id, m.ClusterID)
		}
	}
	if n.tr, err = transport.New(transport.Config{
		NodeID:    n.id,
		ClusterID: n.clusterID.Load,
		Resolve:   n.resolvePeer,
		Handler:   (*hostHandler)(n),
		Logger:    n.logger,
	}); err != nil {
		return nil, err
	}
	if n.host, err = replication.Open(replication.Config{
		NodeID:         n.id,
		WAL:            n.wal,
		Engine:         n.eng,
		Transport:      n.tr,
		Logger:         n.logger,
		TickInterval:   c.TickInterval,
		HeartbeatTicks: c.HeartbeatTicks,
		ElectionTicks:  c.ElectionTicks,
	}); err != nil {
		return nil, err
	}

	n.wg.Add(1)
	go n.serveKV()
	// A client that never finishes its headers or body is cut off
	// (slowloris); a 1 MiB value over a slow link still fits.
	n.httpSrv = &http.Server{Handler: n.routes(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute,
		IdleTimeout: 2 * time.Minute}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(n.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server", "err", err)
		}
	}()

	if fresh && joined == nil {
		if err := n.bootstrap(ctx, ident); err != nil {
			return nil, err
		}
	}
	if err := saveIdentity(c.FS, c.DataDir, ident); err != nil {
		return nil, fmt.Errorf("saving identity: %w", err)
	}
	if joined != nil {
		// Every node holds the meta group; a new node starts its replica
		// now, since it learns everything else from it.
		if err := n.host.AddReplica(ctx, metaGroup); err != nil && !errors.Is(err, replication.ErrGroupExists) {
			return nil, err
		}
	}
	n.viewSince = time.Now()
	n.activeSeen = map[uint64]activeMark{}
	n.wg.Add(3)
	go n.pollLoop()
	go n.reconcileLoop()
	go n.placementLoop()
	if !fresh {
		// Restarted: tell the cluster our (possibly new) addresses, and
		// that we are back (node_rejoin). Not after a bootstrap or a
		// join: the cluster state has this process's addresses already.
		n.wg.Add(1)
		go n.rejoin()
	}
	n.logger.Info("node serving", "raft_id", n.id, "http", c.httpAdvertise(), "kv", c.kvAdvertise())
	return n, nil
}

// bootstrap creates a new cluster with this node as its only member: the
// meta group, every partition's group, and the cluster state. Every step
// tolerates having been done before, so a crash during bootstrap is
// repaired by starting again.
func (n *Node) bootstrap(ctx context.Context, ident *identity) error {
	c := n.cfg
	n.logger.Info("bootstrapping a new cluster", "partitions", c.Partitions, "replication_factor", c.ReplicationFactor)
	boot := func(g uint64) error {
		err := n.host.Bootstrap(ctx, g, []uint64{n.id})
		if errors.Is(err, replication.ErrGroupExists) {
			return nil
		}
		return err
	}
	if err := boot(metaGroup); err != nil {
		return err
	}
	for p := range c.Partitions {
		if err := boot(partitionGroup(p)); err != nil {
			return err
		}
	}
	if err := n.waitLeader(ctx, metaGroup); err != nil {
		return err
	}
	now := time.Now().UTC()
	m := &metaState{
		ClusterID:         fmt.Sprintf("%016x", ident.ClusterID),
		ClusterName:       c.ClusterName,
		Partitions:        c.Partitions,
		ReplicationFactor: c.ReplicationFactor,
		CreatedAt:         now,
		NextNodeID:        n.id + 1,
		Nodes: map[uint64]*nodeInfo{n.id: {
			ID: n.id, Name: c.NodeID, HTTPAddr: c.httpAdvertise(), KVAddr: c.kvAdvertise(),
			State: nodeActive, JoinedAt: now, Since: now,
		}},
		Groups: map[uint64]*groupInfo{metaGroup: {Voters: []uint64{n.id}}},
	}
	for p := range c.Partitions {
		m.Groups[partitionGroup(p)] = &groupInfo{Voters: []uint64{n.id}, Leader: n.id}
	}
	if existing, err := n.meta.load(); err == nil {
		// A bootstrap that crashed after writing the cluster state: keep
		// that cluster's identity.
		id, err := strconv.ParseUint(existing.ClusterID, 16, 64)
		if err != nil {
			return fmt.Errorf("cluster state has a bad cluster id %q", existing.ClusterID)
		}
		ident.ClusterID = id
		n.clusterID.Store(id)
		return nil
	}
	if err := n.createMeta(ctx, m); err != nil {
		return err
	}
	n.events.emit(Event{Type: EventNodeJoin, Node: c.NodeID, Message: "bootstrapped a new cluster"})
	return nil
}

// waitLeader waits until the group has a leader.
func (n *Node) waitLeader(ctx context.Context, g uint64) error {
	for {
		if id, err := n.host.Leader(g); err == nil && id != 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a leader of group %d: %w", g, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close stops the node gracefully: it stops taking requests, hands the
// groups it leads to other voters, and closes its stores.
func (n *Node) Close(ctx context.Context) error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	n.stopping.Store(true)
	n.logger.Info("stopping")
	if n.httpSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = n.httpSrv.Shutdown(sctx)
		cancel()
	}
	n.kvLn.Close()
	n.transferLeadership(ctx)
	n.cancel()
	n.closeClientConns()
	return n.closeStores()
}

// abort tears down whatever Open got to before failing.
func (n *Node) abort() {
	n.cancel()
	if n.httpSrv != nil {
		n.httpSrv.Close()
	} else if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.kvLn != nil {
		n.kvLn.Close()
	}
	_ = n.closeStores()
}

// closeStores stops raft and the transport (which ends the peer
// connections the KV listener handed it), waits for every goroutine of the
// node, then closes the stores.
func (n *Node) closeStores() error {
	var errs []error
	if n.host != nil {
		errs = append(errs, n.host.Close())
	}
	if n.tr != nil {
		errs = append(errs, n.tr.Close())
	}
	n.wg.Wait()
	n.fwd.CloseIdleConnections()
	if n.wal != nil {
		if err := n.wal.Close(); err != nil && !errors.Is(err, wal.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if n.eng != nil {
		errs = append(errs, n.eng.Close())
	}
	n.events.close()
	return errors.Join(errs...)
}

// transferLeadership hands every group this node leads to another voter,
// so that a planned stop costs no election timeout. A transfer can fail
// (the target was applying a configuration change, say): it retries until
// nothing is led here or five seconds have passed.
func (n *Node) transferLeadership(ctx context.Context) {
	if n.host == nil {
		return
	}
	n.host.Drain()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	moved := 0
	for round := 0; ctx.Err() == nil; round++ {
		var led []uint64
		for _, g := range n.host.Groups() {
			if st, err := n.host.Status(g); err == nil && st.IsLeader && len(st.Voters) > 1 {
				led = append(led, g)
			}
		}
		if len(led) == 0 {
			break
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		var ok atomic.Int64
		for _, g := range led {
			st, err := n.host.Status(g)
			if err != nil {
				continue
			}
			target := n.bestTransferTarget(ctx, g, st)
			if target == 0 {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				tctx, tcancel := context.WithTimeout(ctx, time.Second)
				defer tcancel()
				if err := n.host.TransferLeadership(tctx, g, target); err == nil {
					ok.Add(1)
				} else {
					n.logger.Debug("leadership transfer failed; will retry", "group", g, "target", target, "round", round, "err", err)
				}
			}()
		}
		wg.Wait()
		moved += int(ok.Load())
		if int(ok.Load()) < len(led) {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if moved > 0 {
		n.logger.Info("handed over leadership before stopping", "groups", moved)
	}
}

// bestTransferTarget picks the voter with the most of the log.
func (n *Node) bestTransferTarget(ctx context.Context, g uint64, st replication.GroupStatus) uint64 {
	prog, err := n.host.Progress(ctx, g)
	if err != nil {
		return 0
	}
	var best, bestMatch uint64
	for _, id := range st.Voters {
		if id == n.id {
			continue
		}
		if m := prog[id]; best == 0 || m > bestMatch {
			best, bestMatch = id, m
		}
	}
	return best
}

// resolvePeer finds a peer's KV address: from the cluster state, or from
// what the join answer said until the cluster state has arrived.
func (n *Node) resolvePeer(id uint64) (string, error) {
	if a, ok := n.cfg.PeerAddrs[id]; ok {
		return a, nil
	}
	if m, err := n.meta.load(); err == nil {
		if ni := m.Nodes[id]; ni != nil {
			return ni.KVAddr, nil
		}
	}
	n.seedsMu.Lock()
	defer n.seedsMu.Unlock()
	if a, ok := n.seeds[id]; ok {
		return a, nil
	}
	return "", fmt.Errorf("node %d is not known", id)
}

// hostHandler forwards transport callbacks to the host, which is created
// after the transport.
type hostHandler Node

func (h *hostHandler) HandleMessages(from uint64, msgs []transport.Message) {
	if host := (*Node)(h).host; host != nil {
		host.HandleMessages(from, msgs)
	}
}

func (h *hostHandler) HandleSnapshot(ctx context.Context, from uint64, m transport.Message, body io.Reader) error {
	host := (*Node)(h).host
	if host == nil {
		return errors.New("node starting")
	}
	return host.HandleSnapshot(ctx, from, m, body)
}

func (h *hostHandler) PeerUnreachable(to uint64) {
	if host := (*Node)(h).host; host != nil {
		host.PeerUnreachable(to)
	}
}

// serveKV accepts connections on the KV port and routes them by preamble:
// peers to the transport, clients to the binary protocol server.
func (n *Node) serveKV() {
	defer n.wg.Done()
	for {
		conn, err := n.kvLn.Accept()
		if err != nil {
			if n.ctx.Err() != nil || n.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			n.logger.Warn("accept on KV port", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.routeConn(conn)
		}()
	}
}

func (n *Node) routeConn(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(conn, 64<<10)
	pre := make([]byte, len(wire.ClientPreamble))
	if _, err := io.ReadFull(br, pre); err != nil {
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	switch string(pre) {
	case transport.DefaultPreamble:
		n.tr.HandleConn(&bufferedConn{Conn: conn, r: br})
	case wire.ClientPreamble:
		n.serveClient(conn, br)
	default:
		n.metrics.badPreambles.Inc()
		conn.Close()
	}
}

// bufferedConn is a conn whose first bytes were read through r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
