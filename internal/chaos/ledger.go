package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/client"
)

// Ledger is the durability workload: writers keep writing new keys and
// overwriting their own older ones, and record every outcome. Each key is
// written by one writer only, one write at a time, so its writes are
// totally ordered and each value (which names its key and a sequence
// number) was written exactly once.
//
// The check (Check) reads every key after the faults have healed. A key
// whose last acknowledged write set value v at version V must read back
// (linearizably) either v at a version >= V, or, at a version > V, the
// value of a write whose outcome was unknown (it may apply after V). Every
// other answer is a loss. Then every node's own replica (stale reads) must
// converge to the same value and version, and may serve in the meantime
// only values that some write of that key carried: never a value nobody
// wrote (corruption).
type Ledger struct {
	cl      *client.Client
	workers int
	prefix  string
	seed    uint64

	seq  atomic.Uint64
	mu   sync.Mutex
	keys map[string]*keyRecord
	acks []ackEvent
	// counters
	acked, unknown, failed atomic.Int64
	lastAck                atomic.Int64 // unix nanos

	stop chan struct{}
	wg   sync.WaitGroup
}

type keyRecord struct {
	ackValue string
	ackVer   uint64
	acked    bool
	// everAcked holds every value acknowledged for the key, not only the
	// last: a lagging replica may still serve an older acknowledged value
	// while it catches up, and that is not corruption.
	everAcked map[string]bool
	unknown   map[string]bool // values of writes with an unknown outcome
	failed    map[string]bool // values of writes the client said were not applied
}

type ackEvent struct {
	key           string
	invoked, done time.Time
}

// LedgerValuePrefix starts every value the ledger writes, so that a value
// can be found in a store's files (the bit-flip scenario).
const LedgerValuePrefix = "ledger-value:"

// NewLedger returns a ledger over cl with the given number of writers;
// its keys start with prefix.
func NewLedger(cl *client.Client, workers int, prefix string, seed uint64) *Ledger {
	return &Ledger{cl: cl, workers: workers, prefix: prefix, seed: seed, keys: map[string]*keyRecord{}, stop: make(chan struct{})}
}

// Start starts the writers.
func (l *Ledger) Start() {
	for w := range l.workers {
		l.wg.Add(1)
		go l.writer(w)
	}
}

// Stop stops the writers and waits for their last writes to end.
func (l *Ledger) Stop() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *Ledger) writer(w int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(l.seed, uint64(w)+1))
	var own []string
	next := 0
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		var key string
		if len(own) > 0 && rng.IntN(10) < 3 {
			key = own[rng.IntN(len(own))]
		} else {
			key = fmt.Sprintf("%s%d-%d", l.prefix, w, next)
			next++
			own = append(own, key)
		}
		seq := l.seq.Add(1)
		value := fmt.Sprintf("%s%s:%d:%016x%016x", LedgerValuePrefix, key, seq, rng.Uint64(), rng.Uint64())
		l.mu.Lock()
		rec := l.keys[key]
		if rec == nil {
			rec = &keyRecord{}
			l.keys[key] = rec
		}
		l.mu.Unlock()
		invoked := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		ver, err := l.cl.Put(ctx, key, []byte(value))
		cancel()
		done := time.Now()
		l.mu.Lock()
		switch {
		case err == nil:
			rec.acked, rec.ackValue, rec.ackVer = true, value, ver
			if rec.everAcked == nil {
				rec.everAcked = map[string]bool{}
			}
			rec.everAcked[value] = true
			l.acks = append(l.acks, ackEvent{key: key, invoked: invoked, done: done})
			l.acked.Add(1)
			l.lastAck.Store(done.UnixNano())
		case errors.Is(err, client.ErrUnknownOutcome) || !(errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrClosed)):
			// Ambiguous (or an error the client does not classify):
			// it may have applied, or may still.
			if rec.unknown == nil {
				rec.unknown = map[string]bool{}
			}
			rec.unknown[value] = true
			l.unknown.Add(1)
		default:
			if rec.failed == nil {
				rec.failed = map[string]bool{}
			}
			rec.failed[value] = true
			l.failed.Add(1)
		}
		l.mu.Unlock()
		if err != nil {
			// Do not spin while the cluster has no quorum.
			select {
			case <-l.stop:
				return
			case <-time.After(time.Duration(20+rng.IntN(60)) * time.Millisecond):
			}
		}
	}
}

