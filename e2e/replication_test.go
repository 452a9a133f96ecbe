package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// protected is an agent replicating one volume ("disk") to a site.
type protected struct {
	a            *agentProc
	img, jroot   string
	uri          string
	site         *site
	args         []string // the agent's flags, without the site's
	t            *testing.T
	initialPoint time.Time
}

// protect creates a sparse image of size with data random bytes at 32 MiB
// (so that the initial replication has data and holes), starts an agent
// replicating it to s with a 1 s tag interval, and waits for the initial
// replication's recovery point.
func protect(t *testing.T, s *site, size, data int64, extra ...string) *protected {
	t.Helper()
	dir := t.TempDir()
	p := &protected{img: filepath.Join(dir, "disk.img"), jroot: filepath.Join(dir, "journal"), site: s, t: t}
	makeImage(t, p.img, size, data)
	args := append([]string{"--volume", "disk=" + p.img, "--journal-dir", p.jroot, "--segment-age", "200ms",
		"--tag-interval", "1s", "--max-backoff", "2s"}, extra...)
	p.args = args
	p.a = startAgent(t, append(args, s.agentArgs()...)...)
	p.uri = p.a.uri["disk"]
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", p.a.Output())
		}
	})
	pt := s.waitPoint("disk", time.Time{}, time.Minute)
	if !strings.HasPrefix(pt.Name, "resync complete") {
		t.Fatalf("first recovery point %+v: want the end of the initial replication", pt)
	}
	p.initialPoint = pt.Time
	return p
}

// imageDataAt is where makeImage puts its data: a hole before it, and one
// after it to the end.
const imageDataAt = 32 << 20

// makeImage creates a sparse image of size with data random bytes at
// imageDataAt.
func makeImage(t *testing.T, path string, size, data int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, data)
	rand.Read(buf)
	if _, err := f.WriteAt(buf, imageDataAt); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func (p *protected) status() (st struct {
	Connected  bool
	Generation uint64
	Mode       string
	NextSeq    uint64
}) {
	s := shipperStatus(p.t, p.jroot, "disk")
	st.Connected, st.Generation, st.Mode, st.NextSeq = s.Connected, s.Tracker.Generation, s.Tracker.Mode, s.Tracker.NextSeq
	return st
}

// settle waits until the writes are over and replicated: the newest record
// of the agent's journal is a tag taken after since, the server applied
// it, and it is a recovery point (twice in a row, 1.2 s apart, since the
// agent's status file is rewritten every second). It returns that point's
// seq and the source image's sha256 at that moment.
func (p *protected) settle(since time.Time) (uint64, string) {
	p.t.Helper()
	return p.site.settle("disk", p.jroot, p.img, since)
}

// settle is protected.settle for volume name of the agent whose journal
// root is jroot and whose source image is img.
func (s *site) settle(name, jroot, img string, since time.Time) (uint64, string) {
	s.t.Helper()
	var seq uint64
	hits := 0
	waitFor(s.t, 90*time.Second, "the agent's last record to be a tag applied as a recovery point", func() bool {
		vs, ok := s.volume(name)
		st := shipperStatus(s.t, jroot, name)
		if ok && vs.LatestPoint != nil && vs.LatestPoint.Time.After(since) && vs.AppliedSeq == vs.LatestPoint.Seq &&
			st.Tracker.NextSeq == vs.LatestPoint.Seq+1 && st.AckedSeq == vs.LatestPoint.Seq {
			if hits > 0 && seq == vs.LatestPoint.Seq {
				return true
			}
			seq, hits = vs.LatestPoint.Seq, 1
			time.Sleep(1200 * time.Millisecond)
			return false
		}
		hits = 0
		return false
	})
	return seq, sha256File(s.t, img)
}

// checkLatest settles and checks that the newest point equals the source.
func (p *protected) checkLatest(since time.Time) (uint64, string) {
	p.t.Helper()
	seq, want := p.settle(since)
	if got := p.site.export("disk", fmt.Sprint(seq)); got != want {
		p.t.Fatalf("recovery point %d has sha256 %s, the source at that tag %s", seq, got, want)
	}
	return seq, want
}

// Writes through NBD by nbdcopy, fio (with verify) and qemu-io (write,
// discard, write-zeroes); after each round, with writes paused, the
// recovery point that follows equals the source image (sha256), and every
// one of those points still does at the end.
func TestReplicationPointsEqualSourceAtTags(t *testing.T) {
	need(t, "fio", "nbdcopy", "qemu-io")
	pointsEqualSourceAtTags(t, newSite(t))
}

