package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// OpKind is the kind of an Op. The zero OpKind is invalid so that an Op
// nobody filled in is rejected rather than applied as something.
type OpKind uint8

const (
	// OpPut sets Key to Value.
	OpPut OpKind = iota + 1
	// OpDelete removes Key. Deleting an absent key writes nothing.
	OpDelete
	// OpCompareAndSet sets Key to Value iff the key's current version equals
	// Expect; Expect 0 means "the key must not exist".
	OpCompareAndSet
	// OpCompareAndDelete removes Key iff its current version equals Expect.
	// Expect 0 succeeds iff the key is absent, and then writes nothing.
	OpCompareAndDelete
)

func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "Put"
	case OpDelete:
		return "Delete"
	case OpCompareAndSet:
		return "CompareAndSet"
	case OpCompareAndDelete:
		return "CompareAndDelete"
	default:
		return fmt.Sprintf("OpKind(%d)", uint8(k))
	}
}

// Op is one operation of a raft entry.
type Op struct {
	Kind OpKind
	// Key is the user key; it must be non-empty and at most
	// Options.MaxKeySize bytes.
	Key []byte
	// Value is the new value of OpPut and OpCompareAndSet (at most
	// Options.MaxValueSize bytes, may be empty). It must be empty for the
	// delete kinds.
	Value []byte
	// Expect is the version the compare kinds require. It must be 0 for
	// OpPut and OpDelete.
	Expect uint64
}

// Result is the outcome of one Op.
type Result struct {
	// Version is the entry index if the op wrote (for a delete that removed
	// the key: the index of the deleting entry); otherwise the key's current
	// version, 0 if it is absent. A failed compare reports the version that
	// did not match.
	Version uint64
	// OK is false only when a compare failed.
	OK bool
}

// maxBatchBytes bounds the Pebble representation of a Batch, far below
// Pebble's 4 GiB limit, past which Pebble panics instead of returning an
// error.
const maxBatchBytes = 1 << 30

// Batch collects the applies of many entries, across many partitions, into
// one Pebble batch and one commit. A Batch is used by one goroutine. Its ops
// read the committed state plus the Batch's own earlier writes.
//
// A Batch must be closed; Close after Commit is fine and required.
type Batch struct {
	e  *Engine
	pb *pebble.Batch

	parts map[uint64]*batchPart
	// overlay maps every data key this Batch wrote to its version, 0 if the
	// Batch deleted it, so that later ops read their own writes without a
	// Pebble indexed batch (whose skiplist costs on every write, while most
	// entries are plain puts that never read).
	overlay map[string]uint64

	// Scratch reused across Apply calls.
	keyBuf []byte
	plan   []action
	undo   []undoRec

	// err, once set, makes Apply, SetConfState and Commit fail: the Pebble
	// batch may hold part of an entry, or Commit was already attempted.
	err       error
	committed bool
	closed    bool
}

// batchPart is a Batch's view of one partition.
type batchPart struct {
	// gen is the partition's partState.gen when the Batch first touched it
	// (0 for a partition without state); Commit refuses if it changed.
	gen uint64
	// base is the partition's applied index at that time.
	base uint64
	// index and term are those of the last entry applied in this Batch;
	// applied says whether there was one.
	index, term uint64
	applied     bool
	conf        []byte
	confSet     bool
}

func (bp *batchPart) lastIndex() uint64 {
	if bp.applied {
		return bp.index
	}
	return bp.base
}

type action uint8

const (
	actNone action = iota
	actSet
	actDelete
)

type undoRec struct {
	key     string
	old     uint64
	existed bool
}

// NewBatch returns an empty Batch.
func (e *Engine) NewBatch() *Batch {
	return &Batch{
		e:       e,
		pb:      e.db.NewBatch(),
		parts:   make(map[uint64]*batchPart, 4),
		overlay: make(map[string]uint64),
	}
}

func (b *Batch) usable() error {
	switch {
	case b.closed:
		return fmt.Errorf("%w: batch closed", ErrClosed)
	case b.committed:
		return fmt.Errorf("%w: batch already committed", ErrClosed)
	}
	return b.err
}

