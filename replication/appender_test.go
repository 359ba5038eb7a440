package replication

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"kvnode/engine"
)

// TestSyncPacer steps the appender's pacing through rounds at given times
// (offsets from an arbitrary start) and checks each wait.
func TestSyncPacer(t *testing.T) {
	const iv = 800 * time.Microsecond
	type round struct {
		at      time.Duration // when the appender is about to take its queue
		want    time.Duration // the wait it must get
		entries int           // what the round then carries
	}
	tests := []struct {
		name        string
		interval    time.Duration
		busyEntries int
		rounds      []round
	}{
		{"the first round never waits", iv, 8, []round{
			{0, 0, 100},
		}},
		{"small rounds never wait", iv, 8, []round{
			{0, 0, 1}, {10 * time.Microsecond, 0, 7}, {20 * time.Microsecond, 0, 1},
		}},
		{"a busy round makes the next wait out the interval", iv, 8, []round{
			{0, 0, 8}, {300 * time.Microsecond, 500 * time.Microsecond, 20},
		}},
		{"the interval counts from the previous round's start", iv, 8, []round{
			{0, 0, 8},
			// Took 900µs, the interval is over.
			{900 * time.Microsecond, 0, 30},
			{1000 * time.Microsecond, 700 * time.Microsecond, 2},
			// The round after a small one does not wait.
			{1800 * time.Microsecond, 0, 9},
		}},
		{"the load falls", iv, 8, []round{
			{0, 0, 50}, {100 * time.Microsecond, 700 * time.Microsecond, 3}, {900 * time.Microsecond, 0, 1},
		}},
		{"a long idle gap", iv, 8, []round{
			{0, 0, 50}, {time.Hour, 0, 50},
		}},
		{"negative interval: never wait", -1, 8, []round{
			{0, 0, 50}, {time.Microsecond, 0, 50},
		}},
		{"zero value: never wait", 0, 0, []round{
			{0, 0, 50}, {time.Microsecond, 0, 50},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := syncPacer{interval: tc.interval, busyEntries: tc.busyEntries}
			base := time.Now()
			for i, r := range tc.rounds {
				now := base.Add(r.at)
				if got := p.wait(now); got != r.want {
					t.Fatalf("round %d at %v: wait %v, want %v", i, r.at, got, r.want)
				}
				p.started(now.Add(r.want))
				p.finished(r.entries)
			}
		})
	}
}

// TestSyncPacingOnCluster runs a 3-node cluster on the real disk with a
// long SyncInterval. Under 32 concurrent writers each node's WAL rounds
// must be spaced by it; a lone writer afterwards must not wait for it.
func TestSyncPacingOnCluster(t *testing.T) {
	const (
		interval = 40 * time.Millisecond // below kvnode's 100ms heartbeat
		groups   = 8
		writers  = 32
	)
	c := newTestCluster(t, 3, groups, func(cfg *Config) {
		productionClock(cfg)
		cfg.SyncInterval = interval
		cfg.BusySyncEntries = 4
	})
	leaders := make(map[uint64]*Host)
	for _, g := range c.groups {
		leaders[g] = c.leader(g, 5*time.Second).h()
	}
	rounds := func() (n []uint64) {
		for _, nd := range c.nodes {
			n = append(n, nd.h().Metrics().WALAppends)
		}
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(g uint64, key string) error {
		_, err := leaders[g].Propose(ctx, g, []engine.Op{{Kind: engine.OpPut, Key: []byte(key), Value: []byte("v")}})
		return err
	}

	before := rounds()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := 0; time.Since(start) < 400*time.Millisecond; i++ {
				if err := put(c.groups[(w+i)%groups], fmt.Sprintf("w%d-%d", w, i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A round after a busy one starts at least interval after it; a round
	// of fewer than BusySyncEntries entries may be followed at once, and
	// under 32 writers those are few. Unpaced, a round takes an fsync:
	// hundreds of them in this time.
	limit := 2 * (uint64(elapsed/interval) + 1)
	for i, n := range rounds() {
		got := n - before[i]
		t.Logf("node %d: %d WAL rounds in %v", i+1, got, elapsed)
		if got > limit {
			t.Errorf("node %d: %d WAL rounds in %v under load; paced by %v they are at most %d",
				i+1, got, elapsed, interval, limit)
		}
	}

	// One writer: every round carries one entry, so nothing is paced.
	lat := make([]time.Duration, 0, 21)
	for i := range cap(lat) {
		t0 := time.Now()
		if err := put(c.groups[0], fmt.Sprintf("lone-%d", i)); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	if med := lat[len(lat)/2]; med >= interval/2 {
		t.Errorf("a lone writer's median latency is %v: its rounds were paced (interval %v)", med, interval)
	}
}
