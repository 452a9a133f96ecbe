package pipeline_test

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"lifeboat/internal/faultinject"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/file"
	"lifeboat/targets/memory"
)

func TestPointsEqualSourceAtEachTag(t *testing.T) {
	t.Run("applied from the receive buffers", func(t *testing.T) { pointsEqualSource(t, nil) })
	t.Run("applied from the spool", func(t *testing.T) {
		// Receive memory of one byte: every upload is the only one
		// holding memory, and no buffer fits in the kept memory (half of
		// it), so the applier reads each segment back from the spool.
		pointsEqualSource(t, func(srv *pipeline.Server) { srv.ReceiveMemory = 1 })
	})
}

func pointsEqualSource(t *testing.T, configure func(*pipeline.Server)) {
	s := &site{t: t, dir: t.TempDir(), target: memory.New(), configure: configure}
	s.open()
	a := newAgentVol(t, s, 8<<20+512*3, 0, s.client("agent1", pki.RoleAgent))
	rng := rand.New(rand.NewPCG(1, 2))
	a.writeRandom(rng, 20) // before and during the initial replication
	a.waitSynced()
	want := map[uint64]string{}
	for i := range 4 {
		a.writeRandom(rng, 30)
		if i == 2 {
			if err := a.vol.Trim(1<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
		}
		seq, sum := a.tag("t")
		want[seq] = sum
	}
	var last uint64
	for seq := range want {
		last = max(last, seq)
	}
	s.waitApplied(a.vol.VolumeID(), last)
	admin := s.client("admin1", pki.RoleAdmin)
	pts := s.points(admin, "vol")
	got := 0
	for _, p := range pts {
		w, ok := want[p.Seq]
		if !ok {
			continue // the "resync complete" point
		}
		got++
		if sum := s.pointSum(admin, "vol", p.Seq); sum != w {
			t.Errorf("point %d: sha256 %s, source at the tag %s", p.Seq, sum, w)
		}
	}
	if got != len(want) {
		t.Fatalf("server has %d of the %d tagged points: %+v", got, len(want), pts)
	}
	if st := a.ship.Status(); st.Resends != 0 || !st.Connected {
		t.Errorf("shipper status %+v", st)
	}
	s.waitSpoolEmpty(a.vol.VolumeID())
	if kept := pipeline.KeptMemory(s.srv); kept != 0 {
		t.Errorf("with every segment applied, %d bytes of buffers are kept for the applier, want 0", kept)
	}
}

func TestCorruptSegmentIsRefusedAndResent(t *testing.T) {
	target := memory.New()
	s := &site{t: t, dir: t.TempDir(), target: target, wrap: faultinject.CorruptSegments(3)}
	s.open()
	a := newAgentVol(t, s, 4<<20, 0, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	a.writeRandom(rand.New(rand.NewPCG(3, 4)), 20)
	seq, sum := a.tag("after corruption")
	s.waitApplied(a.vol.VolumeID(), seq)
	if got := s.pointSum(s.client("admin", pki.RoleAdmin), "vol", seq); got != sum {
		t.Fatalf("point after resends: %s, want %s", got, sum)
	}
	st := a.ship.Status()
	if st.Resends != 3 {
		t.Fatalf("resends = %d, want 3 (one per corrupted upload)", st.Resends)
	}
	// The metrics count each refusal once, on both sides.
	if a, s := a.ship.Errors()[pipeline.KindChecksum], s.srv.Metrics().Errors[pipeline.KindChecksum]; a != 3 || s != 3 {
		t.Errorf("checksum errors: agent %d, server %d, want 3 and 3", a, s)
	}
}

func TestServerRestartMidStreamAppliesEachRecordOnce(t *testing.T) {
	s := newSite(t, memory.New())
	a := newAgentVol(t, s, 8<<20, 0, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	rng := rand.New(rand.NewPCG(5, 6))
	want := map[uint64]string{}
	for i := range 6 {
		a.writeRandom(rng, 25)
		seq, sum := a.tag("t")
		want[seq] = sum
		if i%2 == 1 {
			s.restart() // the shipper sees connection errors and resumes
		}
	}
	s.checkPoints(a, want)
	if st := a.vol.Status(); st.Generation != 1 || st.Mode != "journal" {
		t.Errorf("restarts caused a resync or bitmap mode: %+v", st)
	}
}

func TestAgentWithoutValidCertificateIsRefused(t *testing.T) {
	s := newSite(t, memory.New())
	other := newSite(t, memory.New()) // a different CA
	for name, client := range map[string]*http.Client{
		"other CA": other.client("intruder", pki.RoleAgent),
		"no certificate": {Transport: &http.Transport{TLSClientConfig: func() *tls.Config {
			c := s.client("x", pki.RoleAgent).Transport.(*http.Transport).TLSClientConfig.Clone()
			c.Certificates = nil
			return c
		}()}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := client.Get(s.url + "/v1/volumes")
			if err == nil {
				t.Fatal("request succeeded without a valid client certificate")
			}
			if !strings.Contains(err.Error(), "certificate") && !strings.Contains(err.Error(), "tls") {
				t.Fatalf("error does not point at the certificate: %v", err)
			}
		})
	}
}

func TestAdminOnlyPointAccess(t *testing.T) {
	s := newSite(t, memory.New())
	agent := s.client("agent1", pki.RoleAgent)
	a := newAgentVol(t, s, 1<<20, 0, agent)
	a.waitSynced()
	resp, err := agent.Get(s.url + "/v1/volumes/vol/points")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("agent reading points: %s, want 403", resp.Status)
	}
}

func TestJournalQuotaFallsBackToBitmapAndResyncsOnlyDirtyRegions(t *testing.T) {
	s := newSite(t, memory.New())
	const size = 32 << 20
	a := newAgentVol(t, s, size, 2<<20, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	seq0, _ := a.tag("synced")
	s.waitApplied(a.vol.VolumeID(), seq0)
	// The server goes away; writes go on beyond the journal quota. A small
	// write first: the shipper learns from its failed upload that the
	// server is gone, so its resync waits for the server instead of
	// starting (generation 2) while the big writes go on and take the
	// journal over the quota again (generation 3).
	s.stop()
	if _, err := a.vol.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); a.ship.Status().Connected || a.ship.Status().LastError == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the shipper did not notice the server is gone: %+v", a.ship.Status())
		}
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 48 { // 48 x 64 KiB in distinct 256 KiB-spaced places: 3 MiB > 2 MiB quota
		b := make([]byte, 64<<10)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if _, err := a.vol.WriteAt(b, int64(i)*512<<10); err != nil {
			t.Fatal(err)
		}
	}
	st := a.vol.Status()
	if st.Mode != "bitmap" || !strings.Contains(st.ModeReason, "quota") {
		t.Fatalf("after exceeding the quota: mode %q (%s), want bitmap for the quota", st.Mode, st.ModeReason)
	}
	dirty := st.DirtyRegions * st.RegionSize
	before := a.ship.Status().BytesRaw
	s.start(s.addr)
	a.waitSynced()
	seq, sum := a.tag("after resync")
	s.waitApplied(a.vol.VolumeID(), seq)
	if got := s.pointSum(s.client("admin", pki.RoleAdmin), "vol", seq); got != sum {
		t.Fatalf("replica after resync %s, source %s", got, sum)
	}
	sent := a.ship.Status().BytesRaw - before
	// Everything journaled before the switch (< quota) plus the dirty
	// regions and record overhead; far from the 32 MiB volume.
	if limit := 2<<20 + dirty + dirty/8 + 256<<10; sent > limit {
		t.Fatalf("sent %d bytes after the outage, want at most %d (dirty regions %d bytes)", sent, limit, dirty)
	}
	if g := a.vol.Status().Generation; g != 2 {
		t.Fatalf("generation %d after the resync, want 2", g)
	}
}

