package tracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"lifeboat/hrl"
)

const stateName = "volume.json"

// Modes of a volume's change tracking.
const (
	ModeJournal = "journal" // every write is journaled
	ModeBitmap  = "bitmap"  // journaling suspended; only dirty regions are tracked until a resync
)

// state is the small durable record of a volume's identity and progress,
// replaced atomically (write temp, fsync, rename, fsync dir).
type state struct {
	VolumeID   string `json:"volume_id"`
	Generation uint64 `json:"generation"`
	BlockSize  int    `json:"block_size"`
	RegionSize int64  `json:"region_size"`
	Mode       string `json:"mode"`
	ModeReason string `json:"mode_reason,omitempty"`
	// Running is true while a process has the volume open; finding it set
	// at Open means the last run ended without Close.
	Running bool `json:"running"`
	// Resync, when set, says why the dirty regions must be resynced before
	// a new recovery point can be consistent.
	Resync string `json:"resync,omitempty"`
	// ReadOnly, when set, says why writes are refused (SetReadOnly); it
	// holds across restarts.
	ReadOnly string `json:"read_only,omitempty"`
	// CopySeqLimit is above every seq a segment held only in memory may
	// have used since the last Close that found them all acknowledged
	// (copy.go); 0 when none may have.
	CopySeqLimit uint64 `json:"copy_seq_limit,omitempty"`
}

func loadState(fsys hrl.FS, dir string) (state, bool, error) {
	var st state
	f, err := fsys.OpenFile(filepath.Join(dir, stateName), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return st, false, err
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("%s in %s is damaged (%v); it holds the volume identity, restore it or start over with a new journal directory", stateName, dir, err)
	}
	return st, true, nil
}

func saveState(fsys hrl.FS, dir string, st state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateName+".tmp")
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
	if err != nil {
		return fmt.Errorf("save volume state: %w", err)
	}
	if _, err = f.WriteAt(append(b, '\n'), 0); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, filepath.Join(dir, stateName))
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("save volume state: %w", err)
	}
	return nil
}
