// Package faultfs wraps a Pebble filesystem so that tests, and a node
// started with a test-only flag, can make chosen file operations fail.
//
// It is errorfs (github.com/cockroachdb/pebble/v2/vfs/errorfs) with one
// gap closed: errorfs does not wrap files that Pebble obtains through
// ReuseForWrite, which is how Pebble recycles its WAL files. Without this
// wrapper, faults stop being injected into the WAL after the first
// memtable rotation, and fsyncs on recycled logs go uncounted.
package faultfs

import (
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// FS injects errors into the operations of the filesystem it wraps.
type FS struct {
	*errorfs.FS
	inj errorfs.Injector
}

// Wrap returns fs with inj consulted before every operation, on every file.
func Wrap(fs vfs.FS, inj errorfs.Injector) *FS {
	return &FS{FS: errorfs.Wrap(fs, inj), inj: inj}
}

// ReuseForWrite implements vfs.FS, wrapping the reused file as errorfs
// wraps created ones, under its new name.
func (fs *FS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		return nil, err
	}
	return errorfs.WrapFile(f, pathInjector{path: newname, inj: fs.inj}), nil
}

// pathInjector fills in the file's path, which errorfs.WrapFile leaves
// empty, so that injectors can match on it.
type pathInjector struct {
	path string
	inj  errorfs.Injector
}

func (p pathInjector) String() string { return p.inj.String() }

func (p pathInjector) MaybeError(op errorfs.Op) error {
	if op.Path == "" {
		op.Path = p.path
	}
	return p.inj.MaybeError(op)
}
