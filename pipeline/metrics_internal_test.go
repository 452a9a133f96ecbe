package pipeline

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"
)

func TestErrorKind(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("segment 1..2: %w", ErrChecksum), KindChecksum},
		{fmt.Errorf("%w: seq", ErrGap), KindGap},
		{ErrForbidden, KindForbidden},
		{ErrBadAck, KindBadAck},
		{ErrFailedOver, KindFailedOver},
		{fmt.Errorf("%w: disk", ErrSiteDiskFull), KindSiteDiskFull}, // before its parent ErrSlowDown
		{errBusy, KindThrottled},
		{ErrStalled, KindStalled},
		{&net.OpError{Op: "dial", Err: context.DeadlineExceeded}, KindNetwork},
		{fmt.Errorf("boom"), KindOther},
	} {
		if got := errorKind(tc.err); got != tc.want {
			t.Errorf("errorKind(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	var c errorCounts
	c.add("no such kind")
	if got := c.snapshot(); len(got) != len(ErrorKinds) || got[KindOther] != 1 {
		t.Errorf("snapshot after an unknown kind: %v, want every kind and other=1", got)
	}
}

func TestRateMeter(t *testing.T) {
	var r rateMeter
	t0 := time.Unix(1000, 0)
	for i := range 10 {
		r.add(t0.Add(time.Duration(i)*time.Second), 1000)
	}
	if got := r.rate(t0.Add(9 * time.Second)); got != 1000 {
		t.Errorf("10 s of 1000 B/s: rate %v, want 1000", got)
	}
	if got := r.rate(t0.Add(14 * time.Second)); got != 500 {
		t.Errorf("5 s later: rate %v, want 500 (half the window idle)", got)
	}
	if got := r.rate(t0.Add(time.Minute)); got != 0 {
		t.Errorf("a minute later: rate %v, want 0", got)
	}
	r.add(t0.Add(time.Minute), 20) // reuses a stale bucket
	if got := r.rate(t0.Add(time.Minute)); got != 2 {
		t.Errorf("after a stale bucket is reused: rate %v, want 2", got)
	}
}
