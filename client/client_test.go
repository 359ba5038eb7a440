package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kvnode/wire"
)

func TestConfigDefaultsAndValidate(t *testing.T) {
	var cfg Config
	cfg.Endpoints = []string{"h:1"}
	cfg.EnsureDefaults()
	if cfg.DialTimeout != time.Second || cfg.RequestTimeout != 5*time.Second || cfg.RefreshInterval != 5*time.Second ||
		cfg.ReadAttemptTimeout != time.Second || cfg.ConnsPerNode != 2 || cfg.MaxRetries != DefaultMaxRetries || cfg.MaxFrameSize != wire.DefaultMaxFrameSize ||
		cfg.Logger == nil || cfg.StaleReads {
		t.Fatalf("defaults: %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate(defaults) = %v", err)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // every problem must be reported
	}{
		{"no endpoints", Config{}, []string{"Endpoints is empty"}},
		{"everything wrong", Config{
			Endpoints: []string{"ok", ""}, DialTimeout: -1, RequestTimeout: -1,
			ConnsPerNode: -1, MaxFrameSize: 10,
		}, []string{"Endpoints[1] is empty", "DialTimeout", "RequestTimeout", "ConnsPerNode", "MaxFrameSize"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.EnsureDefaults()
			err := tc.cfg.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := New(tc.cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestOperations(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 10*time.Second)

	if _, err := c.Get(ctx, "user:123"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(absent) = %v, want ErrNotFound", err)
	}
	if err := c.Set(ctx, "user:123", []byte("John Doe")); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(ctx, "user:123")
	if err != nil || string(v) != "John Doe" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	ver, err := c.Put(ctx, "user:123", []byte("Jane"))
	if err != nil || ver == 0 {
		t.Fatalf("Put = %d, %v", ver, err)
	}
	it, err := c.GetItem(ctx, "user:123")
	if err != nil || string(it.Value) != "Jane" || it.Version != ver || !it.Found {
		t.Fatalf("GetItem = %+v, %v; want Jane at %d", it, err, ver)
	}

	// CompareAndSet: a stale version fails and reports the current one.
	ok, cur, err := c.CompareAndSet(ctx, "user:123", ver-1, []byte("x"))
	if err != nil || ok || cur != ver {
		t.Fatalf("CAS(stale) = %v, %d, %v; want false, %d", ok, cur, err, ver)
	}
	ok, nv, err := c.CompareAndSet(ctx, "user:123", ver, []byte("x"))
	if err != nil || !ok || nv <= ver {
		t.Fatalf("CAS = %v, %d, %v", ok, nv, err)
	}
	ok, _, err = c.CompareAndSet(ctx, "fresh", 0, []byte("y"))
	if err != nil || !ok {
		t.Fatalf("CAS(expect 0, absent) = %v, %v", ok, err)
	}

	if err := c.Delete(ctx, "user:123"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "user:123"); err != nil {
		t.Fatalf("Delete(absent) = %v", err)
	}
	if _, err := c.Get(ctx, "user:123"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(deleted) = %v", err)
	}

	// Empty keys are refused without a round trip.
	if err := c.Set(ctx, "", nil); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("Set(empty key) = %v", err)
	}
	if _, err := c.MGet(ctx, []string{"a", ""}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("MGet(empty key) = %v", err)
	}
	if items, err := c.MGet(ctx, nil); err != nil || len(items) != 0 {
		t.Fatalf("MGet(nil) = %v, %v", items, err)
	}
}

// Every op goes to its partition's leader: with an accurate topology no
// node ever has to answer NotLeader.
func TestRoutesToThePrimary(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 10*time.Second)
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for i, nd := range fc.nodes {
		for _, k := range nd.servedKeys() {
			if p := wire.Partition([]byte(k), fakePartitions); p%3 != i {
				t.Errorf("%s served %q of partition %d, led by node %d", nd.id, k, p, p%3+1)
			}
		}
		total += int(nd.received.Load())
	}
	if total != 400 {
		t.Errorf("nodes received %d requests for 400 ops: some were misrouted and retried", total)
	}
}

func TestFollowsNotLeader(t *testing.T) {
	const p = 5 // led by node index 2 at first (5 % 3)
	key := keyIn(p, 0)
	for _, tc := range []struct {
		name    string
		noHints bool
		publish bool // /cluster knows the new leader
	}{
		// The hint is used at once, even though /cluster is behind.
		{"hint, topology stale", false, false},
		// No hint: the client refreshes the topology.
		{"no hint, topology fresh", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 3)
			c := newTestClient(t, fc, nil)
			ctx := ctxTimeout(t, 10*time.Second)
			fc.mu.Lock()
			fc.noHints = tc.noHints
			fc.mu.Unlock()

			fc.setLeader(p, 0, tc.publish) // leadership moves to node-1
			for _, op := range []string{"set", "cas"} {
				var err error
				if op == "set" {
					err = c.Set(ctx, key, []byte("v"))
				} else {
					// A CAS is retried after NotLeader: it was not applied.
					_, _, err = c.CompareAndSet(ctx, key, 0, []byte("w"))
				}
				if err != nil {
					t.Fatalf("%s: %v", op, err)
				}
			}
			if got := fc.nodes[2].received.Load(); got != 1 {
				t.Errorf("old leader received %d requests, want 1: the route was not updated after NotLeader", got)
			}
			if got := fc.nodes[0].servedOps(wire.OpSet); got != 1 {
				t.Errorf("new leader served %d sets, want 1", got)
			}
		})
	}
}

