package tracker

import (
	"context"
	"errors"
	"fmt"

	"lifeboat/hrl"
)

// The journal quota (Volume.JournalQuota) bounds the bytes of journal that
// the consumer has not acknowledged. Every append states the most bytes its
// records can take (need); the check reserves room for the open segment's
// footer as well, so sealing never takes the journal above the quota.

// footerSize is the bytes a seal adds to a segment (hrl's footer record).
const footerSize = hrl.RecordHeaderSize + 16

// errQuotaWait refuses a resync record that would exceed the quota; the
// resync waits for acknowledgements and tries again.
var errQuotaWait = errors.New("journal quota reached: wait for acknowledgements")

// dataNeed is the most journal bytes AppendData takes for n bytes of
// content: every block may become a record of its own (runs of literal,
// zero and duplicate blocks alternate), each at most a header and the block.
func dataNeed(n, bs int64) int64 {
	return n + hrl.RecordHeaderSize*((n+bs-1)/bs)
}

// journalBytesLocked is Status.JournalBytes.
func (v *Volume) journalBytesLocked() int64 {
	n := v.closedBytes
	if v.w != nil {
		n += v.w.Size()
	}
	return n
}

// overQuotaLocked returns an error wrapping ErrJournalQuota if records of
// need bytes could take the unacknowledged journal above JournalQuota.
func (v *Volume) overQuotaLocked(need int64) error {
	if v.JournalQuota <= 0 {
		return nil
	}
	used := v.journalBytesLocked()
	if used+need+footerSize <= v.JournalQuota {
		return nil
	}
	return fmt.Errorf("%w: %d bytes unacknowledged, quota %d; tracking dirty regions only until a resync copies them once the consumer has caught up",
		ErrJournalQuota, used, v.JournalQuota)
}

// wakeLocked wakes a resync waiting for journal room: room may have been
// freed, or the mode changed, or the volume closed.
func (v *Volume) wakeLocked() {
	if v.freed != nil {
		close(v.freed)
		v.freed = make(chan struct{})
	}
}

// resyncChunkBytes is the most content a resync journals at once: resyncChunk,
// or less when the journal quota could not hold a chunk's records beside an
// empty segment's header and footer.
func (v *Volume) resyncChunkBytes() int64 {
	c := int64(resyncChunk)
	if q := v.JournalQuota; q > 0 {
		room := q - hrl.HeaderSize - footerSize
		bs := v.blockSize()
		c = min(c, max(room, 0)/(bs+hrl.RecordHeaderSize)*bs)
	}
	return c
}

// waitRoom returns once records of need bytes fit under the journal quota,
// sealing the open segment first so that the consumer can ship and
// acknowledge it. It fails when journaling was suspended meanwhile: the
// resync cannot complete then. A write may take the room before the
// caller's records are appended; journalLocked then refuses them with
// errQuotaWait, and the caller waits again.
func (v *Volume) waitRoom(ctx context.Context, need int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	logged := false
	for {
		switch {
		case v.closed:
			return ErrClosed
		case v.st.Mode != ModeJournal:
			return v.failedMeanwhileLocked()
		}
		quotaOK, memOK := v.overQuotaLocked(need) == nil, v.copyRoomLocked(need)
		switch {
		case quotaOK && memOK:
			// Back to memory segments after a wait for room (copy.go).
			v.setCopyLocked(v.copying) // may suspend: checked again above
			if v.st.Mode != ModeJournal {
				continue
			}
			return nil
		case !memOK && v.wMem:
			// Ship the memory segment; live writes go to a segment file
			// until there is room again.
			v.setCopyLocked(false)
			continue
		case !quotaOK && v.w.Count() > 0:
			v.rollLocked() // may suspend: checked again above
			continue
		}
		if !logged {
			logged = true
			v.logger().Debug("resync waits for the consumer to acknowledge journal segments",
				"path", v.Path, "journal_bytes", v.journalBytesLocked(), "quota", v.JournalQuota)
		}
		ch := v.freed
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		v.mu.Lock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