// validateOps checks what can be checked without reading state, so a bad
// entry is rejected before it touches the Batch.
func (e *Engine) validateOps(ops []Op) error {
	for i := range ops {
		op := &ops[i]
		var problem string
		switch {
		case op.Kind < OpPut || op.Kind > OpCompareAndDelete:
			problem = "unknown kind " + op.Kind.String()
		case len(op.Key) == 0:
			problem = "empty key"
		case len(op.Key) > e.opts.MaxKeySize:
			problem = fmt.Sprintf("key of %d bytes exceeds %d", len(op.Key), e.opts.MaxKeySize)
		case len(op.Value) > e.opts.MaxValueSize:
			problem = fmt.Sprintf("value of %d bytes exceeds %d", len(op.Value), e.opts.MaxValueSize)
		case (op.Kind == OpDelete || op.Kind == OpCompareAndDelete) && len(op.Value) != 0:
			problem = op.Kind.String() + " with a value"
		case (op.Kind == OpPut || op.Kind == OpDelete) && op.Expect != 0:
			problem = op.Kind.String() + " with Expect set"
		}
		if problem != "" {
			return fmt.Errorf("%w: op %d (%s): %s", ErrInvalidOp, i, op.Kind, problem)
		}
	}
	return nil
}

// part returns the Batch's view of partition p without adding it to
// b.parts, so a failed Apply leaves no trace; isNew reports whether the
// caller must add it on success.
func (b *Batch) part(p uint64) (bp *batchPart, isNew bool) {
	if bp := b.parts[p]; bp != nil {
		return bp, false
	}
	bp = &batchPart{}
	b.e.mu.Lock()
	if ps := b.e.mu.parts[p]; ps != nil {
		bp.gen, bp.base = ps.gen, ps.applied.Index
	}
	b.e.mu.Unlock()
	return bp, true
}

// Apply applies the ops of the raft entry (partition, index, term) and
// appends one Result per op to dst. An entry without ops still advances the
// applied index. An index not above the partition's applied index (counting
// entries earlier in this Batch) returns ErrStaleIndex; invalid ops return an
// error wrapping ErrInvalidOp; an entry that does not fit in the Batch any
// more returns ErrBatchFull. On any error nothing is changed and dst is
// returned as it was.
//
// Apply copies what it keeps: ops and the slices they point to may be reused
// as soon as it returns. The results are final only once Commit succeeds.
func (b *Batch) Apply(partition, index, term uint64, ops []Op, dst []Result) ([]Result, error) {
	if err := b.usable(); err != nil {
		return dst, err
	}
	e := b.e
	if err := e.validateOps(ops); err != nil {
		return dst, err
	}
	if err := e.enter(); err != nil {
		return dst, err
	}
	defer e.closeMu.RUnlock()

	bp, isNew := b.part(partition)
	if last := bp.lastIndex(); index <= last {
		return dst, fmt.Errorf("%w: partition %d: entry %d, applied %d", ErrStaleIndex, partition, index, last)
	}
	if need := entryBytes(ops); need > e.maxBatchBytes {
		return dst, fmt.Errorf("%w: entry of about %d bytes exceeds the batch limit %d", ErrInvalidOp, need, e.maxBatchBytes)
	} else if b.pb.Len()+need > e.maxBatchBytes {
		return dst, fmt.Errorf("%w: %d bytes, entry needs %d more", ErrBatchFull, b.pb.Len(), need)
	}

	// Phase 1 decides every op, reading through the overlay, and records the
	// decisions in the overlay with an undo log. Reads can fail; nothing has
	// touched the Pebble batch yet, so undoing the overlay undoes everything.
	n0 := len(dst)
	b.plan = b.plan[:0]
	b.undo = b.undo[:0]
	for i := range ops {
		op := &ops[i]
		b.keyBuf = appendDataKey(b.keyBuf[:0], partition, op.Key)
		var cur uint64
		if op.Kind != OpPut {
			var err error
			if cur, err = b.version(b.keyBuf); err != nil {
				b.rollback()
				return dst[:n0], err
			}
		}
		act, res := actNone, Result{Version: cur, OK: true}
		switch op.Kind {
		case OpPut:
			act = actSet
		case OpDelete:
			if cur != 0 {
				act = actDelete
			}
		case OpCompareAndSet:
			if cur == op.Expect {
				act = actSet
			} else {
				res.OK = false
			}
		case OpCompareAndDelete:
			if cur != op.Expect {
				res.OK = false
			} else if cur != 0 {
				act = actDelete
			}
		}
		switch act {
		case actSet:
			b.setOverlay(b.keyBuf, index)
			res.Version = index
		case actDelete:
			b.setOverlay(b.keyBuf, 0)
			res.Version = index
		}
		b.plan = append(b.plan, act)
		dst = append(dst, res)
	}

	// Phase 2 writes. Pebble copies keys and values into the batch.
	for i, act := range b.plan {
		op := &ops[i]
		var err error
		switch act {
		case actSet:
			d := b.pb.SetDeferred(keyHeaderLen+len(op.Key), versionLen+len(op.Value))
			binary.BigEndian.PutUint64(d.Key, partition)
			d.Key[partitionLen] = kindData
			copy(d.Key[keyHeaderLen:], op.Key)
			binary.BigEndian.PutUint64(d.Value, index)
			copy(d.Value[versionLen:], op.Value)
			err = d.Finish()
		case actDelete:
			b.keyBuf = appendDataKey(b.keyBuf[:0], partition, op.Key)
			err = b.pb.Delete(b.keyBuf, nil)
		}
		if err != nil {
			// The Pebble batch holds part of the entry and cannot be
			// unwound: the whole Batch is void.
			b.err = fmt.Errorf("engine: batch unusable after failed write: %w", err)
			return dst[:n0], err
		}
	}

	if isNew {
		b.parts[partition] = bp
	}
	bp.index, bp.term, bp.applied = index, term, true
	return dst, nil
}

