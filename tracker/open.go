package tracker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl"
)

// Open opens the backing store and the journal directory, recovering from a
// crash if needed: a torn journal tail is truncated, the newest segment
// sealed, and the sealed segments are offered to the consumer again.
func (v *Volume) Open(ctx context.Context) error {
	if err := v.checkConfig(); err != nil {
		return err
	}
	if err := v.FS.MkdirAll(v.JournalDir, hrl.PrivateDir); err != nil {
		return fmt.Errorf("journal directory: %w", err)
	}
	unlock, err := lockDir(v.FS, v.JournalDir)
	if err != nil {
		return err
	}
	v.unlock = unlock
	v.makePrivate()
	v.sealCond.L = &v.mu
	if err := v.open(); err != nil {
		v.closeFiles()
		return err
	}
	v.done = make(chan struct{})
	v.changed = make(chan struct{})
	v.freed = make(chan struct{})
	v.startJournaler()
	v.wg.Add(1)
	go v.sealer()
	v.wg.Add(1)
	go v.background()
	return nil
}

// makePrivate tightens a journal directory an earlier version created
// readable by others; a failure is logged, as it leaves the journal as
// usable as before.
func (v *Volume) makePrivate() {
	changed, err := hrl.MakePrivate(v.FS, v.JournalDir)
	if err != nil {
		v.logger().Warn("journal directory may stay readable by other users", "dir", v.JournalDir, "err", err)
	}
	if len(changed) > 0 {
		v.logger().Info("journal made private: an earlier version had left it readable by other users",
			"dir", v.JournalDir, "tightened", len(changed), "modes", "directories 0700, files 0600")
	}
}

func (v *Volume) open() error {
	f, err := v.FS.OpenFile(v.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open backing store: %w", err)
	}
	v.backing = f
	if v.size, err = f.Size(); err != nil {
		return fmt.Errorf("size of %s: %w", v.Path, err)
	}
	if v.size%512 != 0 {
		return fmt.Errorf("%s is %d bytes, not a multiple of 512", v.Path, v.size)
	}
	st, found, err := loadState(v.FS, v.JournalDir)
	if err != nil {
		return err
	}
	if !found {
		st = state{VolumeID: cmp.Or(v.ID, uuid.NewString()), Generation: 1, BlockSize: v.BlockSize, RegionSize: v.RegionSize, Mode: ModeJournal}
	} else if st.BlockSize != v.BlockSize {
		return fmt.Errorf("journal %s was written with block size %d, not %d", v.JournalDir, st.BlockSize, v.BlockSize)
	}
	st.RegionSize = v.RegionSize
	v.st = st
	if st.ReadOnly != "" {
		v.readOnly.Store(true)
		v.logger().Warn("volume is read-only; writes get EPERM", "path", v.Path, "reason", st.ReadOnly)
	}
	bm, reason, err := openBitmap(v.FS, filepath.Join(v.JournalDir, bitmapName), v.RegionSize, v.size)
	if err != nil {
		return err
	}
	v.bitmap = bm
	if !found && v.CleanStart && !v.InitialSync && reason == reasonNewBitmap {
		for r := range bm.Regions() {
			bm.Clear(r)
		}
		if err := bm.Sync(); err != nil {
			return err
		}
		reason = ""
	}
	if reason != "" {
		v.logger().Info("dirty bitmap initialised", "path", v.Path, "reason", reason, "dirty_regions", bm.Dirty())
	}
	switch {
	case !found && v.InitialSync:
		// A bitmap left without its volume.json may be partly clean, but
		// the replica has nothing: every region must be copied.
		if err := bm.Mark(0, v.size); err != nil {
			return err
		}
		v.st.Resync = initialSyncReason
		v.logger().Info("initial replication needed; recovery points wait for a resync of every region",
			"path", v.Path, "regions", bm.Regions())
	case found && reason != "" && v.st.Resync == "":
		// The old bitmap's record of what the replica lacks is gone.
		v.st.Resync = "dirty bitmap reinitialised: " + reason
	}
	if v.Dedupe {
		v.win = hrl.NewWindow(v.DedupeBlocks)
	}
	v.touched = map[int64]uint64{}
	v.clearable = map[int64]clearCand{}
	if v.ackFile, v.acked, err = openAcked(v.FS, v.JournalDir); err != nil {
		return err
	}
	v.mem = newMemFS()
	// A memory segment is rolled once it reaches copySegmentBytes; the
	// records of the batch that took it there come on top.
	v.mem.size = v.copySegmentBytes() + 2*resyncChunk
	next, err := v.recoverJournal()
	if err != nil {
		return err
	}
	if lim := v.st.CopySeqLimit; lim != 0 {
		// Segments held in memory may be lost (copy.go): journaling goes
		// on in a new generation at the reserved seqs' end, and a resync
		// of the dirty regions makes it whole (in bitmap mode, Resync
		// starts the new generation).
		if v.st.Mode == ModeJournal {
			v.st.Generation++
		}
		v.st.Resync = withReason(v.st.Resync, lostMemoryReason)
		next = max(next, lim)
		v.logger().Warn("segments held in memory may have been lost; dirty regions need a resync in a new generation",
			"path", v.Path, "next_seq", next, "dirty_regions", v.bitmap.Dirty())
	}
	if v.st.Running && v.st.Resync == "" {
		// Writes that reached the backing store after the last durable
		// journal record may be missing from the journal: only a resync of
		// the dirty regions makes the replica whole again.
		v.st.Resync = "unclean shutdown: writes after the last flush may be missing from the journal"
		v.logger().Warn("volume was not closed cleanly; dirty regions need a resync before the next recovery point",
			"path", v.Path, "dirty_regions", v.bitmap.Dirty())
	}
	v.st.Running = true
	if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
		return err
	}
	// The dirty regions are what the replica may lack: the journal cannot
	// vouch for any of them until a resync has copied it.
	v.pinned = make(regionSet, (v.bitmap.Regions()+63)/64)
	v.copied = make(regionSet, len(v.pinned))
	if v.st.Resync != "" {
		v.pinned = v.bitmap.snapshot()
	}
	v.resumeSeq = next
	if v.st.Mode == ModeJournal {
		if err := v.startSegment(next); err != nil {
			// The protected server keeps its disk: track dirty regions
			// until the journal can be written again.
			v.suspendLocked(fmt.Errorf("start segment %d: %w", next, err))
		}
		return nil
	}
	v.logger().Warn("volume is in bitmap mode; journaling stays suspended until a resync", "path", v.Path, "reason", v.st.ModeReason)
	return nil
}