func TestOutageKeepsJournalAndCatchesUp(t *testing.T) {
	s := newSite(t, memory.New())
	a := newAgentVol(t, s, 8<<20, 64<<20, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	s.stop()
	rng := rand.New(rand.NewPCG(9, 10))
	want := map[uint64]string{}
	for range 3 {
		a.writeRandom(rng, 20)
		seq, sum := a.tag("during outage")
		want[seq] = sum
		time.Sleep(300 * time.Millisecond)
	}
	if st := a.ship.Status(); st.Connected || st.LastError == "" {
		t.Fatalf("shipper thinks it is connected during the outage: %+v", st)
	}
	s.start(s.addr)
	s.checkPoints(a, want)
	if st := a.vol.Status(); st.Generation != 1 || st.Resync != "" {
		t.Fatalf("outage caused a resync: %+v", st)
	}
}

func TestSpoolQuotaThrottles(t *testing.T) {
	s := &site{t: t, dir: t.TempDir(), target: memory.New(),
		configure: func(srv *pipeline.Server) { srv.SpoolQuota = 1 }} // every segment gets "slow down"
	s.open()
	a := newAgentVol(t, s, 1<<20, 0, s.client("agent1", pki.RoleAgent))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st := a.ship.Status(); strings.Contains(st.LastError, "throttling") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("shipper never saw the slow-down answer: %+v", a.ship.Status())
}

// The initial replication's progress lasts until its point is on the
// server, not only until the volume has been read; before that point the
// RPO is unknown (nil), not 0.
func TestInitialReplicationProgressLastsUntilItsPoint(t *testing.T) {
	release := make(chan struct{}) // segment uploads wait until it is closed
	s := &site{t: t, dir: t.TempDir(), target: memory.New(), wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/segments") {
				<-release
			}
			next.ServeHTTP(w, r)
		})
	}}
	s.open()
	a := newAgentVol(t, s, 4<<20, 0, s.client("agent1", pki.RoleAgent))
	a.writeRandom(rand.New(rand.NewPCG(5, 6)), 10)
	a.waitSynced() // read into the journal; nothing is on the server yet
	deadline := time.Now().Add(10 * time.Second)
	var st pipeline.ShipperStatus
	for {
		st = a.ship.Status()
		if p := st.Resync; p != nil && p.Phase == pipeline.PhaseShipping && p.PointSeq != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the walk: status %+v, want the progress in phase shipping with its point seq", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.RPOSeconds != nil {
		t.Fatalf("RPO %v before any point exists, want nil", *st.RPOSeconds)
	}
	close(release)
	s.waitApplied(a.vol.VolumeID(), st.Resync.PointSeq)
	deadline = time.Now().Add(10 * time.Second)
	for st = a.ship.Status(); st.Resync != nil || st.RPOSeconds == nil; st = a.ship.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("after the point was applied: status %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// replicateThenLeave replicates a volume to first with random writes (the
// PCG seeds), tags it, waits until the agent has the tag acknowledged, and
// closes the agent: ready to be opened against another server.
func replicateThenLeave(t *testing.T, first *site, seed1, seed2 uint64) (*agentVol, *rand.Rand, uint64, string) {
	t.Helper()
	a := newAgentVol(t, first, 4<<20, 0, first.client("agent1", pki.RoleAgent))
	a.waitSynced()
	rng := rand.New(rand.NewPCG(seed1, seed2))
	a.writeRandom(rng, 20)
	seq, sum := a.tag("on the first server")
	first.checkPoints(a, map[uint64]string{seq: sum})
	for a.vol.Status().AckedSeq < seq {
		time.Sleep(10 * time.Millisecond)
	}
	a.close()
	return a, rng, seq, sum
}

// An agent that finds its replica behind what was acknowledged (here a
// fresh process server and target, as after replacing them) copies every
// region again in a new generation instead of shipping its journal on top
// of a replica that lacks the start of it.
func TestReplicaBehindItsAcknowledgementGetsAFullResync(t *testing.T) {
	first := newSite(t, memory.New())
	a, rng, _, _ := replicateThenLeave(t, first, 7, 8)

	second := newSite(t, memory.New())
	a.open(second, 0, second.client("agent1", pki.RoleAgent))
	// The shipper finds the replica behind when it resumes; a tag taken
	// before that is in the journal the full resync drops.
	deadline := time.Now().Add(30 * time.Second)
	for a.vol.Status().Generation < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no full resync: %+v", a.ship.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.writeRandom(rng, 5)
	a.waitSynced()
	seq2, sum2 := a.tag("on the second server")
	second.checkPoints(a, map[uint64]string{seq2: sum2})
	st := a.vol.Status()
	if st.Generation != 2 {
		t.Fatalf("generation %d after moving to an empty replica, want 2 (a full resync)", st.Generation)
	}
	for _, p := range second.points(second.client("admin", pki.RoleAdmin), "vol") {
		if p.Generation < 2 {
			t.Fatalf("point %+v on the new replica was built from the old journal", p)
		}
	}
}

// cappedTarget is the memory target with a target's limits (Azure page
// blobs: 512-byte alignment, at most 4 MiB per call; here 64 KiB), checked
// on every Apply.
type cappedTarget struct{ *memory.Target }

func (cappedTarget) Properties() targets.Properties {
	return targets.Properties{Alignment: 512, MaxExtent: 64 << 10}
}

func (t cappedTarget) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	r, err := t.Target.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	return cappedReplica{r}, nil
}

