package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"

	"kvnode/client"
	"kvnode/internal/history"
)

// Register is the linearizability workload: workers run gets, puts and
// compare-and-sets on a small set of keys and record them (package
// history); Check runs porcupine over the history. A write whose outcome
// the client did not learn is recorded as unknown (it may take effect at
// any later time); a failed read, or a write the client says certainly
// did not apply, is not recorded.
//
// The key set changes every Epoch: each key's history then stays short,
// which keeps porcupine's search (exponential in the concurrency of one
// key's operations, unknown ones included) fast and deterministic.
type Register struct {
	cl      *client.Client
	rec     *history.Recorder
	workers int
	keys    int
	epoch   time.Duration
	prefix  string
	seed    uint64
	pace    time.Duration

	start    time.Time
	nextProc atomic.Int64
	ok, unk  atomic.Int64
	okWrites atomic.Int64
	acks     struct {
		sync.Mutex
		writes []ackEvent
		reads  []ackEvent
	}

	// mirror keeps a copy of the history, for diagnostics on a violation.
	mirror struct {
		sync.Mutex
		ops []porcupine.Operation
	}

	stop chan struct{}
	wg   sync.WaitGroup
}

// regOp is an operation in flight, recorded in the history and the
// mirror.
type regOp struct {
	r    *Register
	op   *history.Op
	proc int
	in   history.Input
	call int64
}

func (r *Register) begin(proc int, in history.Input) *regOp {
	return &regOp{r: r, op: r.rec.Begin(proc, in), proc: proc, in: in, call: int64(time.Since(r.start))}
}

func (o *regOp) mirror(out history.Output, ret int64) {
	o.r.mirror.Lock()
	o.r.mirror.ops = append(o.r.mirror.ops, porcupine.Operation{ClientId: o.proc, Input: o.in, Call: o.call, Output: out, Return: ret})
	o.r.mirror.Unlock()
}

func (o *regOp) End(out history.Output) {
	o.op.End(out)
	o.mirror(out, int64(time.Since(o.r.start)))
}

func (o *regOp) Unknown() {
	o.op.Unknown()
	if o.in.Kind != history.Get {
		o.mirror(history.Output{Unknown: true}, 1<<62)
	}
}

func (o *regOp) Discard() { o.op.Discard() }

// RegisterOptions configure a Register.
type RegisterOptions struct {
	Workers int           // default 4
	Keys    int           // keys per epoch; default 4
	Epoch   time.Duration // default 3s
	Prefix  string        // key prefix
	Seed    uint64
	// Pace is the pause between a worker's operations; default 3ms.
	Pace time.Duration
}

// NewRegister returns a register workload over cl.
func NewRegister(cl *client.Client, o RegisterOptions) *Register {
	if o.Workers == 0 {
		o.Workers = 4
	}
	if o.Keys == 0 {
		o.Keys = 4
	}
	if o.Epoch == 0 {
		o.Epoch = 3 * time.Second
	}
	if o.Pace == 0 {
		o.Pace = 3 * time.Millisecond
	}
	return &Register{cl: cl, rec: history.NewRecorder(), workers: o.Workers, keys: o.Keys, epoch: o.Epoch,
		prefix: o.Prefix, seed: o.Seed, pace: o.Pace, stop: make(chan struct{})}
}

// Start starts the workers.
func (r *Register) Start() {
	r.start = time.Now()
	for w := range r.workers {
		r.wg.Add(1)
		go r.worker(w)
	}
}

// Stop stops the workers and waits for their last operations.
func (r *Register) Stop() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.wg.Wait()
}

