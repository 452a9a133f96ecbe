package pipeline_test

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/memory"
	"lifeboat/tracker"
)

// holds is a recovery service that pins points and fails volumes over as
// a test says.
type holds struct {
	mu       sync.Mutex
	pinned   map[string][]uint64
	failover map[string]*pipeline.RecoveryState
	plan     map[string]string
}

func newHolds() *holds {
	return &holds{pinned: map[string][]uint64{}, failover: map[string]*pipeline.RecoveryState{}, plan: map[string]string{}}
}

// holdsSite is a site on a memory target whose Holds is a new holds.
func holdsSite(t *testing.T) (*holds, *site) {
	h := newHolds()
	s := &site{t: t, dir: t.TempDir(), target: memory.New(), configure: func(srv *pipeline.Server) { srv.Holds = h }}
	s.open()
	return h, s
}

func (h *holds) Pinned(id string) []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pinned[id])
}

func (h *holds) FailedOver(id string) *pipeline.RecoveryState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failover[id]
}

func (h *holds) Recovery(id string) []pipeline.RecoveryState {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.failover[id]; f != nil {
		return []pipeline.RecoveryState{*f}
	}
	return nil
}

func (h *holds) Step(string) string { return "" }

func (h *holds) PlannedFailover(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.plan[id]
}

// Retention never prunes a point under test or failover: with the
// server's clock 20 days ahead (beyond the longest window), every point
// but the newest and the two pinned ones goes, and the pinned ones still
// read as they were.
func TestRetentionKeepsPinnedPoints(t *testing.T) {
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	h := newHolds()
	s := &site{t: t, dir: t.TempDir(), target: memory.New(), configure: func(srv *pipeline.Server) {
		srv.Now = now
		srv.Holds = h
	}}
	s.open()
	a := newAgentVol(t, s, 4<<20, 0, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	rng := rand.New(rand.NewPCG(21, 22))
	want := map[uint64]string{}
	var seqs []uint64
	for range 5 {
		a.writeRandom(rng, 5)
		seq, sum := a.tag("point")
		want[seq] = sum
		seqs = append(seqs, seq)
	}
	s.checkPoints(a, want)
	pinned := []uint64{seqs[1], seqs[3]}
	h.mu.Lock()
	h.pinned[a.vol.VolumeID()] = pinned
	h.mu.Unlock()

	offset.Store(int64(20 * 24 * time.Hour))
	a.writeRandom(rng, 2)
	last, lastSum := a.tag("twenty days later")
	s.checkPoints(a, map[uint64]string{last: lastSum})
	admin := s.client("admin", pki.RoleAdmin)
	var got []uint64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got = got[:0]
		for _, p := range s.points(admin, "vol") {
			got = append(got, p.Seq)
		}
		if slices.Equal(got, []uint64{pinned[0], pinned[1], last}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("points %v twenty days later; want the pinned %v and the newest %d", got, pinned, last)
		}
	}
	for _, seq := range pinned {
		if sum := s.pointSum(admin, "vol", seq); sum != want[seq] {
			t.Fatalf("pinned point %d reads %s, want %s", seq, sum, want[seq])
		}
	}
}