// entryBytes bounds what an entry adds to the Pebble batch: per op a
// record header (kind and two varint lengths) and the encoded key and value,
// plus the partition's applied state written at Commit.
func entryBytes(ops []Op) int {
	const recordOverhead = 1 + 2*binary.MaxVarintLen32
	n := recordOverhead + keyHeaderLen + appliedLen
	for i := range ops {
		n += recordOverhead + keyHeaderLen + len(ops[i].Key) + versionLen + len(ops[i].Value)
	}
	return n
}

// version returns the version of data key k as this Batch sees it.
func (b *Batch) version(k []byte) (uint64, error) {
	if v, ok := b.overlay[string(k)]; ok {
		return v, nil
	}
	v, closer, err := b.e.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	version, _, err := decodeDataValue(v)
	return version, err
}

func (b *Batch) setOverlay(k []byte, version uint64) {
	ks := string(k)
	old, existed := b.overlay[ks]
	b.undo = append(b.undo, undoRec{key: ks, old: old, existed: existed})
	b.overlay[ks] = version
}

func (b *Batch) rollback() {
	for i := len(b.undo) - 1; i >= 0; i-- {
		u := b.undo[i]
		if u.existed {
			b.overlay[u.key] = u.old
		} else {
			delete(b.overlay, u.key)
		}
	}
	b.undo = b.undo[:0]
}

