package file

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

const (
	stateName   = "state.json"
	imageName   = "replica.img"
	undoDirName = "undo"
	lockName    = "lock"
)

// stateFile is the durable record of a replica, replaced atomically
// (write temp, fsync, rename, fsync dir).
type stateFile struct {
	Volume     targets.VolumeInfo `json:"volume"`
	Generation uint64             `json:"generation"`
	Seq        uint64             `json:"seq"`
	Points     []pointRecord      `json:"points"`
}

// pointRecord is a recovery point and its undo log.
type pointRecord struct {
	Seq        uint64      `json:"seq"`
	Generation uint64      `json:"generation"`
	Kind       hrl.TagKind `json:"kind"`
	Name       string      `json:"name"`
	Time       time.Time   `json:"time"`
	// Size is the replica's size at the point.
	Size int64 `json:"size"`
	// UndoBytes is the length of the point's undo log when this file was
	// written; every byte of it is durable and intact.
	UndoBytes int64 `json:"undo_bytes"`
}

func (p pointRecord) point() targets.Point {
	return targets.Point{Seq: p.Seq, Generation: p.Generation, Kind: p.Kind, Name: p.Name, Time: p.Time}
}

func undoName(seq uint64) string { return fmt.Sprintf("%016x.undo", seq) }

func loadState(fsys hrl.FS, dir string) (stateFile, bool, error) {
	var st stateFile
	path := filepath.Join(dir, stateName)
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("replica state: %w", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return st, false, fmt.Errorf("replica state %s: %w", path, err)
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return st, false, fmt.Errorf("replica state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("%s is damaged (%v); it lists the recovery points, restore it from a backup or remove the replica directory to start a full resync: %w", path, err, ErrCorrupt)
	}
	return st, true, nil
}

func saveState(fsys hrl.FS, dir string, st stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateName+".tmp")
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
	if err != nil {
		return fmt.Errorf("save replica state: %w", err)
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
		return fmt.Errorf("save replica state: %w", err)
	}
	return nil
}