// Acked returns how many writes were acknowledged so far.
func (l *Ledger) Acked() int64 { return l.acked.Load() }

// Counts returns the writes acknowledged, with an unknown outcome, and
// failed (certainly not applied).
func (l *Ledger) Counts() (acked, unknown, failed int64) {
	return l.acked.Load(), l.unknown.Load(), l.failed.Load()
}

// AckedInvokedBetween lists the writes invoked at or after from that were
// acknowledged before to: in a window where no quorum exists, there must
// be none.
func (l *Ledger) AckedInvokedBetween(from, to time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.acks {
		if !a.invoked.Before(from) && a.done.Before(to) {
			out = append(out, fmt.Sprintf("%s (invoked %v after the window opened, acknowledged %v after)", a.key, a.invoked.Sub(from).Round(time.Millisecond), a.done.Sub(from).Round(time.Millisecond)))
		}
	}
	return out
}

// WaitProgress waits until n more writes than now are acknowledged, or
// timeout; it reports whether they were.
func (l *Ledger) WaitProgress(ctx context.Context, n int64, timeout time.Duration) bool {
	target := l.Acked() + n
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l.Acked() >= target {
			return true
		}
		if !Sleep(ctx, 20*time.Millisecond) {
			return false
		}
	}
	return l.Acked() >= target
}

// LedgerResult is what Check found.
type LedgerResult struct {
	Keys, Acked, Unknown, Failed int64
	// Lost: acknowledged writes that did not read back (absent, an older
	// value, a lower version). Must be 0.
	Lost int
	// Phantom: keys holding the value of a write the client was told had
	// certainly not applied. Must be 0.
	Phantom int
	// Corrupt: reads (linearizable, or stale from any node) of a value no
	// write of that key carried. Must be 0.
	Corrupt int
	// Diverged: keys whose value on some node did not converge to the
	// linearizable one. Must be 0.
	Diverged int
	// Problems describes the first few of each.
	Problems []string
	// Replicas lists the nodes whose replicas were read.
	Replicas []string
}

// OK reports whether nothing was lost, invented or left diverged.
func (r *LedgerResult) OK() bool {
	return r.Lost == 0 && r.Phantom == 0 && r.Corrupt == 0 && r.Diverged == 0
}

