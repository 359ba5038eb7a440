package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"kvnode/client"
	"kvnode/internal/chaos"
	"kvnode/internal/netproxy"
)

// The crash and fault suite (issue 7): every scenario runs a 3-node
// cluster of real processes whose raft traffic goes through proxies,
// keeps two workloads running the whole time (chaos.Ledger: every
// acknowledged write must survive; chaos.Register: gets, puts and
// compare-and-sets checked for linearizability with porcupine), injects
// its faults, heals, and checks.
//
// `make test` runs each scenario for a few seconds of faults
// (-chaos.duration, default 6s); `make chaos` runs them for a minute
// each. Every run prints its seed; -chaos.seed (or $KVNODE_CHAOS_SEED)
// replays the nemesis' choices of a failing run:
//
//	go test ./e2e -run 'TestChaos/kill-leaders$' -v -chaos.seed=N -chaos.duration=60s
var (
	chaosSeed     = flag.Uint64("chaos.seed", 0, "seed of the fault suite's choices (default: $KVNODE_CHAOS_SEED, else the time)")
	chaosDuration = flag.Duration("chaos.duration", 0, "how long each chaos scenario injects faults (default: $KVNODE_CHAOS_DURATION, else 6s)")
)

func chaosSettings(t *testing.T) (seed uint64, dur time.Duration) {
	seed = *chaosSeed
	if seed == 0 {
		if s := os.Getenv("KVNODE_CHAOS_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("$KVNODE_CHAOS_SEED: %v", err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	dur = *chaosDuration
	if dur == 0 {
		if s := os.Getenv("KVNODE_CHAOS_DURATION"); s != "" {
			v, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("$KVNODE_CHAOS_DURATION: %v", err)
			}
			dur = v
		}
	}
	if dur == 0 {
		dur = 6 * time.Second
	}
	return seed, dur
}

// scenario is one fault pattern.
type scenario struct {
	name, checks string
	run          func(r *chaosRun)
	// clientRetries runs the register workload with the Go client's
	// default retries; otherwise it never retries (MaxRetries -1). The
	// client never sends a write again after an ambiguous failure, so both
	// must be linearizable; the fault suite once caught it doing so (a Put
	// applied twice, with other clients' writes between).
	clientRetries bool
}

var scenarios = []scenario{
	{name: "kill-leaders", checks: "kill -9 the node leading the most partitions, over and over; writes go on while it is down; it restarts and catches up", run: killLeaders},
	{name: "kill-followers", checks: "kill -9 the node leading the fewest partitions, over and over", run: killFollowers},
	{name: "pause-leader", checks: "SIGSTOP the top leader for 1-2.5s (election timeout 200-400ms), then SIGCONT: the others elect leaders and go on; the paused one steps down", run: pauseLeader},
	{name: "isolate-node", checks: "cut or black-hole all raft traffic of one node, then heal", run: isolateNode},
	{name: "flapping-partition", checks: "random cuts, one-way cuts, black holes, splits and delays of raft links, changing every 0.1-1.2s", run: flappingPartition},
	{name: "majority-down", checks: "kill -9 two of three nodes: writes and linearizable reads fail (503, ErrUnavailable) and nothing is acknowledged; after restarts nothing earlier is lost", run: majorityDown},
	{name: "disk-faults", checks: "a node whose WAL fsync, then another whose WAL write, starts failing: it stops acknowledging and exits 1 with \"node failed\"; the others go on", run: diskFaults},
	{name: "bitflip-wal", checks: "a bit flipped in a stopped node's raft log (its Pebble files): it refuses to start with a corruption message, or starts and never serves a corrupted value", run: func(r *chaosRun) { bitflip(r, "wal") }},
	{name: "bitflip-sstable", checks: "a bit flipped in a stopped node's state machine files (sstables when there are some): as above", run: func(r *chaosRun) { bitflip(r, "engine") }},
	{name: "kill-all", checks: "kill -9 all three nodes at once, restart them: every acknowledged write is still there", run: killAll},
	{name: "kill-leaders-client-retries", checks: "kill-leaders, with the register workload on the Go client's default retries",
		run: killLeaders, clientRetries: true},
}

// chaosTotals add up the scenarios of one run.
var chaosTotals struct {
	sync.Mutex
	scenarios, faults, acked, unknown, lost, linViolations, ops int64
}

// TestChaos runs every scenario. Each logs one line starting with
// CHAOS-TOTALS; the parent test logs CHAOS-SUMMARY.
func TestChaos(t *testing.T) {
	seed, dur := chaosSettings(t)
	t.Logf("chaos seed %d, %v of faults per scenario (replay one scenario: make chaos CHAOS_RUN='TestChaos/NAME$$' CHAOS_SEED=%d CHAOS_DURATION=%v)", seed, dur, seed, dur)
	start := time.Now()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) { runScenario(t, sc, seed, dur) })
	}
	chaosTotals.Lock()
	defer chaosTotals.Unlock()
	t.Logf("CHAOS-SUMMARY seed=%d scenarios=%d duration=%v faults=%d acked_writes=%d unknown_writes=%d lost=%d linearizability_violations=%d checked_ops=%d",
		seed, chaosTotals.scenarios, time.Since(start).Round(time.Second), chaosTotals.faults, chaosTotals.acked,
		chaosTotals.unknown, chaosTotals.lost, chaosTotals.linViolations, chaosTotals.ops)
}

