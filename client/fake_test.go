package client

// This file is a TEST DOUBLE of the server's wire behaviour, not the
// server. It speaks docs/protocol.md through package wire, routes like a
// node (NotLeader with a hint for a partition it does not lead), and lets
// tests inject faults per request, so that the client's logic (routing,
// retries, pipelining, failure handling) can be tested without raft. The
// real server (package node) is tested end to end elsewhere.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kvnode/wire"
)

const fakePartitions = 64

// fakeCluster is a few fake nodes over one shared in-memory map, and an
// HTTP server for /cluster.
type fakeCluster struct {
	t     testing.TB
	nodes []*fakeNode
	http  *httptest.Server

	mu        sync.Mutex
	leader    [fakePartitions]int // partition → node index that leads it (the truth); -1: none
	published [fakePartitions]int // what /cluster says; may lag behind leader
	noHints   bool                // NotLeader without a leader hint
	data      map[string]fakeItem
	index     uint64 // the "raft index": versions come from it

	fetches atomic.Int64 // /cluster requests served
}

type fakeItem struct {
	value   []byte
	version uint64
}

// fakeNode is one fake node: a listener on 127.0.0.1 and its connections.
type fakeNode struct {
	cl  *fakeCluster
	idx int
	id  string
	ln  net.Listener

	hook atomic.Pointer[fakeHook]

	accepted    atomic.Int64 // connections
	received    atomic.Int64 // request frames
	inFlight    atomic.Int64
	maxInFlight atomic.Int64 // most requests of this node being handled at once

	mu     sync.Mutex
	served map[wire.Op]int // ops answered StatusOK
	keys   []string        // keys of the ops answered StatusOK, in order
	conns  map[net.Conn]struct{}
	down   bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

// fakeReq is what a hook sees of a request.
type fakeReq struct {
	op    wire.Op
	keys  []string
	stale bool
	n     int64 // this request is the node's n-th (1-based)
}

// fakeAction is what the node does with a request. The zero value serves
// it normally.
type fakeAction struct {
	status     wire.Status // answer with this error status
	msg        string
	leader     string
	leaderAddr string
	drop       bool          // close the connection without answering
	hang       bool          // never answer (until the connection or node closes)
	delay      time.Duration // wait before serving
	reply      any           // answer StatusOK with this body instead of serving
}

type fakeHook func(fakeReq) fakeAction

// newFakeCluster starts n nodes, partition p led by node p%n.
func newFakeCluster(t testing.TB, n int) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{t: t, data: map[string]fakeItem{}}
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		nd := &fakeNode{cl: fc, idx: i, id: fmt.Sprintf("node-%d", i+1), ln: ln,
			served: map[wire.Op]int{}, conns: map[net.Conn]struct{}{}, stop: make(chan struct{})}
		fc.nodes = append(fc.nodes, nd)
		nd.wg.Add(1)
		go nd.acceptLoop()
	}
	for p := range fc.leader {
		fc.leader[p] = p % n
		fc.published[p] = p % n
	}
	fc.http = httptest.NewServer(http.HandlerFunc(fc.serveCluster))
	t.Cleanup(fc.close)
	return fc
}

func (fc *fakeCluster) close() {
	fc.http.Close()
	for _, nd := range fc.nodes {
		nd.kill()
	}
}

func (fc *fakeCluster) config() Config {
	return Config{Endpoints: []string{fc.http.Listener.Addr().String()}}
}

// setLeader makes node i lead partition p (-1: no leader); publish also
// updates /cluster.
func (fc *fakeCluster) setLeader(p, i int, publish bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.leader[p] = i
	if publish {
		fc.published[p] = i
	}
}

// setAllLeaders makes node i lead every partition.
func (fc *fakeCluster) setAllLeaders(i int, publish bool) {
	for p := 0; p < fakePartitions; p++ {
		fc.setLeader(p, i, publish)
	}
}

func (fc *fakeCluster) serveCluster(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/cluster" {
		http.NotFound(w, r)
		return
	}
	fc.fetches.Add(1)
	type node struct {
		ID       string            `json:"id"`
		IP       string            `json:"ip"`
		Name     string            `json:"name"`
		Status   string            `json:"status"`
		Services map[string]string `json:"services"`
	}
	type part struct {
		ID           string   `json:"id"`
		PrimaryNode  string   `json:"primary_node"`
		ReplicaNodes []string `json:"replica_nodes"`
	}
	var doc struct {
		Cluster struct {
			ID           string `json:"id"`
			Name         string `json:"name"`
			Nodes        []node `json:"nodes"`
			PartitionMap struct {
				Partitions map[string]part `json:"partitions"`
			} `json:"partition_map"`
			Config map[string]any `json:"config"`
		} `json:"cluster"`
		HashConfig map[string]any `json:"hash_config"`
	}
	doc.Cluster.ID, doc.Cluster.Name = "fake", "fake"
	for _, nd := range fc.nodes {
		doc.Cluster.Nodes = append(doc.Cluster.Nodes, node{ID: nd.id, IP: "127.0.0.1", Name: nd.id, Status: "alive",
			Services: map[string]string{"kv": nd.addr(), "http": fc.http.Listener.Addr().String()}})
	}
	doc.Cluster.PartitionMap.Partitions = map[string]part{}
	fc.mu.Lock()
	for p := 0; p < fakePartitions; p++ {
		pt := part{ID: wire.PartitionName(p)}
		if l := fc.published[p]; l >= 0 {
			pt.PrimaryNode = fc.nodes[l].id
		}
		for i, nd := range fc.nodes {
			if i != fc.published[p] {
				pt.ReplicaNodes = append(pt.ReplicaNodes, nd.id)
			}
		}
		doc.Cluster.PartitionMap.Partitions[pt.ID] = pt
	}
	fc.mu.Unlock()
	doc.Cluster.Config = map[string]any{"cluster_name": "fake", "partition_count": fakePartitions, "replication_factor": len(fc.nodes)}
	doc.HashConfig = map[string]any{"algorithm": "md5", "modulo": fakePartitions, "format": "partition-%d"}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(&doc) //nolint:errcheck // the client sees a broken body
}

