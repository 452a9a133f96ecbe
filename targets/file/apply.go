package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"lifeboat/targets"
)

const (
	// chunkBytes is the amount of undo bytes gathered before they are
	// written and fsynced and the extents they protect are applied (the
	// last piece of an extent may add up to pieceBytes and headers more).
	chunkBytes = 4 << 20
	// pieceBytes bounds the part of an extent handled at once.
	pieceBytes = 1 << 20
	// runBlocks bounds one read of before-images from replica.img.
	runBlocks = 256
)

// Buffers of Apply, shared by the replicas of the process.
var (
	undoBufs = sync.Pool{New: func() any { b := make([]byte, 0, chunkBytes+2*pieceBytes); return &b }}
	runBufs  = sync.Pool{New: func() any { b := make([]byte, runBlocks*blockSize); return &b }}
)

// Apply implements targets.Replica. Without points it writes each extent
// to replica.img (one pwrite, or a hole punch for a zero extent). With
// points it first appends the before-image of every block the extents
// touch that the newest point's undo log does not hold yet (a partially
// touched block counts as touched), fsyncs the log, and only then writes
// replica.img, in chunks of about 4 MiB of before-images.
func (r *Replica) Apply(ctx context.Context, extents []targets.Extent) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if err := targets.CheckExtents(extents, r.info.Size, r.t.Properties()); err != nil {
		return fmt.Errorf("apply to %s: %w", r.info.ID, err)
	}
	if err := r.apply(extents); err != nil {
		return r.fail(fmt.Errorf("apply to %s: %w", r.info.ID, err))
	}
	return nil
}

// apply does Apply for checked extents; the caller holds wmu.
func (r *Replica) apply(extents []targets.Extent) error {
	if len(r.logs) == 0 {
		// No point can see these writes; there are no readers to exclude.
		return r.writeExtents(extents)
	}
	u := r.logs[len(r.logs)-1]
	bp := undoBufs.Get().(*[]byte)
	rp := runBufs.Get().(*[]byte)
	defer func() {
		undoBufs.Put(bp)
		runBufs.Put(rp)
	}()
	if r.pend == nil {
		r.pend = map[int64]struct{}{}
	}
	defer clear(r.pend)
	refs, batch := r.refs[:0], r.batch[:0]
	buf := (*bp)[:0]
	for _, e := range extents {
		// Pieces of at most pieceBytes keep buf bounded whatever the
		// extent's length.
		for done, n := int64(0), e.Length(); done < n; {
			piece := targets.Extent{Off: e.Off + done, Len: min(n-done, pieceBytes), Trim: e.Trim}
			if e.Data != nil {
				piece = targets.Extent{Off: piece.Off, Data: e.Data[done : done+piece.Len]}
			}
			done += piece.Length()
			var err error
			if buf, refs, err = r.collect(u, piece, buf, refs, *rp); err != nil {
				return err
			}
			batch = append(batch, piece)
			if len(buf) >= chunkBytes {
				if err := r.flush(u, buf, refs, batch); err != nil {
					return err
				}
				buf, refs, batch = buf[:0], refs[:0], batch[:0]
				clear(r.pend)
			}
		}
	}
	if len(batch) > 0 {
		if err := r.flush(u, buf, refs, batch); err != nil {
			return err
		}
	}
	*bp = buf[:0]
	clear(batch[:cap(batch)]) // do not keep the caller's data alive
	r.refs, r.batch = refs[:0], batch[:0]
	return nil
}

// collect appends to buf the undo entries for the blocks e touches that
// neither u nor this chunk holds; refs get offsets relative to buf.
func (r *Replica) collect(u *undoLog, e targets.Extent, buf []byte, refs []ref, run []byte) ([]byte, []ref, error) {
	n := e.Length()
	if n == 0 {
		return buf, refs, nil
	}
	first, last := e.Off/blockSize, (e.Off+n-1)/blockSize
	for b := first; b <= last; {
		if r.logged(u, b) {
			b++
			continue
		}
		end := b + 1 // the run [b, end) of blocks to log
		for end <= last && end-b < runBlocks && !r.logged(u, end) {
			end++
		}
		off := b * blockSize
		length := min(end*blockSize, r.info.Size) - off
		got, err := r.img.ReadAt(run[:length], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == length) {
			return nil, nil, fmt.Errorf("read before-image at %d: %w", off, err)
		}
		for k := b; k < end; k++ {
			d := run[(k-b)*blockSize : min((k-b+1)*blockSize, length)]
			if bytes.Equal(d, zeroBlock[:len(d)]) {
				d = nil
			}
			at := len(buf)
			buf = append(buf, zeroBlock[:headerSize]...)
			blen := min(int64(blockSize), r.info.Size-k*blockSize)
			zero := putHeader(buf[at:], k, int(blen), d)
			buf = append(buf, d...)
			refs = append(refs, ref{block: k, off: int64(at), n: int32(blen), zero: zero})
			r.pend[k] = struct{}{}
		}
		b = end
	}
	return buf, refs, nil
}

func (r *Replica) logged(u *undoLog, b int64) bool {
	if _, ok := r.pend[b]; ok {
		return true
	}
	_, ok := u.lookup(b)
	return ok
}

// flush makes the gathered undo entries durable, indexes them and applies
// the extents they protect. Readers are excluded only while the index
// changes together with replica.img.
func (r *Replica) flush(u *undoLog, buf []byte, refs []ref, extents []targets.Extent) error {
	if len(buf) > 0 {
		if _, err := u.f.WriteAt(buf, u.size); err != nil {
			return fmt.Errorf("undo log %s: %w", u.path, err)
		}
		if err := u.f.Sync(); err != nil {
			return fmt.Errorf("undo log %s: %w", u.path, err)
		}
		for i := range refs {
			refs[i].off += u.size
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	u.add(refs)
	u.size += int64(len(buf))
	return r.writeExtents(extents)
}

func (r *Replica) writeExtents(extents []targets.Extent) error {
	for _, e := range extents {
		switch {
		case e.Data != nil:
			if len(e.Data) == 0 {
				continue
			}
			if _, err := r.img.WriteAt(e.Data, e.Off); err != nil {
				return fmt.Errorf("write replica image at %d: %w", e.Off, err)
			}
		case e.Len > 0:
			if err := r.img.PunchHole(e.Off, e.Len); err != nil {
				return fmt.Errorf("zero replica image at %d: %w", e.Off, err)
			}
		}
	}
	return nil
}
