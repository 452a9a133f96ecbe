package tracker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl"
)

// startSegment opens a new segment whose first record gets seq next.
func (v *Volume) startSegment(next uint64) error {
	id, err := uuid.Parse(v.st.VolumeID)
	if err != nil {
		return fmt.Errorf("volume id %q in %s: %w", v.st.VolumeID, stateName, err)
	}
	fsys, prealloc := v.FS, v.SegmentBytes+1<<20
	if v.copyMode {
		if err := v.reserveCopySeqsLocked(next, 2*v.copySegmentBytes()); err != nil {
			return err
		}
		fsys, prealloc = v.mem, 0
	}
	w, err := hrl.Create(fsys, v.JournalDir, hrl.Header{BlockSize: uint32(v.BlockSize), VolumeID: id,
		Generation: v.st.Generation, FirstSeq: next}, hrl.WriterConfig{Dedupe: v.win, Buffers: &v.wbuf, Preallocate: prealloc, Batch: true})
	if err != nil {
		return err
	}
	v.w, v.wMem = w, v.copyMode
	if v.curRegion = v.freeRegion; v.curRegion == nil {
		v.curRegion = make([]int64, 0, v.SegmentBytes/v.RegionSize+1)
	}
	v.freeRegion = nil
	return nil
}

// rollLocked hands the open segment to the sealer and, in journal mode,
// opens the next one. Empty segments are not rolled.
func (v *Volume) rollLocked() *pendingSeg {
	if v.w == nil || v.w.Count() == 0 {
		return nil
	}
	// The writers share their buffers: the batch is written before the
	// segment is handed over.
	if err := v.w.FlushPending(); err != nil {
		v.failLocked(fmt.Errorf("journal append: %w", err))
		return nil
	}
	v.unflushed = v.unflushed[:0]
	if v.w == nil || v.w.Count() == 0 {
		return nil
	}
	p := &pendingSeg{w: v.w, size: v.w.Size(), regions: v.curRegion, done: make(chan struct{}), mem: v.wMem}
	v.closedBytes += p.size
	v.sealing = append(v.sealing, p)
	v.sealCond.Signal()
	next := v.w.NextSeq()
	v.w, v.curRegion = nil, nil
	v.resumeSeq = next
	if v.st.Mode == ModeJournal {
		if err := v.startSegment(next); err != nil {
			v.suspendLocked(fmt.Errorf("start segment %d: %w", next, err))
		}
	}
	return p
}

// sealer writes footers and syncs sealed segments off the write path, in
// order, and offers them to the consumer. It drains the queue before it
// exits on Close.
func (v *Volume) sealer() {
	defer v.wg.Done()
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		for len(v.sealing) == 0 || v.sealing[0].started {
			if v.closed && len(v.sealing) == 0 {
				return
			}
			v.sealCond.Wait()
		}
		p := v.sealing[0]
		p.started = true
		v.mu.Unlock()
		info, err := p.w.Seal()
		p.w.Close()
		v.mu.Lock()
		v.sealing = v.sealing[1:]
		switch {
		case err != nil:
			// The consumer must not see the segments after this one as a
			// continuation: stop journaling until a resync starts a new
			// generation. The next open quarantines what is on disk.
			p.err = fmt.Errorf("seal %s: %w", filepath.Base(p.w.Path()), err)
			v.sealBroken = true
			if v.st.Mode == ModeJournal {
				v.suspendLocked(p.err)
			}
			v.dropUnsealed(p)
		case v.sealBroken:
			p.err = fmt.Errorf("segment %s follows a segment that failed to seal", filepath.Base(p.w.Path()))
			v.dropUnsealed(p)
		default:
			v.closedBytes += info.Size - p.size // the footer
			v.sealed = append(v.sealed, sealedSeg{info: info, regions: p.regions, mem: p.mem})
			close(v.changed)
			v.changed = make(chan struct{})
		}
		close(p.done)
	}
}

// dropUnsealed removes a segment that could not be sealed. It was never
// offered to the consumer, and its regions stay dirty (pinned) until the
// resync that the failure requires, so nothing is lost; left on disk it
// would break the journal's continuity at the next open.
func (v *Volume) dropUnsealed(p *pendingSeg) {
	v.closedBytes -= p.size
	for _, r := range p.regions {
		v.pinned.set(r, r+1)
	}
	v.wakeLocked()
	if err := v.fsFor(p.mem).Remove(p.w.Path()); err != nil {
		v.logger().Error("could not remove a segment that failed to seal", "file", p.w.Path(), "err", err)
	}
}

// background seals a non-empty segment once it is SegmentAge old, which
// bounds how long a write waits before it can be shipped, and runs a
// checkpoint every CheckpointInterval so that acknowledged regions turn
// clean even when no client flushes.
// resyncCheckpoint is how soon a checkpoint clears the regions a resync
// copied once the consumer acknowledged them.
const resyncCheckpoint = 500 * time.Millisecond

