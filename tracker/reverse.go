package tracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"lifeboat/hrl"
)

// What failback needs of the tracker: a failover volume whose journal is
// shipped back to the primary site (ResyncRanges, Volume.ResyncSkip), and
// a primary volume's journal directory brought in line with a disk that
// the master target rewrote behind it (LockJournal, Rebase).

// Range is Len bytes at Off.
type Range struct{ Off, Len int64 }

// ResyncRanges is ResyncAll for part of the volume: the regions of ranges
// become dirty and pinned, journaling is suspended with reason, and the
// journal so far is sealed. It returns the seq of its last record: the
// consumer acknowledges the segments up to it without shipping them, and
// the next Resync copies the dirty regions (those and any dirty before) in
// a new generation. A failback's reprotect starts so: the master target
// holds none of the failover volume's journal, only the primary disk.
func (v *Volume) ResyncRanges(ranges []Range, reason string) (uint64, error) {
	return v.resyncRanges(ranges, reason, slog.LevelInfo)
}

// resyncRanges is ResyncRanges logging the suspension at level.
func (v *Volume) resyncRanges(ranges []Range, reason string, level slog.Level) (uint64, error) {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return 0, ErrClosed
	}
	for _, r := range ranges {
		if r.Len <= 0 {
			continue
		}
		if r.Off < 0 || r.Off+r.Len > v.size {
			v.mu.Unlock()
			return 0, fmt.Errorf("resync range [%d, %d) outside the volume (%d bytes)", r.Off, r.Off+r.Len, v.size)
		}
		if err := v.bitmap.Mark(r.Off, r.Len); err != nil {
			v.mu.Unlock()
			return 0, err
		}
		v.pinLocked(r.Off, r.Off+r.Len)
	}
	// Every dirty region is copied by the resync: what was dirty before
	// is in the journal being dropped.
	v.pinned = v.bitmap.snapshot()
	if v.st.Mode == ModeJournal {
		v.suspendAs(errors.New(reason), level, "journal dropped: the dirty regions are resynced in a new generation")
	} else {
		v.st.Resync = "journal suspended: " + reason
		v.logger().Log(context.Background(), level, "dirty regions need a resync", "path", v.Path, "reason", reason)
		if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
			v.mu.Unlock()
			return 0, err
		}
	}
	last := v.resumeSeq - 1
	v.mu.Unlock()
	return last, v.waitSealed()
}

// keepBlocks asks ResyncSkip about each block of b (at off), before b is
// journaled and outside the journal's lock, and sets (*keep)[i] for the
// blocks to journal; it reports whether there is any.
func (v *Volume) keepBlocks(b []byte, off int64, keep *[]bool) bool {
	bs := v.blockSize()
	n := (int64(len(b)) + bs - 1) / bs
	*keep = slices.Grow((*keep)[:0], int(n))[:n]
	some := false
	for i := range n {
		k := !v.ResyncSkip(off+i*bs, b[i*bs:min((i+1)*bs, int64(len(b)))])
		(*keep)[i] = k
		some = some || k
	}
	return some
}

// appendKept appends RESYNC records for the runs of kept blocks of b (at
// off) and returns the seq of the last.
func appendKept(w *hrl.Writer, b []byte, off int64, keep []bool, bs int64) (uint64, error) {
	var last uint64
	for i := 0; i < len(keep); {
		if !keep[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(keep) && keep[j] {
			j++
		}
		_, l, err := w.AppendData(hrl.TypeResync, uint64(off+int64(i)*bs), b[int64(i)*bs:min(int64(j)*bs, int64(len(b)))])
		if err != nil {
			return 0, err
		}
		last, i = l, j
	}
	return last, nil
}

// LockJournal takes a journal directory's lock as an agent's Open does,
// for a process that works on the volume without opening it (the master
// target, while it writes the primary disk). It fails with ErrLocked while
// an agent has the volume open.
func LockJournal(dir string) (func(), error) {
	return lockDir(hrl.OSFS{}, dir)
}

// Rebase brings a closed volume's journal directory in line with a
// backing store that now equals a replica whose state is generation gen,
// seq next-1 (a failback: the master target made the primary disk equal
// to the failover volume, and the site's replica equals it too). The
// journal is dropped (its writes were rolled back by the failback), every
// region becomes clean, and the next Open journals generation gen from
// seq next with no resync pending. The caller holds the journal's lock
// (LockJournal). It is safe to repeat after a crash.
func Rebase(journalDir string, size int64, gen, next uint64) error {
	fsys := hrl.OSFS{}
	st, found, err := loadState(fsys, journalDir)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s has no %s: not a journal directory", journalDir, stateName)
	}
	segs, err := hrl.ListSegments(fsys, journalDir)
	if err != nil {
		return err
	}
	for _, first := range segs {
		if err := fsys.Remove(filepath.Join(journalDir, hrl.SegmentName(first))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rebase: %w", err)
		}
	}
	ack, _, err := openAcked(fsys, journalDir)
	if err != nil {
		return err
	}
	err = ack.store(next - 1)
	ack.Close()
	if err != nil {
		return err
	}
	bm, _, err := openBitmap(fsys, filepath.Join(journalDir, bitmapName), st.RegionSize, size)
	if err != nil {
		return err
	}
	for r := range bm.Regions() {
		bm.Clear(r)
	}
	if err := bm.Close(); err != nil {
		return err
	}
	st.Generation, st.Mode, st.ModeReason, st.Resync = gen, ModeJournal, "", ""
	st.Running, st.ReadOnly, st.CopySeqLimit = false, "", 0
	return saveState(fsys, journalDir, st)
}
