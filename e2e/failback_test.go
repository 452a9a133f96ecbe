package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/targets/azure/azuritetest"
)

// master is `lifeboat master-target` beside a protected volume, with a
// server certificate from the site's CA.
type master struct {
	t     *testing.T
	dir   string
	addr  string
	p     *protected
	env   []string // added to its environment (fault injection)
	certs string   // master.crt, master.key, ca.crt
	proc  *agentProc
}

func newMaster(t *testing.T, s *site, p *protected, env ...string) *master {
	t.Helper()
	m := &master{t: t, dir: filepath.Join(t.TempDir(), "master"), p: p, env: env}
	m.certs = filepath.Join(t.TempDir(), "mcerts")
	run(t, binary, "certs", "issue", "--data-dir", s.dir, "--role", "server", "--name", "master", "--host", "127.0.0.1", "--out", m.certs)
	m.addr = freeAddr(t)
	m.start()
	t.Cleanup(func() {
		if t.Failed() && m.proc != nil {
			t.Logf("master target output:\n%s", m.proc.Output())
		}
	})
	return m
}

func (m *master) url() string { return "https://" + m.addr }

func (m *master) start() {
	m.t.Helper()
	p, err := startProc(m.t, m.env, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "master target listening on")
	}, "master-target", "--volume", "disk="+m.p.img, "--journal-dir", m.p.jroot, "--data-dir", m.dir, "--listen", m.addr,
		"--cert", filepath.Join(m.certs, "master.crt"), "--key", filepath.Join(m.certs, "master.key"), "--ca", filepath.Join(m.certs, "ca.crt"))
	if err != nil {
		m.t.Fatal(err)
	}
	m.proc = p
}

// differingBlocks counts the 4 KiB blocks in which files a and b differ,
// reading both 1 MiB at a time.
func differingBlocks(t *testing.T, a, b string) int64 {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	var n int64
	for {
		nx, errx := io.ReadFull(fa, x)
		ny, erry := io.ReadFull(fb, y)
		if nx != ny {
			t.Fatalf("%s and %s differ in size", a, b)
		}
		for off := 0; off < nx; off += 4096 {
			if !bytes.Equal(x[off:min(off+4096, nx)], y[off:min(off+4096, nx)]) {
				n++
			}
		}
		if errx != nil || erry != nil {
			return n
		}
	}
}

