package wal

import (
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Storage is one group's view of the WAL. It implements raft.Storage.
type Storage struct {
	g *group
}

var _ raft.Storage = (*Storage)(nil)

type hardState struct{ term, vote, commit uint64 }

// group is the in-memory mirror of one group's durable state. It is updated
// only after the batch that changes the disk has committed, so a reader
// never sees state that is not durable.
type group struct {
	id uint64
	w  *WAL

	mu struct {
		sync.Mutex
		hs                  hardState
		snapIndex, snapTerm uint64
		confState           []byte // marshaled raftpb.ConfState of the snapshot
		lastIndex           uint64
		// cache holds entries [cacheFirst, lastIndex], newest last. It is
		// never modified in place: entries handed to raft stay valid.
		cache      []*raftpb.Entry
		cacheFirst uint64
		cacheBytes int64
	}
}

// appendPlan is what Append decided for one update, before committing.
type appendPlan struct {
	snapshot *raftpb.Snapshot
	// truncateFrom, if non-zero, is the first index of a stale suffix to
	// delete: entries past the new last index that the update replaces.
	truncateFrom uint64
}

// plan validates u against the group's current state and decides which
// stale entries must go. It changes nothing.
func (g *group) plan(u *Update) (appendPlan, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var p appendPlan
	snapIndex, lastIndex := g.mu.snapIndex, g.mu.lastIndex
	if s := u.Snapshot; s != nil && !raft.IsEmptySnap(s) {
		si := s.GetMetadata().GetIndex()
		if si <= snapIndex {
			return p, fmt.Errorf("%w: group %d: snapshot at %d is not newer than the stored one at %d",
				ErrInvalidUpdate, g.id, si, snapIndex)
		}
		p.snapshot = s
		snapIndex, lastIndex = si, si
	}
	if len(u.Entries) == 0 {
		return p, nil
	}
	first := u.Entries[0].GetIndex()
	for i, e := range u.Entries {
		if e.GetIndex() != first+uint64(i) {
			return p, fmt.Errorf("%w: group %d: entries not contiguous at position %d (index %d after %d)",
				ErrInvalidUpdate, g.id, i, e.GetIndex(), first+uint64(i)-1)
		}
	}
	if first <= snapIndex {
		return p, fmt.Errorf("%w: group %d: entry %d is at or below the compaction point %d",
			ErrInvalidUpdate, g.id, first, snapIndex)
	}
	if first > lastIndex+1 {
		return p, fmt.Errorf("%w: group %d: entry %d leaves a gap after last index %d",
			ErrInvalidUpdate, g.id, first, lastIndex)
	}
	newLast := first + uint64(len(u.Entries)) - 1
	if newLast < lastIndex {
		p.truncateFrom = newLast + 1
	}
	return p, nil
}

// apply mirrors a committed update in memory.
func (g *group) apply(u *Update, p *appendPlan, cacheLimit int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := p.snapshot; s != nil {
		md := s.GetMetadata()
		cs, _ := proto.Marshal(raftpb.EnsureConfState(md.GetConfState()))
		g.mu.snapIndex, g.mu.snapTerm, g.mu.confState = md.GetIndex(), md.GetTerm(), cs
		g.mu.lastIndex = md.GetIndex()
		g.resetCacheLocked()
	}
	if hs := u.HardState; hs != nil {
		g.mu.hs = hardState{term: hs.GetTerm(), vote: hs.GetVote(), commit: hs.GetCommit()}
	}
	if len(u.Entries) == 0 {
		return
	}
	first := u.Entries[0].GetIndex()
	g.mu.lastIndex = first + uint64(len(u.Entries)) - 1
	if cacheLimit < 0 {
		g.resetCacheLocked()
		return
	}
	switch {
	case first < g.mu.cacheFirst:
		// The replaced suffix starts below the cache: start the cache over.
		g.mu.cache, g.mu.cacheBytes = nil, 0
		g.mu.cacheFirst = first
	case first < g.mu.cacheFirst+uint64(len(g.mu.cache)):
		// Replace a suffix of the cache. Copy into a new array so that the
		// entries raft may still hold from an earlier Entries call are not
		// overwritten by the append below.
		keep := g.mu.cache[:first-g.mu.cacheFirst]
		g.mu.cache = slices.Clone(keep)
		g.mu.cacheBytes = 0
		for _, e := range keep {
			g.mu.cacheBytes += entrySize(e)
		}
	}
	for _, e := range u.Entries {
		g.mu.cacheBytes += entrySize(e)
	}
	g.mu.cache = append(g.mu.cache, u.Entries...)
	// Evict the oldest entries beyond the budget, keeping at least the
	// newest so that Term(lastIndex) stays cheap.
	n := 0
	for g.mu.cacheBytes > cacheLimit && n < len(g.mu.cache)-1 {
		g.mu.cacheBytes -= entrySize(g.mu.cache[n])
		g.mu.cache[n] = nil
		n++
	}
	g.mu.cache = g.mu.cache[n:]
	g.mu.cacheFirst += uint64(n)
}

func (g *group) compacted(index, term uint64, cs []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if index <= g.mu.snapIndex {
		return
	}
	g.mu.snapIndex, g.mu.snapTerm, g.mu.confState = index, term, cs
	if index >= g.mu.cacheFirst {
		n := min(index-g.mu.cacheFirst+1, uint64(len(g.mu.cache)))
		for _, e := range g.mu.cache[:n] {
			g.mu.cacheBytes -= entrySize(e)
		}
		g.mu.cache = g.mu.cache[n:]
		g.mu.cacheFirst += n
	}
}

func (g *group) resetCacheLocked() {
	g.mu.cache, g.mu.cacheBytes = nil, 0
	g.mu.cacheFirst = g.mu.lastIndex + 1
}

// entrySize is what an entry costs in the cache: its payload plus a fixed
// overhead for the structs, without proto.Size's reflection.
func entrySize(e *raftpb.Entry) int64 { return int64(len(e.GetData())) + 64 }

// InitialState implements raft.Storage. The ConfState is the one recorded
// with the last snapshot or compaction; conf changes after it are replayed
// from the log.
func (s *Storage) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	if err := s.g.w.err(); err != nil {
		return nil, nil, err
	}
	g := s.g
	g.mu.Lock()
	hs, csBytes := g.mu.hs, g.mu.confState
	g.mu.Unlock()
	cs := &raftpb.ConfState{}
	if err := proto.Unmarshal(csBytes, cs); err != nil {
		return nil, nil, fmt.Errorf("wal: group %d: conf state: %w", g.id, err)
	}
	return &raftpb.HardState{Term: &hs.term, Vote: &hs.vote, Commit: &hs.commit}, raftpb.EnsureConfState(cs), nil
}

