package tracker

import (
	"context"
	"fmt"

	"lifeboat/hrl"
)

// resyncChunk is the most a RESYNC record carries.
const resyncChunk = 1 << 20

// Resync journals the current content of every dirty region as RESYNC
// records, after which the journal again accounts for the whole backing
// store and recovery points are consistent again. A volume in bitmap mode
// resumes journaling in a new generation first. Writes go on meanwhile:
// each chunk is read and journaled under the range lock, so a concurrent
// write lands either before the chunk's record or after it, never between.
// progress, if not nil, is called after each chunk with bytes done and total.
func (v *Volume) Resync(ctx context.Context, progress func(done, total int64)) error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return ErrClosed
	}
	if v.st.Mode == ModeBitmap {
		v.sealBroken = false
		v.st.Generation++
		v.st.Mode, v.st.ModeReason = ModeJournal, ""
		if err := v.startSegment(v.resumeSeq); err != nil {
			v.st.Mode = ModeBitmap
			v.mu.Unlock()
			return fmt.Errorf("resume journaling: %w", err)
		}
		if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
			v.mu.Unlock()
			return err
		}
		v.logger().Info("journaling resumed in a new generation", "volume", v.Path, "generation", v.st.Generation)
	}
	reason := v.st.Resync
	v.mu.Unlock()

	var total int64
	v.bitmap.DirtyRanges(func(_, n int64) error { total += n; return nil })
	var done int64
	bp := v.getBuf(resyncChunk)
	defer v.bufs.Put(bp)
	err := v.bitmap.DirtyRanges(func(off, n int64) error {
		for end := off + n; off < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := min(int64(resyncChunk), end-off)
			if err := v.resyncChunk((*bp)[:c], off); err != nil {
				return err
			}
			off += c
			done += c
			if progress != nil {
				progress(done, total)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.Mode != ModeJournal || v.st.Resync != reason {
		return fmt.Errorf("resync: journaling failed meanwhile (%s); run it again", v.st.Resync)
	}
	v.st.Resync = ""
	return saveState(v.FS, v.JournalDir, v.st)
}

// resyncChunk journals the backing content of [off, off+len(b)).
func (v *Volume) resyncChunk(b []byte, off int64) error {
	end := off + int64(len(b))
	v.locks.lock(off, end)
	defer v.locks.unlock(off, end)
	if _, err := v.backing.ReadAt(b, off); err != nil {
		return fmt.Errorf("read backing at %d: %w", off, err)
	}
	return v.journal(off, end, func(w *hrl.Writer) (uint64, error) {
		_, last, err := w.AppendData(hrl.TypeResync, uint64(off), b)
		return last, err
	})
}