// recoverJournal verifies the segments on disk, rebuilds the region
// bookkeeping for the unacknowledged ones and returns the next seq. A
// journal that cannot be trusted is moved aside and a new generation begins;
// the bitmap still covers every region those segments touched.
func (v *Volume) recoverJournal() (uint64, error) {
	recover := hrl.Recover
	if v.st.CopySeqLimit != 0 {
		recover = hrl.RecoverPrefix // segments held in memory may be missing
	}
	rec, err := recover(v.FS, v.JournalDir)
	if err != nil {
		if !errors.Is(err, hrl.ErrCorrupt) && !errors.Is(err, hrl.ErrGap) {
			return 0, err
		}
		return v.quarantine(err)
	}
	if rec.Truncated != nil {
		v.logger().Warn("journal torn tail truncated after a crash", "path", v.Path, "file", rec.Truncated.File,
			"offset", rec.Truncated.Offset, "last_good_seq", rec.Truncated.Seq, "reason", rec.Truncated.Reason)
	}
	for _, path := range rec.Removed {
		v.logger().Warn("removed an unsealed journal segment that never became durable", "file", path)
	}
	for _, path := range rec.AfterGap {
		v.logger().Warn("removed a journal segment that followed segments held in memory and lost; its regions are dirty",
			"file", path, "gap", rec.Gap)
	}
	next := v.acked + 1
	for i, info := range rec.Segments {
		if len(v.sealed) == 0 && info.Count > 0 && info.LastSeq > v.acked && info.FirstSeq != v.acked+1 && v.st.CopySeqLimit != 0 {
			// The segments held in memory before this one were lost.
			if err := v.removeAfterGap(rec.Segments[i:]); err != nil {
				return 0, err
			}
			break
		}
		if info.Count == 0 || info.LastSeq <= v.acked {
			// Empty, or acknowledged before a crash interrupted its deletion.
			if err := v.FS.Remove(info.Path); err != nil {
				return 0, fmt.Errorf("remove acknowledged segment: %w", err)
			}
			continue
		}
		if len(v.sealed) == 0 && info.FirstSeq != v.acked+1 && v.st.CopySeqLimit == 0 {
			return v.quarantine(fmt.Errorf("%w: acknowledged through seq %d but the oldest segment %s starts at %d",
				hrl.ErrGap, v.acked, filepath.Base(info.Path), info.FirstSeq))
		}
		if info.Generation > v.st.Generation {
			v.st.Generation = info.Generation
		}
		regions, err := v.segmentRegions(info)
		if err != nil {
			return 0, err
		}
		v.sealed = append(v.sealed, sealedSeg{info: info, regions: regions})
		v.closedBytes += info.Size
		next = info.LastSeq + 1
	}
	return next, nil
}