// pointsEqualSourceAtTags is the test above on site s (any target); it
// returns the protected volume, settled on its last point.
func pointsEqualSourceAtTags(t *testing.T, s *site) *protected {
	p := protect(t, s, 256<<20, 16<<20)
	if got, want := s.export("disk", "latest"), sha256File(t, p.img); got != want {
		t.Fatalf("initial replication: point sha256 %s, source %s", got, want)
	}
	src := filepath.Join(t.TempDir(), "src.bin")
	buf := make([]byte, 48<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	rounds := []struct {
		name string
		cmd  []string
	}{
		{"nbdcopy", []string{"nbdcopy", "--flush", src, p.uri}},
		{"fio", []string{"fio", "--name=verify", "--ioengine=nbd", "--uri=" + p.uri, "--rw=randwrite", "--bs=4k",
			"--offset=64m", "--size=32m", "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"}},
		{"qemu-io", []string{"qemu-io", "-f", "raw", "-c", "write -P 0x5a 100M 3M", "-c", "discard 40M 4M",
			"-c", "write -z 120M 2M", "-c", "write -P 0x17 1020k 8k", "-c", "flush", p.uri}},
	}
	want := map[uint64]string{}
	for _, r := range rounds {
		start := time.Now()
		out := run(t, r.cmd[0], r.cmd[1:]...)
		if r.name == "fio" && !strings.Contains(out, "verify") {
			t.Logf("fio output:\n%s", out)
		}
		seq, sum := p.checkLatest(start)
		t.Logf("after %s: point %d = source %s", r.name, seq, sum[:16])
		want[seq] = sum
	}
	if st := p.status(); st.Generation != 1 {
		t.Fatalf("generation %d: a resync happened although nothing went wrong", st.Generation)
	}
	for seq, sum := range want {
		if got := s.export("disk", fmt.Sprint(seq)); got != sum {
			t.Fatalf("at the end, point %d has sha256 %s; when it was taken the source had %s", seq, got, sum)
		}
	}
	for k, n := range appliedSegments(s.log()) {
		if n != 1 {
			t.Fatalf("segment %s applied %d times", k, n)
		}
	}
	return p
}

// kill -9 of the process server while it applies; the agent keeps writing
// and reconnects to the restarted server; the replica is byte-equal to the
// source and no segment was applied twice.
func TestReplicationServerKill9MidApply(t *testing.T) {
	need(t, "nbdcopy")
	serverKill9MidApply(t, newSite(t))
}

// serverKill9MidApply is the test above on site s (any target).
func serverKill9MidApply(t *testing.T, s *site) {
	p := protect(t, s, 512<<20, 8<<20)
	src := filepath.Join(t.TempDir(), "src.bin")
	buf := make([]byte, 384<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	applied := len(appliedSegments(s.log()))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp := exec.CommandContext(ctx, "nbdcopy", "--flush", src, p.uri)
	var cpOut bytes.Buffer
	cp.Stdout, cp.Stderr = &cpOut, &cpOut
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once the server has applied two segments of this copy: it is
	// then receiving and applying the next ones.
	waitFor(t, time.Minute, "two segments of the copy applied", func() bool {
		return len(appliedSegments(s.log())) >= applied+2
	})
	s.stop(syscall.SIGKILL)
	if err := cp.Wait(); err != nil {
		t.Fatalf("nbdcopy while the server was down: %v\n%s", err, cpOut.String())
	}
	s.start()
	seq, sum := p.checkLatest(start)
	t.Logf("point %d equals the source (%s) after kill -9 and restart", seq, sum[:16])
	second := appliedSegments(s.srv.Output())
	if len(second) == 0 {
		t.Fatal("the restarted server applied nothing: the kill did not happen mid-stream")
	}
	for k, n := range appliedSegments(s.log()) {
		if n != 1 {
			t.Fatalf("segment %s applied %d times across the kill", k, n)
		}
	}
	if st := p.status(); st.Generation != 1 {
		t.Fatalf("generation %d after a server crash: the agent resynced instead of resending", st.Generation)
	}
}

// The server unreachable for 30 s while fio writes: the agent keeps its
// journal (no bitmap mode, no resync), catches up when the server is back,
// and recovery points continue.
func TestReplicationServerOutage30s(t *testing.T) {
	need(t, "fio")
	s := newSite(t)
	p := protect(t, s, 256<<20, 8<<20)
	start := time.Now()
	fioWait := churn(t, p.uri)
	// Down once the churn has made a point (fio may take seconds to start
	// on a loaded machine).
	s.waitPoint("disk", start, time.Minute)
	s.stop(syscall.SIGKILL)
	down := time.Now()
	waitFor(t, 15*time.Second, "the agent to notice the server is gone", func() bool { return !p.status().Connected })
	time.Sleep(30*time.Second - time.Since(down))
	st := shipperStatus(t, p.jroot, "disk")
	if st.Tracker.Mode != "journal" || st.Tracker.JournalBytes < 64<<20 {
		t.Fatalf("after 30 s down: mode %q, %d journal bytes kept (want journal mode, ≥ 64 MiB kept)", st.Tracker.Mode, st.Tracker.JournalBytes)
	}
	t.Logf("server down 30 s: agent kept %d MiB of journal", st.Tracker.JournalBytes>>20)
	s.start()
	back := time.Now()
	fioWait()
	seq, _ := p.checkLatest(back)
	if st := p.status(); st.Generation != 1 || strings.Count(p.a.Output(), "resync started") != 1 {
		t.Fatalf("generation %d, %d resyncs: the outage caused a resync", st.Generation, strings.Count(p.a.Output(), "resync started"))
	}
	var before, after int
	for _, pt := range s.points("disk") {
		switch {
		case pt.Time.After(start) && pt.Time.Before(down):
			before++
		case pt.Time.After(down):
			after++
		}
	}
	if before == 0 || after < 10 {
		t.Fatalf("points: %d before the outage, %d tagged after it began (want the 1 s tags to go on through it)", before, after)
	}
	t.Logf("caught up to point %d; %d points before the outage, %d since", seq, before, after)
}

// churn starts fio writing 64 KiB blocks at random through uri at 4 MiB/s
// for 40 s; wait waits for it and fails the test if fio failed.
func churn(t *testing.T, uri string) (wait func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	fio := exec.CommandContext(ctx, "fio", "--name=churn", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite",
		"--bs=64k", "--size=128m", "--rate=4m", "--time_based", "--runtime=40", "--iodepth=4")
	var out bytes.Buffer
	fio.Stdout, fio.Stderr = &out, &out
	if err := fio.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fio.Wait() })
	return func() {
		t.Helper()
		if err := fio.Wait(); err != nil {
			t.Fatalf("fio: %v\n%s", err, out.String())
		}
	}
}

