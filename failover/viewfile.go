package failover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"lifeboat/hrl"
)

// viewFile is a View as an hrl.File.
type viewFile struct {
	v    *View
	name string
}

var _ hrl.File = (*viewFile)(nil)

// File returns v as an hrl.File named name: Sync is Flush, PunchHole is
// Trim, ZeroRange is WriteZeroes, Close closes the view, and Truncate
// succeeds only to the view's own size (a recovery volume keeps the size
// of its point).
func (v *View) File(name string) hrl.File { return &viewFile{v: v, name: name} }

func (f *viewFile) ReadAt(p []byte, off int64) (int, error)  { return f.v.ReadAt(p, off) }
func (f *viewFile) WriteAt(p []byte, off int64) (int, error) { return f.v.WriteAt(p, off) }
func (f *viewFile) Sync() error                              { return f.v.Flush() }
func (f *viewFile) Size() (int64, error)                     { return f.v.Size(), nil }
func (f *viewFile) PunchHole(off, n int64) error             { return f.v.Trim(off, max(n, 0)) }
func (f *viewFile) ZeroRange(off, n int64) error             { return f.v.WriteZeroes(off, max(n, 0)) }
func (f *viewFile) Name() string                             { return f.name }
func (f *viewFile) Close() error                             { return f.v.Close() }

func (f *viewFile) Truncate(size int64) error {
	if size == f.v.Size() {
		return nil
	}
	return fmt.Errorf("truncate %s to %d bytes: a recovery volume keeps the size of its recovery point (%d bytes); resize the protected volume instead",
		f.name, size, f.v.Size())
}

// ViewFS is an hrl.FS that returns the view for OpenFile(Path, ...) and
// passes every other call to FS (default hrl.OSFS{}). It lets a
// tracker.Volume use a View as its backing store:
//
//	vol := tracker.NewVolume(path, journalDir)
//	vol.FS = failover.ViewFS{Path: path, View: v}
//
// The tracker then closes the view when it closes the volume.
type ViewFS struct {
	hrl.FS
	Path string
	View *View
}

var (
	_ hrl.FS      = ViewFS{}
	_ hrl.Chmoder = ViewFS{}
)

func (f ViewFS) fs() hrl.FS {
	if f.FS == nil {
		return hrl.OSFS{}
	}
	return f.FS
}

// OpenFile implements hrl.FS. Opening Path with O_TRUNC, or O_CREATE|O_EXCL,
// fails: the view exists and keeps its size.
func (f ViewFS) OpenFile(name string, flag int, perm os.FileMode) (hrl.File, error) {
	if filepath.Clean(name) != filepath.Clean(f.Path) {
		return f.fs().OpenFile(name, flag, perm)
	}
	switch {
	case flag&os.O_TRUNC != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("a recovery volume cannot be truncated")}
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	}
	return f.View.File(name), nil
}

// Remove implements hrl.FS.
func (f ViewFS) Remove(name string) error { return f.fs().Remove(name) }

// Rename implements hrl.FS.
func (f ViewFS) Rename(oldname, newname string) error { return f.fs().Rename(oldname, newname) }

// ReadDir implements hrl.FS.
func (f ViewFS) ReadDir(name string) ([]string, error) { return f.fs().ReadDir(name) }

// MkdirAll implements hrl.FS.
func (f ViewFS) MkdirAll(name string, perm os.FileMode) error { return f.fs().MkdirAll(name, perm) }

// SyncDir implements hrl.FS.
func (f ViewFS) SyncDir(name string) error { return f.fs().SyncDir(name) }

// Stat implements hrl.Chmoder when FS does, so that the tracker can keep
// its journal directory private.
func (f ViewFS) Stat(name string) (fs.FileInfo, error) {
	if c, ok := f.fs().(hrl.Chmoder); ok {
		return c.Stat(name)
	}
	return nil, &fs.PathError{Op: "stat", Path: name, Err: errors.ErrUnsupported}
}

// Lstat implements hrl.Chmoder when FS does.
func (f ViewFS) Lstat(name string) (fs.FileInfo, error) {
	if c, ok := f.fs().(hrl.Chmoder); ok {
		return c.Lstat(name)
	}
	return nil, &fs.PathError{Op: "lstat", Path: name, Err: errors.ErrUnsupported}
}

// Chmod implements hrl.Chmoder when FS does.
func (f ViewFS) Chmod(name string, mode os.FileMode) error {
	if c, ok := f.fs().(hrl.Chmoder); ok {
		return c.Chmod(name, mode)
	}
	return &fs.PathError{Op: "chmod", Path: name, Err: errors.ErrUnsupported}
}
