package wal

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Options configure a WAL. The zero value is usable: Open fills in every
// default. Open never modifies the Options it is given.
type Options struct {
	// FS is the filesystem the WAL lives on. Tests inject an in-memory or
	// crashable filesystem, or one that fails writes.
	//
	// Default: vfs.Default (the real disk).
	FS vfs.FS

	// Logger receives the WAL's own log lines and Pebble's.
	//
	// Default: a logger that discards everything.
	Logger *slog.Logger

	// MemTableSize is the size of each Pebble memtable. The raft log is
	// append-then-delete data with a short life, so a large memtable lets
	// most entries be truncated before they are ever flushed to an sstable.
	//
	// Default: 32 MiB. Minimum: 1 MiB.
	MemTableSize uint64

	// CacheSize is the Pebble block cache, used only when a follower far
	// behind makes the leader read entries no longer in the entry cache.
	//
	// Default: 16 MiB.
	CacheSize int64

	// EntryCacheSize bounds, per group, the bytes of recent entries kept in
	// memory so that raft's reads for replication and apply do not touch
	// Pebble. Negative disables the cache.
	//
	// Default: 4 MiB.
	EntryCacheSize int64

	// unsafeNoSync commits appends without fsync. It exists only so that a
	// test can prove the crash test detects a WAL that skips fsync; it is not
	// reachable from outside the package.
	unsafeNoSync bool
}

const (
	defaultMemTableSize   = 32 << 20
	minMemTableSize       = 1 << 20
	defaultCacheSize      = 16 << 20
	defaultEntryCacheSize = 4 << 20
)

// EnsureDefaults returns a copy of o (or of the zero Options when o is nil)
// with every unset field given its default.
func (o *Options) EnsureDefaults() *Options {
	var n Options
	if o != nil {
		n = *o
	}
	if n.FS == nil {
		n.FS = vfs.Default
	}
	if n.Logger == nil {
		n.Logger = slog.New(slog.DiscardHandler)
	}
	if n.MemTableSize == 0 {
		n.MemTableSize = defaultMemTableSize
	}
	if n.CacheSize == 0 {
		n.CacheSize = defaultCacheSize
	}
	if n.EntryCacheSize == 0 {
		n.EntryCacheSize = defaultEntryCacheSize
	}
	return &n
}

// Validate reports every problem with o at once.
func (o *Options) Validate() error {
	var errs []error
	if o.FS == nil {
		errs = append(errs, errors.New("FS is nil"))
	}
	if o.MemTableSize < minMemTableSize {
		errs = append(errs, fmt.Errorf("MemTableSize %d is below the minimum %d", o.MemTableSize, minMemTableSize))
	}
	if o.MemTableSize >= 4<<30 {
		errs = append(errs, fmt.Errorf("MemTableSize %d must be below 4 GiB", o.MemTableSize))
	}
	if o.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("CacheSize %d is negative", o.CacheSize))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wal: invalid options: %w", err)
	}
	return nil
}
