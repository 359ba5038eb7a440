package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"kvnode/engine"
	"kvnode/replication"
	"kvnode/wire"
)

// The operations both wire surfaces (HTTP and the binary protocol) share:
// validation, routing to the key's group, timeouts, and one vocabulary of
// errors that each surface maps to its own codes.

var (
	// errBadRequest: the input is invalid; nothing was changed.
	errBadRequest = errors.New("bad request")
	// errTooLarge: a key or value is over its limit; nothing was changed.
	errTooLarge = errors.New("too large")
	// errUnavailable: no quorum or no leader in time; a write was not
	// acknowledged (and may or may not apply later).
	errUnavailable = errors.New("unavailable")
	// errStopping: the node is shutting down.
	errStopping = errors.New("node is stopping")
	// errVersionMismatch: a conditional write's version did not match.
	errVersionMismatch = errors.New("version mismatch")
)

// notLeaderError: this node cannot serve the key's group; Leader names the
// node that can, when known.
type notLeaderError struct {
	Group  uint64
	Leader *nodeInfo
}

func (e *notLeaderError) Error() string {
	if e.Leader == nil {
		return fmt.Sprintf("no leader known for %s", partitionName(e.Group))
	}
	return fmt.Sprintf("%s is led by %s (%s)", partitionName(e.Group), e.Leader.Name, e.Leader.KVAddr)
}

// keyGroup returns the raft group of key, after checking it. The
// partition count is fixed when the cluster is created, so it is read
// from the cluster state once, not per request.
func (n *Node) keyGroup(key []byte) (uint64, error) {
	if len(key) == 0 {
		return 0, fmt.Errorf("%w: empty key", errBadRequest)
	}
	if len(key) > n.cfg.MaxKeySize {
		return 0, fmt.Errorf("%w: key of %d bytes exceeds the limit of %d bytes (--max-key-size)", errTooLarge, len(key), n.cfg.MaxKeySize)
	}
	parts := n.partitions.Load()
	if parts == 0 {
		m, err := n.meta.load()
		if err != nil {
			return 0, fmt.Errorf("%w: %v", errUnavailable, err)
		}
		parts = int64(m.Partitions)
		n.partitions.Store(parts)
	}
	return partitionGroup(wire.Partition(key, int(parts))), nil
}

func (n *Node) checkValue(v []byte) error {
	if len(v) > n.cfg.MaxValueSize {
		return fmt.Errorf("%w: value of %d bytes exceeds the limit of %d bytes (--max-value-size)", errTooLarge, len(v), n.cfg.MaxValueSize)
	}
	return nil
}

// leaderOf returns the node leading group g, from local raft state if
// this node holds a replica, else from the cluster view.
func (n *Node) leaderOf(g uint64) *nodeInfo {
	m, err := n.meta.load()
	if err != nil {
		return nil
	}
	if id, err := n.host.Leader(g); err == nil && id != 0 {
		return m.Nodes[id]
	}
	if gr, ok := n.view.leaderOf(g); ok {
		return m.Nodes[gr.Leader]
	}
	return nil
}

// write proposes ops on group g and waits for them to apply, within the
// request timeout.
func (n *Node) write(ctx context.Context, g uint64, ops []engine.Op) ([]engine.Result, error) {
	if n.stopping.Load() {
		return nil, errStopping
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	for {
		res, err := n.host.Propose(ctx, g, ops)
		if err == nil {
			n.metrics.writes.Add(float64(len(ops)))
			return res, nil
		}
		switch {
		case errors.Is(err, replication.ErrNotLeader), errors.Is(err, replication.ErrGroupNotFound):
			ld := n.leaderOf(g)
			if ld != nil && ld.ID == n.id {
				ld = nil // our own stale belief
			}
			if ld == nil {
				// An election is under way: wait for its outcome rather
				// than bounce the client.
				if werr := n.waitForLeader(ctx, g); werr != nil {
					return nil, fmt.Errorf("%w: %s has no leader: %v", errUnavailable, partitionName(g), werr)
				}
				continue
			}
			return nil, &notLeaderError{Group: g, Leader: ld}
		case errors.Is(err, replication.ErrProposalDropped):
			// Certainly not applied: try again until the deadline.
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %v", errUnavailable, err)
			case <-time.After(5 * time.Millisecond):
			}
			continue
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, replication.ErrUnknownOutcome):
			return nil, fmt.Errorf("%w: no quorum within %v; the write was not acknowledged", errUnavailable, n.cfg.RequestTimeout)
		case errors.Is(err, replication.ErrStopped):
			return nil, errStopping
		case errors.Is(err, replication.ErrInvalidCommand):
			return nil, fmt.Errorf("%w: %v", errBadRequest, err)
		}
		return nil, err
	}
}