// chaosRun is one scenario in progress.
type chaosRun struct {
	t        *testing.T
	ctx      context.Context
	c        *chaos.Cluster
	ledger   *chaos.Ledger
	reg      *chaos.Register
	dur      time.Duration
	deadline time.Time
	// down: nodes left down on purpose (they refused to start).
	down map[int]bool
}

func scenarioSeed(base uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return base ^ h.Sum64()
}

func runScenario(t *testing.T, sc scenario, baseSeed uint64, dur time.Duration) {
	seed := scenarioSeed(baseSeed, sc.name)
	t.Logf("scenario %s (seed %d): %s", sc.name, baseSeed, sc.checks)
	began := time.Now()
	ctx := context.Background()
	var out io.Writer
	if testing.Verbose() && os.Getenv("KVNODE_TEST_LOG") != "" {
		out = os.Stderr
	}
	c, err := chaos.Start(ctx, chaos.Options{Binary: binary, Dir: t.TempDir(), Seed: seed, Logf: t.Logf, Output: out})
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			if err := c.SaveArtifacts(t.ArtifactDir()); err != nil {
				t.Logf("saving artifacts: %v", err)
			}
			t.Logf("node logs and the event log saved in %s", t.ArtifactDir())
		}
	})
	lcl, err := c.NewClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lcl.Close()
	rcl, err := c.NewClient(ctx, func(cfg *client.Config) {
		if !sc.clientRetries {
			cfg.MaxRetries = -1
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rcl.Close()
	r := &chaosRun{t: t, ctx: ctx, c: c, dur: dur, down: map[int]bool{},
		ledger: chaos.NewLedger(lcl, 4, "L", seed),
		reg:    chaos.NewRegister(rcl, chaos.RegisterOptions{Prefix: "R", Seed: seed}),
	}
	r.ledger.Start()
	r.reg.Start()
	defer r.ledger.Stop()
	defer r.reg.Stop()
	if !r.ledger.WaitProgress(ctx, 50, 20*time.Second) {
		t.Fatal("no writes acknowledged before any fault")
	}

	r.deadline = time.Now().Add(dur)
	sc.run(r)

	// Heal everything that is not down on purpose, and let the writes go
	// on for a moment: the cluster must be available again.
	if err := r.heal(); err != nil {
		t.Errorf("healing: %v", err)
	}
	r.expectProgress("after healing")

	// The checks.
	lres, err := r.ledger.Check(ctx, c, 3*time.Minute)
	if err != nil {
		t.Errorf("ledger check: %v", err)
	}
	viz := func() string { return filepath.Join(t.ArtifactDir(), sc.name+"-history.html") }
	checkTimeout := 2 * time.Minute
	linRes, linErr := r.reg.Check(checkTimeout, viz)
	definite, unknown, regWrites := r.reg.Counts()
	violations := int64(0)
	switch {
	case linRes == porcupine.Illegal:
		violations = 1
		t.Errorf("LINEARIZABILITY VIOLATION: %v", linErr)
		for k, ops := range r.reg.IllegalKeys(time.Minute) {
			f := filepath.Join(t.ArtifactDir(), sc.name+"-illegal-"+k+".txt")
			os.WriteFile(f, []byte(ops), 0o644)
			t.Errorf("key %s is not linearizable; its history (also in %s):\n%s", k, f, tail([]byte(ops), 80))
		}
	case linErr != nil:
		t.Errorf("linearizability check inconclusive: %v", linErr)
	}
	lost := int64(0)
	if lres != nil {
		lost = int64(lres.Lost + lres.Phantom + lres.Corrupt + lres.Diverged)
		if !lres.OK() {
			t.Errorf("ledger: %v", lres)
			for _, p := range lres.Problems {
				t.Errorf("  %s", p)
			}
		}
		t.Logf("ledger: %v", lres)
	}
	acked, lunknown, _ := r.ledger.Counts()
	t.Logf("CHAOS-TOTALS scenario=%s seed=%d duration=%v faults=%d acked_writes=%d (ledger %d, register %d) unknown_writes=%d lost=%d linearizability_violations=%d checked_ops=%d (%d unknown)",
		sc.name, baseSeed, time.Since(began).Round(time.Millisecond), c.Faults(), acked+regWrites, acked, regWrites,
		lunknown+unknown, lost, violations, definite+unknown, unknown)
	chaosTotals.Lock()
	chaosTotals.scenarios++
	chaosTotals.faults += c.Faults()
	chaosTotals.acked += acked + regWrites
	chaosTotals.unknown += lunknown + unknown
	chaosTotals.lost += lost
	chaosTotals.linViolations += violations
	chaosTotals.ops += definite + unknown
	chaosTotals.Unlock()
}

// more reports whether the scenario's fault time is not over.
func (r *chaosRun) more() bool { return time.Now().Before(r.deadline) }

// heal resumes, restarts (except nodes down on purpose) and reconnects
// every node, and waits until they are ready.
func (r *chaosRun) heal() error {
	r.c.HealNetwork()
	for i, n := range r.c.Nodes() {
		if r.down[i] {
			continue
		}
		if n.Running() {
			n.Resume()
			continue
		}
		if err := r.c.Restart(i); err != nil {
			return err
		}
	}
	return r.c.WaitReady(r.ctx, 2*time.Minute)
}

// expectProgress fails the test unless writes are being acknowledged.
func (r *chaosRun) expectProgress(when string) {
	r.t.Helper()
	start := time.Now()
	if !r.ledger.WaitProgress(r.ctx, 20, 20*time.Second) {
		r.t.Errorf("writes stalled %s: fewer than 20 acknowledged in %v", when, time.Since(start).Round(time.Millisecond))
		return
	}
	r.c.Event("writes progress %s (20 acknowledged in %v)", when, time.Since(start).Round(time.Millisecond))
}

func (r *chaosRun) waitReady() {
	r.t.Helper()
	if err := r.c.WaitReady(r.ctx, 2*time.Minute); err != nil {
		r.t.Fatalf("%v", err)
	}
}

func (r *chaosRun) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *chaosRun) sleep(lo, hi time.Duration) { chaos.Sleep(r.ctx, r.c.Jitter(lo, hi)) }

func killLeaders(r *chaosRun)   { killRestartLoop(r, r.c.TopLeader) }
func killFollowers(r *chaosRun) { killRestartLoop(r, r.c.Follower) }

// killRestartLoop SIGKILLs the node pick chooses, checks that the survivors
// still make progress, and restarts it, until the scenario's time is up.
func killRestartLoop(r *chaosRun, pick func(context.Context) int) {
	for first := true; first || r.more(); first = false {
		i := pick(r.ctx)
		r.c.Event("leaders: %s", r.c.DescribeLeaders(r.ctx))
		r.must(r.c.Kill(i))
		r.expectProgress("with " + r.c.Node(i).Name + " killed")
		r.sleep(0, time.Second)
		r.must(r.c.Restart(i))
		r.waitReady()
		r.sleep(0, 500*time.Millisecond)
	}
}

func pauseLeader(r *chaosRun) {
	for first := true; first || r.more(); first = false {
		i := r.c.TopLeader(r.ctx)
		r.c.Event("leaders: %s", r.c.DescribeLeaders(r.ctx))
		hold := r.c.Jitter(time.Second, 2500*time.Millisecond)
		start := time.Now()
		r.must(r.c.Pause(i))
		r.expectProgress("with " + r.c.Node(i).Name + " paused")
		chaos.Sleep(r.ctx, hold-time.Since(start))
		r.must(r.c.Resume(i))
		r.waitReady()
		r.sleep(0, 500*time.Millisecond)
	}
}

func isolateNode(r *chaosRun) {
	for first := true; first || r.more(); first = false {
		i := r.c.Rand.IntN(3)
		if r.c.Rand.IntN(2) == 0 {
			i = r.c.TopLeader(r.ctx)
		}
		mode := netproxy.Cut
		if r.c.Rand.IntN(2) == 0 {
			mode = netproxy.Blackhole
		}
		hold := r.c.Jitter(1500*time.Millisecond, 3*time.Second)
		start := time.Now()
		r.c.Isolate(i, mode)
		r.expectProgress("with " + r.c.Node(i).Name + " isolated")
		chaos.Sleep(r.ctx, hold-time.Since(start))
		r.c.HealNetwork()
		r.waitReady()
		r.sleep(0, 500*time.Millisecond)
	}
}

func flappingPartition(r *chaosRun) {
	rng := r.c.Rand
	for first := true; first || r.more(); first = false {
		a := rng.IntN(3)
		b := (a + 1 + rng.IntN(2)) % 3
		switch rng.IntN(6) {
		case 0:
			r.c.Isolate(a, netproxy.Cut)
		case 1:
			r.c.Isolate(a, netproxy.Blackhole)
		case 2:
			r.c.SetLinks("one-way cut", func(m *netproxy.Mesh) { m.SetOneWay(a, b, netproxy.Cut, 0) })
		case 3:
			r.c.SetLinks("one-way black hole", func(m *netproxy.Mesh) { m.SetOneWay(a, b, netproxy.Blackhole, 0) })
		case 4:
			r.c.SetLinks("split", func(m *netproxy.Mesh) { m.Split([]int{a}, netproxy.Cut); m.SetBoth(a, b, netproxy.Pass, 0) })
		case 5:
			d := r.c.Jitter(5*time.Millisecond, 150*time.Millisecond)
			r.c.SetLinks("delay", func(m *netproxy.Mesh) { m.DelayAll(d) })
		}
		r.sleep(100*time.Millisecond, 1200*time.Millisecond)
		r.c.HealNetwork()
		r.sleep(100*time.Millisecond, 800*time.Millisecond)
	}
}

func majorityDown(r *chaosRun) {
	hold := max(3*time.Second, r.dur/4)
	for cycle := 0; cycle == 0 || r.more(); cycle++ {
		survivor := r.c.Rand.IntN(3)
		var victims []int
		for i := range 3 {
			if i != survivor {
				victims = append(victims, i)
			}
		}
		for _, v := range victims {
			r.must(r.c.Kill(v))
		}
		from := time.Now()
		s := r.c.Node(survivor)
		r.c.Event("only %s is up: every write and linearizable read must fail", s.Name)

		// Through HTTP: 503 with Retry-After, within the request timeout.
		for k := range 3 {
			url := fmt.Sprintf("http://%s/kv/majority-probe-%d-%d", s.HTTPAddr, cycle, k)
			req, _ := http.NewRequest("PUT", url, strings.NewReader("must-not-be-acknowledged"))
			hc := &http.Client{Timeout: 15 * time.Second}
			t0 := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				r.t.Errorf("PUT to the survivor: %v (want a 503 answer)", err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !bytes.Contains(body, []byte(`"error"`)) {
				r.t.Errorf("PUT with a majority down: %d %q (Retry-After %q), want 503 with an error and Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
			}
			r.c.Event("PUT to %s with a majority down: %d in %v: %s", s.Name, resp.StatusCode, time.Since(t0).Round(time.Millisecond), bytes.TrimSpace(body))
		}
		// Through the Go client: ErrUnavailable.
		cl, err := client.New(client.Config{Endpoints: []string{s.HTTPAddr}, RequestTimeout: 3 * time.Second})
		r.must(err)
		err = cl.Set(r.ctx, fmt.Sprintf("majority-client-%d", cycle), []byte("must-not-be-acknowledged"))
		cl.Close()
		switch {
		case err == nil:
			r.t.Errorf("client Set with a majority down succeeded, want ErrUnavailable")
		case errors.Is(err, client.ErrUnavailable):
		default:
			r.t.Errorf("client Set with a majority down: %v, want ErrUnavailable", err)
		}
		r.c.Event("client Set with a majority down: %v", err)
		chaos.Sleep(r.ctx, hold-time.Since(from))
		to := time.Now()
		for _, v := range victims {
			r.must(r.c.Restart(v))
		}
		r.waitReady()
		var bad []string
		bad = append(bad, r.ledger.AckedInvokedBetween(from, to)...)
		bad = append(bad, r.reg.AckedInvokedBetween(from, to)...)
		// Reads: a leader may serve linearizable reads from its lease
		// until it expires (at most an election timeout, 400ms here).
		bad = append(bad, r.reg.ReadsInvokedBetween(from.Add(time.Second), to)...)
		if len(bad) > 0 {
			r.t.Errorf("ACKNOWLEDGED WITHOUT A QUORUM: %d operations invoked while 2 of 3 nodes were dead succeeded, e.g. %v", len(bad), bad[:min(5, len(bad))])
		}
		r.c.Event("window of %v with a majority down: %d operations acknowledged (want 0)", to.Sub(from).Round(time.Millisecond), len(bad))
		r.expectProgress("after the restarts")
		r.sleep(0, time.Second)
	}
}

// failStop restarts node i with a storage fault and checks that it stops
// by itself, clearly, while the others go on.
func (r *chaosRun) failStop(i int, fault string) {
	n := r.c.Node(i)
	code, err := n.Stop(30 * time.Second)
	if err != nil || code != 0 {
		r.t.Errorf("stopping %s with SIGTERM: exit %d %v, want 0", n.Name, code, err)
	}
	r.c.Event("stopped %s cleanly to arm %s", n.Name, fault)
	logBefore, _ := os.ReadFile(n.LogPath)
	n.SetEnv("KVNODE_TEST_FAULTS=" + fault)
	r.must(r.c.Restart(i))
	r.c.Fault("%s restarted with %s", n.Name, fault)
	start := time.Now()
	// It serves, then fails: the workload keeps it busy.
	code, err = n.ExitCode(60 * time.Second)
	logs := settledLog(n.LogPath)
	logs = logs[min(len(logBefore), len(logs)):]
	switch {
	case err == nil:
		if code != 1 {
			r.t.Errorf("%s with %s exited %d, want 1", n.Name, fault, code)
		}
	default:
		// Still running: it must at least say it failed and be unready.
		code, body, herr := httpGet(n.HTTPAddr + "/health")
		if herr != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "failed") {
			r.t.Errorf("%s with %s neither exited nor reports a failure within 60s: /health %d %s %v", n.Name, fault, code, body, herr)
		}
	}
	if !bytes.Contains(logs, []byte("node failed")) {
		r.t.Errorf("%s with %s: no \"node failed\" line in its log:\n%s", n.Name, fault, tail(logs, 20))
	}
	if !bytes.Contains(logs, []byte("node serving")) {
		r.c.Event("note: %s failed before it served (during startup)", n.Name)
	}
	r.c.Event("%s fail-stopped %v after the restart (exit %d): %s", n.Name, time.Since(start).Round(time.Millisecond), code, firstLine(logs, "node failed"))
	r.expectProgress("with " + n.Name + " fail-stopped")
	if n.Running() {
		n.Kill()
	}
	n.SetEnv("KVNODE_TEST_FAULTS=")
	r.must(r.c.Restart(i))
	r.waitReady()
}

func diskFaults(r *chaosRun) {
	kinds := []string{"sync-fail-after", "write-fail-after"}
	for round := 0; round == 0 || r.more(); round++ {
		i := r.c.Rand.IntN(3)
		fault := fmt.Sprintf("%s=%d", kinds[round%2], 100+r.c.Rand.IntN(400))
		r.failStop(i, fault)
		r.sleep(0, time.Second)
		if round >= 1 && !r.more() {
			break
		}
	}
}

// bitflip stops a node after a while of writes, flips one bit in its
// store (the raft log's files, or the state machine's), and restarts it.
func bitflip(r *chaosRun, store string) {
	chaos.Sleep(r.ctx, r.dur/2)
	i := r.c.Rand.IntN(3)
	n := r.c.Node(i)
	code, err := n.Stop(30 * time.Second)
	if err != nil || code != 0 {
		r.t.Errorf("stopping %s: exit %d %v", n.Name, code, err)
	}
	dir := filepath.Join(n.DataDir, "wal")
	if store == "engine" {
		dir = filepath.Join(n.DataDir, "engine")
	}
	ssts, err := chaos.StoreFiles(dir, ".sst")
	r.must(err)
	logs, err := chaos.StoreFiles(dir, ".log")
	r.must(err)
	var names []string
	for f := range ssts {
		names = append(names, f)
	}
	kind := "sstables"
	if store == "wal" || len(names) == 0 || r.c.Rand.IntN(2) == 0 {
		names = nil
		// The raft log lives in Pebble's write-ahead logs until a flush;
		// so does the state machine of a short run.
		kind = "sstables and write-ahead logs"
		for f := range logs {
			names = append(names, f)
		}
	}
	r.c.Event("%s store %s: %d sstables, %d logs", n.Name, store, len(ssts), len(logs))
	if store == "wal" && r.c.Rand.IntN(2) == 0 {
		// The newest log: Pebble may take damage there for a torn
		// write at a crash and stop replaying at it.
		newest := ""
		for f := range logs {
			if f > newest {
				newest = f
			}
		}
		names, kind = []string{newest}, "the newest write-ahead log"
	}
	flip, err := chaos.FlipValueBit(r.c.Rand, names)
	r.must(err)
	if flip == nil {
		// No value in clear: flip a random bit of the largest file.
		var biggest string
		for _, f := range names {
			if biggest == "" || ssts[f]+logs[f] > ssts[biggest]+logs[biggest] {
				biggest = f
			}
		}
		if biggest == "" {
			r.t.Fatalf("no files in %s", dir)
		}
		flip, err = chaos.FlipRandomBit(r.c.Rand, biggest)
		r.must(err)
	}
	r.c.Fault("flipped %s (among %s)", flip, kind)
	logBefore, _ := os.ReadFile(n.LogPath)
	r.must(r.c.Restart(i))

	// It either refuses to start (exits with a clear message) or starts;
	// while it runs, it must never serve the corrupted value.
	var conn *chaos.NodeConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	deadline := time.Now().Add(max(r.dur/2, 10*time.Second))
	served, reads := 0, 0
	for time.Now().Before(deadline) && n.Running() {
		if flip.Key != "" {
			if conn == nil {
				conn, _ = chaos.DialNode(r.ctx, n.KVAddr)
			}
			if conn != nil {
				ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
				items, err := conn.StaleMGet(ctx, []string{flip.Key})
				cancel()
				if err != nil {
					conn.Close()
					conn = nil
				} else if reads++; items[0].Found && string(items[0].Value) == flip.Corrupted {
					served++
				}
			}
		}
		chaos.Sleep(r.ctx, 50*time.Millisecond)
	}
	if served > 0 {
		r.t.Errorf("CORRUPTED VALUE SERVED: %s served %q for %s (%d of %d stale reads)", n.Name, flip.Corrupted, flip.Key, served, reads)
	}
	all := settledLog(n.LogPath)
	newLogs := all[min(len(logBefore), len(all)):]
	if !n.Running() {
		code, _ := n.ExitCode(time.Second)
		clear := regexpCorrupt(newLogs)
		r.c.Event("%s exited %d after the flip: %s", n.Name, code, firstLine(newLogs, clear))
		if code == 0 {
			r.t.Errorf("%s exited 0 after a bit flip", n.Name)
		}
		if clear == "" {
			r.t.Errorf("%s stopped after a bit flip without a clear corruption message; its log ends:\n%s", n.Name, tail(newLogs, 15))
		}
		r.down[i] = true // refused: it stays down; the others carry on
		r.expectProgress("with " + n.Name + " refusing its corrupted store")
		return
	}
	r.c.Event("%s runs after the flip (%d stale reads of %q, none corrupted); the ledger check reads all of its replicas", n.Name, reads, flip.Key)
}

// regexpCorrupt returns the word that marks a corruption report in logs,
// or "".
func regexpCorrupt(logs []byte) string {
	for _, w := range []string{"corrupt", "checksum", "Corrupt", "mismatch", "invalid chunk", "error when replaying WAL"} {
		if bytes.Contains(logs, []byte(w)) {
			return w
		}
	}
	return ""
}

func killAll(r *chaosRun) {
	for first := true; first || r.more(); first = false {
		r.must(r.c.KillAll())
		r.sleep(100*time.Millisecond, time.Second)
		for i := range r.c.Nodes() {
			r.must(r.c.Restart(i))
		}
		r.waitReady()
		r.expectProgress("after restarting every node")
		r.sleep(0, time.Second)
	}
}

func httpGet(url string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func tail(b []byte, lines int) string {
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

func firstLine(b []byte, word string) string {
	if word == "" {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, word) {
			return l
		}
	}
	return ""
}

// TestChaosCheckersCatch proves the checks are not vacuous: behind the
// workloads' backs it deletes an acknowledged key, overwrites another with
// a value nobody wrote, and writes the register's keys; the ledger must
// report the loss and the corruption, and porcupine the violation.
func TestChaosCheckersCatch(t *testing.T) {
	ctx := context.Background()
	c, err := chaos.Start(ctx, chaos.Options{Binary: binary, Dir: t.TempDir(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lcl, err := c.NewClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lcl.Close()
	rcl, err := c.NewClient(ctx, func(cfg *client.Config) { cfg.MaxRetries = -1 })
	if err != nil {
		t.Fatal(err)
	}
	defer rcl.Close()
	ledger := chaos.NewLedger(lcl, 2, "S", 1)
	reg := chaos.NewRegister(rcl, chaos.RegisterOptions{Prefix: "SR", Seed: 1, Keys: 2, Epoch: time.Hour})
	ledger.Start()
	reg.Start()
	if !ledger.WaitProgress(ctx, 50, 20*time.Second) {
		t.Fatal("no progress")
	}
	ledger.Stop()
	// The ledger's first keys of each writer are acknowledged by now.
	if err := lcl.Delete(ctx, "S0-0"); err != nil {
		t.Fatal(err)
	}
	if err := lcl.Set(ctx, "S1-0", []byte("written by nobody")); err != nil {
		t.Fatal(err)
	}
	// Keep writing values nobody recorded while the register's workers
	// read: some reads return them.
	for i := 0; i < 75; i++ {
		if err := rcl.Set(ctx, fmt.Sprintf("SR0-%d", i%2), []byte(fmt.Sprintf("sabotage-%d", i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, err := ledger.Check(ctx, c, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.Lost < 1 || res.Corrupt < 1 {
		t.Errorf("the ledger missed the sabotage: %v", res)
	}
	t.Logf("ledger found: %v %v", res, res.Problems)
	viz := filepath.Join(t.TempDir(), "viz.html")
	lin, err := reg.Check(time.Minute, func() string { return viz })
	if lin != porcupine.Illegal {
		t.Errorf("porcupine missed the sabotage: %v %v", lin, err)
	}
	if st, serr := os.Stat(viz); serr != nil || st.Size() == 0 {
		t.Errorf("no visualization written: %v", serr)
	}
	if keys := reg.IllegalKeys(time.Minute); len(keys) == 0 {
		t.Errorf("IllegalKeys found no key")
	}
	t.Logf("porcupine found: %v", err)
}

// settledLog reads a node's log once it stops growing: the lines a process
// wrote just before it died reach the file a moment after its exit.
func settledLog(path string) []byte {
	var last []byte
	for i := 0; i < 30; i++ {
		b, _ := os.ReadFile(path)
		if i > 0 && len(b) == len(last) {
			return b
		}
		last = b
		time.Sleep(100 * time.Millisecond)
	}
	return last
}
