package replication

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"kvnode/engine"
	"kvnode/internal/history"
)

var (
	linDuration = flag.Duration("lin.duration", 30*time.Second, "how long TestLinearizability runs its nemesis")
	// The seed fixes the clients' operations and the nemesis's choices;
	// goroutine timing still differs between runs.
	linSeed = flag.Uint64("lin.seed", 0, "seed for TestLinearizability (0: from the clock)")
)

// TestLinearizability is P2: 8 clients do put, get and compare-and-set on
// a few keys while a nemesis kills, restarts and isolates nodes (one at a
// time: a minority). The history is checked with porcupine.
func TestLinearizability(t *testing.T) {
	d := *linDuration
	if testing.Short() {
		d = 5 * time.Second
	}
	seed := *linSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: make lin LIN_SEED=%d), duration %v", seed, seed, d)
	c := newTestCluster(t, 3, 3, nil)
	keys := []string{"a", "b", "c", "d", "e"}
	// Every keyEpoch the clients move to fresh keys. Porcupine checks each
	// key's history on its own, and the cost of one grows faster than its
	// length (an operation that never returned stays open to the end), so
	// short per-key histories keep a long run checkable in linear time.
	const keyEpoch = 20 * time.Second
	start := time.Now()
	groupOf := func(k string) uint64 { return c.groups[int(k[0])%len(c.groups)] }
	rec := history.NewRecorder()

	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for cl := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(cl)))
			lastSeen := map[string]uint64{}
			for i := 0; ctx.Err() == nil; i++ {
				k := fmt.Sprintf("%s%d", keys[rng.IntN(len(keys))], time.Since(start)/keyEpoch)
				linClientOp(ctx, c, rng, cl, i, k, groupOf(k), rec, lastSeen)
			}
		}()
	}

	// The nemesis: one fault at a time, on one node.
	rng := rand.New(rand.NewPCG(seed, 99))
	faults := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(200+rng.IntN(600)) * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
		victim := c.node(uint64(1 + rng.IntN(3)))
		faults++
		if rng.IntN(2) == 0 {
			c.stop(victim)
			time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
			c.start(victim)
		} else {
			c.isolate(victim.id)
			time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
			c.heal(victim.id)
		}
	}
	wg.Wait()
	def, unk := rec.Counts()
	t.Logf("%d faults injected; %d operations with a definite outcome, %d unknown", faults, def, unk)
	if def < 100 {
		t.Fatalf("only %d operations completed: the test checked too little", def)
	}
	viz := func() string { return filepath.Join(t.ArtifactDir(), "linearizability.html") }
	if _, err := rec.Check(2*time.Minute, viz); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
}

// linClientOp performs one random operation and records it.
func linClientOp(ctx context.Context, c *testCluster, rng *rand.Rand, client, i int, k string, g uint64,
	rec *history.Recorder, lastSeen map[string]uint64) {
	in := history.Input{Key: k}
	switch n := rng.IntN(10); {
	case n < 4:
		in.Kind = history.Get
	case n < 7:
		in.Kind, in.Value = history.Put, fmt.Sprintf("c%d-%d", client, i)
	default:
		in.Kind, in.Value, in.Expect = history.CAS, fmt.Sprintf("c%d-%d", client, i), lastSeen[k]
	}
	op := rec.Begin(client, in)
	octx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	// Try nodes until one answers; follow leader hints. Only failures that
	// prove nothing was applied allow another attempt.
	target := uint64(1 + rng.IntN(3))
	for attempt := 0; ; attempt++ {
		h := c.node(target).h()
		var err error
		var out history.Output
		if h == nil {
			err = ErrStopped
		} else if in.Kind == history.Get {
			var v []byte
			v, out.Version, err = h.Get(octx, g, []byte(k), false)
			if errors.Is(err, engine.ErrNotFound) {
				err, out.Found = nil, false
			} else if err == nil {
				out.Found, out.Value = true, string(v)
			}
		} else {
			o := engine.Op{Kind: engine.OpPut, Key: []byte(k), Value: []byte(in.Value)}
			if in.Kind == history.CAS {
				o.Kind, o.Expect = engine.OpCompareAndSet, in.Expect
			}
			var res []engine.Result
			res, err = h.Propose(octx, g, []engine.Op{o})
			if err == nil {
				out.Version, out.OK = res[0].Version, res[0].OK
			}
		}
		switch {
		case err == nil:
			op.End(out)
			if out.Version != 0 {
				lastSeen[k] = out.Version
			}
			return
		case errors.Is(err, ErrNotLeader) || errors.Is(err, ErrProposalDropped) ||
			errors.Is(err, ErrReadDropped) || errors.Is(err, ErrGroupNotFound) ||
			(h == nil) || (in.Kind == history.Get && errors.Is(err, ErrStopped)):
			// Nothing happened: try elsewhere.
			if octx.Err() != nil {
				op.Discard()
				return
			}
			if hint, ok := LeaderHint(err); ok {
				target = hint
			} else {
				target = uint64(1 + rng.IntN(3))
			}
			time.Sleep(time.Duration(attempt%5) * time.Millisecond)
		default:
			// A timeout, or the node died under the proposal: unknown.
			op.Unknown()
			return
		}
	}
}
