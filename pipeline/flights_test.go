package pipeline_test

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl/hrltest"
	"lifeboat/pipeline/pki"
)

var follows = map[string]string{"X-Lifeboat-Follows": "1"}

// firstRead closes started when the server first reads the body.
type firstRead struct {
	io.Reader
	once    sync.Once
	started chan struct{}
}

func (f *firstRead) Read(p []byte) (int, error) {
	f.once.Do(func() { close(f.started) })
	return f.Reader.Read(p)
}

// A segment sent while the one before it is still arriving (the shipper's
// second segment in flight) waits for it: both are taken, in order. Both
// write the same block, so the replica tells which came last.
func TestFollowingSegmentWaitsForTheOneBefore(t *testing.T) {
	fs := hrltest.New()
	s := configuredSite(t, fileTarget(fs), nil)
	c := s.client("agent1", pki.RoleAgent)
	id := uuid.New()
	seg1, seg2 := oneRecordSegment(t, id, 1), oneRecordSegment(t, id, 2)
	body1 := &firstRead{Reader: trickle(seg1, 10, 100*time.Millisecond), started: make(chan struct{})}
	codes := make(chan int, 1)
	go func() {
		code, msg := postSegment(t, c, s.url, id, 1, seg1, body1)
		if code != http.StatusOK {
			t.Errorf("segment 1: %d %s", code, msg)
		}
		codes <- code
	}()
	<-body1.started // its upload is in progress
	if code, msg := postSegmentWith(t, c, s.url, id, 2, 2, seg2, bytes.NewReader(seg2), follows); code != http.StatusOK {
		t.Fatalf("segment 2, sent while segment 1 arrives: %d %s", code, msg)
	}
	<-codes
	if st := s.status(id.String()); st.SpooledSeq != 2 || st.SegmentsInFlight < 2 {
		t.Fatalf("status: %+v", st)
	}
	s.waitApplied(id.String(), 2)
	if img := replicaImage(t, fs, id); !bytes.Equal(img[:4096], seg1Data(2)) {
		t.Fatal("segment 1 was applied after segment 2")
	}
}

// A following segment whose predecessor never comes is a gap (409) once
// no upload of the volume is in progress; sent in order, both are taken.
// Without the Follows header, the same segment is a gap at once.
func TestFollowingSegmentWithoutTheOneBeforeIsAGap(t *testing.T) {
	s := configuredSite(t, fileTarget(hrltest.New()), nil)
	c := s.client("agent1", pki.RoleAgent)
	id := uuid.New()
	seg1, seg2 := oneRecordSegment(t, id, 1), oneRecordSegment(t, id, 2)
	if code, msg := postSegmentWith(t, c, s.url, id, 2, 2, seg2, bytes.NewReader(seg2), follows); code != http.StatusConflict {
		t.Fatalf("following segment alone: %d %s, want 409", code, msg)
	}
	if code, msg := postSegment(t, c, s.url, id, 1, seg1, bytes.NewReader(seg1)); code != http.StatusOK {
		t.Fatalf("segment 1: %d %s", code, msg)
	}
	if code, msg := postSegmentWith(t, c, s.url, id, 2, 2, seg2, bytes.NewReader(seg2), follows); code != http.StatusOK {
		t.Fatalf("segment 2 after segment 1: %d %s", code, msg)
	}
	seg4 := oneRecordSegment(t, id, 4)
	if code, msg := postSegment(t, c, s.url, id, 4, seg4, bytes.NewReader(seg4)); code != http.StatusConflict {
		t.Fatalf("a gap without Follows: %d %s, want 409", code, msg)
	}
}
