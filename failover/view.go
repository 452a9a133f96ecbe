// Package failover serves recovery points as writable volumes: a View is a
// copy-on-write view of a recovery point (a targets.PointReader) whose
// writes go to an overlay directory on the site's disk, so the point and
// the replica it belongs to never change (test failover is isolated), and
// cleanup is RemoveOverlay. Opening a view copies nothing.
//
// An overlay directory holds
//
//	overlay.data  sparse file of the volume's size: the blocks the view wrote
//	overlay.map   header (magic, version, block size, volume size, point seq,
//	              checksum) and one bit per 4 KiB block: set = the block is
//	              read from overlay.data, clear = from the point (mapfile.go)
//	lock          flock held while a process has the overlay open
//
// A write of whole blocks goes straight to overlay.data; a partial block
// not yet in the overlay is read from the point, merged and written whole.
// Trim and WriteZeroes punch holes for whole blocks. A block's bit is set
// in memory after its data write returned.
//
// Crash rule: a map bit set on disk implies the overlay block holds data
// written by the view. Flush fsyncs overlay.data first, then writes the
// changed bit pages of overlay.map in place (only bits that were set
// before that fsync began) and fsyncs the map. Bits only ever go from 0 to
// 1, so a torn page write leaves each bit either as it was or as it should
// be, and both are valid. Writes not flushed may be lost after a crash
// (like a disk's volatile cache); flushed ones never are. A missing map
// file is a new overlay; a damaged one (bad magic, version, geometry,
// header checksum, length) is an error naming the file (ErrDamaged), never
// an empty overlay. An overlay made for another point or volume size is
// refused (ErrMismatch).
//
// Lock order: View.life, then View.flushMu, then the block stripes
// (ascending stripe index).
package failover

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// blockSize is the overlay's granularity.
const blockSize = 4096

// Errors of this package.
var (
	ErrClosed     = errors.New("view closed")
	ErrOutOfRange = errors.New("request outside the volume")
	ErrDamaged    = errors.New("overlay damaged")
	ErrMismatch   = errors.New("overlay does not belong to this recovery point")
	ErrInUse      = errors.New("overlay in use")
	ErrFailed     = errors.New("overlay failed")
)

// View is a writable copy-on-write view of a recovery point. Its methods
// are safe for concurrent use; overlapping requests may complete in any
// order, but each block stays consistent.
type View struct {
	base  targets.PointReader
	dir   string
	size  int64
	data  hrl.File
	m     *blockMap
	files *overlayFiles
	locks stripes

	life    sync.RWMutex // held shared by every request, exclusively by Close
	closed  bool
	flushMu sync.Mutex // one Flush at a time
	failed  atomic.Pointer[error]
	bufs    sync.Pool // *[]byte of blockSize
}

// OpenView opens (creating it when missing) the overlay in dir over base
// and returns the view. The view owns base and closes it on Close, also
// when OpenView fails. Opening does not copy the volume: constant time
// except reading the persisted map (size/blockSize/8 bytes).
func OpenView(base targets.PointReader, dir string) (*View, error) {
	return OpenViewFS(hrl.OSFS{}, base, dir)
}

// OpenViewFS is OpenView with the overlay's files in fsys (tests use an
// hrltest.CrashFS to simulate power loss). Only hrl.OSFS is locked against
// a second process.
func OpenViewFS(fsys hrl.FS, base targets.PointReader, dir string) (*View, error) {
	size, seq := base.Size(), base.Point().Seq
	if size < 0 || size%512 != 0 {
		base.Close()
		return nil, fmt.Errorf("recovery point %d is %d bytes, not a multiple of 512", seq, size)
	}
	o, err := openOverlay(fsys, dir, size, seq)
	if err != nil {
		base.Close()
		return nil, err
	}
	v := &View{base: base, dir: dir, size: size, data: o.data, m: o.m, files: o}
	v.bufs.New = func() any { b := make([]byte, blockSize); return &b }
	return v, nil
}

// Size is the volume's size in bytes.
func (v *View) Size() int64 { return v.size }

// Written is how many bytes of the volume the overlay holds: what
// discarding the overlay would drop (whole blocks, the last one as long as
// it is).
func (v *View) Written() int64 { return v.m.written.Load() }

// Point is the recovery point the view is made from.
func (v *View) Point() targets.Point { return v.base.Point() }

// begin admits a request: the view is open, and for a change, not failed.
// It returns with v.life held shared.
func (v *View) begin(change bool) error {
	v.life.RLock()
	if v.closed {
		v.life.RUnlock()
		return ErrClosed
	}
	if p := v.failed.Load(); change && p != nil {
		v.life.RUnlock()
		return *p
	}
	return nil
}

// fail makes err sticky: after a failed fsync the page cache may have
// dropped writes, so no later Flush may claim they are durable.
func (v *View) fail(err error) error {
	err = fmt.Errorf("%w: %v; writes since the last successful flush may be lost: close the view and check the disk of %s",
		ErrFailed, err, v.dir)
	v.failed.CompareAndSwap(nil, &err)
	return *v.failed.Load()
}

