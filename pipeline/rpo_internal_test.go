package pipeline

import (
	"testing"
	"time"

	"lifeboat/hrl"
)

// On a slow link a segment acknowledged carries an older tag than the
// newest one taken: the status then shows that older tag, and the RPO is
// its age (before, only the newest tag counted, so the RPO stayed unknown
// or stale while the link was slow). A tag in a dropped journal (before
// the acknowledged segment) never counts.
func TestAckedTagIsTheNewestTagInTheSegment(t *testing.T) {
	s := &Shipper{}
	t0 := time.Now()
	for i, seq := range []uint64{5, 10, 15, 20} {
		s.tags = append(s.tags, tagAt{seq, t0.Add(time.Duration(i) * time.Second)})
		s.lastTag = seq
	}
	for _, c := range []struct {
		first, last uint64
		wantSeq     uint64
		wantAt      time.Duration
		wantPending int
	}{
		{1, 4, 0, 0, 4},             // no tag in it
		{6, 12, 10, time.Second, 2}, // tag 5 was dropped (a resync); tag 10 is in it
		{13, 14, 10, time.Second, 2},
		{15, 21, 20, 3 * time.Second, 0}, // two tags: the newer counts
	} {
		s.acked(hrl.SegmentInfo{FirstSeq: c.first, LastSeq: c.last})
		if s.status.LastTagSeq != c.wantSeq || (c.wantSeq != 0 && !s.status.LastTagAcked.Equal(t0.Add(c.wantAt))) || len(s.tags) != c.wantPending {
			t.Errorf("after acking %d..%d: last tag %d at %v, %d pending; want %d at +%v, %d pending", c.first, c.last,
				s.status.LastTagSeq, s.status.LastTagAcked.Sub(t0), len(s.tags), c.wantSeq, c.wantAt, c.wantPending)
		}
	}
}