// With a tiny journal quota and the server down, the agent switches to
// bitmap mode; when the server is back it resyncs only the dirty regions
// in a new generation, and the replica equals the source.
func TestReplicationTinyJournalQuotaResyncsDirtyRegionsOnly(t *testing.T) {
	need(t, "qemu-io")
	s := newSite(t)
	p := protect(t, s, 256<<20, 64<<20, "--journal-quota", "1MiB")
	s.stop(syscall.SIGKILL)
	time.Sleep(1200 * time.Millisecond) // the status file is rewritten every second
	sentBefore := shipperStatus(t, p.jroot, "disk").BytesRaw
	start := time.Now()
	// A small write first, journaled under the quota: the agent learns
	// from its failed upload that the server is gone, so the resync waits
	// for the server instead of starting while the big writes go on.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x10 8M 4k", "-c", "flush", p.uri)
	waitFor(t, 10*time.Second, "the agent to notice the server is gone", func() bool { return !p.status().Connected })
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 8M 2M", "-c", "write -P 0x22 50M 2M",
		"-c", "write -P 0x33 130M 2M", "-c", "write -P 0x44 200M 2M", "-c", "flush", p.uri)
	// The switch is logged with its reason; the agent may already be in
	// the resync (generation 2, waiting for the server) by the time the
	// status file shows it, so the log is what is checked.
	waitFor(t, 10*time.Second, "the switch to bitmap mode in the agent's log", func() bool {
		return strings.Contains(p.a.Output(), "journal suspended, tracking dirty regions only")
	})
	if !regexp.MustCompile(`journal suspended, tracking dirty regions only.*reason="journal quota exceeded`).MatchString(p.a.Output()) {
		t.Fatal("the switch to bitmap mode does not give the journal quota as its reason")
	}
	waitFor(t, 5*time.Second, "the status to show bitmap mode or the resync in generation 2", func() bool {
		st := shipperStatus(t, p.jroot, "disk")
		return st.Tracker.Mode == "bitmap" || st.Tracker.Generation == 2
	})
	s.start()
	seq, sum := p.checkLatest(start)
	st := shipperStatus(t, p.jroot, "disk")
	if st.Tracker.Generation != 2 || st.Tracker.Mode != "journal" {
		t.Fatalf("after the resync: generation %d, mode %q (want 2, journal)", st.Tracker.Generation, st.Tracker.Mode)
	}
	// 8 MiB dirty; journal records and headers add a little.
	sent := st.BytesRaw - sentBefore
	if sent < 8<<20 || sent > 9<<20+(1<<20)/2 {
		t.Fatalf("resync shipped %d bytes for 8 MiB of dirty regions (the volume holds 72 MiB of data)", sent)
	}
	t.Logf("resync shipped %.2f MiB for 8 MiB dirty; point %d = %s", float64(sent)/(1<<20), seq, sum[:16])
}

