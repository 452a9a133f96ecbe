package tracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"lifeboat/hrl"
)

// memFS holds the journal segments a resync's copy writes in memory (see
// copy.go): an hrl.FS with no directories and no durability, whose files
// live until removed. Buffers of removed files are reused for the next
// segments, so a long copy allocates its CopyMemory once.
type memFS struct {
	mu    sync.Mutex
	files map[string]*memFile
	free  [][]byte
	size  int64 // capacity of a new file's buffer: what a segment takes before it is rolled
}

var _ hrl.FS = (*memFS)(nil)

func newMemFS() *memFS { return &memFS{files: map[string]*memFile{}} }

// has reports whether path names a segment held in memory.
func (m *memFS) has(path string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.files[path]
	return ok
}

func (m *memFS) OpenFile(name string, flag int, _ os.FileMode) (hrl.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	switch {
	case ok && flag&os.O_EXCL != 0:
		return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrExist}
	case !ok && flag&os.O_CREATE == 0:
		return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	case !ok:
		var b []byte
		if n := len(m.free); n > 0 {
			b, m.free = m.free[n-1][:0], m.free[:n-1]
		} else if m.size > 0 {
			b = make([]byte, 0, m.size)
		}
		f = &memFile{name: name, data: b}
		m.files[name] = f
	}
	return f, nil
}

// Remove forgets the file and keeps its buffer for the next one.
func (m *memFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	if !ok {
		return &os.PathError{Op: "remove", Path: name, Err: os.ErrNotExist}
	}
	delete(m.files, name)
	f.mu.Lock()
	b := f.data
	f.data = nil
	f.mu.Unlock()
	if cap(b) >= int(m.size) && len(m.free) < 2 {
		m.free = append(m.free, b)
	}
	return nil
}

func (m *memFS) Rename(string, string) error {
	return errors.New("memory segments are not renamed")
}
func (m *memFS) ReadDir(string) ([]string, error)   { return nil, nil }
func (m *memFS) MkdirAll(string, os.FileMode) error { return nil }
func (m *memFS) SyncDir(string) error               { return nil }

// memFile is one segment in memory. Its handles share it; Close closes
// nothing, Sync makes nothing durable.
type memFile struct {
	name string
	mu   sync.Mutex
	data []byte
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", f.name, off)
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("write %s at %d: negative offset", f.name, off)
	}
	f.grow(off + int64(len(p)))
	return copy(f.data[off:], p), nil
}

// grow extends data to n bytes (zeros), doubling its capacity as it goes.
func (f *memFile) grow(n int64) {
	if n <= int64(len(f.data)) {
		return
	}
	if n > int64(cap(f.data)) {
		b := make([]byte, len(f.data), max(n, 2*int64(cap(f.data)), 1<<20))
		copy(b, f.data)
		f.data = b
	}
	old := len(f.data)
	f.data = f.data[:n]
	clear(f.data[old:])
}

func (f *memFile) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if size < int64(len(f.data)) {
		f.data = f.data[:size]
		return nil
	}
	f.grow(size)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.data)), nil
}

func (f *memFile) PunchHole(off, n int64) error { return f.ZeroRange(off, n) }

func (f *memFile) ZeroRange(off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := min(off+n, int64(len(f.data)))
	if off < end {
		clear(f.data[off:end])
	}
	return nil
}

func (f *memFile) Sync() error  { return nil }
func (f *memFile) Name() string { return f.name }
func (f *memFile) Close() error { return nil }
