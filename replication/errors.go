package replication

import (
	"errors"
	"fmt"
)

// ErrNotLeader is returned (wrapped in a *NotLeaderError, which carries a
// hint) when an operation that needs the group's leader reaches another
// replica. Nothing was proposed: the caller may retry at the leader.
var ErrNotLeader = errors.New("replication: not the leader")

// ErrStopped is returned once the Host is closing or closed. A proposal
// that was in flight may or may not have been applied.
var ErrStopped = errors.New("replication: stopped")

// ErrGroupNotFound is returned for a group this host does not hold.
var ErrGroupNotFound = errors.New("replication: group not found on this node")

// ErrGroupExists is returned by Bootstrap and AddReplica for a group the
// host already holds.
var ErrGroupExists = errors.New("replication: group already exists on this node")

// ErrProposalDropped means the proposal was certainly not applied: raft
// refused it (no leader, a leadership transfer in progress, too much
// uncommitted data) or its log position was taken by another entry. It is
// safe to retry.
var ErrProposalDropped = errors.New("replication: proposal dropped")

// ErrUnknownOutcome means the proposal may or may not have been applied:
// this replica caught up through a snapshot that covered the proposal's
// position, or the group left this node. Treat it like a timeout.
var ErrUnknownOutcome = errors.New("replication: proposal outcome unknown")

// ErrReadDropped means a linearizable read could not get a read index in
// time (no leader, or leadership changed). Reads are safe to retry.
var ErrReadDropped = errors.New("replication: read index request dropped")

// ErrInvalidCommand is returned by Propose for a command that would not
// apply (an empty key, an unknown operation). Nothing is proposed.
var ErrInvalidCommand = errors.New("replication: invalid command")

// NotLeaderError is the concrete error behind ErrNotLeader.
type NotLeaderError struct {
	Group uint64
	// Leader is the replica this one believes leads the group, or 0 if it
	// knows of none.
	Leader uint64
}

func (e *NotLeaderError) Error() string {
	if e.Leader == 0 {
		return fmt.Sprintf("replication: not the leader of group %d (leader unknown)", e.Group)
	}
	return fmt.Sprintf("replication: not the leader of group %d (leader is %d)", e.Group, e.Leader)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// LeaderHint returns the leader a NotLeaderError names, if err is one.
func LeaderHint(err error) (uint64, bool) {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.Leader, nl.Leader != 0
	}
	return 0, false
}