// A segment damaged between the agent's checksum and the server's check
// (the server's fault hook flips a byte) is refused with a clear error and
// resent; nothing is harmed.
func TestReplicationCorruptSegmentIsRefusedAndResent(t *testing.T) {
	need(t, "qemu-io")
	s := newSite(t, "LIFEBOAT_FAULT_CORRUPT_SEGMENTS=2")
	p := protect(t, s, 128<<20, 8<<20)
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x66 1M 5M", "-c", "flush", p.uri)
	p.checkLatest(start)
	if n := strings.Count(s.log(), "segment refused; the agent will resend it"); n != 2 {
		t.Fatalf("server refused %d segments, want the 2 corrupted:\n%s", n, s.log())
	}
	if !strings.Contains(s.log(), "segment checksum mismatch") {
		t.Fatal("the server's refusal does not say why")
	}
	if n := strings.Count(p.a.Output(), "process server refused a damaged segment; resending"); n != 2 {
		t.Fatalf("agent resent %d times, want 2", n)
	}
	if st := shipperStatus(t, p.jroot, "disk"); st.Resends != 2 {
		t.Fatalf("status shows %d resends, want 2", st.Resends)
	}
}

// An agent whose certificate another CA issued, and a client without any
// certificate, are refused at the TLS handshake; the server creates nothing.
func TestReplicationRefusesAgentWithoutValidCertificate(t *testing.T) {
	s := newSite(t)
	other := t.TempDir()
	run(t, binary, "server", "init", "--data-dir", filepath.Join(other, "server"))
	run(t, binary, "certs", "issue", "--data-dir", filepath.Join(other, "server"), "--name", "web01", "--out", filepath.Join(other, "certs"))
	dir := t.TempDir()
	jroot := filepath.Join(dir, "journal")
	volume := "disk=" + filepath.Join(dir, "disk.img") + ",size=16MiB"
	otherCert, otherKey := filepath.Join(other, "certs", "web01.crt"), filepath.Join(other, "certs", "web01.key")

	// The agent checks its certificate against its CA file at start.
	out, err := exec.Command(binary, "agent", "--volume", volume, "--journal-dir", jroot, "--nbd", "127.0.0.1:0",
		"--server", s.url(), "--cert", otherCert, "--key", otherKey, "--ca", filepath.Join(s.certs, "ca.crt")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not a client certificate issued by the CA") {
		t.Fatalf("agent with a foreign certificate: %v\n%s", err, out)
	}

	// With both CAs in its CA file the agent starts and trusts the server,
	// but the server does not trust it.
	bundle := filepath.Join(dir, "both-ca.crt")
	mine, _ := os.ReadFile(filepath.Join(s.certs, "ca.crt"))
	theirs, _ := os.ReadFile(filepath.Join(other, "certs", "ca.crt"))
	if err := os.WriteFile(bundle, append(mine, theirs...), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--volume", volume, "--journal-dir", jroot, "--server", s.url(), "--cert", otherCert,
		"--key", otherKey, "--ca", bundle)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", a.Output())
		}
	})
	waitFor(t, 20*time.Second, "the agent to report the refusal", func() bool {
		return strings.Contains(shipperStatus(t, jroot, "disk").LastError, "certificate")
	})
	t.Logf("agent: %s", shipperStatus(t, jroot, "disk").LastError)
	waitFor(t, 10*time.Second, "the server to log the refused handshake", func() bool {
		return strings.Contains(s.log(), "TLS handshake error")
	})
	if _, ok := s.volume("disk"); ok {
		t.Fatal("the server knows the volume of an agent it refused")
	}
	a.stop(t, syscall.SIGTERM)

	// No client certificate at all: the handshake fails before any request.
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(s.certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := c.Get(s.url() + "/v1/volumes")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got HTTP %d", resp.StatusCode)
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("no-certificate client: %v (want a TLS certificate error)", err)
	}
}
