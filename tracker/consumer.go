package tracker

import (
	"context"
	"errors"
	"fmt"
	"os"

	"lifeboat/hrl"
)

// The consumer API: a shipper takes sealed segments in order (NextSegment,
// Segments), and acknowledges each once it holds it durably (Ack).

// Segments returns the sealed segments not yet acknowledged, oldest first.
func (v *Volume) Segments() []hrl.SegmentInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]hrl.SegmentInfo, len(v.sealed))
	for i, s := range v.sealed {
		out[i] = s.info
	}
	return out
}

// NextSegment waits for the oldest sealed segment whose first seq is above
// after and returns it.
func (v *Volume) NextSegment(ctx context.Context, after uint64) (hrl.SegmentInfo, error) {
	for {
		v.mu.Lock()
		if v.closed {
			v.mu.Unlock()
			return hrl.SegmentInfo{}, ErrClosed
		}
		for _, s := range v.sealed {
			if s.info.FirstSeq > after {
				v.mu.Unlock()
				return s.info, nil
			}
		}
		ch := v.changed
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return hrl.SegmentInfo{}, ctx.Err()
		}
	}
}

// Ack acknowledges the oldest sealed segment (named by its first seq): the
// consumer has it durably. The acknowledgement is recorded (made durable
// by the next checkpoint, which then deletes the segment: one sync for
// every segment acknowledged in between; a crash before it only offers
// the segment to the consumer again), and the regions it changed that no
// newer write touched (and that are not pinned for a resync) may be
// cleared in the bitmap by a checkpoint. Its bytes no longer count against
// JournalQuota. Writers are not held up.
func (v *Volume) Ack(firstSeq uint64) error {
	v.ackMu.Lock()
	defer v.ackMu.Unlock()
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return ErrClosed
	}
	if len(v.sealed) == 0 || v.sealed[0].info.FirstSeq != firstSeq {
		v.mu.Unlock()
		return fmt.Errorf("%w (got %d)", ErrAckOrder, firstSeq)
	}
	s := v.sealed[0] // only Ack removes it, and Acks are serialised
	v.mu.Unlock()
	if err := v.ackFile.write(s.info.LastSeq); err != nil {
		return err
	}
	if s.mem {
		v.mem.Remove(s.info.Path) // nothing on disk; the buffer serves the next one
	} else {
		v.ackedFiles = append(v.ackedFiles, s.info.Path)
	}
	v.mu.Lock()
	v.acked = s.info.LastSeq
	v.sealed = v.sealed[1:]
	v.closedBytes -= s.info.Size
	for _, r := range s.regions {
		if last, ok := v.touched[r]; ok && last <= s.info.LastSeq {
			delete(v.touched, r)
			for _, seen := range v.reacked {
				seen.m[r] = struct{}{}
			}
			if !v.pinned.has(r) {
				// A resync (the initial replication) walks each region
				// once: its regions are no working set to keep hot, and
				// clearing them at once keeps its progress for a restart.
				v.addClearable(r, v.st.Resync != "" || v.copied.has(r))
				v.copied.unset(r, r+1)
			}
		}
	}
	v.freeRegion = s.regions[:0]
	v.wakeLocked()
	v.mu.Unlock()
	return nil
}

// syncAcked makes the acknowledgements so far durable and then deletes
// their segments (not synced: a segment found again after a crash is at
// or below the acked seq and is deleted then). A failed sync keeps them
// for the next checkpoint.
func (v *Volume) syncAcked() error {
	v.ackMu.Lock()
	files := v.ackedFiles
	if len(files) == 0 || v.ackFile == nil {
		v.ackMu.Unlock()
		return nil
	}
	err := v.ackFile.sync()
	if err == nil {
		v.ackedFiles = nil
	}
	v.ackMu.Unlock()
	if err != nil {
		return err
	}
	for _, path := range files {
		if err := v.FS.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove acknowledged segment: %w", err)
		}
	}
	return nil
}

// Status describes the tracking state of a volume. It is part of `lifeboat
// status --output json`: keys are snake_case and only ever added to.
type Status struct {
	VolumeID   string `json:"volume_id"`
	Generation uint64 `json:"generation"`
	Mode       string `json:"mode"`
	ModeReason string `json:"mode_reason,omitempty"`
	Resync     string `json:"resync,omitempty"`    // why a resync is needed; empty when none is
	ReadOnly   string `json:"read_only,omitempty"` // why writes get EPERM (SetReadOnly); empty when they are taken
	NextSeq    uint64 `json:"next_seq"`
	AckedSeq   uint64 `json:"acked_seq"`
	Sealed     int    `json:"sealed_segments"`
	// JournalBytes is the unacknowledged journal: segments sealed or being
	// sealed and not yet acknowledged, and the open segment.
	JournalBytes int64 `json:"journal_bytes"`
	JournalQuota int64 `json:"journal_quota"` // Volume.JournalQuota; 0 for none
	DirtyRegions int64 `json:"dirty_regions"`
	Regions      int64 `json:"regions"`
	RegionSize   int64 `json:"region_size"`
	Size         int64 `json:"size"`
}

// Status returns the current tracking state.
func (v *Volume) Status() Status {
	v.mu.Lock()
	s := Status{VolumeID: v.st.VolumeID, Generation: v.st.Generation, Mode: v.st.Mode, ModeReason: v.st.ModeReason, Resync: v.st.Resync,
		ReadOnly: v.st.ReadOnly,
		AckedSeq: v.acked, Sealed: len(v.sealed), RegionSize: v.RegionSize, Size: v.size,
		JournalBytes: v.journalBytesLocked(), JournalQuota: v.JournalQuota}
	s.NextSeq = v.resumeSeq // in bitmap mode, the seq journaling resumes at
	if v.w != nil {
		s.NextSeq = v.w.NextSeq()
	}
	v.mu.Unlock()
	s.DirtyRegions, s.Regions = v.bitmap.Dirty(), v.bitmap.Regions()
	return s
}