func (nd *fakeNode) addr() string { return nd.ln.Addr().String() }

func (nd *fakeNode) setHook(h fakeHook) {
	if h == nil {
		nd.hook.Store(nil)
		return
	}
	nd.hook.Store(&h)
}

// servedOps returns how many ops of the kind the node answered StatusOK.
func (nd *fakeNode) servedOps(op wire.Op) int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.served[op]
}

func (nd *fakeNode) servedKeys() []string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return append([]string(nil), nd.keys...)
}

// kill stops the node: its listener and connections close, and dials are
// refused from now on.
func (nd *fakeNode) kill() {
	nd.mu.Lock()
	if nd.down {
		nd.mu.Unlock()
		return
	}
	nd.down = true
	close(nd.stop)
	nd.ln.Close()
	for c := range nd.conns {
		c.Close()
	}
	nd.mu.Unlock()
	nd.wg.Wait()
}

// dropConns closes the node's current connections, leaving it up.
func (nd *fakeNode) dropConns() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	for c := range nd.conns {
		c.Close()
	}
}

func (nd *fakeNode) acceptLoop() {
	defer nd.wg.Done()
	for {
		c, err := nd.ln.Accept()
		if err != nil {
			return
		}
		nd.mu.Lock()
		if nd.down {
			nd.mu.Unlock()
			c.Close()
			return
		}
		nd.conns[c] = struct{}{}
		nd.wg.Add(1)
		nd.mu.Unlock()
		nd.accepted.Add(1)
		go nd.serveConn(c)
	}
}

// fakeConn is the write side of one connection.
type fakeConn struct {
	nc     net.Conn
	wmu    sync.Mutex
	closed chan struct{}
}

func (fcn *fakeConn) send(id uint64, status wire.Status, body any) {
	frame, err := wire.EncodeFrame(nil, id, uint8(status), body)
	if err != nil {
		panic(err)
	}
	fcn.wmu.Lock()
	defer fcn.wmu.Unlock()
	fcn.nc.Write(frame) //nolint:errcheck // a broken connection is the client's to notice
}

func (nd *fakeNode) serveConn(nc net.Conn) {
	fcn := &fakeConn{nc: nc, closed: make(chan struct{})}
	var handlers sync.WaitGroup
	defer func() {
		nc.Close()
		close(fcn.closed)
		handlers.Wait()
		nd.mu.Lock()
		delete(nd.conns, nc)
		nd.mu.Unlock()
		nd.wg.Done()
	}()
	br := bufio.NewReader(nc)
	pre := make([]byte, wire.PreambleSize)
	if _, err := io.ReadFull(br, pre); err != nil || string(pre) != wire.ClientPreamble {
		return
	}
	fr := wire.NewFrameReader(br, 0)
	for {
		f, err := fr.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
				fcn.send(0, wire.StatusMalformedFrame, &wire.ErrorBody{Code: wire.StatusMalformedFrame, Msg: err.Error()})
			}
			return
		}
		n := nd.received.Add(1)
		body := append([]byte(nil), f.Body...)
		// One goroutine per request, like a node: responses go out in
		// whatever order requests finish.
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			nd.handle(fcn, f.ID, f.Op(), body, n)
		}()
	}
}

func (nd *fakeNode) handle(fcn *fakeConn, id uint64, op wire.Op, body []byte, n int64) {
	cur := nd.inFlight.Add(1)
	defer nd.inFlight.Add(-1)
	for {
		m := nd.maxInFlight.Load()
		if cur <= m || nd.maxInFlight.CompareAndSwap(m, cur) {
			break
		}
	}

	req, err := decodeFakeReq(op, body)
	if err != nil {
		fcn.send(id, wire.StatusBadRequest, &wire.ErrorBody{Code: wire.StatusBadRequest, Msg: err.Error()})
		return
	}
	req.n = n
	var act fakeAction
	if h := nd.hook.Load(); h != nil {
		act = (*h)(req)
	}
	if act.delay > 0 {
		select {
		case <-time.After(act.delay):
		case <-fcn.closed:
			return
		}
	}
	switch {
	case act.drop:
		fcn.nc.Close()
		return
	case act.hang:
		select {
		case <-fcn.closed:
		case <-nd.stop:
		}
		return
	case act.reply != nil:
		fcn.send(id, wire.StatusOK, act.reply)
		return
	case act.status != wire.StatusOK:
		fcn.send(id, act.status, &wire.ErrorBody{Code: act.status, Msg: act.msg, Leader: act.leader, LeaderAddr: act.leaderAddr})
		return
	}
	status, resp := nd.serve(op, body, req)
	fcn.send(id, status, resp)
}

