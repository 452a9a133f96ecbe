package fusefs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is one volume file. Its handlers only check the request against the
// fixed size and call the backend.
type node struct {
	fs.Inode
	backend  Backend
	name     string
	size     int64
	readOnly bool
	owner    fuse.Owner
	log      *slog.Logger

	mu                  sync.Mutex
	atime, mtime, ctime time.Time

	// Use, for RemoveFile (files.go): requests that call the backend hold
	// gate shared; removed is set under gate held exclusively.
	gate    sync.RWMutex
	removed bool
	open    atomic.Int64 // open handles: Open to Release
}

// errRemoved answers a request on a file RemoveFile removed. RemoveFile
// refuses while handles are open, so only a request racing with it can
// get this.
const errRemoved = syscall.ESTALE

// handle is an open file; it remembers whether it was opened for writing,
// so closing a read-only handle does not flush the volume.
type handle struct{ write bool }

var (
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeReleaser  = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeReader    = (*node)(nil)
	_ fs.NodeWriter    = (*node)(nil)
	_ fs.NodeFlusher   = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeAllocater = (*node)(nil)
)

func newNode(f File, log *slog.Logger, now time.Time) *node {
	return &node{backend: f.Backend, name: f.Name, size: f.Backend.Size(), readOnly: f.ReadOnly, log: log,
		owner: fuse.Owner{Uid: uint32(syscall.Getuid()), Gid: uint32(syscall.Getgid())},
		atime: now, mtime: now, ctime: now}
}

func (n *node) perm() uint32 {
	if n.readOnly {
		return 0o400
	}
	return 0o600
}

// errno maps a backend error to the errno the caller sees: ENOSPC passes
// through, anything else is EIO and logged, as the caller only sees "I/O
// error".
func (n *node) errno(op string, off, length int64, err error) syscall.Errno {
	if errors.Is(err, syscall.ENOSPC) {
		return syscall.ENOSPC
	}
	n.log.Error("FUSE request failed", "file", n.name, "op", op, "offset", off, "length", length, "err", err)
	return syscall.EIO
}

// Open refuses write access to a read-only file and O_TRUNC (a resize).
// Every handle uses direct I/O: see the package documentation.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	switch {
	case write && n.readOnly:
		return nil, 0, syscall.EROFS
	case flags&syscall.O_TRUNC != 0 && n.size != 0:
		return nil, 0, syscall.EPERM
	}
	if !n.enter() {
		return nil, 0, syscall.ENOENT // removed after the kernel looked it up
	}
	n.open.Add(1)
	n.leave()
	return &handle{write: write}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

// Release is the last close of a handle (after its Flush).
func (n *node) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	if _, ok := f.(*handle); ok {
		n.open.Add(-1)
	}
	return 0
}

// Getattr reports a regular file of the backend's size.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(out)
	return 0
}

func (n *node) fill(out *fuse.AttrOut) {
	out.Mode = syscall.S_IFREG | n.perm()
	out.Nlink = 1
	out.Size = uint64(n.size)
	out.Blocks = (uint64(n.size) + 511) / 512
	out.Blksize = 4096
	out.Owner = n.owner
	n.mu.Lock()
	out.SetTimes(&n.atime, &n.mtime, &n.ctime)
	n.mu.Unlock()
}

// Setattr refuses a size change (truncate, O_TRUNC) and a change of mode or
// owner with EPERM; the times can be set and are kept in memory.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && size != uint64(n.size) {
		return syscall.EPERM
	}
	if mode, ok := in.GetMode(); ok && mode&0o7777 != n.perm() {
		return syscall.EPERM
	}
	if uid, ok := in.GetUID(); ok && uid != n.owner.Uid {
		return syscall.EPERM
	}
	if gid, ok := in.GetGID(); ok && gid != n.owner.Gid {
		return syscall.EPERM
	}
	n.mu.Lock()
	if t, ok := in.GetATime(); ok {
		n.atime = t
	}
	if t, ok := in.GetMTime(); ok {
		n.mtime = t
	}
	if t, ok := in.GetCTime(); ok {
		n.ctime = t
	}
	n.mu.Unlock()
	n.fill(out)
	return 0
}

// Read reads from the backend; a read past the end is short, as on any
// regular file.
func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), n.size-off)]
	if !n.enter() {
		return nil, errRemoved
	}
	got, err := n.backend.ReadAt(dest, off)
	n.leave()
	if err != nil && !(errors.Is(err, io.EOF) && got == len(dest)) {
		return nil, n.errno("read", off, int64(len(dest)), err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// Write writes to the backend. A write that crosses the end is cut short
// there and one that starts at or after the end fails with ENOSPC, as on a
// block device: the file never grows.
func (n *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	switch {
	case n.readOnly:
		return 0, syscall.EROFS
	case len(data) == 0:
		return 0, 0
	case off >= n.size:
		return 0, syscall.ENOSPC
	}
	data = data[:min(int64(len(data)), n.size-off)]
	if !n.enter() {
		return 0, errRemoved
	}
	_, err := n.backend.WriteAt(data, off)
	n.leave()
	if err != nil {
		return 0, n.errno("write", off, int64(len(data)), err)
	}
	return uint32(len(data)), 0
}

// Flush is the close(2) of a handle: one that was open for writing flushes
// the volume, as closing a block device syncs it.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	if h, ok := f.(*handle); !ok || !h.write {
		return 0
	}
	return n.flush()
}

// Fsync flushes the volume (fsync and fdatasync alike).
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if n.readOnly {
		return 0
	}
	return n.flush()
}

func (n *node) flush() syscall.Errno {
	if !n.enter() {
		return errRemoved
	}
	err := n.backend.Flush()
	n.leave()
	if err != nil {
		return n.errno("flush", 0, n.size, err)
	}
	return 0
}

// Allocate maps fallocate(2) to the backend: PUNCH_HOLE|KEEP_SIZE (a loop
// device's discard) to Trim, ZERO_RANGE (a loop device's write-zeroes) to
// WriteZeroes. With KEEP_SIZE the part past the end is ignored, as on any
// regular file; a ZERO_RANGE without it that would grow the file is a
// resize (EPERM). Preallocation and the other modes are not supported.
func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off, length uint64, mode uint32) syscall.Errno {
	const (
		punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		zero  = unix.FALLOC_FL_ZERO_RANGE
	)
	if n.readOnly {
		return syscall.EROFS
	}
	if mode != punch && mode&^unix.FALLOC_FL_KEEP_SIZE != zero {
		return syscall.EOPNOTSUPP
	}
	end := off + length
	if end < off || end > 1<<63-1 {
		return syscall.EINVAL
	}
	if mode&unix.FALLOC_FL_KEEP_SIZE == 0 && end > uint64(n.size) {
		return syscall.EPERM
	}
	if off >= uint64(n.size) || length == 0 {
		return 0
	}
	o, l := int64(off), int64(min(end, uint64(n.size))-off)
	if !n.enter() {
		return errRemoved
	}
	var err error
	if mode == punch {
		err = n.backend.Trim(o, l)
	} else {
		err = n.backend.WriteZeroes(o, l)
	}
	n.leave()
	if err != nil {
		return n.errno("fallocate", o, l, err)
	}
	return 0
}
