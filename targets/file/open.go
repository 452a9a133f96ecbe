package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// openReplica loads (or creates) the replica in dir and recovers from an
// interrupted run. The caller holds the replica's lock.
func openReplica(t *Target, dir string, info targets.VolumeInfo) (*Replica, error) {
	r := &Replica{t: t, fs: t.FS, dir: dir, log: t.logger().With("volume", info.ID)}
	st, ok, err := loadState(r.fs, dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := r.create(info); err != nil {
			r.closeFiles()
			return nil, err
		}
		return r, nil
	}
	if st.Volume.ID != info.ID {
		return nil, fmt.Errorf("%s belongs to volume %q, not %q: %w", filepath.Join(dir, stateName), st.Volume.ID, info.ID, ErrCorrupt)
	}
	r.info, r.state = st.Volume, targets.State{Generation: st.Generation, Seq: st.Seq}
	if err := r.load(st); err != nil {
		r.closeFiles()
		return nil, err
	}
	changed := info.Name != r.info.Name || info.BlockSize != r.info.BlockSize
	r.info.Name, r.info.BlockSize = info.Name, info.BlockSize
	if r.info.Machine == "" && info.Machine != "" {
		// Made before machines were recorded: it takes its first one.
		r.info.Machine, changed = info.Machine, true
	}
	if info.Size != r.info.Size {
		r.log.Info("resizing replica", "from", r.info.Size, "to", info.Size)
		if err := r.resize(info.Size); err != nil {
			r.closeFiles()
			return nil, err
		}
	} else if changed {
		if err := r.save(r.state, r.points, r.logs); err != nil {
			r.closeFiles()
			return nil, err
		}
	}
	return r, nil
}

// create makes a new, empty replica. Whatever a crashed earlier create
// left behind is reset: without state.json nothing was committed.
func (r *Replica) create(info targets.VolumeInfo) error {
	img, err := r.fs.OpenFile(filepath.Join(r.dir, imageName), os.O_RDWR|os.O_CREATE, hrl.PrivateFile)
	if err != nil {
		return fmt.Errorf("create replica image: %w", err)
	}
	r.img = img
	if err = img.Truncate(0); err == nil {
		if err = img.Truncate(info.Size); err == nil {
			err = img.Sync()
		}
	}
	if err != nil {
		return fmt.Errorf("create replica image: %w", err)
	}
	if err := r.removeStrays(nil); err != nil {
		return err
	}
	r.info = info
	if err := r.save(r.state, nil, nil); err != nil {
		return err
	}
	// Make the volume directory's own entry durable.
	if err := r.fs.SyncDir(r.t.Dir); err != nil {
		return fmt.Errorf("create replica: %w", err)
	}
	return nil
}

// load opens replica.img and the undo logs of the points in st.
func (r *Replica) load(st stateFile) error {
	img, err := r.fs.OpenFile(filepath.Join(r.dir, imageName), os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s lists the replica but %s is missing; remove the replica directory to start a full resync: %w",
			filepath.Join(r.dir, stateName), imageName, ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("open replica image: %w", err)
	}
	r.img = img
	size, err := img.Size()
	if err != nil {
		return fmt.Errorf("replica image: %w", err)
	}
	if size != r.info.Size {
		// A resize was interrupted before state.json recorded it.
		r.log.Warn("replica image size differs from the recorded size; resetting it", "image", size, "recorded", r.info.Size)
		if err := img.Truncate(r.info.Size); err != nil {
			return fmt.Errorf("replica image: %w", err)
		}
		if err := img.Sync(); err != nil {
			return fmt.Errorf("replica image: %w", err)
		}
	}
	keep := map[string]bool{}
	for i, p := range st.Points {
		if i > 0 && p.Seq <= st.Points[i-1].Seq {
			return fmt.Errorf("%s: points out of order (%d after %d): %w", stateName, p.Seq, st.Points[i-1].Seq, ErrCorrupt)
		}
		u, err := r.loadLog(p, i == len(st.Points)-1)
		if err != nil {
			return err
		}
		r.points = append(r.points, p)
		r.logs = append(r.logs, u)
		keep[undoName(p.Seq)] = true
	}
	return r.removeStrays(keep)
}

// loadLog opens and scans the undo log of p. The newest log may carry
// intact entries past the recorded length (from applies after the last
// commit; they are before-images of blocks replica.img may hold newer
// bytes for), which are kept; a torn tail is cut. An older log is cut to
// its recorded length (anything past it is an interrupted merge).
func (r *Replica) loadLog(p pointRecord, newest bool) (*undoLog, error) {
	path := filepath.Join(r.dir, undoDirName, undoName(p.Seq))
	f, err := r.fs.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("undo log %s of point %d is missing: %w", path, p.Seq, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("undo log %s: %w", path, err)
	}
	u := &undoLog{seq: p.Seq, path: path, f: f}
	end := p.UndoBytes
	if newest || !r.readIndex(u, p.UndoBytes) {
		if end, err = u.scan(p.UndoBytes, newest); err != nil {
			f.Close()
			return nil, err
		}
	}
	fileSize, err := f.Size()
	if err == nil && fileSize < end {
		err = fmt.Errorf("%d bytes, shorter than the %d recorded in state.json: %w", fileSize, end, ErrCorrupt)
	}
	if err == nil && fileSize > end {
		r.log.Warn("cutting the unfinished tail of an undo log", "log", path, "bytes", fileSize-end)
		if err = f.Truncate(end); err == nil {
			err = f.Sync()
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("undo log %s: %w", path, err)
	}
	u.size = end
	u.setOpen(newest)
	return u, nil
}

// removeStrays removes the undo logs and indexes that no point lists
// (left by a CreatePoint or DeletePoint interrupted around the state.json
// update) and temporary index files.
func (r *Replica) removeStrays(keep map[string]bool) error {
	udir := filepath.Join(r.dir, undoDirName)
	names, err := r.fs.ReadDir(udir)
	if err != nil {
		return fmt.Errorf("list undo logs: %w", err)
	}
	removed := false
	for _, name := range names {
		base, ext, _ := strings.Cut(name, ".")
		if keep[base+".undo"] && (ext == "undo" || ext == "idx") {
			continue
		}
		if ext != "undo" && ext != "idx" && ext != "idx.tmp" {
			continue
		}
		r.log.Info("removing an undo log or index no point lists", "file", name)
		if err := r.fs.Remove(filepath.Join(udir, name)); err != nil {
			return fmt.Errorf("remove undo log: %w", err)
		}
		removed = true
	}
	if removed {
		if err := r.fs.SyncDir(udir); err != nil {
			return fmt.Errorf("remove undo logs: %w", err)
		}
	}
	return nil
}

// resize changes the replica's size. Shrinking with points first zeroes
// the cut range through the undo logs, so the points keep those bytes.
// The caller holds wmu (or is Open).
func (r *Replica) resize(size int64) error {
	if size < r.info.Size && len(r.logs) > 0 {
		if err := r.apply([]targets.Extent{{Off: size, Len: r.info.Size - size}}); err != nil {
			return fmt.Errorf("resize: %w", err)
		}
	}
	err := r.img.Truncate(size)
	if err == nil {
		err = r.img.Sync()
	}
	if err != nil {
		return fmt.Errorf("resize replica image: %w", err)
	}
	r.mu.Lock()
	r.info.Size = size
	r.mu.Unlock()
	return r.save(r.state, r.points, r.logs)
}
