package tracker

import (
	"context"
	"errors"
	"fmt"
	"io"

	"lifeboat/hrl"
)

// resyncChunk is the most a RESYNC record carries.
const resyncChunk = 1 << 20

// Resync journals the current content of every dirty region, after which
// the journal again accounts for the whole backing store and recovery
// points are consistent again. A volume in bitmap mode resumes journaling
// in a new generation first.
//
// Each dirty range is walked with the backing store's allocation
// (Extents): a hole becomes one ZERO record flagged as a trim (a target may
// punch it) and is not read; data is read and journaled as RESYNC records
// in chunks (all-zero blocks become ZERO records). Writes go on meanwhile:
// each chunk is read, and each hole checked again, under the range lock,
// so a concurrent write lands either before the record or after it.
//
// With a JournalQuota, Resync does not exceed it: before a chunk that
// would, it seals the open segment and waits (until ctx is done) for the
// consumer to acknowledge enough. A normal write that exceeds the quota
// meanwhile still switches the volume to bitmap mode; Resync then fails
// and must be run again.
//
// progress, if not nil, is called after each chunk and hole with the bytes
// done and the total: the dirty bytes when Resync started. done reaches
// total exactly when the walk completes (one call with 0, 0 when nothing
// is dirty).
func (v *Volume) Resync(ctx context.Context, progress func(done, total int64)) error {
	v.resyncMu.Lock()
	defer v.resyncMu.Unlock()
	reason, err := v.resumeJournal()
	if err != nil {
		return err
	}
	v.beginCopy()
	defer v.endCopy() // also on failure: the memory segments so far are shipped
	dirty := v.bitmap.snapshot()
	v.skipAcknowledged(dirty)
	w := resyncWalk{v: v, ctx: ctx, progress: progress, chunk: v.resyncChunkBytes()}
	v.bitmap.ranges(dirty, func(_, n int64) error { w.total += n; return nil })
	bp := v.getBuf(w.chunk)
	defer v.bufs.Put(bp)
	w.buf = *bp
	if err := v.bitmap.ranges(dirty, w.dirtyRange); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	if w.total == 0 && progress != nil {
		progress(0, 0)
	}
	v.endCopy()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.Mode != ModeJournal || v.st.Resync != reason {
		return fmt.Errorf("resync: %w", v.failedMeanwhileLocked())
	}
	v.st.Resync = ""
	return saveState(v.FS, v.JournalDir, v.st)
}

// failedMeanwhileLocked is the error of a resync that journaling failed
// under: it wraps the cause of the last switch to bitmap mode.
func (v *Volume) failedMeanwhileLocked() error {
	if v.suspendCause != nil {
		return fmt.Errorf("journaling failed meanwhile (%w); run it again", v.suspendCause)
	}
	return fmt.Errorf("journaling failed meanwhile (%s); run it again", v.st.Resync)
}

// skipAcknowledged removes from a snapshot of the dirty bitmap the regions
// whose every change the consumer has acknowledged and that only wait for
// the next checkpoint to be cleared: the replica has them, so a resync
// must not send them again. A region written again since is in touched
// (journaled) or pinned (bitmap mode) and stays.
func (v *Volume) skipAcknowledged(dirty regionSet) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.clearable {
		if _, again := v.touched[c.r]; !again && !v.pinned.has(c.r) {
			dirty.unset(c.r, c.r+1)
		}
	}
}

// resumeJournal leaves bitmap mode in a new generation, and returns the
// reason for the resync as it stands now.
func (v *Volume) resumeJournal() (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return "", ErrClosed
	}
	if v.st.Mode == ModeBitmap {
		v.sealBroken = false
		v.st.Generation++
		v.st.Mode, v.st.ModeReason = ModeJournal, ""
		if err := v.startSegment(v.resumeSeq); err != nil {
			v.st.Mode = ModeBitmap
			return "", fmt.Errorf("resume journaling: %w", err)
		}
		if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
			return "", err
		}
		v.logger().Info("journaling resumed in a new generation", "path", v.Path, "generation", v.st.Generation)
	}
	return v.st.Resync, nil
}

// resyncWalk journals the dirty ranges of one Resync.
type resyncWalk struct {
	v           *Volume
	ctx         context.Context
	progress    func(done, total int64)
	chunk       int64
	buf         []byte
	done, total int64
}