// waitForLeader waits until group g has a leader (or ctx ends).
func (n *Node) waitForLeader(ctx context.Context, g uint64) error {
	for {
		if id, err := n.host.Leader(g); err == nil && id != 0 {
			return nil
		} else if err != nil {
			if _, ok := n.view.leaderOf(g); ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// read gets key from group g: linearizable (a read index, on the leader or
// a follower) unless stale, which reads the local replica as it is.
func (n *Node) read(ctx context.Context, g uint64, key []byte, stale bool) ([]byte, uint64, error) {
	if n.stopping.Load() {
		return nil, 0, errStopping
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	for {
		v, ver, err := n.host.Get(ctx, g, key, stale)
		switch {
		case err == nil:
			n.metrics.reads.Inc()
			return v, ver, nil
		case errors.Is(err, engine.ErrNotFound):
			n.metrics.reads.Inc()
			return nil, 0, err
		case errors.Is(err, replication.ErrGroupNotFound), errors.Is(err, replication.ErrUnknownOutcome):
			// Not here (any more): the replica left this node, possibly while
			// the read waited for its read index (a move away, a drain). A
			// read has no outcome to be unknown; the client retries where
			// the partition is now. (It was Internal, which the client
			// rightly does not retry: TestDrain caught it.)
			return nil, 0, &notLeaderError{Group: g, Leader: n.leaderOf(g)}
		case errors.Is(err, replication.ErrReadDropped):
			select {
			case <-ctx.Done():
				return nil, 0, fmt.Errorf("%w: no read index within %v (no leader or no quorum)", errUnavailable, n.cfg.RequestTimeout)
			case <-time.After(10 * time.Millisecond):
			}
			continue
		case errors.Is(err, context.DeadlineExceeded):
			return nil, 0, fmt.Errorf("%w: no quorum within %v", errUnavailable, n.cfg.RequestTimeout)
		case errors.Is(err, replication.ErrStopped):
			return nil, 0, errStopping
		}
		return nil, 0, err
	}
}

// put, del and cas are the single-key writes.
func (n *Node) put(ctx context.Context, key, value []byte) (uint64, error) {
	g, err := n.keyGroup(key)
	if err != nil {
		return 0, err
	}
	if err := n.checkValue(value); err != nil {
		return 0, err
	}
	res, err := n.write(ctx, g, []engine.Op{{Kind: engine.OpPut, Key: key, Value: value}})
	if err != nil {
		return 0, err
	}
	return res[0].Version, nil
}

func (n *Node) del(ctx context.Context, key []byte) (uint64, error) {
	g, err := n.keyGroup(key)
	if err != nil {
		return 0, err
	}
	res, err := n.write(ctx, g, []engine.Op{{Kind: engine.OpDelete, Key: key}})
	if err != nil {
		return 0, err
	}
	return res[0].Version, nil
}

// cas writes value iff key's version is expect (0: must not exist). It
// returns whether it wrote, and the key's version after.
func (n *Node) cas(ctx context.Context, key, value []byte, expect uint64) (bool, uint64, error) {
	g, err := n.keyGroup(key)
	if err != nil {
		return false, 0, err
	}
	if err := n.checkValue(value); err != nil {
		return false, 0, err
	}
	res, err := n.write(ctx, g, []engine.Op{{Kind: engine.OpCompareAndSet, Key: key, Value: value, Expect: expect}})
	if err != nil {
		return false, 0, err
	}
	return res[0].OK, res[0].Version, nil
}

func (n *Node) get(ctx context.Context, key []byte, stale bool) ([]byte, uint64, error) {
	g, err := n.keyGroup(key)
	if err != nil {
		return nil, 0, err
	}
	return n.read(ctx, g, key, stale)
}
