package replication

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"kvnode/engine"
)

// BenchmarkReplicatedPut runs 3 in-process nodes on the real disk, 64
// groups, 256-byte values, with 1 and 64 concurrent writers, each writing
// through the leader of a group. Reports ops/s and p50/p99 latency, and
// per write the CPU time of the whole process (less sensitive than ops/s to
// other tenants of the machine) and the raft messages sent.
//
// Like -cpu 4 stands in for the Ps of three 2-core processes, the garbage
// collector runs as the kvnode binary sets it (GOGC 200, cmd/kvnode) unless
// GOGC is set in the environment. Raft's clock is kvnode's too
// (productionClock): the tests' fast clock sends ten times the heartbeats.
func BenchmarkReplicatedPut(b *testing.B) {
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(200))
	}
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			// Allocations of the whole process per write: with the
			// message counts, a measure of work that the machine's other
			// tenants do not move.
			b.ReportAllocs()
			c := newTestCluster(b, 3, 64, productionClock)
			leaders := make([]atomic.Pointer[Host], 65)
			for _, g := range c.groups {
				leaders[g].Store(c.leader(g, 5*time.Second).h())
			}
			value := make([]byte, 256)
			var next atomic.Int64
			hists := make([]*hdrhistogram.Histogram, writers)
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			for w := range writers {
				hists[w] = hdrhistogram.New(1, int64(10*time.Second), 3)
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					key := make([]byte, 0, 32)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						g := c.groups[int(i)%len(c.groups)]
						key = fmt.Appendf(key[:0], "key-%d", i)
						ops := []engine.Op{{Kind: engine.OpPut, Key: key, Value: value}}
						t0 := time.Now()
						for {
							h := leaders[g].Load()
							_, err := h.Propose(ctx, g, ops)
							if err == nil {
								break
							}
							if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrProposalDropped) {
								failed.Store(&err)
								return
							}
							leaders[g].Store(c.leader(g, 5*time.Second).h())
						}
						hists[w].RecordValue(int64(time.Since(t0)))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			cpu := cpuTime() - cpu0
			b.StopTimer()
			if p := failed.Load(); p != nil {
				b.Fatal(*p)
			}
			all := hdrhistogram.New(1, int64(10*time.Second), 3)
			for _, h := range hists {
				all.Merge(h)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
			b.ReportMetric(float64(all.ValueAtQuantile(50))/1e3, "p50-us")
			b.ReportMetric(float64(all.ValueAtQuantile(99))/1e3, "p99-us")
			// CPU per write (all three nodes and the writers): unlike ops/s,
			// it hardly moves when other tenants take the machine's cores.
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
			var sent, writes uint64
			for _, nd := range c.nodes {
				tm := nd.tr.Metrics().Total
				sent += tm.MessagesSent
				writes += tm.Writes
			}
			b.ReportMetric(float64(sent)/float64(b.N), "msgs/op")
			b.ReportMetric(float64(writes)/float64(b.N), "tcpwrites/op")
			var cycles, appends, props, walNs, applyNs uint64
			for _, nd := range c.nodes {
				m := nd.h().Metrics()
				cycles += m.Cycles
				appends += m.WALAppends
				props += m.Proposals
				walNs += m.WALNanos
				applyNs += m.ApplyNanos
			}
			b.ReportMetric(float64(cycles)/float64(b.N), "cycles/op")
			b.Logf("N=%d cycles=%d syncedAppends=%d walTime/cycle=%v apply/cycle=%v loopBusy=%.0f%%", b.N, cycles, appends,
				time.Duration(walNs/max(cycles, 1)), time.Duration(applyNs/max(cycles, 1)),
				100*float64(walNs+applyNs)/float64(elapsed)/3)
			if appends > 0 {
				b.ReportMetric(float64(props)/float64(appends)*3, "entries/fsync")
			}
		})
	}
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// productionClock undoes fastConfig: raft ticks, heartbeats, elections and
// engine syncs at the defaults kvnode runs with, so that a benchmark does
// not pay for the tests' tenfold heartbeat traffic.
func productionClock(c *Config) {
	c.TickInterval = 0
	c.HeartbeatTicks = 0
	c.ElectionTicks = 0
	c.EngineSyncInterval = 0
}
