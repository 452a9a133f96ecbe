package hrltest

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"lifeboat/hrl"
)

// OpenFile implements hrl.FS.
func (s *CrashFS) OpenFile(name string, flag int, perm os.FileMode) (hrl.File, error) {
	p := filepath.Clean(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirs[p] {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	ino := s.files[p]
	switch {
	case ino == nil && flag&os.O_CREATE == 0:
		return nil, pathErr("open", name, fs.ErrNotExist)
	case ino == nil:
		if !s.dirs[filepath.Dir(p)] {
			return nil, pathErr("open", name, fs.ErrNotExist)
		}
		if err := s.gate("create", p); err != nil {
			return nil, pathErr("open", name, err)
		}
		ino = &inode{}
		s.files[p] = ino
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, pathErr("open", name, fs.ErrExist)
	case flag&os.O_TRUNC != 0:
		if err := s.gate("truncate", p); err != nil {
			return nil, pathErr("open", name, err)
		}
		ino.mutate(mutation{kind: mutTruncate})
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	return &file{s: s, ino: ino, name: name, path: p, gen: s.gen,
		read: acc != os.O_WRONLY, write: acc != os.O_RDONLY}, nil
}

// Remove implements hrl.FS; a directory must be empty (in the current and
// the durable namespace).
func (s *CrashFS) Remove(name string) error {
	p := filepath.Clean(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirs[p] {
		if p == filepath.Dir(p) {
			return pathErr("remove", name, syscall.EBUSY)
		}
		if s.hasChildren(p) {
			return pathErr("remove", name, syscall.ENOTEMPTY)
		}
		if err := s.gate("remove", p); err != nil {
			return pathErr("remove", name, err)
		}
		delete(s.dirs, p)
		return nil
	}
	if s.files[p] == nil {
		return pathErr("remove", name, fs.ErrNotExist)
	}
	if err := s.gate("remove", p); err != nil {
		return pathErr("remove", name, err)
	}
	delete(s.files, p)
	return nil
}

func (s *CrashFS) hasChildren(dir string) bool {
	for _, m := range []map[string]*inode{s.files, s.durable} {
		for k := range m {
			if filepath.Dir(k) == dir {
				return true
			}
		}
	}
	for k := range s.dirs {
		if k != dir && filepath.Dir(k) == dir {
			return true
		}
	}
	return false
}

// Rename implements hrl.FS for files (renaming directories is not
// supported); it replaces an existing newname.
func (s *CrashFS) Rename(oldname, newname string) error {
	o, n := filepath.Clean(oldname), filepath.Clean(newname)
	lerr := func(err error) error { return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err} }
	s.mu.Lock()
	defer s.mu.Unlock()
	ino := s.files[o]
	switch {
	case s.dirs[o]:
		return lerr(errors.New("hrltest: renaming directories is not supported"))
	case ino == nil || !s.dirs[filepath.Dir(n)]:
		return lerr(fs.ErrNotExist)
	case s.dirs[n]:
		return lerr(syscall.EISDIR)
	case o == n:
		return nil
	}
	if err := s.gate("rename", o, n); err != nil {
		return lerr(err)
	}
	s.files[n] = ino
	delete(s.files, o)
	return nil
}

// ReadDir implements hrl.FS: the sorted names of the files and directories
// directly in name.
func (s *CrashFS) ReadDir(name string) ([]string, error) {
	p := filepath.Clean(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkDir("readdir", name, p); err != nil {
		return nil, err
	}
	names := []string{}
	for k := range s.files {
		if filepath.Dir(k) == p {
			names = append(names, filepath.Base(k))
		}
	}
	for k := range s.dirs {
		if k != p && filepath.Dir(k) == p {
			names = append(names, filepath.Base(k))
		}
	}
	sort.Strings(names)
	return names, nil
}

func (s *CrashFS) checkDir(op, name, p string) error {
	if s.files[p] != nil {
		return pathErr(op, name, syscall.ENOTDIR)
	}
	if !s.dirs[p] {
		return pathErr(op, name, fs.ErrNotExist)
	}
	return nil
}

// MkdirAll implements hrl.FS; directories are durable at once and
// MkdirAll is not a counted operation.
func (s *CrashFS) MkdirAll(name string, perm os.FileMode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mkdirAll("mkdir", filepath.Clean(name))
}

func (s *CrashFS) mkdirAll(op, p string) error {
	var todo []string
	for q := p; !s.dirs[q]; q = filepath.Dir(q) {
		if s.files[q] != nil {
			return pathErr(op, q, syscall.ENOTDIR)
		}
		todo = append(todo, q)
	}
	for _, q := range todo {
		s.dirs[q] = true
	}
	return nil
}

// SyncDir implements hrl.FS: the entries of name that were created,
// removed or renamed become durable.
func (s *CrashFS) SyncDir(name string) error {
	p := filepath.Clean(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkDir("syncdir", name, p); err != nil {
		return err
	}
	if err := s.gate("syncdir", p); err != nil {
		return pathErr("syncdir", name, err)
	}
	for k := range s.durable {
		if filepath.Dir(k) == p && s.files[k] == nil {
			delete(s.durable, k)
		}
	}
	for k, ino := range s.files {
		if filepath.Dir(k) == p {
			s.durable[k] = ino
		}
	}
	return nil
}

// file is an open hrl.File of a CrashFS.
type file struct {
	s           *CrashFS
	ino         *inode
	name, path  string // as opened, and cleaned
	gen         int
	closed      bool
	read, write bool
}

// check validates the handle; the caller holds f.s.mu.
func (f *file) check(op string) error {
	if f.closed || f.gen != f.s.gen {
		return pathErr(op, f.name, os.ErrClosed)
	}
	return nil
}

// mutate validates, gates and applies m; the caller holds f.s.mu.
func (f *file) mutate(op string, m mutation, bad error) error {
	if err := f.check(op); err != nil {
		return err
	}
	if !f.write {
		return pathErr(op, f.name, bad)
	}
	if m.off < 0 || m.n < 0 {
		return pathErr(op, f.name, syscall.EINVAL)
	}
	if err := f.s.gate(op, f.path); err != nil {
		return pathErr(op, f.name, err)
	}
	f.ino.mutate(m)
	return nil
}

// ReadAt implements io.ReaderAt like os.File: a short read returns io.EOF.
func (f *file) ReadAt(p []byte, off int64) (int, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	switch {
	case !f.read:
		return 0, pathErr("read", f.name, syscall.EBADF)
	case off < 0:
		return 0, pathErr("readat", f.name, errors.New("negative offset"))
	case len(p) == 0:
		return 0, nil
	case off >= int64(len(f.ino.data)):
		return 0, io.EOF
	}
	n := copy(p, f.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt, extending the file with zeros as needed.
func (f *file) WriteAt(p []byte, off int64) (int, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if err := f.mutate("write", mutation{kind: mutWrite, off: off, data: bytes.Clone(p)}, syscall.EBADF); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *file) Truncate(size int64) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.mutate("truncate", mutation{kind: mutTruncate, n: size}, syscall.EINVAL)
}

// PunchHole zeroes [off, off+n) clamped to the size; n <= 0 is a no-op
// (as with hrl.OSFS) and not counted.
func (f *file) PunchHole(off, n int64) error { return f.zero("punch", mutPunch, off, n) }

// ZeroRange is like PunchHole but counted as "zero".
func (f *file) ZeroRange(off, n int64) error { return f.zero("zero", mutZero, off, n) }

func (f *file) zero(op string, kind mutKind, off, n int64) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if n <= 0 {
		return f.check(op)
	}
	return f.mutate(op, mutation{kind: kind, off: off, n: n}, syscall.EBADF)
}

// Sync makes the current content durable (allowed on read-only handles).
func (f *file) Sync() error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if err := f.check("sync"); err != nil {
		return err
	}
	if err := f.s.gate("sync", f.path); err != nil {
		return pathErr("sync", f.name, err)
	}
	f.ino.durable, f.ino.pending = bytes.Clone(f.ino.data), nil
	return nil
}

func (f *file) Size() (int64, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if err := f.check("size"); err != nil {
		return 0, err
	}
	return int64(len(f.ino.data)), nil
}

// Name returns the name as passed to OpenFile (like os.File, it does not
// follow renames).
func (f *file) Name() string { return f.name }

func (f *file) Close() error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if err := f.check("close"); err != nil {
		return err
	}
	f.closed = true
	return nil
}
