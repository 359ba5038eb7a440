package wal

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// The crash and fault tests drive a WAL with a random but raft-like
// workload and keep a model of what it must hold after each operation.

type entMeta struct{ index, term uint64 }

type groupModel struct {
	snapIndex, snapTerm uint64
	ents                []entMeta // contiguous from snapIndex+1
	term, vote, commit  uint64
}

func (g *groupModel) last() uint64 { return g.snapIndex + uint64(len(g.ents)) }

func (g *groupModel) clone() *groupModel {
	c := *g
	c.ents = slices.Clone(g.ents)
	return &c
}

type walModel map[uint64]*groupModel

func (m walModel) clone() walModel {
	c := make(walModel, len(m))
	for id, g := range m {
		c[id] = g.clone()
	}
	return c
}

// modelData is the payload of an entry: derived from its identity, with a
// length that varies so that blocks and batches have different shapes.
func modelData(group, index, term uint64) []byte {
	n := int((group*31+index*17+term*7)%200) + 8
	b := make([]byte, 0, n)
	b = fmt.Appendf(b, "g%d.i%d.t%d.", group, index, term)
	for len(b) < n {
		b = append(b, byte('a'+len(b)%26))
	}
	return b
}

// op is one WAL call: an Append or a Compact.
type op struct {
	updates []Update
	compact *struct{ group, index uint64 }
}

// workload generates raft-like operations and applies them to a model.
type workload struct {
	rng    *rand.Rand
	groups int
	m      walModel
}

func newWorkload(seed uint64, groups int) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), groups: groups, m: walModel{}}
}

// next returns the next operation and the model after it.
func (wl *workload) next() (op, walModel) {
	m := wl.m.clone()
	r := wl.rng
	if r.IntN(100) < 15 {
		// Compact some group below its commit index, as the state machine
		// allows once it has synced.
		for _, id := range slices.Sorted(maps.Keys(m)) {
			g := m[id]
			if g.commit > g.snapIndex && r.IntN(2) == 0 {
				idx := g.snapIndex + 1 + r.Uint64N(g.commit-g.snapIndex)
				t := g.ents[idx-g.snapIndex-1].term
				g.ents = g.ents[idx-g.snapIndex:]
				g.snapIndex, g.snapTerm = idx, t
				wl.m = m
				return op{compact: &struct{ group, index uint64 }{id, idx}}, m
			}
		}
	}
	var o op
	for _, id := range r.Perm(wl.groups)[:1+r.IntN(min(4, wl.groups))] {
		gid := uint64(id) + 1
		g, ok := m[gid]
		if !ok {
			g = &groupModel{term: 1}
			m[gid] = g
		}
		u := Update{Group: gid}
		if r.IntN(100) < 3 {
			// A snapshot from the leader, ahead of our log.
			g.term++
			g.snapIndex, g.snapTerm = g.last()+1+r.Uint64N(5), g.term
			g.ents = nil
			g.commit = g.snapIndex
			u.Snapshot = newSnapshot(g.snapIndex, g.snapTerm, 1, 2, 3)
		}
		start := g.last() + 1
		n := r.IntN(6)
		if floor := max(g.commit, g.snapIndex); r.IntN(100) < 10 && g.last() > floor {
			// A new leader overwrites an uncommitted suffix, which always
			// comes with at least one entry.
			g.term++
			start = floor + 1 + r.Uint64N(g.last()-floor)
			g.ents = g.ents[:start-g.snapIndex-1]
			n = 1 + r.IntN(5)
		}
		for i := range uint64(n) {
			idx := start + i
			u.Entries = append(u.Entries, newEntry(idx, g.term, modelData(gid, idx, g.term)))
			g.ents = append(g.ents, entMeta{idx, g.term})
		}
		if r.IntN(100) < 5 {
			g.vote = uint64(r.IntN(3) + 1)
		}
		if g.last() > g.commit {
			g.commit += r.Uint64N(g.last() - g.commit + 1)
		}
		u.HardState = newHardState(g.term, g.vote, g.commit)
		o.updates = append(o.updates, u)
	}
	wl.m = m
	return o, m
}

func (o op) apply(w *WAL) error {
	if o.compact != nil {
		return w.Compact(o.compact.group, o.compact.index, &raftpb.ConfState{Voters: []uint64{1, 2, 3}})
	}
	return w.Append(o.updates)
}

// diff returns why the WAL's contents differ from m, or nil.
func diff(w *WAL, m walModel) error {
	ids, err := w.Groups()
	if err != nil {
		return err
	}
	want := slices.Sorted(maps.Keys(m))
	if !slices.Equal(ids, want) {
		return fmt.Errorf("groups %v, want %v", ids, want)
	}
	for _, id := range want {
		g := m[id]
		st, err := w.Storage(id)
		if err != nil {
			return err
		}
		first, _ := st.FirstIndex()
		last, _ := st.LastIndex()
		if first != g.snapIndex+1 || last != g.last() {
			return fmt.Errorf("group %d: log [%d,%d], want [%d,%d]", id, first, last, g.snapIndex+1, g.last())
		}
		hs, _, err := st.InitialState()
		if err != nil {
			return err
		}
		if hs.GetTerm() != g.term || hs.GetVote() != g.vote || hs.GetCommit() != g.commit {
			return fmt.Errorf("group %d: hard state %d/%d/%d, want %d/%d/%d", id,
				hs.GetTerm(), hs.GetVote(), hs.GetCommit(), g.term, g.vote, g.commit)
		}
		if hs.GetCommit() > last {
			return fmt.Errorf("group %d: commit %d beyond last index %d", id, hs.GetCommit(), last)
		}
		if t, err := st.Term(g.snapIndex); err != nil || t != g.snapTerm {
			return fmt.Errorf("group %d: term at snapshot %d = %d (%v), want %d", id, g.snapIndex, t, err, g.snapTerm)
		}
		if _, err := st.Term(g.snapIndex + uint64(len(g.ents)) + 1); !errors.Is(err, raft.ErrUnavailable) {
			return fmt.Errorf("group %d: term past the end: %v, want ErrUnavailable", id, err)
		}
		if len(g.ents) == 0 {
			continue
		}
		ents, err := st.Entries(first, last+1, 1<<62)
		if err != nil {
			return fmt.Errorf("group %d: entries: %w", id, err)
		}
		if len(ents) != len(g.ents) {
			return fmt.Errorf("group %d: %d entries, want %d", id, len(ents), len(g.ents))
		}
		for i, e := range ents {
			wantE := g.ents[i]
			if e.GetIndex() != wantE.index || e.GetTerm() != wantE.term ||
				string(e.GetData()) != string(modelData(id, wantE.index, wantE.term)) {
				return fmt.Errorf("group %d: entry %d is %d/%d, want %d/%d", id, i, e.GetIndex(), e.GetTerm(), wantE.index, wantE.term)
			}
		}
	}
	return nil
}
