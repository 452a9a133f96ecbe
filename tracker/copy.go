package tracker

import (
	"fmt"
	"os"
	"strings"

	"lifeboat/hrl"
)

// A resync's copy without the journal (Volume.CopyMemory). An initial
// replication or a full resync reads the whole volume; writing it to the
// journal directory first would write every byte twice on the protected
// server. With CopyMemory set, the segments opened while a Resync runs are
// held in memory (memFS) instead: the copy's records and the live writes
// that arrive meanwhile go there, in seq order as always, and the consumer
// ships them from memory. An acknowledged memory segment is dropped at
// once. The copy waits while its memory segments take more than
// CopyMemory; live writes then go to a segment file, and the copy rolls
// that file before it goes on in memory.
//
// Continuity and crash rules:
//   - Memory segments are never durable. What they changed is dirty in the
//     bitmap (marked and synced before any write, as always) and stays
//     dirty until the consumer acknowledges the segment, so a lost memory
//     segment costs a resync of its regions, never a region the bitmap
//     calls clean.
//   - Their seqs are reserved durably before use: state.CopySeqLimit is
//     above every seq a memory segment may take, saved before the segment
//     (or a record that would pass it) is written. Seqs are never reused,
//     even when the segments that used them are lost.
//   - Open after a crash (or after a Close that left memory segments
//     unacknowledged) with CopySeqLimit set: the journal on disk ends at
//     its first gap (hrl.RecoverPrefix; the segments after it are removed,
//     their regions are dirty), journaling goes on in a new generation at
//     CopySeqLimit or above (which the site accepts after anything it was
//     sent), and the dirty regions need a resync before the next point.
//     A copy killed midway thus resumes from the bitmap: what was
//     acknowledged and cleared is not copied again.
//   - A Close that finds every memory segment acknowledged clears
//     CopySeqLimit: the acknowledged seq on disk is above all of them.

// lostMemoryReason is in Status.Resync after a stop that may have lost
// segments held in memory.
const lostMemoryReason = "journal segments of a resync held in memory were lost when the volume last stopped"

// withReason adds reason to a resync reason, unless it is there.
func withReason(old, reason string) string {
	switch {
	case old == "":
		return reason
	case strings.Contains(old, reason):
		return old
	}
	return old + "; " + reason
}

// MinCopyMemory is the smallest CopyMemory accepted other than 0: room for
// a resync chunk's records in one segment while another is shipped.
const MinCopyMemory = 4 << 20

// copySeqSpan is how many seqs a reservation of CopySeqLimit covers
// beyond the segment or record that needed it.
const copySeqSpan = 1 << 26

// copySegmentBytes is the size at which a memory segment is rolled: a
// quarter of CopyMemory, so that the consumer ships one while the copy
// fills the next.
func (v *Volume) copySegmentBytes() int64 {
	return min(v.SegmentBytes, max(v.CopyMemory/4, 1<<20))
}

// segmentLimitLocked is the size at which the open segment is rolled.
func (v *Volume) segmentLimitLocked() int64 {
	if v.wMem {
		return v.copySegmentBytes()
	}
	return v.SegmentBytes
}

// fsFor is the file system of a segment: memory or the journal directory.
func (v *Volume) fsFor(mem bool) hrl.FS {
	if mem {
		return v.mem
	}
	return v.FS
}

// reserveCopySeqsLocked makes CopySeqLimit durably cover the records of
// need bytes appended from seq next on (a record takes at least a record
// header).
func (v *Volume) reserveCopySeqsLocked(next uint64, need int64) error {
	end := next + uint64(need/hrl.RecordHeaderSize) + 2
	if end < v.st.CopySeqLimit {
		return nil
	}
	st := v.st
	st.CopySeqLimit = end + copySeqSpan
	if err := saveState(v.FS, v.JournalDir, st); err != nil {
		return fmt.Errorf("reserve seqs for segments held in memory: %w", err)
	}
	v.st.CopySeqLimit = st.CopySeqLimit
	return nil
}

// memBytesLocked is the bytes of the memory segments not yet acknowledged:
// sealed, being sealed and open.
func (v *Volume) memBytesLocked() int64 {
	var n int64
	for _, p := range v.sealing {
		if p.mem {
			n += p.size + footerSize
		}
	}
	for _, s := range v.sealed {
		if s.mem {
			n += s.info.Size
		}
	}
	if v.w != nil && v.wMem {
		n += v.w.Size()
	}
	return n
}

// memSegmentsLocked counts the memory segments not yet acknowledged.
func (v *Volume) memSegmentsLocked() int {
	n := 0
	for _, p := range v.sealing {
		if p.mem {
			n++
		}
	}
	for _, s := range v.sealed {
		if s.mem {
			n++
		}
	}
	return n
}

// copyRoomLocked reports whether records of need bytes fit in CopyMemory
// beside the memory segments not yet acknowledged.
func (v *Volume) copyRoomLocked(need int64) bool {
	if !v.copying {
		return true
	}
	used := v.memBytesLocked()
	if !v.wMem {
		used += hrl.HeaderSize // the memory segment it would open
	}
	return used+need+footerSize <= v.CopyMemory
}

// setCopyLocked makes the segments opened from now on memory segments
// (on) or files, and replaces the open segment when it is of the other
// kind: rolled when it holds records, else dropped and opened again at
// the same seq.
func (v *Volume) setCopyLocked(on bool) {
	if v.copyMode == on {
		return
	}
	v.copyMode = on
	w := v.w
	if w == nil || v.st.Mode != ModeJournal || v.wMem == on {
		return
	}
	if w.Count() > 0 {
		v.rollLocked()
		return
	}
	next := w.NextSeq()
	w.Close()
	if err := v.fsFor(v.wMem).Remove(w.Path()); err != nil {
		v.logger().Warn("could not remove an empty journal segment", "file", w.Path(), "err", err)
	}
	v.w = nil
	if err := v.startSegment(next); err != nil {
		v.suspendLocked(fmt.Errorf("start segment %d: %w", next, err))
	}
}

// beginCopy and endCopy bracket a Resync: with CopyMemory set, what it
// journals goes to memory segments while there is room (waitRoom).
func (v *Volume) beginCopy() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.copying = v.CopyMemory > 0
	v.setCopyLocked(v.copying)
}

// endCopy rolls the last memory segment, so that the consumer can ship
// it, and opens segment files again.
func (v *Volume) endCopy() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.copying = false
	if !v.closed {
		v.setCopyLocked(false)
	}
}

// OpenSegment opens a segment offered to the consumer (Segments,
// NextSegment) for reading, from the journal directory or from memory.
func (v *Volume) OpenSegment(info hrl.SegmentInfo) (hrl.File, error) {
	if v.mem != nil && v.mem.has(info.Path) {
		return v.mem.OpenFile(info.Path, os.O_RDONLY, 0)
	}
	return v.FS.OpenFile(info.Path, os.O_RDONLY, 0)
}
