package fusefs

// The set of files, which changes at run time: AddFile and RemoveFile.
//
// Lock order: Mount.mu, then node.gate. A FUSE request takes only
// node.gate (shared) and never Mount.mu, so that a kernel notification
// sent under Mount.mu cannot wait for a request that waits for Mount.mu.

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

// load takes Files into the set once, checking them.
func (m *Mount) load() error {
	if m.loaded {
		return nil
	}
	var files []File
	for _, f := range m.Files {
		if err := checkFile(files, f); err != nil {
			return err
		}
		files = append(files, f)
	}
	m.files, m.loaded = files, true
	return nil
}

// checkFile checks f for a set that already has files.
func checkFile(files []File, f File) error {
	switch {
	case f.Name == "" || f.Name == "." || f.Name == ".." || strings.ContainsAny(f.Name, "/\x00"):
		return fmt.Errorf("%w: bad file name %q: use a plain name without /", ErrConfig, f.Name)
	case f.Backend == nil:
		return fmt.Errorf("%w: file %q has no backend", ErrConfig, f.Name)
	case f.Backend.Size() < 0:
		return fmt.Errorf("%w: file %q has a negative size", ErrConfig, f.Name)
	}
	for _, g := range files {
		if g.Name == f.Name {
			return fmt.Errorf("%w: file name %q used twice", ErrConfig, f.Name)
		}
	}
	return nil
}

// addNode makes f's node and links it into root. Each node gets a new
// inode number: the kernel may still know a removed file's.
func (m *Mount) addNode(ctx context.Context, root *rootDir, f File, now time.Time) *node {
	n := newNode(f, m.logger(), now)
	m.ino++
	ch := root.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: m.ino + 1})
	root.AddChild(f.Name, ch, false)
	return n
}

// AddFile adds f to the mount. Mounted, it appears in the directory at
// once (the kernel forgets a cached "no such file" for the name); before
// Mount, Mount serves it. It is checked as Files are, and its name must be
// new (an error wrapping ErrConfig otherwise).
func (m *Mount) AddFile(f File) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return err
	}
	if err := checkFile(m.files, f); err != nil {
		return err
	}
	m.files = append(m.files, f)
	if m.root == nil {
		return nil
	}
	m.nodes = append(m.nodes, m.addNode(context.Background(), m.root, f, time.Now()))
	if errno := m.root.NotifyEntry(f.Name); errno != 0 && errno != syscall.ENOENT {
		m.logger().Warn("FUSE: could not tell the kernel about a new file", "dir", m.Dir, "file", f.Name, "err", errno)
	}
	m.logger().Info("FUSE file added", "dir", m.Dir, "file", f.Name, "size", f.Backend.Size())
	return nil
}

// RemoveFile removes the file name. While it is open (a loop device is
// attached over it, a process holds it) it fails with an error wrapping
// ErrBusy and the file stays. Otherwise it waits for requests in flight
// on the file, removes it from the directory and makes the kernel forget
// the name; once it returns, the file's Backend is not called again. An
// unknown name is an error wrapping ErrNoSuchFile.
func (m *Mount) RemoveFile(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return err
	}
	i := -1
	for j, f := range m.files {
		if f.Name == name {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("remove %q from %s: %w", name, m.Dir, ErrNoSuchFile)
	}
	if m.root != nil {
		n := m.nodes[i]
		if open := n.retire(); open > 0 {
			return fmt.Errorf("remove %q from %s: %d open handles: %w", name, m.Dir, open, ErrBusy)
		}
		m.root.RmChild(name)
		if errno := m.root.NotifyDelete(name, n.EmbeddedInode()); errno != 0 {
			if errno = m.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
				m.logger().Warn("FUSE: could not make the kernel forget a removed file", "dir", m.Dir, "file", name, "err", errno)
			}
		}
		m.nodes = append(m.nodes[:i], m.nodes[i+1:]...)
	}
	m.files = append(m.files[:i], m.files[i+1:]...)
	m.logger().Info("FUSE file removed", "dir", m.Dir, "file", name)
	return nil
}

// FileNames returns the names of the files, in the order they were added.
func (m *Mount) FileNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.load() != nil {
		return nil
	}
	names := make([]string, 0, len(m.files))
	for _, f := range m.files {
		names = append(names, f.Name)
	}
	return names
}

// Tracking of a node's use, so that RemoveFile never leaves a backend
// call running nor lets one start: every request that calls the backend
// holds gate shared; an open handle counts in open.

// enter begins a request that calls the backend; false: the file was
// removed (only possible for a handle the kernel opened before, which
// RemoveFile does not allow, so this is a safety net).
func (n *node) enter() bool {
	n.gate.RLock()
	if n.removed {
		n.gate.RUnlock()
		return false
	}
	return true
}

func (n *node) leave() { n.gate.RUnlock() }

// retire marks the node removed unless it has open handles, whose count
// it returns. It waits for the requests in flight.
func (n *node) retire() int64 {
	n.gate.Lock()
	defer n.gate.Unlock()
	if open := n.open.Load(); open > 0 {
		return open
	}
	n.removed = true
	return 0
}
