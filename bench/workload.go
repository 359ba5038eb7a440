package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/client"
)

// KeySpace is the set of keys a workload touches: Prefix followed by an
// index in [0, Chooser.N()), picked by Chooser.
type KeySpace struct {
	Prefix  string
	Chooser KeyChooser
}

// NewOpFactory returns the OpFactory of workload w against c: worker i gets
// its own random source (seeded with seed+i, or randomly when seed is 0)
// and its own key and value buffers, so the operations allocate little
// besides what the client does. Writes write valueSize random bytes.
func NewOpFactory(c *client.Client, w Workload, keys KeySpace, valueSize int, seed uint64) OpFactory {
	readFraction := w.readFraction()
	return func(worker int) OpFunc {
		var rng *rand.Rand
		if seed == 0 {
			rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		} else {
			rng = rand.New(rand.NewPCG(seed, uint64(worker)))
		}
		value := make([]byte, valueSize)
		fillRandom(rng, value)
		var kb []byte
		nextKey := func() string {
			kb = appendKey(kb[:0], keys.Prefix, keys.Chooser.Next(rng))
			return string(kb)
		}
		switch w {
		case WorkloadWrite:
			return func(ctx context.Context) error { return c.Set(ctx, nextKey(), value) }
		case WorkloadStaleRead:
			return func(ctx context.Context) error {
				_, err := c.Get(ctx, nextKey(), client.Stale())
				return err
			}
		case WorkloadCAS:
			return func(ctx context.Context) error {
				key := nextKey()
				item, err := c.GetItem(ctx, key, client.Linearizable())
				switch {
				case errors.Is(err, client.ErrNotFound):
					item.Version = 0 // "must not exist"
				case err != nil:
					return err
				}
				ok, _, err := c.CompareAndSet(ctx, key, item.Version, value)
				if err == nil && !ok {
					return ErrCASMismatch
				}
				return err
			}
		default: // read and the YCSB mixes
			return func(ctx context.Context) error {
				key := nextKey()
				if readFraction < 1 && rng.Float64() >= readFraction {
					return c.Set(ctx, key, value)
				}
				_, err := c.Get(ctx, key, client.Linearizable())
				return err
			}
		}
	}
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := i; j < len(b) && j < i+8; j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// PreloadOptions configure Preload.
type PreloadOptions struct {
	// Prefix and Keys: Preload writes Prefix+i for every i in [0, Keys).
	Prefix string
	Keys   int
	// ValueSize is the size of every value. Required.
	ValueSize int
	// Batch keys go in one MSet. Default: 500.
	Batch int
	// Concurrency MSets are in flight at once. Default: 8.
	Concurrency int
	// Progress, if set, receives a line every ProgressInterval (default
	// 1s) and a last one when done.
	Progress         io.Writer
	ProgressInterval time.Duration
}

// Preload writes the whole key space with MSet batches, so that reads find
// every key. The values are random (incompressible), one buffer shared by
// all keys: the server copies what it stores. It stops at the first batch
// that fails (the client has already retried it): a read benchmark on a
// partly loaded key space would count the missing keys as errors.
func Preload(ctx context.Context, c *client.Client, o PreloadOptions) error {
	if o.Batch <= 0 {
		o.Batch = DefaultPreloadBatch
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultPreloadConcurrency
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = DefaultProgressInterval
	}
	value := make([]byte, o.ValueSize)
	fillRandom(rand.New(rand.NewPCG(1, 2)), value)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		nextBatch atomic.Int64 // index of the next batch to claim
		written   atomic.Int64
		errOnce   sync.Once
		firstErr  error
		wg        sync.WaitGroup
	)
	batches := int64((o.Keys + o.Batch - 1) / o.Batch)
	start := time.Now()
	for range o.Concurrency {
		wg.Go(func() {
			items := make([]client.KV, 0, o.Batch)
			for ctx.Err() == nil {
				b := nextBatch.Add(1) - 1
				if b >= batches {
					return
				}
				items = items[:0]
				for i := int(b) * o.Batch; i < min(int(b+1)*o.Batch, o.Keys); i++ {
					items = append(items, client.KV{Key: string(appendKey(nil, o.Prefix, i)), Value: value})
				}
				if _, err := c.MSet(ctx, items); err != nil {
					errOnce.Do(func() {
						firstErr = fmt.Errorf("preload: MSet of keys %d..%d: %w", int(b)*o.Batch, int(b)*o.Batch+len(items)-1, err)
						cancel()
					})
					return
				}
				written.Add(int64(len(items)))
			}
		})
	}
	if o.Progress != nil {
		done := make(chan struct{})
		var pw sync.WaitGroup
		pw.Go(func() {
			t := time.NewTicker(o.ProgressInterval)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					n := written.Load()
					fmt.Fprintf(o.Progress, "preload: %d/%d keys (%.0f%%), %.0f keys/s\n",
						n, o.Keys, 100*float64(n)/float64(o.Keys), float64(n)/time.Since(start).Seconds())
				}
			}
		})
		wg.Wait()
		close(done)
		pw.Wait()
	} else {
		wg.Wait()
	}
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	if o.Progress != nil {
		el := time.Since(start)
		fmt.Fprintf(o.Progress, "preload: %d keys of %d bytes in %.1fs (%.0f keys/s)\n",
			o.Keys, o.ValueSize, el.Seconds(), float64(o.Keys)/el.Seconds())
	}
	return nil
}