func (r *LedgerResult) problem(format string, args ...any) {
	if len(r.Problems) < 30 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

func (r *LedgerResult) String() string {
	return fmt.Sprintf("keys=%d acked=%d unknown=%d failed=%d lost=%d phantom=%d corrupt=%d diverged=%d replicas=%v",
		r.Keys, r.Acked, r.Unknown, r.Failed, r.Lost, r.Phantom, r.Corrupt, r.Diverged, r.Replicas)
}

// written reports whether value is one that some write of rec carried.
func (rec *keyRecord) written(v string) bool {
	return rec.everAcked[v] || rec.unknown[v] || rec.failed[v]
}

// Check verifies every key, after the writers have stopped and the faults
// healed: linearizably through the client, then on each of the nodes
// (running ones) through stale reads of their own replicas. A node in
// skipReplicas is not read (it is expected to be down).
func (l *Ledger) Check(ctx context.Context, c *Cluster, timeout time.Duration) (*LedgerResult, error) {
	l.Stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	l.mu.Lock()
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	l.mu.Unlock()
	res := &LedgerResult{Keys: int64(len(keys))}
	res.Acked, res.Unknown, res.Failed = l.Counts()

	type final struct {
		found bool
		value string
		ver   uint64
	}
	finals := make(map[string]final, len(keys))
	const batch = 256
	for start := 0; start < len(keys); start += batch {
		part := keys[start:min(start+batch, len(keys))]
		var items []client.Item
		var err error
		for attempt := 0; ; attempt++ {
			items, err = l.cl.MGet(ctx, part)
			if err == nil || ctx.Err() != nil {
				break
			}
			Sleep(ctx, 100*time.Millisecond)
		}
		if err != nil {
			return res, fmt.Errorf("linearizable read of %d keys: %w", len(part), err)
		}
		for i, k := range part {
			it := items[i]
			rec := l.keys[k]
			finals[k] = final{it.Found, string(it.Value), it.Version}
			v := string(it.Value)
			switch {
			case !it.Found:
				if rec.acked {
					res.Lost++
					res.problem("LOST %s: acknowledged %q at version %d, now absent", k, rec.ackValue, rec.ackVer)
				}
			case !rec.written(v):
				res.Corrupt++
				res.problem("CORRUPT %s: reads %q (version %d), which no write carried", k, v, it.Version)
			case rec.failed[v] && !rec.unknown[v]:
				res.Phantom++
				res.problem("PHANTOM %s: reads %q, whose write the client reported as not applied", k, v)
			case rec.acked && it.Version < rec.ackVer:
				res.Lost++
				res.problem("LOST %s: acknowledged %q at version %d, reads %q at older version %d", k, rec.ackValue, rec.ackVer, v, it.Version)
			case rec.acked && v != rec.ackValue && (it.Version == rec.ackVer || !rec.unknown[v]):
				res.Lost++
				res.problem("LOST %s: acknowledged %q at version %d, reads %q at version %d", k, rec.ackValue, rec.ackVer, v, it.Version)
			}
		}
	}

	// Every running node's own replicas converge to the same.
	for _, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		res.Replicas = append(res.Replicas, n.Name)
		pending := keys
		var lastDiff []string
		for attempt := 0; len(pending) > 0; attempt++ {
			if attempt > 0 && !Sleep(ctx, 300*time.Millisecond) {
				break
			}
			conn, err := DialNode(ctx, n.KVAddr)
			if err != nil {
				lastDiff = []string{fmt.Sprintf("dialing %s: %v", n.Name, err)}
				continue
			}
			var next []string
			lastDiff = nil
			for start := 0; start < len(pending); start += batch {
				part := pending[start:min(start+batch, len(pending))]
				items, err := conn.StaleMGet(ctx, part)
				if err != nil {
					next = append(next, pending[start:]...)
					lastDiff = append(lastDiff, fmt.Sprintf("stale MGet on %s: %v", n.Name, err))
					break
				}
				for i, k := range part {
					it, want := items[i], finals[k]
					if it.Found && !l.keys[k].written(string(it.Value)) {
						res.Corrupt++
						res.problem("CORRUPT %s on %s: serves %q (version %d), which no write carried", k, n.Name, it.Value, it.Version)
						continue
					}
					if it.Found != want.found || string(it.Value) != want.value || it.Version != want.ver {
						next = append(next, k)
						if len(lastDiff) < 5 {
							lastDiff = append(lastDiff, fmt.Sprintf("%s on %s: found=%v %q@%d, linearizable found=%v %q@%d", k, n.Name, it.Found, it.Value, it.Version, want.found, want.value, want.ver))
						}
					}
				}
			}
			conn.Close()
			pending = next
		}
		if len(pending) > 0 {
			res.Diverged += len(pending)
			res.problem("DIVERGED: %d keys on %s did not converge to the linearizable value: %s", len(pending), n.Name, strings.Join(lastDiff, "; "))
		}
	}
	return res, nil
}

// KeyOfValue returns the key a ledger value names ("" if v is not one).
func KeyOfValue(v string) string {
	rest, ok := strings.CutPrefix(v, LedgerValuePrefix)
	if !ok {
		return ""
	}
	parts := strings.Split(rest, ":")
	if len(parts) < 3 {
		return ""
	}
	if _, err := strconv.Atoi(parts[len(parts)-2]); err != nil {
		return ""
	}
	return strings.Join(parts[:len(parts)-2], ":")
}
