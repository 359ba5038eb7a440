package replication

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"kvnode/transport"
)

// recordingTransport keeps what is sent, for the routing test.
type recordingTransport struct {
	mu   sync.Mutex
	sent []string
}

func (t *recordingTransport) Send(to uint64, msgs []transport.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		t.sent = append(t.sent, describe(to, m))
	}
}

func (t *recordingTransport) SendSnapshot(context.Context, uint64, transport.Message, func(io.Writer) error) error {
	return nil
}

func describe(to uint64, m transport.Message) string {
	return fmt.Sprintf("g%d->%d %s commit=%d ents=%d", m.Group, to, m.Msg.GetType(), m.Msg.GetCommit(), len(m.Msg.GetEntries()))
}

func appMsg(to, commit uint64, ents int) *raftpb.Message {
	m := &raftpb.Message{To: &to, Type: raftpb.MessageType_MsgApp.Enum(), Commit: &commit}
	for i := range ents {
		idx := uint64(i + 1)
		m.Entries = append(m.Entries, &raftpb.Entry{Index: &idx})
	}
	return m
}

// TestCommitHintRouting walks the hint rules one message at a time: a
// commit-only append is held, a newer one replaces it, an append with
// entries folds it, a read index answer takes it along ahead of itself,
// and the delay's end sends what is left, except for groups gone since.
func TestCommitHintRouting(t *testing.T) {
	tr := &recordingTransport{}
	h := &Host{
		cfg:       &Config{CommitHintDelay: time.Hour},
		tr:        tr,
		outbox:    make(map[uint64][]transport.Message),
		hints:     make(map[hintKey]*raftpb.Message),
		hintTimer: newHintTimer(),
	}
	defer h.hintTimer.Stop()
	g1, g2 := &replica{id: 1}, &replica{id: 2}
	h.mu.groups = map[uint64]*replica{1: g1, 2: g2}
	readResp := func(to uint64) *raftpb.Message {
		return &raftpb.Message{To: &to, Type: raftpb.MessageType_MsgReadIndexResp.Enum()}
	}
	outbox := func() string {
		var out []string
		for _, to := range []uint64{2, 3} {
			for _, m := range h.outbox[to] {
				out = append(out, describe(to, m))
			}
			h.outbox[to] = nil
		}
		return strings.Join(out, "; ")
	}

	steps := []struct {
		name         string
		r            *replica
		m            *raftpb.Message
		wantOutbox   string
		held, folded uint64
	}{
		{"hint held", g1, appMsg(2, 5, 0), "", 1, 0},
		{"newer hint replaces it", g1, appMsg(2, 6, 0), "", 2, 1},
		{"hint to another follower held apart", g1, appMsg(3, 6, 0), "", 3, 1},
		{"append with entries folds the held hint", g1, appMsg(2, 7, 2), "g1->2 MsgApp commit=7 ents=2", 3, 2},
		{"read index answer takes the hint along, first", g1, readResp(3), "g1->3 MsgApp commit=6 ents=0; g1->3 MsgReadIndexResp commit=0 ents=0", 3, 2},
		{"hint of another group", g2, appMsg(2, 9, 0), "", 4, 2},
		{"hint again", g1, appMsg(2, 8, 0), "", 5, 2},
	}
	for _, s := range steps {
		h.queueMessage(s.r, s.m)
		if got := outbox(); got != s.wantOutbox {
			t.Fatalf("%s: outbox %q, want %q", s.name, got, s.wantOutbox)
		}
		if m := h.Metrics(); m.CommitHintsHeld != s.held || m.CommitHintsFolded != s.folded {
			t.Fatalf("%s: held %d folded %d, want %d and %d", s.name, m.CommitHintsHeld, m.CommitHintsFolded, s.held, s.folded)
		}
	}

	// Group 2 leaves before the delay ends: its hint is not sent, even if
	// a new replica of it arrives before the delay is over.
	delete(h.mu.groups, 2)
	h.dropHints(2)
	h.mu.groups[2] = &replica{id: 2}
	h.releaseHints()
	if want := []string{"g1->2 MsgApp commit=8 ents=0"}; strings.Join(tr.sent, "; ") != strings.Join(want, "; ") {
		t.Fatalf("released %q, want %q", tr.sent, want)
	}
	if len(h.hints) != 0 {
		t.Fatalf("%d hints still held after release", len(h.hints))
	}
}

// TestCommitHintsReachFollowers runs a real cluster whose followers get no
// heartbeats, so a commit index reaches them only in appends. A lone write
// leaves its commit hint held; if the delay's end did not send it, the
// followers would never apply the write. With hints sent at once
// (CommitHintDelay < 0) they apply it too, holding nothing.
func TestCommitHintsReachFollowers(t *testing.T) {
	for _, delay := range []time.Duration{5 * time.Millisecond, -1} {
		t.Run(fmt.Sprintf("delay=%v", delay), func(t *testing.T) {
			c := newTestCluster(t, 3, 1, func(cfg *Config) {
				fastConfig(cfg)
				cfg.CommitHintDelay = delay
			})
			ld := c.leader(1, 5*time.Second)
			noHeartbeats := func(m transport.Message) bool {
				return m.Msg.GetType() == raftpb.MessageType_MsgHeartbeat
			}
			for _, nd := range c.nodes {
				if nd != ld {
					nd.handler.drop.Store(&noHeartbeats)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			held0 := ld.h().Metrics().CommitHintsHeld
			v, err := c.put(ctx, 1, "k", "v")
			if err != nil {
				t.Fatal(err)
			}
			c.waitApplied(1, v, 10*time.Second)
			held := ld.h().Metrics().CommitHintsHeld - held0
			if delay > 0 && held == 0 {
				t.Fatal("the leader held no commit hint for the write")
			}
			if delay < 0 && held != 0 {
				t.Fatalf("hints disabled, yet %d were held", held)
			}
		})
	}
}

// TestCommitHintsFoldUnderLoad writes to one group from many writers and
// counts raft messages per write: with hints held, most fold into the next
// append, and the cluster sends fewer messages than with hints sent as
// raft emits them.
func TestCommitHintsFoldUnderLoad(t *testing.T) {
	const writers, writes = 16, 2000
	perWrite := map[time.Duration]float64{}
	for _, delay := range []time.Duration{-1, 5 * time.Millisecond} {
		c := newTestCluster(t, 3, 1, func(cfg *Config) {
			fastConfig(cfg)
			cfg.CommitHintDelay = delay
		})
		c.leader(1, 5*time.Second)
		sent := func() (n uint64) {
			for _, nd := range c.nodes {
				n += nd.tr.Metrics().Total.MessagesSent
			}
			return n
		}
		before := sent()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Go(func() {
				for i := range writes / writers {
					if _, err := c.put(ctx, 1, fmt.Sprintf("k%d-%d", w, i), "v"); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		cancel()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		perWrite[delay] = float64(sent()-before) / writes
		var held, folded uint64
		for _, nd := range c.nodes {
			m := nd.h().Metrics()
			held += m.CommitHintsHeld
			folded += m.CommitHintsFolded
		}
		t.Logf("delay %v: %.2f messages per write, %d hints held, %d folded", delay, perWrite[delay], held, folded)
		if delay > 0 && folded == 0 {
			t.Error("no hint folded under load")
		}
		c.stopAll()
	}
	if on, off := perWrite[5*time.Millisecond], perWrite[-1]; on > 0.85*off {
		t.Fatalf("%.2f messages per write with hints held, %.2f without: want at least 15%% fewer", on, off)
	}
}
