package client

import (
	"context"
	"errors"
	"fmt"

	"kvnode/wire"
)

var (
	// ErrNotFound is returned by Get and GetItem when the key does not
	// exist.
	ErrNotFound = errors.New("kvnode: key not found")

	// ErrTooLarge is matched when a key or value is over the server's
	// limit, or a request over Config.MaxFrameSize (then nothing was sent).
	// Nothing was written.
	ErrTooLarge = errors.New("kvnode: request too large")

	// ErrBadRequest is matched when the request is invalid (an empty key,
	// or one the server refused as malformed). Nothing was written. The
	// error's text includes the server's message.
	ErrBadRequest = errors.New("kvnode: bad request")

	// ErrUnavailable is matched when the cluster could not serve the
	// operation within its retries and deadline: no leader, no quorum, a
	// node stopping, no node reachable, no topology. For a write, check
	// ErrUnknownOutcome too.
	ErrUnavailable = errors.New("kvnode: unavailable")

	// ErrUnknownOutcome is matched when a write failed in a way that does
	// not tell whether it was applied: it may have been, or may still be.
	// The error also matches its cause (ErrUnavailable, a context error,
	// ErrClosed, ...). Read the key to find out.
	ErrUnknownOutcome = errors.New("kvnode: write outcome unknown")

	// ErrClosed is returned by every call on a closed Client, and by calls
	// that were in flight when Close was called.
	ErrClosed = errors.New("kvnode: client closed")
)

// ServerError is a failure status a node answered with. errors.Is matches
// it against ErrNotFound, ErrBadRequest, ErrTooLarge and, for NotLeader,
// Unavailable and Stopping, ErrUnavailable.
type ServerError struct {
	// Addr is the KV address of the node that answered.
	Addr string
	// Op is the operation that failed.
	Op wire.Op
	// Status is the response's status; never wire.StatusOK.
	Status wire.Status
	// Msg is the server's explanation.
	Msg string
	// Leader and LeaderAddr are the leader hint of a NotLeader answer (node
	// id and KV address), when the node knew it.
	Leader     string
	LeaderAddr string
}

func (e *ServerError) Error() string {
	s := fmt.Sprintf("kvnode: %s at %s: %s", e.Op, e.Addr, e.Status)
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Leader != "" || e.LeaderAddr != "" {
		s += fmt.Sprintf(" (leader %s at %s)", e.Leader, e.LeaderAddr)
	}
	return s
}

// Is maps statuses to the package's sentinel errors.
func (e *ServerError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == wire.StatusNotFound
	case ErrBadRequest:
		return e.Status == wire.StatusBadRequest
	case ErrTooLarge:
		return e.Status == wire.StatusTooLarge
	case ErrUnavailable:
		switch e.Status {
		case wire.StatusNotLeader, wire.StatusUnavailable, wire.StatusStopping:
			return true
		}
	}
	return false
}

// sendError is a request that failed in transit: the connection could not
// be made or broke, the caller's context ended, or the client closed.
type sendError struct {
	addr string
	err  error
	// sent is true when the request may have reached the server, so that
	// a write may have been applied.
	sent bool
}

func (e *sendError) Error() string {
	return fmt.Sprintf("kvnode: request to %s: %v", e.addr, e.err)
}

func (e *sendError) Unwrap() error { return e.err }

// errNoRoute is wrapped when the client has no topology yet, or knows no
// node for a key's partition. Nothing was sent.
var errNoRoute = errors.New("no route")

// badResponseError is a response that does not fit its request: an
// undecodable body, or the wrong number of items. It indicates a server bug
// or a version mismatch.
type badResponseError struct {
	addr string
	op   wire.Op
	err  error
}

func (e *badResponseError) Error() string {
	return fmt.Sprintf("kvnode: bad %s response from %s: %v", e.op, e.addr, e.err)
}

func (e *badResponseError) Unwrap() error { return e.err }

// errAttemptTimeout ends a read attempt that got no answer within
// Config.ReadAttemptTimeout; the read is retried. It wraps
// context.DeadlineExceeded: if the retries run out too, the caller sees a
// deadline error either way.
var errAttemptTimeout = fmt.Errorf("%w: no answer within the read attempt timeout", context.DeadlineExceeded)