// removeAfterGap removes segments that follow segments held in memory and
// lost (copy.go): they cannot be shipped without them, and what they
// changed is dirty in the bitmap.
func (v *Volume) removeAfterGap(segs []hrl.SegmentInfo) error {
	for _, info := range segs {
		v.logger().Warn("removed a journal segment that followed segments held in memory and lost; its regions are dirty",
			"file", info.Path, "acked_seq", v.acked)
		if err := v.FS.Remove(info.Path); err != nil {
			return fmt.Errorf("remove segment after a gap: %w", err)
		}
	}
	return v.FS.SyncDir(v.JournalDir)
}

// segmentRegions lists the regions a segment's records change and records
// them as touched by its seqs.
func (v *Volume) segmentRegions(info hrl.SegmentInfo) ([]int64, error) {
	f, err := v.FS.OpenFile(info.Path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rd, err := hrl.NewReader(f, info.Size, info.Path)
	if err != nil {
		return nil, err
	}
	var regions []int64
	for {
		rec, err := rd.Next()
		if err != nil {
			if rd.Sealed() {
				return regions, nil
			}
			return nil, err
		}
		if rec.Length == 0 {
			continue
		}
		r0, r1 := v.bitmap.regions(int64(rec.Offset), int64(rec.Length))
		for r := r0; r < r1; r++ {
			if _, ok := v.touched[r]; !ok || v.touched[r] < info.FirstSeq {
				regions = append(regions, r)
			}
			v.touched[r] = rec.Seq
		}
	}
}

// quarantine moves every segment aside after corruption or a gap and starts
// a new generation. Nothing is lost: the regions those segments changed are
// still dirty in the bitmap, and a resync ships them.
func (v *Volume) quarantine(cause error) (uint64, error) {
	seqs, err := hrl.ListSegments(v.FS, v.JournalDir)
	if err != nil {
		return 0, err
	}
	qdir := filepath.Join(v.JournalDir, "quarantine", time.Now().UTC().Format("20060102T150405Z"))
	if err := v.FS.MkdirAll(qdir, hrl.PrivateDir); err != nil {
		return 0, err
	}
	next := v.acked + 1
	for _, s := range seqs {
		name := hrl.SegmentName(s)
		if err := v.FS.Rename(filepath.Join(v.JournalDir, name), filepath.Join(qdir, name)); err != nil {
			return 0, fmt.Errorf("quarantine %s: %w", name, err)
		}
		// Seqs must never be reused, and a damaged segment's last seq is
		// unknown: a record takes at least a record header, which bounds it.
		if f, err := v.FS.OpenFile(filepath.Join(qdir, name), os.O_RDONLY, 0); err == nil {
			if size, err := f.Size(); err == nil {
				next = max(next, s+uint64(size)/hrl.RecordHeaderSize+1)
			}
			f.Close()
		}
	}
	if err := v.FS.SyncDir(v.JournalDir); err != nil {
		return 0, err
	}
	if err := v.ackFile.store(next - 1); err != nil {
		return 0, err
	}
	v.st.Generation++
	v.st.Resync = fmt.Sprintf("journal could not be trusted (%v); segments moved to %s", cause, qdir)
	clear(v.touched)
	v.sealed = nil
	v.closedBytes = 0
	v.logger().Error("journal quarantined, new generation; dirty regions need a resync",
		"path", v.Path, "generation", v.st.Generation, "cause", cause, "moved_to", qdir)
	v.acked = next - 1
	return next, nil
}
