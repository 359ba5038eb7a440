package node

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// EventType names what happened. The set follows ClusterKit's hooks.
type EventType string

const (
	// EventPartitionChange: a replica of a partition was added, promoted,
	// removed or deleted (From/To name the nodes, Reason says why).
	EventPartitionChange EventType = "partition_change"
	// EventNodeJoin: a node joined the cluster (or bootstrapped it).
	EventNodeJoin EventType = "node_join"
	// EventNodeRejoin: a known node came back (Offline says how long it
	// was away, when known).
	EventNodeRejoin EventType = "node_rejoin"
	// EventNodeLeave: a node left: declared dead, or removed (Reason).
	EventNodeLeave EventType = "node_leave"
	// EventRebalanceStart and EventRebalanceComplete bracket replica moves.
	EventRebalanceStart    EventType = "rebalance_start"
	EventRebalanceComplete EventType = "rebalance_complete"
	// EventHealthChange: this node's readiness changed (Message says to
	// what and why).
	EventHealthChange EventType = "health_change"
	// EventClusterHealthChange: the meta leader judged the whole cluster
	// healthy or degraded (Health), and Message says why: a node
	// unreachable, partitions with a replica on a node that does not
	// answer, or partitions without a leader.
	EventClusterHealthChange EventType = "cluster_health_change"
)

// Event is something that happened to the cluster, as seen by this node.
// Placement events are emitted by the node that acted (the meta leader, or
// the partition's leader).
type Event struct {
	Type      EventType `json:"type"`
	Time      time.Time `json:"time"`
	Node      string    `json:"node,omitempty"`
	Partition string    `json:"partition,omitempty"`
	From      string    `json:"from,omitempty"`
	To        string    `json:"to,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Offline   string    `json:"offline,omitempty"`
	// Health is "healthy" or "degraded" (cluster_health_change).
	Health  string `json:"health,omitempty"`
	Message string `json:"message,omitempty"`
	// Seq numbers the events of this node, from 1.
	Seq uint64 `json:"seq"`
}

// eventBus logs events, keeps the recent ones, and hands them to handlers
// and streams. A handler runs on its own goroutine per event batch, so a
// slow or panicking handler never holds up the node.
type eventBus struct {
	logger *slog.Logger

	mu struct {
		sync.Mutex
		seq      uint64
		recent   []Event
		handlers []func(Event)
		subs     map[chan Event]struct{}
		closed   bool
	}
	wg sync.WaitGroup
}

const recentEvents = 1024

func newEventBus(logger *slog.Logger) *eventBus {
	b := &eventBus{logger: logger}
	b.mu.subs = map[chan Event]struct{}{}
	return b
}

func (b *eventBus) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return
	}
	b.mu.seq++
	e.Seq = b.mu.seq
	b.mu.recent = append(b.mu.recent, e)
	if len(b.mu.recent) > recentEvents {
		b.mu.recent = append(b.mu.recent[:0], b.mu.recent[len(b.mu.recent)-recentEvents:]...)
	}
	handlers := b.mu.handlers
	for ch := range b.mu.subs {
		select {
		case ch <- e:
		default:
			// A stream that does not keep up loses events; it can tell
			// from the gap in Seq.
		}
	}
	b.wg.Add(len(handlers))
	b.mu.Unlock()

	b.logger.Info("event", "type", string(e.Type), "node_name", e.Node, "partition", e.Partition,
		"from", e.From, "to", e.To, "reason", e.Reason, "offline", e.Offline, "health", e.Health, "message", e.Message)
	for _, h := range handlers {
		go b.call(h, e)
	}
}

func (b *eventBus) call(h func(Event), e Event) {
	defer b.wg.Done()
	defer func() {
		if r := recover(); r != nil {
			b.logger.Error("event handler panicked", "event", string(e.Type), "panic", fmt.Sprint(r))
		}
	}()
	h(e)
}

func (b *eventBus) onEvent(h func(Event)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mu.handlers = append(b.mu.handlers, h)
}

// subscribe returns the recent events after seq and a channel of new ones;
// cancel releases it.
func (b *eventBus) subscribe(after uint64) ([]Event, <-chan Event, func()) {
	ch := make(chan Event, 256)
	b.mu.Lock()
	defer b.mu.Unlock()
	var past []Event
	for _, e := range b.mu.recent {
		if e.Seq > after {
			past = append(past, e)
		}
	}
	if b.mu.closed {
		close(ch)
		return past, ch, func() {}
	}
	b.mu.subs[ch] = struct{}{}
	return past, ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.mu.subs[ch]; ok {
			delete(b.mu.subs, ch)
			close(ch)
		}
	}
}

func (b *eventBus) recent() []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Event(nil), b.mu.recent...)
}

// close ends the streams and waits for running handlers.
func (b *eventBus) close() {
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return
	}
	b.mu.closed = true
	for ch := range b.mu.subs {
		delete(b.mu.subs, ch)
		close(ch)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// OnEvent registers a handler for the node's events. Handlers run on their
// own goroutines; a panic in one is logged and otherwise ignored.
func (n *Node) OnEvent(h func(Event)) { n.events.onEvent(h) }

// Events returns the node's recent events, oldest first.
func (n *Node) Events() []Event { return n.events.recent() }

func (m *metaState) nodeName(id uint64) string {
	if ni := m.Nodes[id]; ni != nil {
		return ni.Name
	}
	return fmt.Sprintf("raft-%d", id)
}

func partitionName(g uint64) string {
	if g == metaGroup {
		return "meta"
	}
	return fmt.Sprintf("partition-%d", groupPartition(g))
}