// HardState returns the stored hard state.
func (s *Storage) HardState() (term, vote, commit uint64) {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	hs := s.g.mu.hs
	return hs.term, hs.vote, hs.commit
}

// FirstIndex implements raft.Storage.
func (s *Storage) FirstIndex() (uint64, error) {
	if err := s.g.w.err(); err != nil {
		return 0, err
	}
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	return s.g.mu.snapIndex + 1, nil
}

// LastIndex implements raft.Storage.
func (s *Storage) LastIndex() (uint64, error) {
	if err := s.g.w.err(); err != nil {
		return 0, err
	}
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	return s.g.mu.lastIndex, nil
}

// Snapshot implements raft.Storage. It carries only the metadata of the
// last compaction point; the state machine supplies the data (and usually
// a newer snapshot) through its own stream.
func (s *Storage) Snapshot() (*raftpb.Snapshot, error) {
	if err := s.g.w.err(); err != nil {
		return nil, err
	}
	s.g.mu.Lock()
	index, term, csBytes := s.g.mu.snapIndex, s.g.mu.snapTerm, s.g.mu.confState
	s.g.mu.Unlock()
	cs := &raftpb.ConfState{}
	if err := proto.Unmarshal(csBytes, cs); err != nil {
		return nil, err
	}
	return &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: &index, Term: &term, ConfState: raftpb.EnsureConfState(cs),
	}}, nil
}

// Term implements raft.Storage.
func (s *Storage) Term(i uint64) (uint64, error) { return s.g.Term(i) }

func (g *group) Term(i uint64) (uint64, error) {
	if err := g.w.err(); err != nil {
		return 0, err
	}
	g.mu.Lock()
	switch {
	case i == g.mu.snapIndex:
		t := g.mu.snapTerm
		g.mu.Unlock()
		return t, nil
	case i < g.mu.snapIndex:
		g.mu.Unlock()
		return 0, raft.ErrCompacted
	case i > g.mu.lastIndex:
		g.mu.Unlock()
		return 0, raft.ErrUnavailable
	case i >= g.mu.cacheFirst:
		t := g.mu.cache[i-g.mu.cacheFirst].GetTerm()
		g.mu.Unlock()
		return t, nil
	}
	g.mu.Unlock()
	v, closer, err := g.w.db.Get(entryKey(g.id, i))
	if err != nil {
		return 0, g.readErr(i, err)
	}
	defer closer.Close()
	term, _, _, err := decodeEntryValue(v)
	return term, err
}

