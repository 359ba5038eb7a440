package wal

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

func newEntry(index, term uint64, data []byte) *raftpb.Entry {
	typ := raftpb.EntryType_EntryNormal
	return &raftpb.Entry{Index: &index, Term: &term, Type: &typ, Data: data}
}

func newHardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: &term, Vote: &vote, Commit: &commit}
}

func newSnapshot(index, term uint64, voters ...uint64) *raftpb.Snapshot {
	return &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: &index, Term: &term, ConfState: raftpb.EnsureConfState(&raftpb.ConfState{Voters: voters}),
	}}
}

// entryData is the payload the scripts give every entry, so that a read
// returning the wrong entry's data is caught.
func entryData(index, term uint64) []byte { return fmt.Appendf(nil, "i%d.t%d", index, term) }

// parseEntries parses "1/1,2/1,3/2" (index/term pairs).
func parseEntries(s string) ([]*raftpb.Entry, error) {
	var ents []*raftpb.Entry
	for _, f := range strings.Split(s, ",") {
		it := strings.Split(f, "/")
		if len(it) != 2 {
			return nil, fmt.Errorf("bad entry %q", f)
		}
		i, err1 := strconv.ParseUint(it[0], 10, 64)
		tm, err2 := strconv.ParseUint(it[1], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		ents = append(ents, newEntry(i, tm, entryData(i, tm)))
	}
	return ents, nil
}

func fmtEntries(ents []*raftpb.Entry) string {
	var parts []string
	for _, e := range ents {
		s := fmt.Sprintf("%d/%d", e.GetIndex(), e.GetTerm())
		if string(e.GetData()) != string(entryData(e.GetIndex(), e.GetTerm())) {
			s += fmt.Sprintf("(bad data %q)", e.GetData())
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, " ")
}

func fmtErr(err error) string {
	switch {
	case errors.Is(err, raft.ErrCompacted):
		return "error: ErrCompacted"
	case errors.Is(err, raft.ErrUnavailable):
		return "error: ErrUnavailable"
	case errors.Is(err, ErrInvalidUpdate):
		return "error: ErrInvalidUpdate"
	case errors.Is(err, ErrFailed):
		return "error: ErrFailed"
	}
	return "error: " + err.Error()
}

// TestStorage runs the datadriven scripts in testdata/storage with three
// entry-cache sizes: the default (reads from memory), disabled (every read
// from Pebble), and tiny (reads that straddle Pebble and the cache). The
// answers must not depend on it.
func TestStorage(t *testing.T) {
	for _, cache := range []struct {
		name string
		size int64
	}{{"cache", 0}, {"nocache", -1}, {"tinycache", 200}} {
		t.Run(cache.name, func(t *testing.T) {
			datadriven.Walk(t, "testdata/storage", func(t *testing.T, path string) {
				fs := vfs.NewMem()
				open := func() *WAL {
					w, err := Open("wal", &Options{FS: fs, EntryCacheSize: cache.size})
					if err != nil {
						t.Fatal(err)
					}
					return w
				}
				w := open()
				defer func() { w.Close() }()
				datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
					return runStorageCmd(t, d, &w, open)
				})
			})
		})
	}
}

func runStorageCmd(t *testing.T, d *datadriven.TestData, wp **WAL, open func() *WAL) string {
	w := *wp
	var g uint64
	d.MaybeScanArgs(t, "g", &g)
	st, err := w.Storage(g)
	if err != nil && d.Cmd != "reopen" {
		return fmtErr(err)
	}
	switch d.Cmd {
	case "append":
		// append g=<group> [ents=i/t,...] [hs=term,vote,commit] [snap=index,term]; several
		// groups in one call are given as extra lines "g=<group> ents=...".
		lines := []string{strings.TrimSpace(d.FullCmd()[len("append"):])}
		if d.Input != "" {
			lines = append(lines, strings.Split(d.Input, "\n")...)
		}
		var ups []Update
		for _, line := range lines {
			u := Update{}
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "g":
					u.Group, _ = strconv.ParseUint(v, 10, 64)
				case "ents":
					ents, err := parseEntries(v)
					if err != nil {
						d.Fatalf(t, "%v", err)
					}
					u.Entries = ents
				case "hs":
					var tm, vote, c uint64
					fmt.Sscanf(v, "%d,%d,%d", &tm, &vote, &c)
					u.HardState = newHardState(tm, vote, c)
				case "snap":
					var i, tm uint64
					fmt.Sscanf(v, "%d,%d", &i, &tm)
					u.Snapshot = newSnapshot(i, tm, 1, 2, 3)
				default:
					d.Fatalf(t, "unknown arg %q", k)
				}
			}
			ups = append(ups, u)
		}
		if err := w.Append(ups); err != nil {
			return fmtErr(err)
		}
		return "ok"
	case "entries":
		var lo, hi uint64
		maxSize := uint64(1 << 62)
		d.ScanArgs(t, "lo", &lo)
		d.ScanArgs(t, "hi", &hi)
		d.MaybeScanArgs(t, "max", &maxSize)
		ents, err := st.Entries(lo, hi, maxSize)
		if err != nil {
			return fmtErr(err)
		}
		// The caller owns the slice: appending to it must not corrupt the
		// storage (checked by reading again).
		_ = append(ents, newEntry(999, 999, nil))
		again, err := st.Entries(lo, hi, maxSize)
		if err != nil || fmtEntries(again) != fmtEntries(ents) {
			d.Fatalf(t, "second read differs: %s vs %s (%v)", fmtEntries(again), fmtEntries(ents), err)
		}
		return fmtEntries(ents)
	case "term":
		var i uint64
		d.ScanArgs(t, "i", &i)
		tm, err := st.Term(i)
		if err != nil {
			return fmtErr(err)
		}
		return strconv.FormatUint(tm, 10)
	case "state":
		first, err1 := st.FirstIndex()
		last, err2 := st.LastIndex()
		hs, cs, err3 := st.InitialState()
		snap, err4 := st.Snapshot()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return fmtErr(err)
		}
		return fmt.Sprintf("first=%d last=%d hs=%d,%d,%d snap=%d,%d voters=%v",
			first, last, hs.GetTerm(), hs.GetVote(), hs.GetCommit(),
			snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm(), cs.GetVoters())
	case "compact":
		var i uint64
		d.ScanArgs(t, "i", &i)
		if err := w.Compact(g, i, &raftpb.ConfState{Voters: []uint64{4, 5, 6}}); err != nil {
			return fmtErr(err)
		}
		return "ok"
	case "delete-group":
		if err := w.DeleteGroup(g); err != nil {
			return fmtErr(err)
		}
		return "ok"
	case "groups":
		ids, err := w.Groups()
		if err != nil {
			return fmtErr(err)
		}
		return fmt.Sprint(ids)
	case "reopen":
		if err := w.Close(); err != nil {
			return fmtErr(err)
		}
		*wp = open()
		return "ok"
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}
