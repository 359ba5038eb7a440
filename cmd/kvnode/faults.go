package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"kvnode/internal/faultfs"
)

// faultFS builds the test-only faulty filesystem of --test-fault-injection.
// The spec is a comma-separated list of:
//
//	sync-fail-after=N   every fsync of a log file after the first N fails
//	write-fail-after=N  every write to a log file after the first N fails
//
// "Log file" means Pebble's write-ahead logs (*.log), of the raft log and
// of the state machine alike: the files whose durability acknowledgements
// depend on.
func faultFS(spec string) (vfs.FS, error) {
	var syncAfter, writeAfter int64 = -1, -1
	for _, part := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not NAME=COUNT", part)
		}
		switch k {
		case "sync-fail-after":
			syncAfter = n
		case "write-fail-after":
			writeAfter = n
		default:
			return nil, fmt.Errorf("unknown fault %q (sync-fail-after, write-fail-after)", k)
		}
	}
	var syncs, writes atomic.Int64
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if syncAfter >= 0 && syncs.Add(1) > syncAfter {
				return errorfs.ErrInjected
			}
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt:
			if writeAfter >= 0 && writes.Add(1) > writeAfter {
				return errorfs.ErrInjected
			}
		}
		return nil
	})
	return faultfs.Wrap(vfs.Default, inj), nil
}
