package tracker

import "errors"

// ResyncAll is for a consumer that finds the replica lacks records it had
// acknowledged: a new or restored replica, or another process server.
// Every region becomes dirty and pinned, journaling is suspended with
// reason, and the journal written so far is sealed. It returns the seq of
// the last record of that journal: the consumer acknowledges the segments
// up to it without shipping them (they build on what the replica lacks),
// and the next Resync copies every region in a new generation.
func (v *Volume) ResyncAll(reason string) (uint64, error) {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return 0, ErrClosed
	}
	if err := v.bitmap.Mark(0, v.size); err != nil {
		v.mu.Unlock()
		return 0, err
	}
	v.pinLocked(0, v.size)
	if v.st.Mode == ModeJournal {
		v.suspendLocked(errors.New(reason))
	} else {
		v.st.Resync = "journal suspended: " + reason
		v.logger().Error("every region needs a resync", "path", v.Path, "reason", reason)
		if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
			v.mu.Unlock()
			return 0, err
		}
	}
	last := v.resumeSeq - 1
	v.mu.Unlock()
	return last, v.waitSealed()
}