func decodeFakeReq(op wire.Op, body []byte) (fakeReq, error) {
	r := fakeReq{op: op}
	var err error
	switch op {
	case wire.OpGet:
		var b wire.GetRequest
		err = wire.Decode(body, &b)
		r.keys, r.stale = []string{string(b.Key)}, b.Stale
	case wire.OpSet:
		var b wire.SetRequest
		err = wire.Decode(body, &b)
		r.keys = []string{string(b.Key)}
	case wire.OpDelete:
		var b wire.DeleteRequest
		err = wire.Decode(body, &b)
		r.keys = []string{string(b.Key)}
	case wire.OpCompareAndSet:
		var b wire.CASRequest
		err = wire.Decode(body, &b)
		r.keys = []string{string(b.Key)}
	case wire.OpMGet:
		var b wire.MGetRequest
		err = wire.Decode(body, &b)
		for _, k := range b.Keys {
			r.keys = append(r.keys, string(k))
		}
		r.stale = b.Stale
	case wire.OpMSet:
		var b wire.MSetRequest
		err = wire.Decode(body, &b)
		for _, it := range b.Items {
			r.keys = append(r.keys, string(it.Key))
		}
	}
	return r, err
}

// serve answers a request as a node would: NotLeader unless it leads every
// partition involved (or the read is stale), else the op on the shared map.
func (nd *fakeNode) serve(op wire.Op, body []byte, req fakeReq) (wire.Status, any) {
	fc := nd.cl
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !req.stale {
		for _, k := range req.keys {
			p := wire.Partition([]byte(k), fakePartitions)
			if l := fc.leader[p]; l != nd.idx {
				eb := &wire.ErrorBody{Code: wire.StatusNotLeader, Msg: "not the leader"}
				if l >= 0 && !fc.noHints {
					eb.Leader, eb.LeaderAddr = fc.nodes[l].id, fc.nodes[l].addr()
				}
				return wire.StatusNotLeader, eb
			}
		}
	}
	var resp any
	switch op {
	case wire.OpGet:
		var b wire.GetRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		it, ok := fc.data[string(b.Key)]
		if !ok {
			nd.record(op, req.keys)
			return wire.StatusNotFound, &wire.ErrorBody{Code: wire.StatusNotFound, Msg: "not found"}
		}
		resp = &wire.GetResponse{Value: it.value, Version: it.version}
	case wire.OpSet:
		var b wire.SetRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		fc.index++
		fc.data[string(b.Key)] = fakeItem{b.Value, fc.index}
		resp = &wire.SetResponse{Version: fc.index}
	case wire.OpDelete:
		var b wire.DeleteRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		var ver uint64
		if _, ok := fc.data[string(b.Key)]; ok {
			fc.index++
			ver = fc.index
			delete(fc.data, string(b.Key))
		}
		resp = &wire.DeleteResponse{Version: ver}
	case wire.OpCompareAndSet:
		var b wire.CASRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		cur := fc.data[string(b.Key)].version
		if cur != b.Expect {
			resp = &wire.CASResponse{OK: false, Version: cur}
			break
		}
		fc.index++
		fc.data[string(b.Key)] = fakeItem{b.Value, fc.index}
		resp = &wire.CASResponse{OK: true, Version: fc.index}
	case wire.OpMGet:
		var b wire.MGetRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		r := &wire.MGetResponse{Items: []wire.MGetItem{}}
		for _, k := range b.Keys {
			it, ok := fc.data[string(k)]
			r.Items = append(r.Items, wire.MGetItem{Found: ok, Value: it.value, Version: it.version})
		}
		resp = r
	case wire.OpMSet:
		var b wire.MSetRequest
		wire.Decode(body, &b) //nolint:errcheck // decoded once already
		r := &wire.MSetResponse{Versions: []uint64{}}
		for _, it := range b.Items {
			fc.index++
			fc.data[string(it.Key)] = fakeItem{it.Value, fc.index}
			r.Versions = append(r.Versions, fc.index)
		}
		resp = r
	case wire.OpPing:
		resp = &wire.PingResponse{}
	default:
		return wire.StatusUnknownOp, &wire.ErrorBody{Code: wire.StatusUnknownOp, Msg: op.String()}
	}
	nd.record(op, req.keys)
	return wire.StatusOK, resp
}

func (nd *fakeNode) record(op wire.Op, keys []string) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.served[op]++
	nd.keys = append(nd.keys, keys...)
}

// value returns what the fake holds for key.
func (fc *fakeCluster) value(key string) (fakeItem, bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	it, ok := fc.data[key]
	return it, ok
}
