package pipeline

import (
	"context"

	"lifeboat/hrl"
)

// Segments in flight. The shipper sends the oldest unacknowledged segment
// and, while it is in flight, the ones that directly follow it in the same
// generation, up to its depth, each marked hdrFollows so that the server
// stores it only after the one before (receive.go). Answers are taken in
// order and each segment is acknowledged to the tracker only after the
// ones before it. When a segment fails, the ones after it are waited for
// and their answers dropped: the loop then sends from the failed one again
// (or asks the server where it is first), and a later segment the server
// took meanwhile is found there by resume and acknowledged then. A segment
// that starts a new generation is never sent ahead of the one before it:
// without hdrFollows the server may take it as a new generation's start.

// flight is one segment being sent.
type flight struct {
	seg  hrl.SegmentInfo
	err  error
	done chan struct{}
}

// flights are the segments in flight, oldest first.
type flights struct{ q []*flight }

func (f *flights) empty() bool { return len(f.q) == 0 }

// launch sends seg on a free lane (waiting for one).
func (f *flights) launch(ctx context.Context, s *Shipper, seg hrl.SegmentInfo, follows bool) {
	fl := &flight{seg: seg, done: make(chan struct{})}
	l := <-s.lanes
	go func() {
		defer close(fl.done)
		defer func() { s.lanes <- l }()
		fl.err = s.send(ctx, seg, follows, l)
	}()
	f.q = append(f.q, fl)
}

// next waits for the oldest segment in flight and returns it with the
// answer.
func (f *flights) next() (hrl.SegmentInfo, error) {
	fl := f.q[0]
	<-fl.done
	f.q = f.q[1:]
	return fl.seg, fl.err
}

// drain waits for every segment in flight and drops their answers.
func (f *flights) drain() {
	for _, fl := range f.q {
		<-fl.done
	}
	f.q = nil
}

// topUp sends the segments that directly follow the newest one in
// flight, same generation, until depth are in flight.
func (s *Shipper) topUp(ctx context.Context, f *flights) {
	s.mu.Lock()
	depth := s.depth
	s.mu.Unlock()
	for len(f.q) > 0 && len(f.q) < depth {
		last := f.q[len(f.q)-1].seg
		next, ok := s.following(last)
		if !ok {
			return
		}
		f.launch(ctx, s, next, true)
	}
}

// following returns the sealed segment that directly continues seg in the
// same generation, if there is one yet.
func (s *Shipper) following(seg hrl.SegmentInfo) (hrl.SegmentInfo, bool) {
	for _, n := range s.Volume.Segments() {
		if n.FirstSeq == seg.LastSeq+1 && n.Generation == seg.Generation {
			return n, true
		}
		if n.FirstSeq > seg.LastSeq {
			break
		}
	}
	return hrl.SegmentInfo{}, false
}