type cappedReplica struct{ targets.Replica }

func (r cappedReplica) Apply(ctx context.Context, ext []targets.Extent) error {
	if err := targets.CheckExtents(ext, r.Info().Size, cappedTarget{}.Properties()); err != nil {
		return err
	}
	return r.Replica.Apply(ctx, ext)
}

// Data and zero extents (holes skipped by the initial replication, a 1 MiB
// trim) are cut to the target's largest extent.
func TestExtentsRespectTheTargetsMaxExtent(t *testing.T) {
	s := newSite(t, cappedTarget{memory.New()})
	a := newAgentVol(t, s, 4<<20, 0, s.client("agent1", pki.RoleAgent))
	a.writeRandom(rand.New(rand.NewPCG(13, 14)), 10)
	a.waitSynced()
	if err := a.vol.Trim(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	seq, sum := a.tag("after trim")
	s.checkPoints(a, map[uint64]string{seq: sum})
	if st := s.status(a.vol.VolumeID()); st.ApplyError != "" {
		t.Fatalf("apply error: %s", st.ApplyError)
	}
}

// A segment damaged on the agent's own disk is refused by the server
// however often it is sent; after three refusals the agent finds the
// damage in its copy and copies every region again instead.
func TestSegmentDamagedOnTheAgentsDiskLeadsToAFullResync(t *testing.T) {
	s := newSite(t, memory.New())
	client := s.client("agent1", pki.RoleAgent)
	a := newAgentVol(t, s, 4<<20, 0, client)
	a.waitSynced()
	// No shipper may read the segment before it is damaged (a stopped
	// server is not enough: a shipper that read it first sends the good
	// bytes once the server is back).
	a.stopShipper()
	a.writeRandom(rand.New(rand.NewPCG(15, 16)), 10)
	a.tag("before the damage")
	segs := a.vol.Segments()
	if len(segs) == 0 {
		t.Fatal("no segment waiting")
	}
	f, err := os.OpenFile(segs[len(segs)-1].Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	off := segs[len(segs)-1].Size / 2
	f.ReadAt(b, off)
	f.WriteAt([]byte{b[0] ^ 0x10}, off)
	f.Close()
	a.startShipper(s, client)
	deadline := time.Now().Add(30 * time.Second)
	for a.vol.Status().Generation < 2 || a.vol.Status().Resync != "" {
		if time.Now().After(deadline) {
			t.Fatalf("no full resync after a damaged local segment: %+v", a.ship.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	seq, sum := a.tag("after the resync")
	s.checkPoints(a, map[uint64]string{seq: sum})
	if st := a.ship.Status(); st.Resends < 3 {
		t.Fatalf("%d resends before the agent looked at its own copy, want 3", st.Resends)
	}
}

// A process server rebuilt on the same target (its spool and data dir
// gone, the replicas kept) finds the volume in the target and reports the
// replica's state, so the agent resumes where it was instead of copying
// the whole volume again.
func TestNewServerOnTheSameTargetResumes(t *testing.T) {
	replicas := t.TempDir()
	first := newSite(t, file.New(replicas))
	a, rng, seq, sum := replicateThenLeave(t, first, 9, 10)
	first.stop()

	rebuilt := newSite(t, file.New(replicas))
	a.open(rebuilt, 0, rebuilt.client("agent1", pki.RoleAgent))
	a.writeRandom(rng, 5)
	a.waitSynced()
	seq2, sum2 := a.tag("on the rebuilt server")
	rebuilt.checkPoints(a, map[uint64]string{seq: sum, seq2: sum2})
	if st := a.vol.Status(); st.Generation != 1 {
		t.Fatalf("generation %d after moving to a rebuilt server on the same replica, want 1 (no resync)", st.Generation)
	}
}
