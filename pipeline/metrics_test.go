package pipeline_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/memory"
)

// failableTarget fails every Apply while fail is set: segments stay in
// the spool, as behind a target that is down.
type failableTarget struct {
	targets.Target
	fail atomic.Bool
}

func (f *failableTarget) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	r, err := f.Target.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	return &failableReplica{Replica: r, t: f}, nil
}

type failableReplica struct {
	targets.Replica
	t *failableTarget
}

func (r *failableReplica) Apply(ctx context.Context, exts []targets.Extent) error {
	if r.t.fail.Load() {
		return errors.New("injected: target down")
	}
	return r.Replica.Apply(ctx, exts)
}

// metricsOf returns the server's metrics of one volume.
func metricsOf(t *testing.T, s *site, id string) (pipeline.ServerMetrics, pipeline.VolumeMetrics) {
	t.Helper()
	m := s.srv.Metrics()
	for _, v := range m.Volumes {
		if v.Info.ID == id {
			return m, v
		}
	}
	t.Fatalf("volume %s not in the server's metrics: %+v", id, m)
	return m, pipeline.VolumeMetrics{}
}

// The counters behind the metrics: what the shipper shipped is what the
// server received; while the target is down the spool holds what waits,
// the apply lag grows and failed applies are counted; once it is back the
// spool drains and the lag is 0 again.
func TestMetricsCounters(t *testing.T) {
	target := &failableTarget{Target: memory.New()}
	s := newSite(t, target)
	a := newAgentVol(t, s, 4<<20, 0, s.client("m1", pki.RoleAgent))
	a.waitResyncAcked()
	if r := a.ship.UploadRate(); r <= 0 { // the last ack was just now
		t.Errorf("upload rate right after shipping: %v, want > 0", r)
	}
	id := a.vol.Status().VolumeID
	s.waitSpoolEmpty(id)

	m, vm := metricsOf(t, s, id)
	shipped := a.ship.Status().BytesRaw
	if vm.ReceivedBytes != shipped || shipped == 0 {
		t.Errorf("server received %d bytes, shipper shipped %d: want equal and > 0", vm.ReceivedBytes, shipped)
	}
	if m.SpoolBytes != 0 || vm.ApplyLag != 0 || vm.Points != 1 {
		t.Errorf("after the initial replication: spool %d, lag %v, points %d; want 0, 0, 1", m.SpoolBytes, vm.ApplyLag, vm.Points)
	}
	applied := vm.AppliedBytes // 0: the disk is all zeros
	for _, k := range pipeline.ErrorKinds {
		if n, ok := m.Errors[k]; !ok || n != 0 {
			t.Errorf("server errors[%s] = %d (present %v), want 0", k, n, ok)
		}
		if n, ok := a.ship.Errors()[k]; !ok || n != 0 {
			t.Errorf("shipper errors[%s] = %d (present %v), want 0", k, n, ok)
		}
	}

	target.fail.Store(true)
	before := a.vol.Churn().WrittenBytes
	a.writeRandom(rand.New(rand.NewPCG(1, 2)), 8)
	seq, _ := a.tag("t")
	waitFor(t, "the tag acknowledged", func() bool { return a.ship.Status().AckedSeq >= seq })
	waitFor(t, "a failed apply counted", func() bool { return s.srv.Metrics().Errors[pipeline.KindApply] > 0 })
	m, vm = metricsOf(t, s, id)
	if m.SpoolBytes <= 0 || m.SpoolBytes != vm.SpoolBytes || m.SpoolQuota != pipeline.DefaultSpoolQuota {
		t.Errorf("target down: spool %d bytes (volume's %d), quota %d; want > 0, equal, %d",
			m.SpoolBytes, vm.SpoolBytes, m.SpoolQuota, pipeline.DefaultSpoolQuota)
	}
	time.Sleep(50 * time.Millisecond)
	if _, vm2 := metricsOf(t, s, id); vm2.ApplyLag <= vm.ApplyLag || vm.ApplyLag <= 0 {
		t.Errorf("apply lag while the target is down: %v then %v, want > 0 and growing", vm.ApplyLag, vm2.ApplyLag)
	}
	if got := a.vol.Churn().WrittenBytes - before; got <= 0 {
		t.Errorf("churn: %d bytes written, want > 0", got)
	}

	target.fail.Store(false)
	s.waitApplied(id, seq)
	s.waitSpoolEmpty(id)
	// The server-wide spool counter and the volume's pending list are
	// updated one after the other by the applier: wait for both.
	waitFor(t, "the spool empty and no lag in the metrics", func() bool {
		m, vm = metricsOf(t, s, id)
		return m.SpoolBytes == 0 && vm.ApplyLag == 0
	})
	if vm.Points != 2 {
		t.Errorf("target back: %d points, want 2", vm.Points)
	}
	// Every byte written is applied once (whole blocks: writeRandom
	// writes multiples of 4 KiB, some of them zero blocks, which are
	// applied as zero ranges and not counted).
	if got, max := vm.AppliedBytes-applied, a.vol.Churn().WrittenBytes-before; got <= 0 || got > max {
		t.Errorf("applied %d bytes of the %d written, want > 0 and at most that", got, max)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
