package tracker

import "log/slog"

// ResyncAll is for a consumer that finds the replica lacks records it had
// acknowledged: a new or restored replica, or another process server.
// Every region becomes dirty and pinned, journaling is suspended with
// reason, and the journal written so far is sealed. It returns the seq of
// the last record of that journal: the consumer acknowledges the segments
// up to it without shipping them (they build on what the replica lacks),
// and the next Resync copies every region in a new generation.
func (v *Volume) ResyncAll(reason string) (uint64, error) {
	return v.resyncRanges([]Range{{0, v.size}}, reason, slog.LevelError)
}