// A failed-over volume's segments are refused (410): its agent stops
// shipping, keeps its journal and says it is failed over; the volume's
// status shows the failover. When the failover is gone the agent resumes.
func TestFailedOverVolumeStopsItsAgent(t *testing.T) {
	h, s := holdsSite(t)
	a := newAgentVol(t, s, 4<<20, 0, s.client("web01", pki.RoleAgent))
	a.waitResyncAcked() // else the resync's tag may be shipped after the failover
	seq, sum := a.tag("before the failover")
	s.checkPoints(a, map[uint64]string{seq: sum})
	st := s.status(a.vol.VolumeID())
	f := &pipeline.RecoveryState{Volume: st.Info, Kind: pipeline.RecoveryFailover, Point: *st.LatestPoint,
		Since: time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)}
	h.mu.Lock()
	h.failover[a.vol.VolumeID()] = f
	h.mu.Unlock()

	a.writeRandom(rand.New(rand.NewPCG(23, 24)), 5)
	if _, err := a.vol.Tag(1, "after the failover"); err != nil {
		t.Fatal(err)
	}
	waitStopped := func() pipeline.ShipperStatus {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			st := a.ship.Status()
			if st.Stopped != "" {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent did not stop: %+v", st)
			}
		}
	}
	got := waitStopped()
	for _, want := range []string{"failed over at the site at 2026-12-03T15:00:00Z", "recovery point " + strconv.FormatUint(seq, 10), "failback"} {
		if !strings.Contains(got.Stopped, want) {
			t.Fatalf("stopped %q does not say %q", got.Stopped, want)
		}
	}
	if got.AckedSeq != seq || a.vol.Status().AckedSeq != seq {
		t.Fatalf("acked %d (tracker %d) after the failover, want %d: nothing after it may leave the journal", got.AckedSeq, a.vol.Status().AckedSeq, seq)
	}
	if st := s.status(a.vol.VolumeID()); st.SpooledSeq != seq || len(st.Recovery) != 1 || st.Recovery[0].Kind != pipeline.RecoveryFailover {
		t.Fatalf("site status after the failover: spooled %d (want %d), recovery %+v", st.SpooledSeq, seq, st.Recovery)
	}
	// A restarted shipper is told too, at its resume.
	a.stopShipper()
	a.startShipper(s, s.client("web01", pki.RoleAgent))
	if st := waitStopped(); !strings.Contains(st.Stopped, pipeline.ErrFailedOver.Error()) {
		t.Fatalf("restarted agent: %q", st.Stopped)
	}
	// The failover gone (a failback's job), shipping resumes.
	h.mu.Lock()
	delete(h.failover, a.vol.VolumeID())
	h.mu.Unlock()
	seq2, sum2 := a.tag("after the failover ended")
	s.checkPoints(a, map[uint64]string{seq2: sum2})
}

// A planned failover asked in the volume's status: the agent makes the
// volume read-only (EPERM), flushes and ships a tag named for the token;
// when the site withdraws the request (it timed out) writes work again.
func TestPlannedFailoverRequestMakesTheAgentStopAndTag(t *testing.T) {
	h, s := holdsSite(t)
	a := newAgentVol(t, s, 4<<20, 0, s.client("web01", pki.RoleAgent))
	a.ship.PollInterval = 50 * time.Millisecond
	a.waitSynced()
	a.writeRandom(rand.New(rand.NewPCG(25, 26)), 5)
	sum := fileSum(t, a.path)
	h.mu.Lock()
	h.plan[a.vol.VolumeID()] = "tok1"
	h.mu.Unlock()
	admin := s.client("admin", pki.RoleAdmin)
	var tag uint64
	for deadline := time.Now().Add(20 * time.Second); tag == 0; time.Sleep(20 * time.Millisecond) {
		for _, p := range s.points(admin, "vol") {
			if p.Name == pipeline.PlannedTagPrefix+"tok1" {
				tag = p.Seq
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no point tagged for the planned failover: %+v", a.ship.Status())
		}
	}
	if got := s.pointSum(admin, "vol", tag); got != sum {
		t.Fatalf("the planned failover's point is %s, the volume %s: a write is missing", got, sum)
	}
	if _, err := a.vol.WriteAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EPERM) || !errors.Is(err, tracker.ErrReadOnly) {
		t.Fatalf("write after the planned failover's tag: %v, want EPERM", err)
	}
	h.mu.Lock()
	delete(h.plan, a.vol.VolumeID())
	h.mu.Unlock()
	for deadline := time.Now().Add(20 * time.Second); a.vol.ReadOnly() != ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the volume stays read-only after the site withdrew its planned failover")
		}
	}
	if _, err := a.vol.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("write after the request was withdrawn: %v", err)
	}
}