// qemuScript runs qemu-io commands from its standard input against uri.
func qemuScript(t *testing.T, uri string, cmds []string) {
	t.Helper()
	cmd := exec.Command("qemu-io", "-f", "raw", uri)
	cmd.Stdin = strings.NewReader(strings.Join(append(cmds, "flush", "quit"), "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

// failedOver is a protected volume with writes its agent never shipped,
// failed over to latest, with writes at the site, and its master target.
type failedOver struct {
	s      *site
	p      *protected
	m      *master
	st     pipeline.RecoveryState // the failover
	failed string                 // a copy of the failover volume after the writes
	differ int64                  // bytes of the 4 KiB blocks that differ from the primary disk
}

// unshippedBytes is what failOver writes at the source while the site is down.
const unshippedBytes = 512 << 10

// failOver replicates a volume of size to site s, writes unshippedBytes the site
// never gets (the site is down while they are made, then the agent is
// killed), fails over to latest and writes siteBlocks random 4 KiB blocks
// on the failover volume; check, if set, runs between the failover and
// those writes.
func failOver(t *testing.T, s *site, size int64, siteBlocks int, masterEnv []string, check func(f *failedOver)) *failedOver {
	t.Helper()
	need(t, "qemu-io", "nbdcopy")
	f := &failedOver{s: s}
	f.p = protect(t, f.s, size, 64<<20)
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 2M", "-c", "flush", f.p.uri)
	f.p.checkLatest(start)
	f.s.stop(syscall.SIGTERM)
	run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x77 100M %d", unshippedBytes), "-c", "flush", f.p.uri)
	if err := f.p.a.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent survived SIGKILL?")
	}
	f.s.start()
	f.m = newMaster(t, f.s, f.p, masterEnv...)
	f.st = f.s.recovery("failover", "start", "disk", "--point", "latest")
	if check != nil {
		check(f)
	}
	rng := rand.New(rand.NewPCG(7, uint64(siteBlocks)))
	var cmds []string
	srcs := t.TempDir()
	for i := range siteBlocks { // random bytes: no dedupe, no compression
		src := filepath.Join(srcs, fmt.Sprint(i))
		b := make([]byte, 4096)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(src, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, fmt.Sprintf("write -q -s %s %d 4k", src, rng.Int64N(size/4096)*4096))
	}
	qemuScript(t, f.st.URL, cmds)
	f.failed = filepath.Join(t.TempDir(), "failover.img")
	run(t, "nbdcopy", f.st.URL, f.failed)
	f.differ = differingBlocks(t, f.p.img, f.failed) * 4096
	t.Logf("blocks that differ between the primary disk and the failover volume: %d bytes", f.differ)
	return f
}

// reverse returns the failover's reverse replication as the site reports it.
func (f *failedOver) reverse() *pipeline.ReprotectState {
	f.s.t.Helper()
	_, list := f.s.recoveryList()
	fo := failoverOf(list, "disk")
	if fo == nil || fo.Reprotect == nil {
		f.s.t.Fatalf("no reprotected failover: %+v", fo)
	}
	return fo.Reprotect
}

// firstSynced waits until the reprotect's first sync is on the master
// target, and returns the reverse shipper's status then.
func (f *failedOver) firstSynced(timeout time.Duration) *pipeline.ShipperStatus {
	f.s.t.Helper()
	var sh *pipeline.ShipperStatus
	waitFor(f.s.t, timeout, "the reprotect's first sync", func() bool {
		sh = f.reverse().Shipper
		return sh != nil && sh.Tracker.Resync == "" && sh.Tracker.NextSeq-1 == sh.AckedSeq
	})
	return sh
}

// failBack fails back and checks the primary disk and the site's point
// against the failover volume (want: its sha256), then stops the master
// target, starts the agent, and checks that it ships only new writes and
// that the next point equals the primary disk.
func (f *failedOver) failBack(want string) {
	t := f.s.t
	t.Helper()
	fb := f.s.recovery("failback", "disk")
	if fb.Reprotect == nil || fb.Reprotect.Failback == nil {
		t.Fatalf("failback: %+v", fb)
	}
	if got := sha256File(t, f.p.img); got != want {
		t.Fatalf("after failback the primary disk has sha256 %s; the failover volume %s", got, want)
	}
	if _, list := f.s.recoveryList(); failoverOf(list, "disk") != nil {
		t.Fatal("the failover volume is still there after the failback")
	}
	if got := f.s.export("disk", fmt.Sprint(fb.Reprotect.Failback.Seq)); got != want {
		t.Fatalf("the failback's point on the site has sha256 %s; the failover volume %s", got, want)
	}
	f.m.proc.stop(t, syscall.SIGTERM)
	f.p.a = startAgent(t, append(f.p.args, f.s.agentArgs()...)...)
	f.p.uri = f.p.a.uri["disk"]
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x99 200M 1M", "-c", "flush", f.p.uri)
	f.p.checkLatest(start)
	ss := shipperStatus(t, f.p.jroot, "disk")
	if ss.BytesRaw > 2<<20 || ss.Resync != nil {
		t.Fatalf("after the failback the agent shipped %d bytes (resync %+v); want only its 1 MiB of new writes", ss.BytesRaw, ss.Resync)
	}
	t.Logf("agent after failback: %d segment bytes shipped for 1 MiB of new writes, generation %d", ss.BytesRaw, ss.Tracker.Generation)
}

// The cycle on a 1 GiB volume: replicate; writes the agent never ships,
// then kill -9; fail over to latest; 1 % of the volume written at the
// site; reprotect --verify sends at most 1.1 x the bytes of the blocks
// that really differ; failback makes the primary disk equal to the
// failover volume; the agent ships only its new writes afterwards, and
// the next point equals the primary disk. Bad requests on the way are
// refused and change nothing.
func TestReprotectAndFailback(t *testing.T) {
	const size = 1 << 30
	f := failOver(t, newRecoverySite(t), size, size/100/4096, nil, func(f *failedOver) {
		if r := f.s.cli("failback", "disk"); r.code != 1 || !strings.Contains(r.out(), "not reprotected") {
			t.Fatalf("failback without reprotect: want exit 1\n%v", r)
		}
	})
	s, m := f.s, f.m
	if r := s.cli("reprotect", "nosuch", "--to", m.url()); r.code != 1 {
		t.Fatalf("reprotect of an unknown volume: want exit 1\n%v", r)
	}
	r := s.cli("reprotect", "disk", "--to", m.url(), "--verify")
	if r.code != 1 || !strings.Contains(r.out(), fmt.Sprintf("%d bytes of writes", unshippedBytes)) || !strings.Contains(r.out(), "--force") {
		t.Fatalf("reprotect with unshipped source writes and no --force: want exit 1 naming %d bytes and --force\n%v", unshippedBytes, r)
	}
	if r := s.cli("reprotect", "disk", "--to", m.url(), "--verify", "--full"); r.code != 2 {
		t.Fatalf("reprotect --verify --full: want a usage error\n%v", r)
	}
	_, list := s.recoveryList()
	if fo := failoverOf(list, "disk"); fo == nil || fo.Reprotect != nil || fo.Committed {
		t.Fatalf("a refused reprotect changed the failover: %+v", fo)
	}
	st := s.recovery("reprotect", "disk", "--to", m.url(), "--verify", "--force")
	if st.Reprotect == nil || st.Reprotect.RolledBackBytes != unshippedBytes || !st.Committed {
		t.Fatalf("reprotect: %+v", st.Reprotect)
	}
	if r := s.cli("reprotect", "disk", "--to", m.url()); r.code != 1 || !strings.Contains(r.out(), "already reprotected") {
		t.Fatalf("a second reprotect: want exit 1\n%v", r)
	}
	if r := s.cli("failover", "change-point", "disk", "--point", "latest", "--force"); r.code != 1 {
		t.Fatalf("change-point of a reprotected failover: want exit 1\n%v", r)
	}
	sh := f.firstSynced(2 * time.Minute)
	t.Logf("first sync: %d candidate bytes, %d segment bytes sent (%d on the wire); %d bytes differ",
		st.Reprotect.CandidateBytes, sh.BytesRaw, sh.BytesWire, f.differ)
	if float64(sh.BytesRaw) > 1.1*float64(f.differ) {
		t.Fatalf("reprotect --verify sent %d bytes; the blocks that differ are %d bytes (bound 1.1x)", sh.BytesRaw, f.differ)
	}
	if got := sha256File(t, f.p.img); got != sha256File(t, f.failed) {
		t.Fatal("after the first sync the primary disk differs from the failover volume")
	}

	// Behind: the master target is down and the failover volume written.
	m.proc.stop(t, syscall.SIGTERM)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 300M 1M", "-c", "flush", f.st.URL)
	if r := s.cli("failback", "disk", "--no-wait"); r.code != 1 || !strings.Contains(r.out(), "behind") {
		t.Fatalf("failback --no-wait while reverse replication is behind: want exit 1 naming it\n%v", r)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5b 301M 4k", "-c", "flush", f.st.URL) // still writable
	run(t, "nbdcopy", f.st.URL, f.failed)
	want := sha256File(t, f.failed)
	m.start()
	f.failBack(want)
}

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// reverseNow reads the reverse replication through the admin API (faster
// than the CLI, to catch a first sync midway).
func (f *failedOver) reverseNow() *pipeline.ReprotectState {
	f.s.t.Helper()
	var list []pipeline.RecoveryState
	if err := pipeline.Call(context.Background(), f.s.admin(), http.MethodGet, f.s.url()+"/v1/recovery", nil, &list); err != nil {
		f.s.t.Fatal(err)
	}
	if fo := failoverOf(list, "disk"); fo != nil && fo.Reprotect != nil {
		return fo.Reprotect
	}
	f.s.t.Fatal("no reprotected failover")
	return nil
}

// shippedAtLeast waits until the reverse shipper has shipped n bytes
// and the first sync is still running, and returns what it shipped.
func (f *failedOver) shippedAtLeast(n int64) int64 {
	t := f.s.t
	t.Helper()
	var sh *pipeline.ShipperStatus
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d bytes of the first sync shipped", n), func() bool {
		sh = f.reverseNow().Shipper
		return sh != nil && sh.BytesRaw >= n
	})
	if sh.Tracker.Resync == "" && sh.Tracker.NextSeq-1 == sh.AckedSeq {
		t.Fatalf("the first sync finished (%d bytes shipped) before the kill: nothing tested", sh.BytesRaw)
	}
	return sh.BytesRaw
}

// slowLink holds each segment the master target receives for a while, so
// that a first sync of 64 MiB lasts seconds and a kill lands in its middle.
var slowLink = []string{"LIFEBOAT_FAULT_SEGMENT_DELAY=1500ms"}

// killMidFirstSync starts a reprotect (no --verify), waits until a third
// of its candidates is shipped and a second more (for the failover volume
// to record that progress), calls kill, and returns the candidate bytes
// and the bytes shipped before the kill.
func (f *failedOver) killMidFirstSync(kill func()) (cand, before int64) {
	f.s.t.Helper()
	st := f.s.recovery("reprotect", "disk", "--to", f.m.url(), "--force")
	cand = st.Reprotect.CandidateBytes
	before = f.shippedAtLeast(cand / 3)
	time.Sleep(time.Second)
	before = f.shippedAtLeast(before)
	kill()
	return cand, before
}

// kill -9 of the master target in the middle of a reprotect's first sync:
// reverse replication resumes where it was (what it ships in all stays
// near the candidates, far from twice), and the end state is equal.
// Without --verify, the first sync ships the candidate blocks: the bound.
func TestReprotectResumesAfterMasterTargetKill9(t *testing.T) {
	f := failOver(t, newRecoverySite(t), 256<<20, 16384, slowLink, nil)
	cand, before := f.killMidFirstSync(func() { f.m.proc.stop(t, syscall.SIGKILL) })
	f.m.start()
	sh := f.firstSynced(2 * time.Minute)
	t.Logf("candidates %d bytes; shipped %d before the kill, %d in all", cand, before, sh.BytesRaw)
	if float64(sh.BytesRaw) > 1.1*float64(cand) {
		t.Fatalf("shipped %d bytes for %d bytes of candidates: it started over or sent more than the candidates", sh.BytesRaw, cand)
	}
	if got, want := sha256File(t, f.p.img), sha256File(t, f.failed); got != want {
		t.Fatal("after the first sync the primary disk differs from the failover volume")
	}
	f.failBack(sha256File(t, f.failed))
}

// kill -9 of the site's server in the middle of a reprotect's first sync:
// after its restart reverse replication resumes from the regions left,
// and the end state is equal.
func TestReprotectResumesAfterSiteKill9(t *testing.T) {
	f := failOver(t, newRecoverySite(t), 256<<20, 16384, slowLink, nil)
	cand, before := f.killMidFirstSync(func() { f.s.stop(syscall.SIGKILL) })
	f.s.start()
	sh := f.firstSynced(2 * time.Minute)
	t.Logf("candidates %d bytes; shipped %d before the kill, %d after the restart", cand, before, sh.BytesRaw)
	if float64(sh.BytesRaw) > 0.8*float64(cand) {
		t.Fatalf("shipped %d bytes after the restart, %d before, for %d bytes of candidates: the first sync started over", sh.BytesRaw, before, cand)
	}
	if got, want := sha256File(t, f.p.img), sha256File(t, f.failed); got != want {
		t.Fatal("after the first sync the primary disk differs from the failover volume")
	}
	f.failBack(sha256File(t, f.failed))
}

// A reprotect to a master target that has another volume (another id), or
// the same volume on a smaller disk, is refused with a clear error and
// changes nothing.
func TestReprotectRefusesAnotherOrSmallerVolume(t *testing.T) {
	const size = 256 << 20
	f := failOver(t, newRecoverySite(t), size, 16, nil, nil)
	f.m.proc.stop(t, syscall.SIGTERM)
	if r := lifeboat(t, "master-target", "--volume", "disk="+f.p.img, "--cert", filepath.Join(f.m.certs, "master.crt")); r.code != 2 {
		t.Fatalf("master-target with --cert alone: want a usage error\n%v", r)
	}
	if r := lifeboat(t, "master-target", "--volume", "disk="+f.p.img, "--journal-dir", f.p.jroot, "--data-dir", t.TempDir(),
		"--listen", "127.0.0.1:0"); r.code != 1 || !strings.Contains(r.out(), "server init") && !strings.Contains(r.out(), "ca.crt") {
		t.Fatalf("master-target without certificates: want exit 1 naming them\n%v", r)
	}

	// Another volume: a journal the agent made for another disk.
	dir := t.TempDir()
	other := &protected{img: filepath.Join(dir, "other.img"), jroot: filepath.Join(dir, "journal"), t: t}
	a := startAgent(t, "--volume", "disk="+other.img+",size=256MiB", "--journal-dir", other.jroot)
	a.stop(t, syscall.SIGTERM)
	m2 := newMaster(t, f.s, other)
	r := f.s.cli("reprotect", "disk", "--to", m2.url(), "--force")
	if r.code != 1 || !strings.Contains(r.out(), "is not a primary volume of this master target") {
		t.Fatalf("reprotect to another volume: want exit 1 naming it\n%v", r)
	}
	m2.proc.stop(t, syscall.SIGTERM)

	// The same volume (its journal) on a smaller disk.
	small := &protected{img: filepath.Join(dir, "small.img"), jroot: filepath.Join(dir, "jsmall"), t: t}
	run(t, "cp", "-r", f.p.jroot, small.jroot)
	run(t, "truncate", "-s", "128M", small.img)
	m3 := newMaster(t, f.s, small)
	r = f.s.cli("reprotect", "disk", "--to", m3.url(), "--force")
	if r.code != 1 || !strings.Contains(r.out(), "needs a volume of the same size") {
		t.Fatalf("reprotect to a smaller volume: want exit 1 naming the sizes\n%v", r)
	}
	if got := sha256File(t, f.p.img); got == sha256File(t, f.failed) {
		t.Fatal("the primary disk changed")
	}
	_, list := f.s.recoveryList()
	if fo := failoverOf(list, "disk"); fo == nil || fo.Reprotect != nil || fo.Committed {
		t.Fatalf("a refused reprotect changed the failover: %+v", fo)
	}
}

// The cycle with the Azure target on Azurite, encrypted at rest: points
// are snapshots; what the site applied after the failover point comes
// from a page-range diff (Azurite answers every page: more candidates,
// narrowed by --verify).
func TestAzureEncryptedReprotectAndFailback(t *testing.T) {
	az := azuritetest.Start(t)
	s, _ := azureSite(t, az, nil, "--encryption-key", writeKey(t), "--recovery-nbd", "127.0.0.1:0")
	const size = 256 << 20
	f := failOver(t, s, size, 2048, nil, nil)
	st := s.recovery("reprotect", "disk", "--to", f.m.url(), "--verify", "--force")
	sh := f.firstSynced(2 * time.Minute)
	t.Logf("first sync: %d candidate bytes, %d segment bytes sent; %d bytes differ", st.Reprotect.CandidateBytes, sh.BytesRaw, f.differ)
	if float64(sh.BytesRaw) > 1.1*float64(f.differ) {
		t.Fatalf("reprotect --verify sent %d bytes; the blocks that differ are %d bytes (bound 1.1x)", sh.BytesRaw, f.differ)
	}
	f.failBack(sha256File(t, f.failed))
}
