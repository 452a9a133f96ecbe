package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"lifeboat/targets"
)

var entryBufs = sync.Pool{New: func() any { return new([headerSize + blockSize]byte) }}

// OpenPoint implements targets.Replica. It copies nothing: reads look the
// blocks up in the undo logs at read time.
func (r *Replica) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	i, ok := r.find(seq)
	if !ok {
		return nil, fmt.Errorf("open point %d of %s: %w", seq, r.info.ID, targets.ErrNotFound)
	}
	return &pointReader{r: r, rec: r.points[i]}, nil
}

// pointReader reads one point: per block, the first entry in the undo logs
// of the point and the newer ones, else replica.img.
type pointReader struct {
	r   *Replica
	rec pointRecord
}

func (pr *pointReader) Point() targets.Point { return pr.rec.point() }
func (pr *pointReader) Size() int64          { return pr.rec.Size }
func (pr *pointReader) Close() error         { return nil }

// ReadAt implements io.ReaderAt with os.File semantics at the end; a read
// of a point deleted meanwhile fails with targets.ErrNotFound.
func (pr *pointReader) ReadAt(p []byte, off int64) (int, error) {
	r := pr.r
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return 0, fmt.Errorf("read point %d of %s: %w", pr.rec.Seq, r.info.ID, targets.ErrClosed)
	}
	i, ok := r.find(pr.rec.Seq)
	if !ok || r.points[i].Generation != pr.rec.Generation {
		return 0, fmt.Errorf("read point %d of %s: it was deleted: %w", pr.rec.Seq, r.info.ID, targets.ErrNotFound)
	}
	if off < 0 {
		return 0, fmt.Errorf("read point %d of %s: negative offset %d", pr.rec.Seq, r.info.ID, off)
	}
	if off >= pr.rec.Size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), pr.rec.Size-off))
	if err := r.readPoint(r.logs[i:], p[:n], off); err != nil {
		return 0, fmt.Errorf("read point %d of %s: %w", pr.rec.Seq, r.info.ID, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readPoint fills p with the content at off of the point whose undo log is
// logs[0]. Runs of blocks no log holds are read from replica.img at once.
func (r *Replica) readPoint(logs []*undoLog, p []byte, off int64) error {
	eb := entryBufs.Get().(*[headerSize + blockSize]byte)
	defer entryBufs.Put(eb)
	runOff, runLen := off, 0 // pending read from replica.img
	flushRun := func() error {
		if runLen == 0 {
			return nil
		}
		dst := p[runOff-off : runOff-off+int64(runLen)]
		got, err := r.img.ReadAt(dst, runOff)
		if errors.Is(err, io.EOF) {
			clear(dst[got:]) // beyond a shrunk image; those blocks were zeroed
			err = nil
		}
		runLen = 0
		if err != nil {
			return fmt.Errorf("read replica image at %d: %w", runOff, err)
		}
		return nil
	}
	for pos := off; pos < off+int64(len(p)); {
		b, in := pos/blockSize, pos%blockSize
		c := min(blockSize-in, off+int64(len(p))-pos)
		var hit *undoLog
		var e ref
		for _, u := range logs {
			if ref, ok := u.lookup(b); ok {
				hit, e = u, ref
				break
			}
		}
		if hit == nil {
			if runLen == 0 {
				runOff = pos
			}
			runLen += int(c)
			pos += c
			continue
		}
		if err := flushRun(); err != nil {
			return err
		}
		data, err := hit.readEntry(e, eb[:])
		if err != nil {
			return err
		}
		dst := p[pos-off : pos-off+c]
		k := copy(dst, data[min(in, int64(len(data))):])
		clear(dst[k:])
		pos += c
	}
	return flushRun()
}

// DeletePoint implements targets.Replica. Deleting the oldest point removes
// its undo log. Deleting P_i otherwise first appends to P_i-1's log the
// entries of P_i's log for blocks P_i-1's log lacks (they are P_i-1's
// content too: the block did not change between the points), fsyncs it,
// records the points without P_i, then removes P_i's log. A crash at any
// step leaves every remaining point exact; an interrupted merge is cut off
// at Open and redone by the next DeletePoint.
func (r *Replica) DeletePoint(ctx context.Context, seq uint64) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	i, ok := r.find(seq)
	if !ok {
		return fmt.Errorf("delete point %d of %s: %w", seq, r.info.ID, targets.ErrNotFound)
	}
	cur := r.logs[i]
	var prev *undoLog
	var moved []ref
	var movedBytes int64
	if i > 0 {
		prev = r.logs[i-1]
		var err error
		if moved, movedBytes, err = r.merge(prev, cur); err != nil {
			return r.fail(fmt.Errorf("delete point %d of %s: %w", seq, r.info.ID, err))
		}
	}
	points := append(r.points[:i:i], r.points[i+1:]...)
	logs := append(r.logs[:i:i], r.logs[i+1:]...)
	if prev != nil {
		prev.size += movedBytes // durable: merge synced it
	}
	if err := r.save(r.state, points, logs); err != nil {
		return r.fail(fmt.Errorf("delete point %d of %s: %w", seq, r.info.ID, err))
	}
	r.mu.Lock()
	if prev != nil {
		prev.add(moved)
		if i == len(r.logs)-1 {
			prev.setOpen(true) // P_i-1 is the newest point now
		}
	}
	r.points, r.logs = points, logs
	r.mu.Unlock()
	if prev != nil && prev.open == nil && len(moved) > 0 {
		r.writeIndex(prev)
	}
	if err := cur.f.Close(); err != nil {
		r.log.Warn("closing the undo log of a deleted point", "log", cur.path, "err", err)
	}
	// A failure here leaves an undo log no point lists; Open removes it.
	udir := filepath.Join(r.dir, undoDirName)
	err := r.fs.Remove(cur.path)
	if err == nil {
		err = r.removeIndex(cur)
	}
	if err != nil {
		r.log.Warn("removing the undo log of a deleted point", "log", cur.path, "err", err)
	} else if err := r.fs.SyncDir(udir); err != nil {
		r.log.Warn("removing the undo log of a deleted point", "log", cur.path, "err", err)
	}
	return nil
}

// merge appends to prev the entries of cur whose blocks prev lacks and
// fsyncs prev. It returns their refs (offsets in prev) and their size.
func (r *Replica) merge(prev, cur *undoLog) ([]ref, int64, error) {
	bp := undoBufs.Get().(*[]byte)
	defer undoBufs.Put(bp)
	eb := entryBufs.Get().(*[headerSize + blockSize]byte)
	defer entryBufs.Put(eb)
	buf := (*bp)[:0]
	var moved []ref
	at := prev.size // where buf goes in prev
	var total int64
	write := func() error {
		if len(buf) == 0 {
			return nil
		}
		if _, err := prev.f.WriteAt(buf, at); err != nil {
			return fmt.Errorf("undo log %s: %w", prev.path, err)
		}
		at += int64(len(buf))
		buf = buf[:0]
		return nil
	}
	for _, e := range cur.refs() {
		if _, ok := prev.lookup(e.block); ok {
			continue
		}
		data, err := cur.readEntry(e, eb[:]) // verified: damage is not copied
		if err != nil {
			return nil, 0, err
		}
		if e.zero {
			data = nil
		}
		moved = append(moved, ref{block: e.block, off: at + int64(len(buf)), n: e.n, zero: e.zero})
		h := len(buf)
		buf = append(buf, zeroBlock[:headerSize]...)
		putHeader(buf[h:], e.block, int(e.n), data)
		buf = append(buf, data...)
		total += e.size()
		if len(buf) >= chunkBytes {
			if err := write(); err != nil {
				return nil, 0, err
			}
		}
	}
	if err := write(); err != nil {
		return nil, 0, err
	}
	*bp = buf[:0]
	if total > 0 {
		if err := prev.f.Sync(); err != nil {
			return nil, 0, fmt.Errorf("undo log %s: %w", prev.path, err)
		}
	}
	return moved, total, nil
}