func (v *View) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("%w: %d bytes at %d, volume is %d bytes", ErrOutOfRange, n, off, v.size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt: a read that passes the
// end of the volume returns what is before it and io.EOF.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, v.checkRange(off, int64(len(p)))
	}
	if off >= v.size {
		if len(p) == 0 && off == v.size {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), v.size-off)
	if err := v.begin(false); err != nil {
		return 0, err
	}
	defer v.life.RUnlock()
	if n > 0 {
		l := v.locks.lock(off/blockSize, (off+n-1)/blockSize, false)
		err := v.read(p[:n], off)
		l.unlock()
		if err != nil {
			return 0, err
		}
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// read fills p from off: runs of overlay blocks from the data file, runs of
// the others from the point. The caller holds the stripes.
func (v *View) read(p []byte, off int64) error {
	end := off + int64(len(p))
	for pos := off; pos < end; {
		runEnd, in := v.m.run(pos/blockSize, (end+blockSize-1)/blockSize)
		e := min(end, runEnd*blockSize)
		var err error
		if in {
			err = readFull(v.data, p[pos-off:e-off], pos)
		} else {
			err = v.readBase(p[pos-off:e-off], pos)
		}
		if err != nil {
			return err
		}
		pos = e
	}
	return nil
}

func (v *View) readBase(p []byte, off int64) error {
	err := readFull(v.base, p, off)
	if errors.Is(err, targets.ErrNotFound) {
		return fmt.Errorf("read recovery point %d at %d: %w; it was deleted while a view used it: keep a point (retention) while its view is served",
			v.base.Point().Seq, off, err)
	}
	if err != nil {
		return fmt.Errorf("read recovery point %d at %d: %w", v.base.Point().Seq, off, err)
	}
	return nil
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// WriteAt writes p at off into the overlay. A write past the end of the
// volume writes nothing and returns ErrOutOfRange.
func (v *View) WriteAt(p []byte, off int64) (int, error) {
	if err := v.change(off, int64(len(p)), p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteZeroes makes [off, off+n) read as zeros: whole blocks become holes
// in the overlay, partial ones are written with zeros.
func (v *View) WriteZeroes(off, n int64) error { return v.change(off, n, nil, false) }

// Trim discards [off, off+n): it reads as zeros afterwards, as with
// WriteZeroes (a view has no point in keeping the point's data there).
func (v *View) Trim(off, n int64) error { return v.change(off, n, nil, true) }

// change writes p (or zeros when p is nil, n bytes) at off under the
// stripes of the touched blocks, then marks the blocks in the map.
func (v *View) change(off, n int64, p []byte, trim bool) error {
	if err := v.checkRange(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.life.RUnlock()
	b0, b1 := off/blockSize, (off+n-1)/blockSize
	l := v.locks.lock(b0, b1, true)
	defer l.unlock()
	var err error
	if p != nil {
		err = v.write(p, off)
	} else {
		err = v.zero(off, n)
	}
	if err != nil {
		op := "write"
		if p == nil {
			op = map[bool]string{false: "write zeroes", true: "trim"}[trim]
		}
		return fmt.Errorf("overlay %s: %s %d bytes at %d: %w", v.dir, op, n, off, err)
	}
	v.m.set(b0, b1+1)
	return nil
}

// Flush makes every write that completed before it durable.
func (v *View) Flush() error {
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.life.RUnlock()
	return v.flush()
}

func (v *View) flush() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	if p := v.failed.Load(); p != nil {
		return *p
	}
	pages := v.m.takeDirty()
	if err := v.data.Sync(); err != nil {
		v.m.redirty(pages)
		return v.fail(fmt.Errorf("sync overlay data: %w", err))
	}
	if err := v.m.writePages(pages); err != nil {
		v.m.redirty(pages)
		return v.fail(fmt.Errorf("write overlay map: %w", err))
	}
	return nil
}

// Close flushes the view, closes the overlay and the point. Requests in
// progress finish first; later ones fail with ErrClosed.
func (v *View) Close() error {
	v.life.Lock()
	defer v.life.Unlock()
	if v.closed {
		return ErrClosed
	}
	v.closed = true
	// flush returns the sticky failure, if any, so Close reports it.
	errs := []error{v.flush(), v.files.close(), v.base.Close()}
	return errors.Join(errs...)
}

// WrittenRanges lists the blocks written to the view since its point
// (in its overlay), merged into ranges: what a failover volume changed.
func (v *View) WrittenRanges() []targets.Range {
	out := []targets.Range{}
	n := blockCount(v.size, v.m.bs)
	for b := int64(0); b < n; {
		end, in := v.m.run(b, n)
		if in {
			out = append(out, targets.Range{Off: b * v.m.bs, Len: min(end*v.m.bs, v.size) - b*v.m.bs})
		}
		b = end
	}
	return out
}

// HasWritten reports whether the block at off was written to the view
// since its point.
func (v *View) HasWritten(off int64) bool { return v.m.has(off / v.m.bs) }
