package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"kvnode/wire"
)

// opKind decides which failures an operation is retried after.
type opKind uint8

const (
	// opRead is retried after every transient failure; it changes nothing.
	opRead opKind = iota
	// opWrite is retried only after failures that prove it was not
	// applied (not the leader, stopping, never sent). Even a plain Set
	// applied twice is not linearizable: the second copy can land after
	// another client's write to the key, which readers already saw.
	opWrite
	// opCAS is retried on the same terms as opWrite; applied twice, it
	// could also turn its own success into a reported failure.
	opCAS
)

// request is one operation on one or more keys. run routes the keys to
// nodes, sends one wire request per node, and retries the keys whose node
// failed.
type request struct {
	op    wire.Op
	kind  opKind
	stale bool
	keys  [][]byte
	// build returns the wire request for the keys at idx (indices into
	// keys, ascending) and the response body to decode into.
	build func(idx []int) (req, resp any)
	// done stores a decoded response for the keys at idx. An error means the
	// response does not fit the request.
	done func(idx []int, resp any) error
}

// group is the keys of a request that go to one node.
type group struct {
	addr string
	idx  []int
	part int // the keys' partition if they share one; -1 otherwise
}

// Backoff between attempts: exponential from backoffMin, capped at
// backoffMax, with jitter so that clients do not retry in lockstep.
const (
	backoffMin = 5 * time.Millisecond
	backoffMax = 200 * time.Millisecond
)

func (c *Client) run(ctx context.Context, r *request) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	pending := make([]int, len(r.keys))
	for i := range pending {
		pending[i] = i
	}
	var (
		ambiguous bool  // some attempt may have applied a write
		last      error // the latest failure
		split     bool  // route each partition separately
		rushed    bool  // the previous retry skipped its backoff
	)
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			// Out of time after retryable failures: unavailable.
			return c.finish(r, ctxFailure(err, last), ambiguous, last != nil)
		}
		var (
			failed    []int
			immediate = true  // every failure has a fresh route: no need to wait
			stale     = false // some failure suggests the topology is stale
			// A fetch of the topology that starts after this point knows
			// at least what the failures below tell.
			fresh = c.fetchSeq.Load() + 1
		)
		groups, err := c.route(ctx, r, pending, split)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return c.finish(r, ctxFailure(ctx.Err(), last), ambiguous, last != nil)
			case !errors.Is(err, errNoRoute):
				return c.finish(r, err, ambiguous, false) // closed
			}
			last, failed, immediate, stale = err, pending, false, true
		} else {
			split = false
			for i, err := range c.send(ctx, r, groups) {
				if err == nil {
					continue
				}
				o := c.classify(ctx, r, groups[i], err)
				ambiguous = ambiguous || o.ambiguous
				if !o.retry {
					return c.finish(r, err, ambiguous, false)
				}
				last = err
				failed = append(failed, groups[i].idx...)
				immediate = immediate && o.immediate
				stale = stale || o.stale
				split = split || o.split
			}
		}
		if len(failed) == 0 {
			return nil
		}
		if attempt >= c.cfg.MaxRetries {
			return c.finish(r, last, ambiguous, true)
		}
		// A retry on a fresh route needs no wait, but only once in a row:
		// two nodes that name each other leader (an election in progress)
		// must not use up the retries in a burst.
		if immediate && !rushed {
			rushed = true
		} else {
			rushed = false
			err := c.backoff(ctx, attempt)
			if err == nil && stale {
				// Retrying on the topology that just failed would likely
				// fail the same way; the refresh the failure triggered is
				// usually done by now.
				_, _, err = c.awaitFetch(ctx, fresh, backoffMax)
			}
			if errors.Is(err, ErrClosed) {
				return c.finish(r, err, ambiguous, false)
			}
			if err != nil {
				return c.finish(r, ctxFailure(err, last), ambiguous, last != nil)
			}
		}
		// Keep the request order within each node's next request: MSet's
		// later items must still win over earlier ones with the same key.
		slices.Sort(failed)
		pending = failed
	}
}

// route groups the pending keys by the node to send them to, and by
// partition too if split is set.
func (c *Client) route(ctx context.Context, r *request, pending []int, split bool) ([]group, error) {
	t, err := c.currentTopology(ctx)
	if err != nil {
		return nil, err
	}
	rr := c.rr.Add(1)
	var groups []group
	for _, i := range pending {
		p := wire.Partition(r.keys[i], t.n)
		addr := t.target(p, r.stale, rr)
		if addr == "" {
			c.triggerRefresh()
			return nil, fmt.Errorf("%w: no node known for partition %d", errNoRoute, p)
		}
		j := slices.IndexFunc(groups, func(g group) bool { return g.addr == addr && (!split || g.part == p) })
		if j < 0 {
			groups = append(groups, group{addr: addr, part: p})
			j = len(groups) - 1
		}
		g := &groups[j]
		g.idx = append(g.idx, i)
		if g.part != p {
			g.part = -1
		}
	}
	return groups, nil
}