// SetConfState records the partition's raft ConfState (marshaled by the
// caller, opaque to the engine) to be persisted and published with this
// Batch. It copies cs. The Batch's Commit then syncs: raft restarts from
// the configuration stored here, and must not come back more than one
// configuration change behind after a crash (a node that bootstrapped a
// group alone and then added two voters would come back as its only voter,
// able to elect itself). Configuration changes are rare; the fsync is not.
// A ConfState over Options.MaxConfStateSize returns an error wrapping
// ErrInvalidOp and changes nothing.
func (b *Batch) SetConfState(partition uint64, cs []byte) error {
	if err := b.usable(); err != nil {
		return err
	}
	if len(cs) > b.e.opts.MaxConfStateSize {
		return fmt.Errorf("%w: conf state of %d bytes exceeds %d", ErrInvalidOp, len(cs), b.e.opts.MaxConfStateSize)
	}
	var err error
	if len(cs) == 0 {
		err = b.pb.Delete(confStateKey(partition), nil)
	} else {
		err = b.pb.Set(confStateKey(partition), cs, nil)
	}
	if err != nil {
		b.err = fmt.Errorf("engine: batch unusable after failed write: %w", err)
		return err
	}
	bp, isNew := b.part(partition)
	if isNew {
		b.parts[partition] = bp
	}
	bp.conf, bp.confSet = nil, true
	if len(cs) > 0 {
		bp.conf = bytes.Clone(cs)
	}
	return nil
}

// Commit writes the Batch without waiting for an fsync (see the recovery
// contract in the package documentation) and publishes the new applied
// states. A Batch that sets a ConfState is the exception: it is synced
// before Commit returns (see SetConfState). It returns ErrBatchConflict if
// a partition changed since the Batch first read it. After any error the
// Batch is void; a storage error also stops the engine (ErrFailStop).
func (b *Batch) Commit() (err error) {
	if err := b.usable(); err != nil {
		return err
	}
	e := b.e
	if err := e.enter(); err != nil {
		return err
	}
	defer e.closeMu.RUnlock()
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	defer func() {
		if err != nil && b.err == nil {
			b.err = fmt.Errorf("engine: batch commit failed: %w", err)
		}
	}()

	e.mu.Lock()
	for p, bp := range b.parts {
		var gen uint64
		if ps := e.mu.parts[p]; ps != nil {
			gen = ps.gen
		}
		if gen != bp.gen {
			e.mu.Unlock()
			return fmt.Errorf("%w: partition %d", ErrBatchConflict, p)
		}
	}
	e.mu.Unlock()

	for p, bp := range b.parts {
		if bp.applied {
			if err := b.pb.Set(appliedStateKey(p), encodeAppliedState(bp.index, bp.term), nil); err != nil {
				return err
			}
		}
	}
	if !b.pb.Empty() {
		if err := b.commitPebble(); err != nil {
			return err
		}
	}

	confSet := false
	e.mu.Lock()
	for p, bp := range b.parts {
		ps := e.mu.parts[p]
		if ps == nil {
			ps = &partState{born: e.nextSeqLocked()}
			e.mu.parts[p] = ps
		}
		if bp.applied {
			ps.applied.Index, ps.applied.Term = bp.index, bp.term
		}
		if bp.confSet {
			ps.applied.ConfState = bp.conf
			confSet = true
		}
		ps.gen = e.nextSeqLocked()
	}
	e.mu.Unlock()
	b.committed = true
	if confSet {
		return e.syncAndPublish()
	}
	return nil
}

func (b *Batch) commitPebble() (err error) {
	pb := b.pb
	// A batch whose commit failed may still be referenced by Pebble's commit
	// pipeline; never hand it back to Pebble's pool.
	b.pb = nil
	defer b.e.recoverFatal(&err)
	if err := pb.Commit(pebble.NoSync); err != nil {
		return b.e.fail(err)
	}
	b.pb = pb
	return nil
}

// Close releases the Batch. It discards the Batch if it was not committed.
func (b *Batch) Close() {
	if b.closed {
		return
	}
	b.closed = true
	if b.pb != nil {
		_ = b.pb.Close()
		b.pb = nil
	}
	b.overlay, b.parts = nil, nil
}

// Apply applies one entry in its own Batch and commits it.
func (e *Engine) Apply(partition, index, term uint64, ops []Op) ([]Result, error) {
	b := e.NewBatch()
	defer b.Close()
	res, err := b.Apply(partition, index, term, ops, make([]Result, 0, len(ops)))
	if err != nil {
		return nil, err
	}
	if err := b.Commit(); err != nil {
		return nil, err
	}
	return res, nil
}