// A hint may carry only the leader's id; the client resolves it through the
// topology.
func TestHintByNodeID(t *testing.T) {
	const p = 7
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, nil)
	fc.setLeader(p, 2, false)
	fc.nodes[1].setHook(func(r fakeReq) fakeAction {
		return fakeAction{status: wire.StatusNotLeader, leader: "node-3"}
	})
	if err := c.Set(ctxTimeout(t, 5*time.Second), keyIn(p, 0), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got := fc.nodes[2].servedOps(wire.OpSet); got != 1 {
		t.Fatalf("node-3 served %d sets, want 1", got)
	}
}

func TestRefreshesPeriodically(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, func(cfg *Config) { cfg.RefreshInterval = 20 * time.Millisecond })
	const p = 3
	fc.setLeader(p, 0, true)
	eventually(t, "the topology to show the new leader", func() bool {
		return c.topo.Load().parts[p].leaderAddr == fc.nodes[0].addr()
	})
	if err := c.Set(ctxTimeout(t, 5*time.Second), keyIn(p, 0), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got := fc.nodes[0].received.Load(); got != 1 {
		t.Fatalf("new leader received %d requests, want exactly 1", got)
	}
}

func TestTriesEveryEndpoint(t *testing.T) {
	fc := newFakeCluster(t, 3)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	c := newTestClient(t, fc, func(cfg *Config) {
		cfg.Endpoints = append([]string{deadAddr, "http://" + deadAddr + "/"}, cfg.Endpoints...)
	})
	if err := c.Set(ctxTimeout(t, 5*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

func TestNoTopology(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	c, err := New(Config{Endpoints: []string{addr}, MaxRetries: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Sync(ctxTimeout(t, 5*time.Second)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Sync = %v, want ErrUnavailable", err)
	}
	_, err = c.Get(ctxTimeout(t, 5*time.Second), "k")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get = %v, want ErrUnavailable", err)
	}
	// A deadline shorter than the retries ends the operation instead.
	_, err = c.Get(ctxTimeout(t, 30*time.Millisecond), "k")
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get(short deadline) = %v", err)
	}
}

// The retry rules: what is retried, and what reports an unknown outcome.
func TestRetryRules(t *testing.T) {
	type op int
	const (
		opGet op = iota
		opSet
		opCAS
		opMSet
	)
	for _, tc := range []struct {
		name string
		op   op
		// fault is applied to the first `times` requests the leader sees.
		fault fakeAction
		times int64

		wantErr      error // nil: success
		wantUnknown  bool  // the error matches ErrUnknownOutcome
		wantReceived int64 // requests the leader received
	}{
		{"get retried after Unavailable", opGet, fakeAction{status: wire.StatusUnavailable}, 2, nil, false, 3},
		// A write that may have applied is never sent again: a second
		// application could land after other clients' writes.
		{"set not retried after Unavailable", opSet, fakeAction{status: wire.StatusUnavailable}, 1, ErrUnknownOutcome, true, 1},
		{"set not retried after a dropped connection", opSet, fakeAction{drop: true}, 1, ErrUnknownOutcome, true, 1},
		{"set retried after Stopping", opSet, fakeAction{status: wire.StatusStopping}, 1, nil, false, 2},
		{"mset not retried after a dropped connection", opMSet, fakeAction{drop: true}, 1, ErrUnknownOutcome, true, 1},
		{"get retried after a dropped connection", opGet, fakeAction{drop: true}, 1, nil, false, 2},
		{"cas retried after Stopping", opCAS, fakeAction{status: wire.StatusStopping}, 1, nil, false, 2},
		{"cas retried after NotLeader without a hint", opCAS, fakeAction{status: wire.StatusNotLeader}, 2, nil, false, 3},
		{"cas not retried after Unavailable", opCAS, fakeAction{status: wire.StatusUnavailable}, 1, ErrUnavailable, true, 1},
		{"cas not retried after a dropped connection", opCAS, fakeAction{drop: true}, 1, ErrUnknownOutcome, true, 1},
		{"cas not retried after Internal", opCAS, fakeAction{status: wire.StatusInternal}, 1, ErrUnknownOutcome, true, 1},
		{"set not retried after BadRequest", opSet, fakeAction{status: wire.StatusBadRequest, msg: "key too weird"}, 1, ErrBadRequest, false, 1},
		{"set not retried after TooLarge", opSet, fakeAction{status: wire.StatusTooLarge, msg: "value"}, 1, ErrTooLarge, false, 1},
		{"set not retried after Internal", opSet, fakeAction{status: wire.StatusInternal}, 1, ErrUnknownOutcome, true, 1},
		{"get not retried after Internal", opGet, fakeAction{status: wire.StatusInternal}, 1, &ServerError{}, false, 1},
		{"get gives up after MaxRetries", opGet, fakeAction{status: wire.StatusUnavailable}, 100, ErrUnavailable, false, 4},
		{"set gives up at once with an unknown outcome", opSet, fakeAction{status: wire.StatusUnavailable}, 100, ErrUnknownOutcome, true, 1},
		{"set gives up after NotLeader, outcome known", opSet, fakeAction{status: wire.StatusNotLeader}, 100, ErrUnavailable, false, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1)
			leader := fc.nodes[0]
			leader.setHook(func(r fakeReq) fakeAction {
				if r.n <= tc.times {
					return tc.fault
				}
				return fakeAction{}
			})
			c := newTestClient(t, fc, func(cfg *Config) { cfg.MaxRetries = 3 })
			ctx := ctxTimeout(t, 10*time.Second)
			var err error
			switch tc.op {
			case opGet:
				fc.data["k"] = fakeItem{[]byte("v"), 1}
				_, err = c.Get(ctx, "k")
			case opSet:
				err = c.Set(ctx, "k", []byte("v"))
			case opCAS:
				_, _, err = c.CompareAndSet(ctx, "k", 0, []byte("v"))
			case opMSet:
				_, err = c.MSet(ctx, []KV{{"a", []byte("1")}, {"b", []byte("2")}})
			}
			switch want := tc.wantErr.(type) {
			case nil:
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
			case *ServerError:
				if !errors.As(err, &want) {
					t.Fatalf("got %v, want a *ServerError", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("got %v, want %v", err, want)
				}
			}
			if got := errors.Is(err, ErrUnknownOutcome); got != tc.wantUnknown {
				t.Errorf("errors.Is(%v, ErrUnknownOutcome) = %v, want %v", err, got, tc.wantUnknown)
			}
			if got := leader.received.Load(); got != tc.wantReceived {
				t.Errorf("leader received %d requests, want %d", got, tc.wantReceived)
			}
		})
	}
}

// The server's message reaches the caller, and ServerError can be
// inspected.
func TestServerErrorDetails(t *testing.T) {
	fc := newFakeCluster(t, 1)
	fc.nodes[0].setHook(func(fakeReq) fakeAction {
		return fakeAction{status: wire.StatusBadRequest, msg: "key has a NUL byte"}
	})
	c := newTestClient(t, fc, nil)
	err := c.Set(ctxTimeout(t, 5*time.Second), "k", nil)
	var se *ServerError
	if !errors.As(err, &se) || se.Status != wire.StatusBadRequest || se.Op != wire.OpSet || se.Addr != fc.nodes[0].addr() {
		t.Fatalf("got %#v", err)
	}
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "key has a NUL byte") {
		t.Fatalf("error %q lacks the sentinel or the server's message", err)
	}
}

func TestServerErrorIs(t *testing.T) {
	sentinels := []error{ErrNotFound, ErrBadRequest, ErrTooLarge, ErrUnavailable, ErrUnknownOutcome, ErrClosed}
	for _, tc := range []struct {
		status wire.Status
		want   error // the one sentinel it matches; nil for none
	}{
		{wire.StatusNotFound, ErrNotFound},
		{wire.StatusNotLeader, ErrUnavailable},
		{wire.StatusBadRequest, ErrBadRequest},
		{wire.StatusTooLarge, ErrTooLarge},
		{wire.StatusUnavailable, ErrUnavailable},
		{wire.StatusUnknownOp, nil},
		{wire.StatusMalformedFrame, nil},
		{wire.StatusInternal, nil},
		{wire.StatusStopping, ErrUnavailable},
	} {
		err := fmt.Errorf("wrapped: %w", &ServerError{Status: tc.status})
		for _, s := range sentinels {
			if got := errors.Is(err, s); got != (s == tc.want) {
				t.Errorf("%v: errors.Is(%v) = %v", tc.status, s, got)
			}
		}
	}
}

func TestPipelining(t *testing.T) {
	fc := newFakeCluster(t, 1)
	// Each request takes a while, so requests only complete quickly if many
	// are in flight at once on the few connections.
	fc.nodes[0].setHook(func(fakeReq) fakeAction { return fakeAction{delay: 50 * time.Millisecond} })
	c := newTestClient(t, fc, func(cfg *Config) { cfg.ConnsPerNode = 2 })
	ctx := ctxTimeout(t, 20*time.Second)

	const n = 400
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Go(func() {
			k := fmt.Sprintf("key-%d", i)
			v := bytes.Repeat([]byte{byte(i)}, i)
			if err := c.Set(ctx, k, v); err != nil {
				errs <- err
				return
			}
			got, err := c.Get(ctx, k)
			if err != nil || !bytes.Equal(got, v) {
				errs <- fmt.Errorf("Get(%s) = %d bytes, %v", k, len(got), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if got := fc.nodes[0].accepted.Load(); got > 2 {
		t.Errorf("%d connections for ConnsPerNode 2", got)
	}
	if got := fc.nodes[0].maxInFlight.Load(); got < 50 {
		t.Errorf("at most %d requests in flight at once: not pipelined", got)
	}
	// 800 requests of 50ms, one at a time per connection, would take 20s.
	if elapsed > 5*time.Second {
		t.Errorf("took %v", elapsed)
	}
}

// A connection broken with requests in flight fails them all; reads and
// writes are retried on a new connection, a CAS is not.
func TestConnectionDroppedMidRequest(t *testing.T) {
	fc := newFakeCluster(t, 1)
	nd := fc.nodes[0]
	release := make(chan struct{})
	nd.setHook(func(r fakeReq) fakeAction {
		if r.n <= 3 { // the first three requests hang until the drop
			<-release
			return fakeAction{hang: true}
		}
		return fakeAction{}
	})
	c := newTestClient(t, fc, func(cfg *Config) { cfg.ConnsPerNode = 1 })
	ctx := ctxTimeout(t, 10*time.Second)

	var wg sync.WaitGroup
	var setErr, getErr, casErr error
	wg.Go(func() { setErr = c.Set(ctx, "a", []byte("1")) })
	wg.Go(func() { _, getErr = c.Get(ctx, "a") })
	wg.Go(func() { _, _, casErr = c.CompareAndSet(ctx, "b", 0, []byte("2")) })
	eventually(t, "three requests in flight", func() bool { return nd.received.Load() == 3 })
	nd.dropConns()
	close(release)
	wg.Wait()

	if !errors.Is(setErr, ErrUnknownOutcome) {
		t.Errorf("Set = %v, want ErrUnknownOutcome: it was sent, and is not sent twice", setErr)
	}
	if getErr != nil && !errors.Is(getErr, ErrNotFound) {
		t.Errorf("Get = %v, want a retry", getErr)
	}
	if !errors.Is(casErr, ErrUnknownOutcome) {
		t.Errorf("CAS = %v, want ErrUnknownOutcome", casErr)
	}
	if got := nd.accepted.Load(); got != 2 {
		t.Errorf("%d connections, want 2: the broken one redialed once", got)
	}
}

func TestContextCancellation(t *testing.T) {
	fc := newFakeCluster(t, 1)
	nd := fc.nodes[0]
	nd.setHook(func(r fakeReq) fakeAction {
		if r.keys[0] == "slow" {
			return fakeAction{hang: true}
		}
		return fakeAction{}
	})
	c := newTestClient(t, fc, func(cfg *Config) { cfg.ConnsPerNode = 1 })

	start := time.Now()
	_, err := c.Get(ctxTimeout(t, 50*time.Millisecond), "slow")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get(slow) = %v, want DeadlineExceeded", err)
	}
	if errors.Is(err, ErrUnknownOutcome) {
		t.Errorf("a read reported an unknown outcome: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Get(slow) returned after %v", d)
	}

	// A write sent before its deadline passed has an unknown outcome.
	err = c.Set(ctxTimeout(t, 50*time.Millisecond), "slow", []byte("v"))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("Set(slow) = %v, want DeadlineExceeded and ErrUnknownOutcome", err)
	}

	// A cancelled context sends nothing, and the outcome is known.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := nd.received.Load()
	if _, _, err := c.CompareAndSet(ctx, "fast", 0, nil); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("CAS(cancelled) = %v", err)
	}
	if nd.received.Load() != before {
		t.Error("a cancelled request was sent")
	}

	// The connection survived the abandoned requests.
	if err := c.Set(ctxTimeout(t, 5*time.Second), "fast", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got := nd.accepted.Load(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
}

func TestCloseWithRequestsInFlight(t *testing.T) {
	fc := newFakeCluster(t, 3)
	var sets atomic.Int64 // Set requests the servers received
	for _, nd := range fc.nodes {
		nd.setHook(func(r fakeReq) fakeAction {
			if r.op == wire.OpSet {
				sets.Add(1)
			}
			return fakeAction{hang: true}
		})
	}
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 10*time.Second)
	var wg sync.WaitGroup
	errs := make([]error, 30)
	for i := range errs {
		wg.Go(func() {
			k := fmt.Sprintf("k%d", i)
			switch i % 3 {
			case 0:
				_, errs[i] = c.Get(ctx, k)
			case 1:
				errs[i] = c.Set(ctx, k, nil)
			default:
				_, errs[i] = c.MGet(ctx, []string{k, "x", "y", "z"})
			}
		})
	}
	// MGets may split into several requests: wait for the Sets by name,
	// since the test asserts they were sent.
	eventually(t, "all requests in flight", func() bool {
		var n int64
		for _, nd := range fc.nodes {
			n += nd.received.Load()
		}
		return n >= 30 && sets.Load() == 10
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("op %d: %v, want ErrClosed", i, err)
		}
		if i%3 == 1 && !errors.Is(err, ErrUnknownOutcome) {
			t.Errorf("set %d: %v, want ErrUnknownOutcome too: it was sent", i, err)
		}
	}
	if err := c.Set(ctx, "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestStaleReadsGoToReplicas(t *testing.T) {
	fc := newFakeCluster(t, 3)
	const key = "user:123"
	for _, tc := range []struct {
		name       string
		configured bool
		opts       []ReadOption
		stale      bool
	}{
		{"default", false, nil, false},
		{"Stale()", false, []ReadOption{Stale()}, true},
		{"Config.StaleReads", true, nil, true},
		{"Config.StaleReads overridden", true, []ReadOption{Linearizable()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, fc, func(cfg *Config) { cfg.StaleReads = tc.configured })
			ctx := ctxTimeout(t, 10*time.Second)
			if err := c.Set(ctx, key, []byte("v")); err != nil {
				t.Fatal(err)
			}
			before := make([]int, 3)
			for i, nd := range fc.nodes {
				before[i] = nd.servedOps(wire.OpGet) + nd.servedOps(wire.OpMGet)
			}
			for i := 0; i < 30; i++ {
				if _, err := c.Get(ctx, key, tc.opts...); err != nil {
					t.Fatal(err)
				}
				if _, err := c.MGet(ctx, []string{key}, tc.opts...); err != nil {
					t.Fatal(err)
				}
			}
			leader := wire.Partition([]byte(key), fakePartitions) % 3
			for i, nd := range fc.nodes {
				n := nd.servedOps(wire.OpGet) + nd.servedOps(wire.OpMGet) - before[i]
				switch {
				case tc.stale && n == 0:
					t.Errorf("%s served no stale reads", nd.id)
				case !tc.stale && i != leader && n != 0:
					t.Errorf("%s, not the leader, served %d linearizable reads", nd.id, n)
				}
			}
		})
	}
}

// TestReadAttemptTimeout: a node that accepts a request and never answers
// (paused, stuck) holds a read only for ReadAttemptTimeout; the read is
// retried, on another replica if it is stale. A write that was sent is not
// bounded per attempt: it waits for its answer until the deadline.
func TestReadAttemptTimeout(t *testing.T) {
	const key = "user:123"
	leader := wire.Partition([]byte(key), fakePartitions) % 3
	for _, tc := range []struct {
		name    string
		attempt time.Duration
		// hangs is how many requests the leader leaves unanswered.
		hangs   int64
		op      string // get, stale-get, set
		wantErr error  // nil: success
		// wantLeaderReqs is how many requests reach the leader.
		wantLeaderReqs int64
		minTime        time.Duration // the call takes at least this long
		maxTime        time.Duration // and at most this long
	}{
		{name: "linearizable read retried on the leader", attempt: 100 * time.Millisecond, hangs: 1, op: "get",
			wantLeaderReqs: 2, minTime: 100 * time.Millisecond, maxTime: 900 * time.Millisecond},
		{name: "stale read moves to another replica", attempt: 100 * time.Millisecond, hangs: 1000, op: "stale-get",
			maxTime: 900 * time.Millisecond},
		{name: "no bound per attempt", attempt: -1, hangs: 1000, op: "get", wantErr: context.DeadlineExceeded,
			wantLeaderReqs: 1, minTime: 1500 * time.Millisecond},
		{name: "a sent write waits until the deadline", attempt: 100 * time.Millisecond, hangs: 1000, op: "set",
			wantErr: ErrUnknownOutcome, wantLeaderReqs: 1, minTime: 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 3)
			fc.data[key] = fakeItem{[]byte("v"), 1}
			fc.nodes[leader].setHook(func(r fakeReq) fakeAction {
				if r.n <= tc.hangs {
					return fakeAction{hang: true}
				}
				return fakeAction{}
			})
			c := newTestClient(t, fc, func(cfg *Config) { cfg.ReadAttemptTimeout = tc.attempt })
			ctx := ctxTimeout(t, 1500*time.Millisecond)
			start := time.Now()
			var err error
			switch tc.op {
			case "get":
				_, err = c.Get(ctx, key)
			case "stale-get":
				// Enough reads that round robin picks the hung leader.
				for i := 0; i < 6 && err == nil; i++ {
					_, err = c.Get(ctx, key, Stale())
				}
			case "set":
				err = c.Set(ctx, key, []byte("w"))
			}
			took := time.Since(start)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			switch got := fc.nodes[leader].received.Load(); {
			case tc.wantLeaderReqs > 0 && got != tc.wantLeaderReqs:
				t.Errorf("the leader received %d requests, want %d", got, tc.wantLeaderReqs)
			case got == 0:
				t.Errorf("no request reached the hung leader: the test tested nothing")
			}
			if took < tc.minTime || tc.maxTime > 0 && took > tc.maxTime {
				t.Errorf("took %v, want between %v and %v", took, tc.minTime, tc.maxTime)
			}
		})
	}
}

// A dead leader: the client refreshes the topology after the connection
// failure and finds the new leader.
func TestLeaderDown(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 10*time.Second)
	key := keyIn(0, 0) // partition 0: node-1
	if err := c.Set(ctx, key, []byte("1")); err != nil {
		t.Fatal(err)
	}
	fc.nodes[0].kill()
	fc.setAllLeaders(1, true)
	// Wait until the client has seen its connections close: a request
	// written into a connection the peer has closed but the client has not
	// noticed yet is, as far as the client can tell, maybe sent.
	p, _ := c.pool(fc.nodes[0].addr())
	eventually(t, "the client to see its connections break", func() bool {
		for i := range p.slots {
			if cn := p.slots[i].cn.Load(); cn != nil && cn.alive() {
				return false
			}
		}
		return true
	})
	// A CAS is retried too: a refused dial proves nothing was sent.
	ok, _, err := c.CompareAndSet(ctx, keyIn(0, 1), 0, []byte("2"))
	if err != nil || !ok {
		t.Fatalf("CAS after the leader died = %v, %v", ok, err)
	}
	if err := c.Set(ctx, key, []byte("3")); err != nil {
		t.Fatal(err)
	}
	if it, _ := fc.value(key); string(it.value) != "3" {
		t.Fatalf("value %q", it.value)
	}
}