func (w *resyncWalk) advance(n int64) {
	w.done += n
	if w.progress != nil {
		w.progress(w.done, w.total)
	}
}

// dirtyRange journals [off, off+n), which starts at a region boundary and
// ends at one or at the end of the volume. Holes and data as reported by
// the file system may start and end anywhere; records must be block
// aligned, so a partial block at either end of a data extent is read as
// data, and a hole shorter than that is read as data too.
func (w *resyncWalk) dirtyRange(off, n int64) error {
	v, end, bs := w.v, off+n, w.v.blockSize()
	for pos := off; pos < end; {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		exts, err := v.Extents(pos, end-pos)
		if err != nil || len(exts) == 0 {
			exts = []Extent{{Offset: pos, Length: end - pos}}
		}
		start, replan := pos, false
		for _, e := range exts {
			t := e.Offset + e.Length
			if t <= pos {
				continue // inside a block already journaled as data
			}
			if !e.Hole {
				de := min((t+bs-1)/bs*bs, end)
				if err := w.data(pos, de); err != nil {
					return err
				}
				pos = de
				continue
			}
			he := t
			if t < end {
				he = t / bs * bs
			}
			if he <= pos {
				continue // less than a block: read with the data after it
			}
			hole, err := v.resyncHole(w.ctx, pos, he)
			if err != nil {
				return err
			}
			if !hole {
				replan = true // written since Extents: look again
				break
			}
			w.advance(he - pos)
			pos = he
		}
		if pos == start && !replan {
			// Extents too small to make progress: one block as data.
			de := min(pos+bs, end)
			if err := w.data(pos, de); err != nil {
				return err
			}
			pos = de
		}
	}
	return nil
}

// data journals the content of [off, end) in chunks.
func (w *resyncWalk) data(off, end int64) error {
	for off < end {
		c := min(w.chunk, end-off)
		if err := w.v.resyncData(w.ctx, w.buf[:c], off); err != nil {
			return err
		}
		off += c
		w.advance(c)
	}
	return nil
}

// resyncData journals the backing content of [off, off+len(b)) as RESYNC
// records.
func (v *Volume) resyncData(ctx context.Context, b []byte, off int64) error {
	end := off + int64(len(b))
	var keep []bool // with ResyncSkip: which blocks of b are journaled
	q := journalReq{a0: off, a1: end, need: dataNeed(int64(len(b)), v.blockSize()), resync: true,
		fn: func(w *hrl.Writer) (uint64, error) {
			if keep != nil {
				return appendKept(w, b, off, keep, v.blockSize())
			}
			_, last, err := w.AppendData(hrl.TypeResync, uint64(off), b)
			return last, err
		}}
	for {
		if err := v.waitRoom(ctx, q.need); err != nil {
			return err
		}
		v.locks.lock(off, end)
		_, err := v.backing.ReadAt(b, off)
		switch {
		case err != nil:
			err = fmt.Errorf("read backing at %d: %w", off, err)
		case v.ResyncSkip != nil && !v.keepBlocks(b, off, &keep):
			// The consumer has these bytes: the regions need no record.
			v.mu.Lock()
			v.unpinCoveredLocked(off, end)
			v.mu.Unlock()
		default:
			err = v.journal(q)
		}
		v.locks.unlock(off, end)
		if !errors.Is(err, errQuotaWait) {
			return err
		}
	}
}

// resyncHole journals [hs, he) as a trimmed ZERO record if it is still a
// hole under the range lock, and reports whether it was.
func (v *Volume) resyncHole(ctx context.Context, hs, he int64) (bool, error) {
	sk, ok := v.backing.(hrl.Seeker)
	if !ok {
		return false, nil
	}
	q := journalReq{a0: hs, a1: he, need: hrl.RecordHeaderSize, resync: true,
		fn: func(w *hrl.Writer) (uint64, error) { return w.AppendZero(uint64(hs), uint64(he-hs), true) }}
	for {
		if err := v.waitRoom(ctx, q.need); err != nil {
			return false, err
		}
		v.locks.lock(hs, he)
		data, err := sk.SeekData(hs)
		if err == nil && data < he || err != nil && !errors.Is(err, io.EOF) {
			v.locks.unlock(hs, he)
			return false, nil
		}
		err = v.journal(q)
		v.locks.unlock(hs, he)
		if !errors.Is(err, errQuotaWait) {
			return err == nil, err
		}
	}
}
