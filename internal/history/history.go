// Package history records concurrent operations on a key-value store and
// checks them for linearizability with porcupine.
//
// The model is a register per key with a version: what kvnode promises
// (P2). A write whose outcome the client never learned (a timeout, a node
// that died under it) is recorded as unknown: it may have taken effect at
// any point after it began, or never. A failed read, or a write the
// server refused outright, did nothing and is not recorded.
package history

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is an operation kind.
type Kind uint8

const (
	Get Kind = iota
	Put
	CAS
)

// Input is what a client asked.
type Input struct {
	Kind   Kind
	Key    string
	Value  string // Put, CAS
	Expect uint64 // CAS: the version the key must have; 0 = must not exist
}

// Output is what the client was told.
type Output struct {
	Unknown bool   // the client does not know whether a write took effect
	Found   bool   // Get
	Value   string // Get
	Version uint64 // Get, Put, CAS (the key's version after the op)
	OK      bool   // CAS: whether the compare held
}

// Recorder collects operations from many clients. It is safe for
// concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// NewRecorder starts a history.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Op is an operation in flight.
type Op struct {
	r      *Recorder
	client int
	in     Input
	call   int64
}

// Begin records that client invoked in; finish it with End, Unknown or
// Discard.
func (r *Recorder) Begin(client int, in Input) *Op {
	return &Op{r: r, client: client, in: in, call: r.now()}
}

// End records a definite answer.
func (o *Op) End(out Output) { o.r.add(o, out, o.r.now()) }

// Unknown records a write whose effect is unknown: it may take effect at
// any time after it began, so it is given an open end.
func (o *Op) Unknown() {
	if o.in.Kind == Get {
		return // a read that failed changed nothing
	}
	o.r.add(o, Output{Unknown: true}, 1<<62)
}

// Discard drops an operation that certainly had no effect.
func (o *Op) Discard() {}

func (r *Recorder) add(o *Op, out Output, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: o.client, Input: o.in, Call: o.call, Output: out, Return: ret})
}

// Len is the number of recorded operations; Counts splits them.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// Counts returns how many operations were recorded with a definite answer
// and how many with an unknown one.
func (r *Recorder) Counts() (definite, unknown int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, op := range r.ops {
		if op.Output.(Output).Unknown {
			unknown++
		} else {
			definite++
		}
	}
	return definite, unknown
}

// Check checks the history. On a violation it writes porcupine's HTML
// visualization of the keys that are not linearizable to the path vizPath
// returns, and says so in the error. vizPath is called only then, so that a
// passing check creates no artifact directory (t.ArtifactDir creates one
// on every call); nil means no visualization.
//
// The check itself runs without porcupine's verbose bookkeeping, whose
// memory grows with the history: a five-minute run records over a million
// operations, and a verbose check of it (let alone its visualization)
// took more than 20 GB. Only the keys found illegal are checked again,
// verbosely, for the picture, and only up to maxVizOps operations. A
// checker timeout is inconclusive and draws nothing.
func (r *Recorder) Check(timeout time.Duration, vizPath func() string) (porcupine.CheckResult, error) {
	r.mu.Lock()
	ops := append([]porcupine.Operation(nil), r.ops...)
	r.mu.Unlock()
	model := Model()
	res := porcupine.CheckOperationsTimeout(model, ops, timeout)
	switch {
	case res == porcupine.Ok:
		return res, nil
	case res == porcupine.Unknown:
		return res, fmt.Errorf("history of %d operations: the checker gave up after %v (inconclusive; check shorter histories)", len(ops), timeout)
	case vizPath == nil:
		return res, fmt.Errorf("history of %d operations is not linearizable", len(ops))
	}
	var illegal []porcupine.Operation
	var keys []string
	for k, part := range IllegalKeys(ops, timeout) {
		illegal = append(illegal, part...)
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(illegal) == 0 || len(illegal) > maxVizOps {
		return res, fmt.Errorf("history of %d operations is not linearizable (keys %q: %d operations, too many to draw)", len(ops), keys, len(illegal))
	}
	_, info := porcupine.CheckOperationsVerbose(model, illegal, timeout)
	path := vizPath()
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		return res, fmt.Errorf("history of %d operations is not linearizable (keys %q); writing the visualization: %v", len(ops), keys, err)
	}
	return res, fmt.Errorf("history of %d operations is not linearizable (keys %q); visualization of their %d operations in %s", len(ops), keys, len(illegal), path)
}

// IllegalKeys checks each key's operations on their own (the model
// partitions by key) and returns those of the keys that are not
// linearizable.
func IllegalKeys(ops []porcupine.Operation, timeout time.Duration) map[string][]porcupine.Operation {
	model := Model()
	out := map[string][]porcupine.Operation{}
	for _, part := range model.Partition(ops) {
		if porcupine.CheckOperationsTimeout(model, part, timeout) == porcupine.Illegal {
			out[part[0].Input.(Input).Key] = part
		}
	}
	return out
}

// maxVizOps bounds the operations Check draws: porcupine's visualization
// holds every partial linearization in memory.
const maxVizOps = 200_000