func (v *Volume) background() {
	defer v.wg.Done()
	tick := 250 * time.Millisecond
	if v.SegmentAge > 0 {
		tick = min(tick, max(v.SegmentAge/4, 10*time.Millisecond))
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastCheckpoint := time.Now()
	for {
		select {
		case <-v.done:
			return
		case <-t.C:
		}
		v.mu.Lock()
		if v.SegmentAge > 0 && !v.closed && v.w != nil && v.w.Count() > 0 && time.Since(v.w.Created()) >= v.SegmentAge {
			v.rollLocked()
		}
		v.mu.Unlock()
		due := v.CheckpointInterval > 0 && time.Since(lastCheckpoint) >= v.CheckpointInterval
		if !due && v.CheckpointInterval > 0 && time.Since(lastCheckpoint) >= resyncCheckpoint {
			// A resync's acknowledged regions are cleared soon: its
			// progress survives a crash (it resumes, not starts over).
			v.mu.Lock()
			due = v.copiedCands > 0
			v.mu.Unlock()
		}
		if due {
			lastCheckpoint = time.Now()
			if err := v.checkpoint(false); err != nil {
				v.logger().Error("checkpoint of the dirty bitmap failed", "path", v.Path, "err", err)
			}
		}
	}
}

// waitSealed waits until every segment handed to the sealer so far is sealed.
func (v *Volume) waitSealed() error {
	v.mu.Lock()
	pending := v.pendingLocked()
	v.mu.Unlock()
	return waitPending(pending)
}

func (v *Volume) pendingLocked() []*pendingSeg {
	return append([]*pendingSeg(nil), v.sealing...)
}

// waitPending waits for each segment in turn and returns the first seal error.
func waitPending(pending []*pendingSeg) error {
	for _, p := range pending {
		<-p.done
		if p.err != nil {
			return p.err
		}
	}
	return nil
}

// Flush makes every write that completed before it was called durable in
// both the journal and the backing store (in the journal: unless it went
// to a segment held in memory during a resync, see CopyMemory).
func (v *Volume) Flush() error {
	if err := v.waitSealed(); err != nil {
		return err
	}
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return ErrClosed
	}
	syncJournal := func() error { return nil }
	if v.w != nil {
		f, err := v.w.SyncFunc()
		if err != nil {
			v.mu.Unlock()
			return err
		}
		syncJournal = f
	}
	v.mu.Unlock()
	// The journal's fsync runs without v.mu, so writes go on meanwhile,
	// and beside the checkpoint's fsync of the backing store: a Flush
	// waits for the slower of the two, not for both in turn.
	jerr := make(chan error, 1)
	go func() { jerr <- syncJournal() }()
	cerr := v.checkpoint(false)
	err := <-jerr
	if errors.Is(err, os.ErrClosed) {
		// The segment was rolled meanwhile; its seal syncs it.
		err = v.waitSealed()
	}
	return errors.Join(err, cerr)
}

// Tag appends a recovery-point marker after every write that completed
// before it, seals the segment and returns the tag's seq once the segment
// is durable.
func (v *Volume) Tag(kind hrl.TagKind, name string) (uint64, error) {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return 0, ErrClosed
	}
	if reason := v.st.Resync; reason != "" {
		v.mu.Unlock()
		return 0, fmt.Errorf("%w (%s)", ErrResync, reason)
	}
	seq, err := v.w.AppendTag(hrl.Tag{Kind: kind, Name: name, Time: time.Now()})
	if err != nil {
		v.mu.Unlock()
		return 0, fmt.Errorf("tag %q: %w", name, err)
	}
	p := v.rollLocked()
	v.mu.Unlock()
	if p == nil {
		// The tag's batch could not be written: bitmap mode now.
		return 0, fmt.Errorf("tag %q: %w (%s)", name, ErrResync, v.Status().Resync)
	}
	<-p.done
	return seq, p.err
}

// Seal seals the open segment now if it holds records, and waits until it
// and every segment rolled before it are durable and offered to the
// consumer.
func (v *Volume) Seal() error {
	v.mu.Lock()
	v.rollLocked()
	// The queue is read under the same lock as the roll: the sealer could
	// otherwise finish (and drop from the queue) the segment just rolled
	// before it is waited for, and its seal error would be lost.
	pending := v.pendingLocked()
	v.mu.Unlock()
	return waitPending(pending)
}

// Close seals the open segment, makes everything durable and releases the
// journal directory.
func (v *Volume) Close() error {
	v.mu.Lock()
	if v.closed || v.done == nil { // closed, or never opened
		v.closed = true
		v.mu.Unlock()
		return nil
	}
	p := v.rollLocked()
	v.closed = true
	w, wMem := v.w, v.wMem
	v.w = nil
	close(v.done)
	v.sealCond.Broadcast()
	v.wakeLocked()
	v.mu.Unlock()
	var errs []error
	if p != nil {
		<-p.done
		errs = append(errs, p.err)
	}
	v.wg.Wait()
	if w != nil {
		// The empty segment opened after the last roll is not needed.
		w.Close()
		errs = append(errs, v.fsFor(wMem).Remove(w.Path()), v.FS.SyncDir(v.JournalDir))
	}
	errs = append(errs, v.checkpoint(true))
	if err := errors.Join(errs...); err == nil {
		// Everything is durable: the next Open needs no resync, unless
		// segments held in memory go unshipped (copy.go).
		v.mu.Lock()
		st := v.st
		lost := v.memSegmentsLocked()
		v.mu.Unlock()
		st.Running = false
		if lost > 0 {
			// The next Open starts a new generation (copy.go).
			st.Resync = withReason(st.Resync, lostMemoryReason)
			v.logger().Warn("closing with segments held in memory unshipped; their regions stay dirty for a resync",
				"path", v.Path, "segments", lost)
		} else {
			st.CopySeqLimit = 0
		}
		errs = append(errs, saveState(v.FS, v.JournalDir, st))
	}
	// An Ack in flight finishes before its file closes; later ones see
	// v.closed and return ErrClosed.
	v.ackMu.Lock()
	errs = append(errs, v.closeFiles())
	v.ackMu.Unlock()
	return errors.Join(errs...)
}

func (v *Volume) closeFiles() error {
	var errs []error
	if v.bitmap != nil {
		errs = append(errs, v.bitmap.Close())
	}
	if v.backing != nil {
		errs = append(errs, v.backing.Close())
	}
	if v.ackFile != nil {
		errs = append(errs, v.ackFile.Close())
	}
	if v.unlock != nil {
		v.unlock()
	}
	return errors.Join(errs...)
}