// send sends each group's request, in parallel when there are several, and
// returns their errors.
func (c *Client) send(ctx context.Context, r *request, groups []group) []error {
	errs := make([]error, len(groups))
	if len(groups) == 1 {
		errs[0] = c.sendGroup(ctx, r, groups[0])
		return errs
	}
	var wg sync.WaitGroup
	for i := range groups {
		wg.Go(func() { errs[i] = c.sendGroup(ctx, r, groups[i]) })
	}
	wg.Wait()
	return errs
}

func (c *Client) sendGroup(ctx context.Context, r *request, g group) error {
	p, err := c.pool(g.addr)
	if err != nil {
		return err
	}
	cn, err := p.get(ctx)
	if err != nil {
		return err
	}
	req, resp := r.build(g.idx)
	if r.kind == opRead && c.cfg.ReadAttemptTimeout > 0 {
		// The attempt's own deadline: when only it passes, classify sees
		// the request's context still live and retries (see Config).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, c.cfg.ReadAttemptTimeout, errAttemptTimeout)
		defer cancel()
	}
	if err := cn.do(ctx, r.op, req, resp); err != nil {
		return err
	}
	if err := r.done(g.idx, resp); err != nil {
		return &badResponseError{addr: g.addr, op: r.op, err: err}
	}
	return nil
}

// outcome is what one failed attempt means for the operation.
type outcome struct {
	retry     bool // try again (the caller still checks retries and deadline)
	ambiguous bool // the attempt may have applied a write
	immediate bool // the route changed: retry without a backoff
	stale     bool // the topology is likely stale: retry on a fresh one
	split     bool // retry with one request per partition
}

// classify decides what a failed attempt means, and refreshes the
// topology when the failure suggests it is stale.
func (c *Client) classify(ctx context.Context, r *request, g group, err error) outcome {
	write := r.kind != opRead
	var se *ServerError
	var sendErr *sendError
	switch {
	case errors.As(err, &se):
		switch se.Status {
		case wire.StatusNotLeader:
			// Nothing was applied. A hint is only usable if it is about one
			// partition: a multi-partition request's hint does not say
			// which, so such a request is split for its retry, and each
			// part then gets its own hint.
			c.triggerRefresh()
			if g.part < 0 {
				return outcome{retry: true, immediate: true, split: true}
			}
			changed := c.applyHint(g.part, se.Leader, se.LeaderAddr)
			return outcome{retry: true, immediate: changed, stale: !changed}
		case wire.StatusStopping:
			c.triggerRefresh()
			return outcome{retry: true, stale: true}
		case wire.StatusUnavailable:
			// A write may apply later: retrying it could apply it twice,
			// after other clients' writes to the key (seen by the fault
			// suite as a linearizability violation). Only reads retry.
			return outcome{retry: !write, ambiguous: write}
		case wire.StatusInternal:
			return outcome{ambiguous: write}
		default: // NotFound, BadRequest, TooLarge, UnknownOp: definite answers
			return outcome{}
		}
	case errors.As(err, &sendErr):
		if errors.Is(sendErr.err, ErrClosed) || ctx.Err() != nil {
			return outcome{ambiguous: write && sendErr.sent}
		}
		c.triggerRefresh()
		if !sendErr.sent {
			return outcome{retry: true, stale: true}
		}
		return outcome{retry: !write, ambiguous: write, stale: true}
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrClosed):
		return outcome{} // refused before sending
	default: // a response that does not fit: the server did something
		return outcome{ambiguous: write}
	}
}

// finish turns the last failure into the error the caller sees.
func (c *Client) finish(r *request, err error, ambiguous, exhausted bool) error {
	switch {
	case errors.Is(err, ErrClosed) && !ambiguous:
		return ErrClosed
	case r.op == wire.OpGet && errors.Is(err, ErrNotFound):
		return ErrNotFound
	}
	if exhausted && !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if ambiguous && r.kind != opRead {
		err = fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
	return err
}

// ctxFailure is the error for an operation whose context ended: the
// context's error, and what went wrong before it.
func ctxFailure(ctxErr, last error) error {
	if last == nil {
		return ctxErr
	}
	var se *sendError
	if errors.As(last, &se) && errors.Is(se.err, ctxErr) {
		return last // already says it
	}
	return fmt.Errorf("%w (after: %w)", ctxErr, last)
}

func (c *Client) backoff(ctx context.Context, attempt int) error {
	d := backoffMax
	if attempt < 10 {
		d = min(backoffMax, backoffMin<<attempt)
	}
	d = d/2 + rand.N(d/2+1) // jitter in [d/2, d]
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closing:
		return ErrClosed
	}
}
