package engine

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Hard caps on the configurable limits. They keep a single record far below
// Pebble's 4 GiB batch limit and keep a hostile snapshot stream from asking
// for absurd allocations even on a misconfigured node.
const (
	maxMaxKeySize       = 1 << 20 // 1 MiB
	maxMaxValueSize     = 1 << 30 // 1 GiB
	maxMaxConfStateSize = 1 << 30 // 1 GiB
	minMemTableSize     = 1 << 20 // 1 MiB: smaller only produces tiny sstables
	maxMemTableSize     = 4<<30 - 1
)

// Options configures an Engine. The zero value is valid: every zero field is
// replaced by its documented default in EnsureDefaults.
type Options struct {
	// FS is the file system the engine reads and writes, including the
	// staging files of received snapshots. Default: vfs.Default.
	FS vfs.FS

	// Logger receives the engine's and Pebble's log messages. Default: a
	// logger that discards everything.
	Logger *slog.Logger

	// MemTableSize is the size of one Pebble memtable in bytes.
	// Default: 64 MiB.
	MemTableSize uint64

	// CacheSize is the memory, in bytes, for Pebble's block cache: the
	// sstable blocks kept in memory. Pebble accounts its memtables in the
	// same cache, so the engine makes the cache larger by the memtables'
	// limit (MemTableSize times Pebble's MemTableStopWritesThreshold, 2):
	// the engine's memory is about CacheSize + 2*MemTableSize.
	// Default: 64 MiB.
	CacheSize int64

	// MaxKeySize is the largest user key, in bytes, that Apply accepts and
	// that a snapshot stream may carry. Every node of a cluster must use the
	// same value, and the layer that validates proposals must admit no more,
	// otherwise one replica could reject an entry another applied.
	// Default: 64 KiB.
	MaxKeySize int

	// MaxValueSize is the largest value, in bytes, that Apply accepts and that
	// a snapshot stream may carry. The same rule as MaxKeySize applies.
	// Default: 64 MiB.
	MaxValueSize int

	// MaxConfStateSize is the largest ConfState, in bytes, that SetConfState
	// accepts and that a snapshot stream may carry. Default: 1 MiB.
	MaxConfStateSize int
}

// EnsureDefaults replaces zero fields with their defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 64 << 20
	}
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
	if o.MaxKeySize == 0 {
		o.MaxKeySize = 64 << 10
	}
	if o.MaxValueSize == 0 {
		o.MaxValueSize = 64 << 20
	}
	if o.MaxConfStateSize == 0 {
		o.MaxConfStateSize = 1 << 20
	}
	return o
}

// Validate reports every invalid field, joined. It expects EnsureDefaults to
// have run: a zero field is reported as invalid.
func (o *Options) Validate() error {
	var errs []error
	if o.FS == nil {
		errs = append(errs, errors.New("engine: Options.FS is nil"))
	}
	if o.Logger == nil {
		errs = append(errs, errors.New("engine: Options.Logger is nil"))
	}
	if o.MemTableSize < minMemTableSize || o.MemTableSize > maxMemTableSize {
		errs = append(errs, fmt.Errorf("engine: Options.MemTableSize %d out of range [%d, %d]",
			o.MemTableSize, minMemTableSize, maxMemTableSize))
	}
	if o.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("engine: Options.CacheSize %d is negative", o.CacheSize))
	}
	if o.MaxKeySize <= 0 || o.MaxKeySize > maxMaxKeySize {
		errs = append(errs, fmt.Errorf("engine: Options.MaxKeySize %d out of range [1, %d]",
			o.MaxKeySize, maxMaxKeySize))
	}
	if o.MaxValueSize <= 0 || o.MaxValueSize > maxMaxValueSize {
		errs = append(errs, fmt.Errorf("engine: Options.MaxValueSize %d out of range [1, %d]",
			o.MaxValueSize, maxMaxValueSize))
	}
	if o.MaxConfStateSize <= 0 || o.MaxConfStateSize > maxMaxConfStateSize {
		errs = append(errs, fmt.Errorf("engine: Options.MaxConfStateSize %d out of range [1, %d]",
			o.MaxConfStateSize, maxMaxConfStateSize))
	}
	return errors.Join(errs...)
}
