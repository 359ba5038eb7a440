package transport

import (
	"net"
	"testing"
	"time"
)

// TestBackoff: the reconnect delay doubles from min up to max, each delay
// jittered into [d/2, d]; giveUp jumps to max; reset starts over.
func TestBackoff(t *testing.T) {
	const lo, hi = 10 * time.Millisecond, 100 * time.Millisecond
	within := func(t *testing.T, got, nominal time.Duration) {
		t.Helper()
		if got < nominal/2 || got > nominal {
			t.Fatalf("delay %v outside [%v, %v]", got, nominal/2, nominal)
		}
	}
	tests := []struct {
		name  string
		steps []string // "next", "giveUp" or "reset"
		want  []time.Duration
	}{
		{"doubles up to the cap",
			[]string{"next", "next", "next", "next", "next", "next", "next"},
			[]time.Duration{10, 20, 40, 80, 100, 100, 100}},
		{"give up jumps to the cap and stays",
			[]string{"next", "giveUp", "next", "next"},
			[]time.Duration{10, 100, 100, 100}},
		{"reset starts over",
			[]string{"next", "next", "next", "reset", "next", "next"},
			[]time.Duration{10, 20, 40, 0, 10, 20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Many runs, so that the jitter's bounds are exercised.
			for range 200 {
				b := backoff{min: lo, max: hi}
				for i, step := range tc.steps {
					nominal := tc.want[i] * time.Millisecond
					switch step {
					case "next":
						within(t, b.next(), nominal)
					case "giveUp":
						within(t, b.giveUp(), nominal)
					case "reset":
						b.reset()
					}
				}
			}
		})
	}

	t.Run("jitter spreads over [d/2, d]", func(t *testing.T) {
		const d = 100 * time.Millisecond
		least, most := d, time.Duration(0)
		for range 2000 {
			j := jitter(d)
			within(t, j, d)
			least, most = min(least, j), max(most, j)
		}
		// Uniform over 50ms: 2000 draws all within 10% of one end is
		// (0.8)^2000 likely.
		if least > 55*time.Millisecond || most < 95*time.Millisecond {
			t.Fatalf("2000 jittered delays of %v span only [%v, %v]", d, least, most)
		}
		for _, d := range []time.Duration{0, 1, 2, 3} {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%d) = %d", d, j)
			}
		}
	})
}

// TestReconnectBackoff: messages for a peer that refuses connections make
// the sender redial only as the backoff allows, not once per Send.
func TestReconnectBackoff(t *testing.T) {
	const lo, hi, window = 10 * time.Millisecond, 80 * time.Millisecond, 600 * time.Millisecond
	c := newCluster(t, func(id uint64, cfg *Config) {
		cfg.BackoffMin, cfg.BackoffMax = lo, hi
	}, 1)
	n1 := c.node(1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.setAddr(2, ln.Addr().String())
	ln.Close() // nothing listens there now: connection refused

	sends := 0
	start := time.Now()
	for time.Since(start) < window {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		sends++
		time.Sleep(2 * time.Millisecond)
	}
	dials := n1.tr.Metrics().Peers[2].ConnectFailures
	// At the shortest delays (5, 10, 20, 40, then 40ms each) 600ms holds
	// about 17 attempts; with no backoff there would be one per Send, and
	// stuck at BackoffMin at least 60.
	t.Logf("%d dials to a dead peer in %v, over %d Sends", dials, window, sends)
	if dials < 2 || dials > 25 {
		t.Fatalf("%d dials to a dead peer in %v (%d Sends), want between 2 and 25", dials, window, sends)
	}
}
