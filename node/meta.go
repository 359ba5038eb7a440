package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"kvnode/engine"
)

// The cluster's own state lives in raft group 0, the meta group, as one
// JSON document under one key. Every node holds a replica of the meta group
// (a voter on up to three nodes, a learner on the others), so every node
// reads the cluster state locally. Only the meta group's leader changes
// it, by a compare-and-set on the document's version: a read-modify-write
// that fails if anything else wrote in between.
//
// Partition p is raft group p+1.
const (
	metaGroup  uint64 = 0
	metaVoters        = 3
)

var metaKey = []byte("meta")

func partitionGroup(p int) uint64 { return uint64(p) + 1 }
func groupPartition(g uint64) int { return int(g) - 1 }

// Node states.
const (
	nodeActive  = "active"
	nodeDead    = "dead"    // unreachable past the dead-node timeout
	nodeRemoved = "removed" // removed by an operator; may not rejoin with its old data
)

// metaState is the replicated cluster state.
type metaState struct {
	ClusterID         string    `json:"cluster_id"`
	ClusterName       string    `json:"cluster_name"`
	Partitions        int       `json:"partitions"`
	ReplicationFactor int       `json:"replication_factor"`
	CreatedAt         time.Time `json:"created_at"`
	// NextNodeID is the raft id the next joining node gets. Ids are never
	// reused: a node that comes back empty is a new replica to raft.
	NextNodeID uint64               `json:"next_node_id"`
	Nodes      map[uint64]*nodeInfo `json:"nodes"`
	// Groups holds the desired placement of every group, meta included.
	Groups map[uint64]*groupInfo `json:"groups"`

	// version is the document's version (the raft index that wrote it).
	version uint64
}

type nodeInfo struct {
	ID       uint64    `json:"id"`
	Name     string    `json:"name"`
	HTTPAddr string    `json:"http_addr"`
	KVAddr   string    `json:"kv_addr"`
	State    string    `json:"state"`
	JoinedAt time.Time `json:"joined_at"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
}

type groupInfo struct {
	// Voters are the replicas the group should have as voters; Learners
	// (the meta group only) get the log without voting.
	Voters   []uint64 `json:"voters"`
	Learners []uint64 `json:"learners,omitempty"`
	// Leader is the replica placement would like to lead the group, to
	// spread leaders over the nodes.
	Leader uint64 `json:"leader,omitempty"`
}

func (m *metaState) clone() *metaState {
	c := *m
	c.Nodes = make(map[uint64]*nodeInfo, len(m.Nodes))
	for id, n := range m.Nodes {
		nn := *n
		c.Nodes[id] = &nn
	}
	c.Groups = make(map[uint64]*groupInfo, len(m.Groups))
	for id, g := range m.Groups {
		gg := *g
		gg.Voters = slices.Clone(g.Voters)
		gg.Learners = slices.Clone(g.Learners)
		c.Groups[id] = &gg
	}
	return &c
}

// nodeByName finds a node by its NODE_ID. A name can appear more than
// once: a removed node that joined again fresh got a new raft id, and its
// old entry stays (removed) so the old data dir is still refused. The
// entry that is not removed wins, then the newest, so that map order never
// decides which one an operator's request acts on.
func (m *metaState) nodeByName(name string) *nodeInfo {
	var found *nodeInfo
	for _, id := range m.sortedNodes() {
		n := m.Nodes[id]
		if n.Name != name {
			continue
		}
		if found == nil || found.State == nodeRemoved || n.State != nodeRemoved {
			found = n
		}
	}
	return found
}

// activeNodes lists the active nodes' ids, in order.
func (m *metaState) activeNodes() []uint64 {
	var ids []uint64
	for id, n := range m.Nodes {
		if n.State == nodeActive {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// groupsOf lists the groups that should have a replica on node.
func (m *metaState) groupsOf(node uint64) []uint64 {
	var gs []uint64
	for id, g := range m.Groups {
		if slices.Contains(g.Voters, node) || slices.Contains(g.Learners, node) {
			gs = append(gs, id)
		}
	}
	slices.Sort(gs)
	return gs
}

func (m *metaState) sortedNodes() []uint64 {
	return slices.Sorted(maps.Keys(m.Nodes))
}

func (m *metaState) sortedGroups() []uint64 {
	return slices.Sorted(maps.Keys(m.Groups))
}

// metaReader reads the local replica of the meta group, parsing the
// document only when its version changes.
type metaReader struct {
	eng *engine.Engine

	mu struct {
		sync.Mutex
		cached *metaState
	}
}

// errNoMeta means this node holds no meta state yet (it has not joined, or
// its meta replica has not caught up).
var errNoMeta = errors.New("node: no cluster state yet")

// load returns the local meta state. The result is shared: do not modify
// it, clone it.
func (r *metaReader) load() (*metaState, error) {
	v, ver, err := r.eng.Get(metaGroup, metaKey)
	if errors.Is(err, engine.ErrNotFound) {
		return nil, errNoMeta
	}
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.mu.cached; c != nil && c.version == ver {
		return c, nil
	}
	m := &metaState{}
	if err := json.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("node: decoding cluster state: %w", err)
	}
	m.version = ver
	if m.Nodes == nil {
		m.Nodes = map[uint64]*nodeInfo{}
	}
	if m.Groups == nil {
		m.Groups = map[uint64]*groupInfo{}
	}
	r.mu.cached = m
	return m, nil
}

// errMetaConflict means the meta document changed between read and write.
var errMetaConflict = errors.New("node: cluster state changed concurrently")

// updateMeta applies fn to a fresh copy of the meta state and writes it
// back with a compare-and-set on the version it read. It must run on the
// meta group's leader. The read is linearizable, so fn sees every earlier
// change. If fn returns errNoChange nothing is written.
func (n *Node) updateMeta(ctx context.Context, fn func(m *metaState) error) (*metaState, error) {
	for attempt := 0; ; attempt++ {
		if err := n.host.ReadIndex(ctx, metaGroup); err != nil {
			return nil, err
		}
		cur, err := n.meta.load()
		if err != nil {
			return nil, err
		}
		next := cur.clone()
		if err := fn(next); err != nil {
			if errors.Is(err, errNoChange) {
				return cur, nil
			}
			return nil, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		res, err := n.host.Propose(ctx, metaGroup, []engine.Op{{
			Kind: engine.OpCompareAndSet, Key: metaKey, Value: b, Expect: cur.version,
		}})
		if err != nil {
			return nil, err
		}
		if res[0].OK {
			next.version = res[0].Version
			return next, nil
		}
		if attempt >= 10 {
			return nil, errMetaConflict
		}
	}
}

// errNoChange, returned by an updateMeta function, skips the write.
var errNoChange = errors.New("no change")

// isMetaLeader reports whether this node leads the meta group.
func (n *Node) isMetaLeader() bool {
	st, err := n.host.Status(metaGroup)
	return err == nil && st.IsLeader
}

// metaLeader returns the node leading the meta group, if known.
func (n *Node) metaLeader(m *metaState) (*nodeInfo, bool) {
	id, err := n.host.Leader(metaGroup)
	if err != nil || id == 0 {
		return nil, false
	}
	ni, ok := m.Nodes[id]
	return ni, ok
}
