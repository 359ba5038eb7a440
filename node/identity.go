package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// identity is what a node must remember across restarts to be the same
// member: its raft id and the cluster it belongs to. It is written once,
// when the node bootstraps or joins, and read at every start.
type identity struct {
	Name      string `json:"node_id"`
	ID        uint64 `json:"raft_id"`
	ClusterID uint64 `json:"cluster_id"`
}

const identityFile = "identity.json"

// loadIdentity returns the identity stored in dir, or (nil, nil) if there
// is none.
func loadIdentity(fs vfs.FS, dir string) (*identity, error) {
	f, err := fs.Open(fs.PathJoin(dir, identityFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	id := &identity{}
	if err := json.Unmarshal(b, id); err != nil {
		return nil, fmt.Errorf("node: %s in %s is corrupt: %w", identityFile, dir, err)
	}
	if id.ID == 0 || id.ClusterID == 0 {
		return nil, fmt.Errorf("node: %s in %s is incomplete", identityFile, dir)
	}
	return id, nil
}

// saveIdentity writes the identity durably: a temporary file, fsynced,
// renamed into place, and the directory fsynced.
func saveIdentity(fs vfs.FS, dir string, id *identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := fs.PathJoin(dir, identityFile+".tmp")
	f, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, fs.PathJoin(dir, identityFile)); err != nil {
		return err
	}
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
