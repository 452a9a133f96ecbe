package failover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"lifeboat/hrl"
	"lifeboat/internal/dirlock"
)

// Names of the files in an overlay directory.
const (
	dataName = "overlay.data" // sparse, the volume's size: the blocks the view wrote
	mapName  = "overlay.map"  // which blocks of overlay.data hold the view's data
	lockName = "lock"         // flock held while a process has the overlay open
)

// overlayFiles are the open files of an overlay.
type overlayFiles struct {
	data   hrl.File
	m      *blockMap
	unlock func()
}

func (o *overlayFiles) close() error {
	var errs []error
	if o.data != nil {
		errs = append(errs, o.data.Close())
	}
	if o.m != nil {
		errs = append(errs, o.m.f.Close())
	}
	if o.unlock != nil {
		o.unlock()
	}
	return errors.Join(errs...)
}

// lockOverlay keeps two processes from opening one overlay. Only the real
// file system is locked (an in-memory test FS has nothing to lock).
func lockOverlay(fsys hrl.FS, dir string) (func(), error) {
	if _, ok := fsys.(hrl.OSFS); !ok {
		return func() {}, nil
	}
	release, err := dirlock.Lock(filepath.Join(dir, lockName))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%w: overlay %s is %v; stop the process serving that view first", ErrInUse, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("overlay lock: %w", err)
	}
	return release, nil
}

// openOverlay opens the overlay in dir for a volume of size bytes made
// from point seq, creating it when its map file is missing.
func openOverlay(fsys hrl.FS, dir string, size int64, seq uint64) (_ *overlayFiles, err error) {
	if err := fsys.MkdirAll(dir, hrl.PrivateDir); err != nil {
		return nil, fmt.Errorf("overlay directory: %w", err)
	}
	o := &overlayFiles{}
	defer func() {
		if err != nil {
			o.close()
		}
	}()
	if o.unlock, err = lockOverlay(fsys, dir); err != nil {
		return nil, err
	}
	mpath := filepath.Join(dir, mapName)
	mf, err := fsys.OpenFile(mpath, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createOverlay(fsys, dir, size, seq); err != nil {
			return nil, err
		}
		mf, err = fsys.OpenFile(mpath, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open overlay map: %w", err)
	}
	o.m = newBlockMap(mf, blockSize, size)
	if err := checkMap(mf, dir, size, seq); err != nil {
		return nil, err
	}
	if err := o.m.load(); err != nil {
		return nil, damaged(mpath, fmt.Errorf("read bit pages: %w", err))
	}
	dpath := filepath.Join(dir, dataName)
	if o.data, err = fsys.OpenFile(dpath, os.O_RDWR, 0); err != nil {
		return nil, damaged(dpath, err)
	}
	if n, err := o.data.Size(); err != nil || n != size {
		return nil, damaged(dpath, fmt.Errorf("size %d, %v; want %d bytes", n, err, size))
	}
	return o, nil
}

// damaged is the error for an overlay file that cannot be trusted.
func damaged(path string, why error) error {
	return fmt.Errorf("%w: %s: %v; the record of the view's writes cannot be trusted: remove the overlay directory %s to start again from the recovery point (the view's writes are lost)",
		ErrDamaged, path, why, filepath.Dir(path))
}

// checkMap reads the map header and checks it against the volume and the
// point the view is opened on.
func checkMap(f hrl.File, dir string, size int64, seq uint64) error {
	path := f.Name()
	b := make([]byte, mapHeaderPage)
	if n, err := f.ReadAt(b, 0); n < mapHeaderLen {
		return damaged(path, fmt.Errorf("header: read %d bytes: %v", n, err))
	}
	h, err := decodeMapHeader(b)
	if err != nil {
		return damaged(path, err)
	}
	switch {
	case h.PointSeq != seq:
		return fmt.Errorf("%w: overlay %s was made for point %d, not %d; remove it or open point %d",
			ErrMismatch, dir, h.PointSeq, seq, h.PointSeq)
	case h.VolumeSize != size:
		return fmt.Errorf("%w: overlay %s was made for a volume of %d bytes, not %d; remove it or open the volume it was made for",
			ErrMismatch, dir, h.VolumeSize, size)
	case h.BlockSize != blockSize:
		return fmt.Errorf("%w: overlay %s uses %d-byte blocks, this lifeboat only %d; remove it",
			ErrMismatch, dir, h.BlockSize, blockSize)
	}
	if n, err := f.Size(); err != nil || n < mapFileSize(h.Blocks) {
		return damaged(path, fmt.Errorf("file is %d bytes (%v), want %d", n, err, mapFileSize(h.Blocks)))
	}
	return nil
}

// createOverlay makes a new, empty overlay: the data file first, then the
// map, atomically (temp file, fsync, rename, fsync the directory), so a
// crash leaves either no map (a new overlay again) or a whole one.
func createOverlay(fsys hrl.FS, dir string, size int64, seq uint64) error {
	df, err := fsys.OpenFile(filepath.Join(dir, dataName), os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
	if err != nil {
		return fmt.Errorf("create overlay data: %w", err)
	}
	err = df.Truncate(size)
	if err == nil {
		err = df.Sync()
	}
	if cerr := df.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create overlay data: %w", err)
	}
	h := mapHeader{Version: mapVersion, BlockSize: blockSize, VolumeSize: size, PointSeq: seq,
		Blocks: blockCount(size, blockSize)}
	tmp := filepath.Join(dir, mapName+".tmp")
	mf, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
	if err != nil {
		return fmt.Errorf("create overlay map: %w", err)
	}
	_, err = mf.WriteAt(encodeMapHeader(h), 0)
	if err == nil {
		err = mf.Truncate(mapFileSize(h.Blocks)) // the bit pages: sparse zeros
	}
	if err == nil {
		err = mf.Sync()
	}
	if cerr := mf.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, filepath.Join(dir, mapName))
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("create overlay map: %w", err)
	}
	return nil
}

// RemoveOverlay deletes an overlay directory: the view's writes are gone.
// It removes the overlay's files and then the directory; a directory that
// holds other files too keeps them and is not removed (the error says
// which directory). A missing directory is not an error.
func RemoveOverlay(dir string) error {
	var errs []error
	for _, name := range []string{mapName, mapName + ".tmp", dataName, lockName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	switch err := os.Remove(dir); {
	case errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST):
		errs = append(errs, fmt.Errorf("remove overlay: %w: files that are not the overlay's were left in place; remove them by hand", err))
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		errs = append(errs, fmt.Errorf("remove overlay: %w", err))
	}
	return errors.Join(errs...)
}
