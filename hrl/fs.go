package hrl

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// FS is the file-system seam of the journal, the dirty bitmap and the
// backing store. Everything Lifeboat persists on the agent goes through it,
// so tests can inject a failure at a named operation or simulate a crash
// that drops every byte not yet made durable (see hrl/hrltest).
//
// Durability contract, as on Linux: data written to a File is durable after
// File.Sync returns; a created, removed or renamed name is durable after
// SyncDir of its directory returns.
type FS interface {
	// OpenFile opens name with os.O_* flags (O_RDONLY, O_RDWR, O_CREATE,
	// O_EXCL, O_TRUNC are honoured).
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	Remove(name string) error
	Rename(oldname, newname string) error
	// ReadDir returns the names in directory name, sorted.
	ReadDir(name string) ([]string, error)
	MkdirAll(name string, perm os.FileMode) error
	// SyncDir makes the directory entries of name durable.
	SyncDir(name string) error
}

// File is an open file of an FS. Offsets are absolute; there is no cursor.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	// Size returns the current size (for a block device, its capacity).
	Size() (int64, error)
	// PunchHole deallocates [off, off+n) without changing the size; the
	// range reads as zeros afterwards.
	PunchHole(off, n int64) error
	// ZeroRange makes [off, off+n) read as zeros without changing the size.
	ZeroRange(off, n int64) error
	Name() string
	Close() error
}

// OSFS is the real file system.
type OSFS struct{}

var _ FS = OSFS{}

// OpenFile implements FS.
func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f}, nil
}

// Remove implements FS.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// Rename implements FS.
func (OSFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

// MkdirAll implements FS.
func (OSFS) MkdirAll(name string, perm os.FileMode) error { return os.MkdirAll(name, perm) }

// ReadDir implements FS.
func (OSFS) ReadDir(name string) ([]string, error) {
	ents, err := os.ReadDir(name)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir implements FS.
func (OSFS) SyncDir(name string) error {
	d, err := os.Open(filepath.Clean(name))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", name, err)
	}
	return nil
}

type osFile struct{ f *os.File }

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return o.f.Sync() }
func (o *osFile) Truncate(size int64) error                { return o.f.Truncate(size) }
func (o *osFile) Name() string                             { return o.f.Name() }
func (o *osFile) Close() error                             { return o.f.Close() }

// Size seeks to the end, which works for regular files and block devices.
func (o *osFile) Size() (int64, error) { return o.f.Seek(0, io.SeekEnd) }

func (o *osFile) PunchHole(off, n int64) error {
	return o.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (o *osFile) ZeroRange(off, n int64) error {
	return o.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// fallocate runs fallocate(2) (which Linux also supports on block devices)
// and falls back to writing zeros where the file system refuses the mode, so
// that the range reads as zeros either way.
func (o *osFile) fallocate(mode uint32, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(o.f.Fd()), mode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return &os.PathError{Op: "fallocate", Path: o.f.Name(), Err: err}
	}
	return WriteZeros(o, off, n)
}

var zeroChunk [64 << 10]byte

// WriteZeros writes n zero bytes at off with plain writes.
func WriteZeros(w io.WriterAt, off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroChunk)))
		if _, err := w.WriteAt(zeroChunk[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// Seeker is implemented by files that can report holes (SEEK_DATA and
// SEEK_HOLE). Callers treat a File without it as fully allocated.
type Seeker interface {
	// SeekData returns the first offset >= off that holds data, or io.EOF
	// when there is none before the end.
	SeekData(off int64) (int64, error)
	// SeekHole returns the first offset >= off inside a hole; the end of
	// the file counts as a hole.
	SeekHole(off int64) (int64, error)
}

var _ Seeker = (*osFile)(nil)

func (o *osFile) SeekData(off int64) (int64, error) { return o.seek(off, unix.SEEK_DATA) }
func (o *osFile) SeekHole(off int64) (int64, error) { return o.seek(off, unix.SEEK_HOLE) }

func (o *osFile) seek(off int64, whence int) (int64, error) {
	n, err := unix.Seek(int(o.f.Fd()), off, whence)
	if errors.Is(err, unix.ENXIO) {
		return 0, io.EOF
	}
	if err != nil {
		return 0, &os.PathError{Op: "lseek", Path: o.f.Name(), Err: err}
	}
	return n, nil
}

// Preallocator is implemented by files that can reserve space past their
// end without changing their size (fallocate KEEP_SIZE). Appending into
// reserved space is cheaper than allocating as the file grows.
type Preallocator interface {
	Preallocate(n int64) error
}

var _ Preallocator = (*osFile)(nil)

// Preallocate reserves n bytes from offset 0, keeping the size.
func (o *osFile) Preallocate(n int64) error {
	if err := unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, n); err != nil {
		return &os.PathError{Op: "fallocate", Path: o.f.Name(), Err: err}
	}
	return nil
}

// WriteFileDurably replaces dir/name with data so that a crash leaves the
// old or the new content, never a mix: a temporary file written and
// fsynced, renamed over name, the directory fsynced. The file is
// PrivateFile.
func WriteFileDurably(fsys FS, dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, PrivateFile)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, filepath.Join(dir, name))
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		fsys.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}
