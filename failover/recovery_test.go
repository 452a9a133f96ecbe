package failover_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/failover"
	"lifeboat/hrl"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/memory"
	"lifeboat/tracker"
)

// recoverySite is a failover.Site in this process with a clock the test
// moves, a memory target, and one agent volume replicating to it.
type recoverySite struct {
	t      *testing.T
	site   *failover.Site
	offset atomic.Int64 // the server's clock runs this far ahead
	vol    *tracker.Volume
	ship   *pipeline.Shipper
	url    string // the data port, https://HOST:PORT
}

func newRecoverySite(t *testing.T) *recoverySite {
	t.Helper()
	return newRecoverySiteWith(t, nil)
}

// newRecoverySiteWith is newRecoverySite with a job recorder.
func newRecoverySiteWith(t *testing.T, jobs failover.JobRecorder) *recoverySite {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	rs := &recoverySite{t: t}
	rs.site = &failover.Site{DataDir: dir, Target: memory.New(), TLS: conf, Recovery: true, NBDAddr: "127.0.0.1:0", Jobs: jobs,
		Configure: func(s *pipeline.Server) {
			s.Now = func() time.Time { return time.Now().Add(time.Duration(rs.offset.Load())) }
		}}
	ctx, cancel := context.WithCancel(context.Background())
	if err := rs.site.Open(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rs.url = "https://" + ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- rs.site.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-served
		if err := rs.site.Close(); err != nil {
			t.Errorf("close the site: %v", err)
		}
	})

	id, err := ca.Issue("web01", pki.RoleAgent, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	adir := t.TempDir()
	if err := id.Write(adir, "web01"); err != nil {
		t.Fatal(err)
	}
	cconf, err := pki.ClientTLS(filepath.Join(adir, "web01.crt"), filepath.Join(adir, "web01.key"), filepath.Join(adir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(adir, "disk.img")
	f, err := hrl.OSFS{}.OpenFile(path, 0o102, 0o600) // O_RDWR|O_CREATE
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(4 << 20)
	f.Close()
	v := tracker.NewVolume(path, filepath.Join(adir, "journal"))
	v.InitialSync, v.SegmentAge = true, 50*time.Millisecond
	if err := v.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs.vol = v
	rs.ship = pipeline.NewShipper(v, "disk", "https://"+ln.Addr().String(), &http.Client{Transport: &http.Transport{TLSClientConfig: cconf}})
	rs.ship.TagInterval, rs.ship.MaxBackoff = 0, 500*time.Millisecond
	sctx, scancel := context.WithCancel(context.Background())
	shipped := make(chan struct{})
	go func() { defer close(shipped); rs.ship.Run(sctx) }()
	t.Cleanup(func() { scancel(); <-shipped; v.Close() })
	return rs
}

// point writes some random blocks, tags, and waits until the tag is a
// point on the site.
func (rs *recoverySite) point(rng *rand.Rand) uint64 {
	rs.t.Helper()
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if _, err := rs.vol.WriteAt(b, rng.Int64N(63)<<16); err != nil {
		rs.t.Fatal(err)
	}
	var seq uint64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if seq == 0 {
			s, err := rs.vol.Tag(hrl.TagCrash, "p")
			if err == nil {
				seq = s
			} else if !errors.Is(err, tracker.ErrResync) {
				rs.t.Fatal(err)
			}
		}
		if seq != 0 && slices.Contains(rs.points(), seq) {
			return seq
		}
		if time.Now().After(deadline) {
			rs.t.Fatalf("no point for tag %d: %+v", seq, rs.ship.Status())
		}
	}
}

// pointsSettle waits until the site's points are want, or 30 s have
// passed, and returns what it saw last: a point becomes visible before
// the same apply prunes the older ones, so a test that looked right
// after point() returned would race that pruning.
func (rs *recoverySite) pointsSettle(want []uint64) []uint64 {
	rs.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := rs.points()
		if slices.Equal(got, want) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (rs *recoverySite) points() []uint64 {
	sv, err := rs.site.Server.Volume(context.Background(), "disk")
	if err != nil {
		return nil
	}
	pts, err := sv.Replica().Points(context.Background())
	if err != nil {
		rs.t.Fatal(err)
	}
	var out []uint64
	for _, p := range pts {
		out = append(out, p.Seq)
	}
	return out
}

// Retention never prunes a point under test: with the site's clock 20
// days ahead, the next point prunes every other one but the one under
// test, which still reads as it did; after the cleanup it goes with the
// next point. A failover's point is pinned too (no point is made while
// the volume is failed over, so the pin is what guards it against a
// point applied at the same moment and, later, the failback's).
func TestRetentionKeepsTheRecoveryPoints(t *testing.T) {
	rs := newRecoverySite(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var seqs []uint64
	for range 5 {
		seqs = append(seqs, rs.point(rng))
	}
	ctx := context.Background()
	sv, err := rs.site.Server.Volume(ctx, "web01/disk")
	if err != nil {
		t.Fatal(err)
	}
	m := rs.site.Manager
	test, err := m.StartTest(ctx, sv, failover.Request{Point: strconv.FormatUint(seqs[1], 10)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := readPoint(t, sv, seqs[1])

	rs.offset.Store(int64(20 * 24 * time.Hour))
	last := rs.point(rng)
	if got, want := rs.pointsSettle([]uint64{seqs[1], last}), []uint64{seqs[1], last}; !slices.Equal(got, want) {
		t.Fatalf("points %v twenty days later with a test failover of %d; want %v", got, seqs[1], want)
	}
	if !slices.Equal(readPoint(t, sv, seqs[1]), before) {
		t.Fatal("the point under test changed")
	}
	if _, err := m.Cleanup(ctx, sv); err != nil {
		t.Fatal(err)
	}
	later := rs.point(rng)
	if got, want := rs.pointsSettle([]uint64{later}), []uint64{later}; !slices.Equal(got, want) {
		t.Fatalf("points %v after the cleanup; want %v (the tested point pruned with the next)", got, want)
	}

	fo, err := m.StartFailover(ctx, sv, failover.Request{Point: failover.PointLatestProcessed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fo.Point.Seq != later || !slices.Equal(m.Pinned(sv.Info().ID), []uint64{later}) {
		t.Fatalf("failover to %d pins %v; want %d pinned", fo.Point.Seq, m.Pinned(sv.Info().ID), later)
	}
	_ = test
}

// readPoint reads a whole point.
func readPoint(t *testing.T, sv pipeline.SiteVolume, seq uint64) []byte {
	t.Helper()
	p, err := sv.Replica().OpenPoint(context.Background(), seq)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := make([]byte, p.Size())
	if _, err := p.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// A change of point that fails after the old failover volume was closed
// (here: state.json cannot be written) serves the old point again with
// every write made to it, flushed writes included; once state.json can be
// written, the change goes through and drops them (--force).
func TestFailedChangePointKeepsTheWrites(t *testing.T) {
	rs := newRecoverySite(t)
	rng := rand.New(rand.NewPCG(5, 6))
	first := rs.point(rng)
	second := rs.point(rng)
	ctx := context.Background()
	sv, err := rs.site.Server.Volume(ctx, "web01/disk")
	if err != nil {
		t.Fatal(err)
	}
	m := rs.site.Manager
	fo, err := m.StartFailover(ctx, sv, failover.Request{Point: strconv.FormatUint(second, 10)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nbd.Dial(ctx, rs.site.NBDListenAddr().String(), fo.Export)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if _, err := c.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	tmp := filepath.Join(rs.site.DataDir, "recovery", "state.json.tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil { // the state write's temporary file cannot be created
		t.Fatal(err)
	}
	req := failover.Request{Point: strconv.FormatUint(first, 10), Force: true}
	if _, err := m.ChangePoint(ctx, sv, req, nil); err == nil {
		t.Fatal("change-point succeeded without a state.json")
	}
	st := m.FailedOver(sv.Info().ID)
	if st == nil || st.Point.Seq != second || st.Written != int64(len(data)) || st.Error != "" {
		t.Fatalf("after the failed change: %+v; want point %d served with its %d written bytes", st, second, len(data))
	}
	c, err = nbd.Dial(ctx, rs.site.NBDListenAddr().String(), fo.Export)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the write to the failover volume is gone after a failed change of point (%v)", err)
	}
	c.Close()

	os.Remove(tmp)
	nst, err := m.ChangePoint(ctx, sv, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if nst.Point.Seq != first || nst.Written != 0 {
		t.Fatalf("after the change: %+v; want point %d and nothing written", nst, first)
	}
	dirs, _ := os.ReadDir(filepath.Join(rs.site.DataDir, "recovery"))
	if len(dirs) != 2 { // state.json and the new failover volume's directory
		t.Fatalf("recovery dir holds %d entries after the change, want 2 (the old volume's files deleted)", len(dirs))
	}
}