// MGet and MSet send one request per node, holding only that node's keys,
// and put the results back in order; a partition that moved mid-way is
// re-routed.
func TestMultiKeySplitsByNode(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 10*time.Second)

	var items []KV
	for i := 0; i < 100; i++ {
		items = append(items, KV{fmt.Sprintf("key-%03d", i), []byte(fmt.Sprint(i))})
	}
	items = append(items, KV{"key-000", []byte("last wins")})
	vers, err := c.MSet(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	if len(vers) != len(items) {
		t.Fatalf("%d versions for %d items", len(vers), len(items))
	}
	for i, nd := range fc.nodes {
		if got := nd.servedOps(wire.OpMSet); got != 1 {
			t.Errorf("%s served %d MSets, want 1", nd.id, got)
		}
		for _, k := range nd.servedKeys() {
			if p := wire.Partition([]byte(k), fakePartitions); p%3 != i {
				t.Errorf("%s got %q of partition %d", nd.id, k, p)
			}
		}
	}
	if it, _ := fc.value("key-000"); string(it.value) != "last wins" || it.version != vers[len(vers)-1] {
		t.Errorf("key-000 = %q at %d, want the later item at %d", it.value, it.version, vers[len(vers)-1])
	}

	// Move one partition without telling /cluster: the node that used to
	// lead it answers NotLeader for its whole group, which is re-split.
	moved := wire.Partition([]byte("key-001"), fakePartitions)
	fc.setLeader(moved, (moved+1)%3, false)
	keys := []string{"absent"}
	for _, it := range items[:100] {
		keys = append(keys, it.Key)
	}
	got, err := c.MGet(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Found {
		t.Error("absent key found")
	}
	for i, it := range got[1:] {
		want := items[i].Value
		if i == 0 {
			want = []byte("last wins")
		}
		if !it.Found || !bytes.Equal(it.Value, want) || it.Version == 0 {
			t.Errorf("MGet[%d] = %+v, want %q", i+1, it, want)
		}
	}
}

func TestRequestOverFrameLimitIsNotSent(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := newTestClient(t, fc, func(cfg *Config) { cfg.MaxFrameSize = 4096; cfg.ConnsPerNode = 1 })
	ctx := ctxTimeout(t, 5*time.Second)
	if err := c.Set(ctx, "k", make([]byte, 5000)); !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("Set(5000 bytes) = %v, want ErrTooLarge", err)
	}
	if err := c.Set(ctx, "k", make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if got := fc.nodes[0].received.Load(); got != 1 {
		t.Errorf("node received %d requests, want 1", got)
	}
}

// A response that does not fit its request is an error, never a wrong
// answer; for a write, its outcome is unknown.
func TestBadResponse(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := newTestClient(t, fc, nil)
	ctx := ctxTimeout(t, 5*time.Second)
	fc.nodes[0].setHook(func(r fakeReq) fakeAction {
		switch r.op {
		case wire.OpMGet:
			return fakeAction{reply: &wire.MGetResponse{}} // no items
		case wire.OpSet:
			return fakeAction{reply: map[string]any{"ver": "not a number"}}
		}
		return fakeAction{}
	})
	if _, err := c.MGet(ctx, []string{"a", "b"}); err == nil || !strings.Contains(err.Error(), "0 items for 2 keys") {
		t.Errorf("MGet = %v", err)
	}
	err := c.Set(ctx, "k", nil)
	if err == nil || !errors.Is(err, ErrUnknownOutcome) {
		t.Errorf("Set = %v, want ErrUnknownOutcome", err)
	}
	if got := fc.nodes[0].received.Load(); got != 2 {
		t.Errorf("%d requests, want 2: bad responses are not retried", got)
	}
}
