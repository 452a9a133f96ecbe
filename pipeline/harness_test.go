package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// site is a process server on 127.0.0.1 with its own CA.
type site struct {
	t      *testing.T
	dir    string
	target targets.Target
	srv    *pipeline.Server
	addr   string
	url    string
	cancel context.CancelFunc
	done   chan error
	wrap   func(http.Handler) http.Handler // optional middleware (fault injection)
	// configure, if set, adjusts the server before it opens.
	configure func(*pipeline.Server)
}

func testLogger(t testing.TB) *slog.Logger {
	// t.Output shows the lines with the test's own when it fails (always
	// with -v).
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newSite(t *testing.T, target targets.Target) *site {
	t.Helper()
	s := &site{t: t, dir: t.TempDir(), target: target}
	s.open()
	return s
}

// open creates the site's CA and starts its server on an ephemeral port,
// stopped with the test.
func (s *site) open() {
	s.t.Helper()
	if _, err := pki.Init(s.dir, nil); err != nil {
		s.t.Fatal(err)
	}
	s.start("127.0.0.1:0")
	s.t.Cleanup(s.stop)
}

func (s *site) start(addr string) {
	t := s.t
	t.Helper()
	conf, err := pki.ServerTLS(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = pipeline.NewServer(s.dir, s.target, conf)
	s.srv.Logger = testLogger(t)
	if s.configure != nil {
		s.configure(s.srv)
	}
	if err := s.srv.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ { // the port of a stopped server may linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.url = "https://" + s.addr
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	h := s.srv.Handler()
	if s.wrap != nil {
		h = s.wrap(h)
	}
	hs := &http.Server{Handler: h, TLSConfig: conf}
	served := make(chan error, 1)
	go func() {
		err := hs.ServeTLS(ln, "", "")
		if err == http.ErrServerClosed {
			err = nil
		}
		served <- err
	}()
	// stop returns once every connection is closed, not only the
	// listener: a request on a kept-alive connection must not reach the
	// stopped server's handler while the test damages what it would send.
	go func() {
		<-ctx.Done()
		hs.Close()
		s.done <- <-served
	}()
}

// stop closes the listener and the server (as a crash would, without
// waiting for anything but the appliers).
func (s *site) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel = nil
	if err := s.srv.Close(); err != nil {
		s.t.Errorf("close server: %v", err)
	}
}

func (s *site) restart() {
	s.stop()
	s.start(s.addr)
}

func (s *site) client(name string, role pki.Role) *http.Client {
	t := s.t
	ca, err := pki.Load(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Issue(name, role, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := id.Write(dir, name); err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ClientTLS(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: time.Minute}
}

// status is the server's view of the volume.
func (s *site) status(id string) pipeline.VolumeStatus {
	for _, st := range s.srv.Status() {
		if st.Info.ID == id {
			return st
		}
	}
	return pipeline.VolumeStatus{}
}

// waitApplied waits until the replica has every record up to seq.
func (s *site) waitApplied(id string, seq uint64) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if st := s.status(id); st.AppliedSeq >= seq {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("replica did not reach seq %d in time: %+v", seq, s.status(id))
}

// waitSpoolEmpty waits until a volume has no segment waiting to be applied.
func (s *site) waitSpoolEmpty(id string) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if s.status(id).SpoolBytes == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("spool of %s did not drain in time: %+v", id, s.status(id))
}

// pointSum downloads a point through the admin API and hashes it.
func (s *site) pointSum(admin *http.Client, volume string, seq uint64) string {
	s.t.Helper()
	resp, err := admin.Get(fmt.Sprintf("%s/v1/volumes/%s/points/%d", s.url, volume, seq))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("point %d: %s: %s", seq, resp.Status, b)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		s.t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (s *site) points(admin *http.Client, volume string) []pipeline.Point {
	s.t.Helper()
	resp, err := admin.Get(s.url + "/v1/volumes/" + volume + "/points")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var pts []pipeline.Point
	if err := json.NewDecoder(resp.Body).Decode(&pts); err != nil {
		s.t.Fatal(err)
	}
	return pts
}

// agentVol is a protected volume with a shipper.
type agentVol struct {
	t       *testing.T
	path    string
	vol     *tracker.Volume
	ship    *pipeline.Shipper
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	journal string
	closed  bool // the volume, by close
}

func newAgentVol(t *testing.T, s *site, size int64, quota int64, client *http.Client) *agentVol {
	t.Helper()
	return newAgentVolFrom(t, s, size, nil, quota, client)
}

// newAgentVolFrom is newAgentVol over a disk that fill, if not nil, writes
// before the agent opens it: all of it is in the initial replication.
func newAgentVolFrom(t *testing.T, s *site, size int64, fill func(*os.File), quota int64, client *http.Client) *agentVol {
	t.Helper()
	dir := t.TempDir()
	a := &agentVol{t: t, path: filepath.Join(dir, "disk.img"), journal: filepath.Join(dir, "journal")}
	f, err := os.Create(a.path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	if fill != nil {
		fill(f)
	}
	f.Close()
	a.open(s, quota, client)
	t.Cleanup(a.close)
	return a
}

func (a *agentVol) open(s *site, quota int64, client *http.Client) {
	t := a.t
	v := tracker.NewVolume(a.path, a.journal)
	v.SegmentAge = 50 * time.Millisecond
	v.SegmentBytes = 4 << 20
	v.InitialSync = true
	v.JournalQuota = quota
	v.CopyMemory = tracker.DefaultCopyMemory // as the agent: resyncs are shipped from memory
	v.Logger = testLogger(t)
	if err := v.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.vol, a.closed = v, false
	a.startShipper(s, client)
}

// startShipper starts a shipper for the open volume (again, after
// stopShipper: an agent whose shipping stopped while its volume stayed
// open).
func (a *agentVol) startShipper(s *site, client *http.Client) {
	t := a.t
	a.ship = pipeline.NewShipper(a.vol, "vol", s.url, client)
	a.ship.TagInterval = 0
	a.ship.MaxBackoff = 500 * time.Millisecond
	a.ship.Logger = testLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.ship.Run(ctx); err != nil {
			t.Errorf("shipper: %v", err)
		}
	}()
}

// stopShipper stops the shipper and waits for it; the volume stays open.
func (a *agentVol) stopShipper() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.wg.Wait()
	a.cancel = nil
}

func (a *agentVol) close() {
	if a.closed {
		return
	}
	a.stopShipper()
	a.closed = true
	if err := a.vol.Close(); err != nil {
		a.t.Errorf("close volume: %v", err)
	}
}

// waitSynced waits until the initial replication (or a resync) is done.
func (a *agentVol) waitSynced() {
	a.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if a.vol.Status().Resync == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.t.Fatalf("resync did not finish: %+v", a.ship.Status())
}

// waitResyncAcked is waitSynced that also waits until the site has
// acknowledged the shipper's "resync complete" tag: the shipper takes it
// after the tracker reports the resync done, so without this wait a tag
// the test takes next may come before it.
func (a *agentVol) waitResyncAcked() {
	a.t.Helper()
	a.waitSynced()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if a.ship.Status().Resync == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.t.Fatalf("the resync's tag was not acknowledged: %+v", a.ship.Status())
}

// writeRandom writes n random chunks of 4 KiB..256 KiB, some unaligned.
func (a *agentVol) writeRandom(rng *rand.Rand, n int) {
	a.t.Helper()
	size := a.vol.Size()
	for range n {
		l := int64(4096 * (1 + rng.IntN(64)))
		off := rng.Int64N(size-l) &^ 511
		b := make([]byte, l)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if rng.IntN(5) == 0 {
			clear(b[:l/2]) // some zero blocks
		}
		if _, err := a.vol.WriteAt(b, off); err != nil {
			a.t.Fatal(err)
		}
	}
}

// tag takes a tag with writes paused and returns its seq and the sha256 of
// the backing file at that moment.
func (a *agentVol) tag(name string) (uint64, string) {
	a.t.Helper()
	seq, err := a.vol.Tag(1, name)
	if err != nil {
		a.t.Fatal(err)
	}
	return seq, fileSum(a.t, a.path)
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// checkPoints waits until the newest of the wanted points is applied and
// checks that each point's image has the sha256 the source had at its tag.
func (s *site) checkPoints(a *agentVol, want map[uint64]string) {
	s.t.Helper()
	var last uint64
	for seq := range want {
		last = max(last, seq)
	}
	s.waitApplied(a.vol.VolumeID(), last)
	admin := s.client("admin", pki.RoleAdmin)
	for seq, w := range want {
		if got := s.pointSum(admin, a.vol.VolumeID(), seq); got != w {
			s.t.Errorf("point %d: %s, want %s", seq, got, w)
		}
	}
}