// readErr maps a Pebble read miss to raft's errors: the entry was
// compacted away between the check and the read, or it is missing.
func (g *group) readErr(i uint64, err error) error {
	if err != pebble.ErrNotFound {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if i <= g.mu.snapIndex {
		return raft.ErrCompacted
	}
	return fmt.Errorf("wal: group %d: entry %d missing below last index %d: %w", g.id, i, g.mu.lastIndex, raft.ErrUnavailable)
}

// Entries implements raft.Storage. The returned slice is the caller's; the
// entries in it are shared and must not be modified.
func (s *Storage) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	g := s.g
	if err := g.w.err(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	if lo <= g.mu.snapIndex {
		g.mu.Unlock()
		return nil, raft.ErrCompacted
	}
	if hi > g.mu.lastIndex+1 {
		last := g.mu.lastIndex
		g.mu.Unlock()
		return nil, fmt.Errorf("wal: group %d: entries [%d, %d) beyond last index %d: %w", g.id, lo, hi, last, raft.ErrUnavailable)
	}
	if lo >= hi {
		g.mu.Unlock()
		return nil, nil
	}
	if lo >= g.mu.cacheFirst {
		ents := g.mu.cache[lo-g.mu.cacheFirst : hi-g.mu.cacheFirst]
		g.mu.Unlock()
		ents = limitSize(ents, maxSize)
		// The full slice expression makes an append by raft copy rather
		// than write into the cache.
		return ents[:len(ents):len(ents)], nil
	}
	cacheFirst := g.mu.cacheFirst
	g.mu.Unlock()

	ents, size, err := g.readEntries(lo, min(hi, cacheFirst), maxSize)
	if err != nil {
		return nil, err
	}
	if uint64(len(ents)) < min(hi, cacheFirst)-lo || hi <= cacheFirst {
		return ents, nil
	}
	// Continue from the cache, if it has not moved meanwhile.
	g.mu.Lock()
	defer g.mu.Unlock()
	next := lo + uint64(len(ents))
	if next < g.mu.cacheFirst || hi > g.mu.lastIndex+1 {
		return ents, nil
	}
	for _, e := range g.mu.cache[next-g.mu.cacheFirst : hi-g.mu.cacheFirst] {
		size += uint64(proto.Size(e))
		if size > maxSize {
			break
		}
		ents = append(ents, e)
	}
	return ents, nil
}

// readEntries reads [lo, hi) from Pebble, stopping before maxSize is
// exceeded (but returning at least one entry).
func (g *group) readEntries(lo, hi, maxSize uint64) ([]*raftpb.Entry, uint64, error) {
	klo, khi := entryBounds(g.id, lo, hi)
	it, err := g.w.db.NewIter(&pebble.IterOptions{LowerBound: klo, UpperBound: khi})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	var ents []*raftpb.Entry
	var size uint64
	want := lo
	for ok := it.First(); ok; ok = it.Next() {
		_, index, err := decodeEntryKey(it.Key())
		if err != nil {
			return nil, 0, err
		}
		if index != want {
			return nil, 0, g.readErr(want, pebble.ErrNotFound)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, 0, err
		}
		e, err := decodeEntry(index, v)
		if err != nil {
			return nil, 0, err
		}
		size += uint64(proto.Size(e))
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
		want++
	}
	if err := it.Error(); err != nil {
		return nil, 0, err
	}
	if len(ents) == 0 && lo < hi {
		return nil, 0, g.readErr(lo, pebble.ErrNotFound)
	}
	return ents, size, nil
}

// entryAlloc lets one allocation hold an entry and the fields its proto2
// pointers point at.
type entryAlloc struct {
	e           raftpb.Entry
	term, index uint64
	typ         raftpb.EntryType
}

// decodeEntry builds an entry from a stored value, copying the data out of
// Pebble's buffer.
func decodeEntry(index uint64, v []byte) (*raftpb.Entry, error) {
	term, typ, data, err := decodeEntryValue(v)
	if err != nil {
		return nil, err
	}
	a := &entryAlloc{term: term, index: index, typ: raftpb.EntryType(typ)}
	a.e.Term, a.e.Index, a.e.Type = &a.term, &a.index, &a.typ
	if len(data) > 0 {
		a.e.Data = slices.Clone(data)
	}
	return &a.e, nil
}

// limitSize returns the longest prefix of ents within maxSize bytes (as raft
// counts them), and at least one entry.
func limitSize(ents []*raftpb.Entry, maxSize uint64) []*raftpb.Entry {
	if len(ents) <= 1 || maxSize == ^uint64(0) {
		return ents
	}
	size := uint64(proto.Size(ents[0]))
	for i := 1; i < len(ents); i++ {
		size += uint64(proto.Size(ents[i]))
		if size > maxSize {
			return ents[:i]
		}
	}
	return ents
}