func (r *Register) worker(w int) {
	defer r.wg.Done()
	rng := rand.New(rand.NewPCG(r.seed, uint64(w)+1000))
	proc := int(r.nextProc.Add(1))
	versions := map[string]uint64{} // last version this worker saw per key
	for n := 0; ; n++ {
		select {
		case <-r.stop:
			return
		case <-time.After(r.pace):
		}
		epoch := int(time.Since(r.start) / r.epoch)
		key := fmt.Sprintf("%s%d-%d", r.prefix, epoch, rng.IntN(r.keys))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var unknown bool
		switch x := rng.IntN(100); {
		case x < 35:
			invoked := time.Now()
			op := r.begin(proc, history.Input{Kind: history.Get, Key: key})
			it, err := r.cl.GetItem(ctx, key)
			if err == nil || errors.Is(err, client.ErrNotFound) {
				r.acks.Lock()
				r.acks.reads = append(r.acks.reads, ackEvent{key: key, invoked: invoked, done: time.Now()})
				r.acks.Unlock()
			}
			switch {
			case err == nil:
				op.End(history.Output{Found: true, Value: string(it.Value), Version: it.Version})
				versions[key] = it.Version
				r.ok.Add(1)
			case errors.Is(err, client.ErrNotFound):
				op.End(history.Output{Found: false})
				versions[key] = 0
				r.ok.Add(1)
			default:
				op.Discard()
			}
		case x < 70:
			value := fmt.Sprintf("w%d-%d", w, n)
			invoked := time.Now()
			op := r.begin(proc, history.Input{Kind: history.Put, Key: key, Value: value})
			ver, err := r.cl.Put(ctx, key, []byte(value))
			unknown = r.finishWrite(op, err, history.Output{Version: ver}, key, invoked)
			if err == nil {
				versions[key] = ver
			}
		default:
			value := fmt.Sprintf("w%d-%d", w, n)
			expect := versions[key]
			if rng.IntN(5) == 0 {
				expect = 0 // "create if absent", often a mismatch
			}
			invoked := time.Now()
			op := r.begin(proc, history.Input{Kind: history.CAS, Key: key, Value: value, Expect: expect})
			ok, ver, err := r.cl.CompareAndSet(ctx, key, expect, []byte(value))
			unknown = r.finishWrite(op, err, history.Output{OK: ok, Version: ver}, key, invoked)
			if err == nil {
				versions[key] = ver
				if !ok {
					r.okWrites.Add(-1) // a failed compare wrote nothing
				}
			}
		}
		cancel()
		if unknown {
			// A process whose operation never ended cannot start another
			// (its last one is open forever): continue as a new one.
			proc = int(r.nextProc.Add(1))
			select {
			case <-r.stop:
				return
			case <-time.After(time.Duration(20+rng.IntN(60)) * time.Millisecond):
			}
		}
	}
}

// finishWrite records a write's outcome and reports whether it was
// unknown.
func (r *Register) finishWrite(op *regOp, err error, out history.Output, key string, invoked time.Time) bool {
	switch {
	case err == nil:
		op.End(out)
		r.ok.Add(1)
		r.okWrites.Add(1)
		r.acks.Lock()
		r.acks.writes = append(r.acks.writes, ackEvent{key: key, invoked: invoked, done: time.Now()})
		r.acks.Unlock()
		return false
	case errors.Is(err, client.ErrUnknownOutcome) || !(errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrClosed)):
		op.Unknown()
		r.unk.Add(1)
		return true
	default:
		op.Discard()
		return false
	}
}

// AckedInvokedBetween lists the writes (puts and CAS, successful compare
// or not) invoked at or after from and answered before to.
func (r *Register) AckedInvokedBetween(from, to time.Time) []string {
	r.acks.Lock()
	defer r.acks.Unlock()
	return invokedBetween(r.acks.writes, from, to, "register write on")
}

// ReadsInvokedBetween lists the linearizable reads invoked at or after
// from that were answered before to: with a majority down, a read barrier
// cannot complete, so there must be none.
func (r *Register) ReadsInvokedBetween(from, to time.Time) []string {
	r.acks.Lock()
	defer r.acks.Unlock()
	return invokedBetween(r.acks.reads, from, to, "linearizable read of")
}

// invokedBetween describes the events invoked at or after from and
// answered before to.
func invokedBetween(events []ackEvent, from, to time.Time, what string) []string {
	var out []string
	for _, a := range events {
		if !a.invoked.Before(from) && a.done.Before(to) {
			out = append(out, fmt.Sprintf("%s %s (invoked %v after the window opened)", what, a.key, a.invoked.Sub(from).Round(time.Millisecond)))
		}
	}
	return out
}

// Counts returns the operations recorded with a definite outcome, with an
// unknown one, and the writes acknowledged.
func (r *Register) Counts() (definite, unknown, writes int64) {
	return r.ok.Load(), r.unk.Load(), r.okWrites.Load()
}

// Check stops the workers and checks the history. On a violation or a
// checker timeout it writes porcupine's visualization to the path vizPath
// returns (called only then) and returns an error saying so.
func (r *Register) Check(timeout time.Duration, vizPath func() string) (porcupine.CheckResult, error) {
	r.Stop()
	return r.rec.Check(timeout, vizPath)
}

// IllegalKeys checks each key's history on its own and returns, for each
// key that is not linearizable, its operations as text (in call order,
// times in ms since the workload started): what a person reads first
// after a violation.
func (r *Register) IllegalKeys(timeout time.Duration) map[string]string {
	r.mirror.Lock()
	all := append([]porcupine.Operation(nil), r.mirror.ops...)
	r.mirror.Unlock()
	out := map[string]string{}
	model := history.Model()
	for k, ops := range history.IllegalKeys(all, timeout) {
		sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
		var b strings.Builder
		for _, op := range ops {
			ret := "open"
			if op.Return != 1<<62 {
				ret = fmt.Sprintf("%.3f", float64(op.Return)/1e6)
			}
			fmt.Fprintf(&b, "[%10.3f, %10s] p%-4d %s\n", float64(op.Call)/1e6, ret, op.ClientId,
				model.DescribeOperation(op.Input, op.Output))
		}
		out[k] = b.String()
	}
	return out
}
