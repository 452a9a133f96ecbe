package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
)

// master is `lifeboat master-target` beside a protected volume, with a
// server certificate from the site's CA.
type master struct {
	t    *testing.T
	dir  string
	addr string
	p    *protected
	proc *agentProc
}

func newMaster(t *testing.T, s *site, p *protected) *master {
	t.Helper()
	m := &master{t: t, dir: filepath.Join(t.TempDir(), "master"), p: p}
	out := filepath.Join(t.TempDir(), "mcerts")
	run(t, binary, "certs", "issue", "--data-dir", s.dir, "--role", "server", "--name", "master", "--host", "127.0.0.1", "--out", out)
	pkiDir := filepath.Join(m.dir, "pki")
	os.MkdirAll(pkiDir, 0o700)
	for from, to := range map[string]string{"master.crt": "server.crt", "master.key": "server.key", "ca.crt": "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(out, from))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(pkiDir, to), b, 0o600)
	}
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
	p, err := startProc(m.t, nil, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "master target listening on")
	}, "master-target", "--volume", "disk="+m.p.img, "--journal-dir", m.p.jroot, "--data-dir", m.dir, "--listen", m.addr)
	if err != nil {
		m.t.Fatal(err)
	}
	m.proc = p
}

// differingBlocks counts the 4 KiB blocks in which files a and b differ.
func differingBlocks(t *testing.T, a, b string) int64 {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("%s is %d bytes, %s %d", a, len(x), b, len(y))
	}
	var n int64
	for off := 0; off < len(x); off += 4096 {
		if !bytes.Equal(x[off:off+4096], y[off:off+4096]) {
			n++
		}
	}
	return n
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

// The cycle on a 1 GiB volume: replicate; writes the agent never ships,
// then kill -9; fail over to latest; 1 % of the volume written at the
// site; reprotect --verify sends at most 1.1 x the bytes of the blocks
// that really differ; failback makes the primary disk equal to the
// failover volume; the agent ships only its new writes afterwards, and
// the next point equals the primary disk. Bad requests on the way are
// refused and change nothing.
func TestReprotectAndFailback(t *testing.T) {
	need(t, "qemu-io", "nbdcopy")
	const size = 1 << 30
	s := newRecoverySite(t)
	p := protect(t, s, size, 64<<20)
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 2M", "-c", "flush", p.uri)
	p.checkLatest(start)

	// Writes the site never gets: the site is down while they are made,
	// then the agent is killed.
	s.stop(syscall.SIGTERM)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 100M 512k", "-c", "flush", p.uri)
	if err := p.a.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent survived SIGKILL?")
	}
	s.start()
	m := newMaster(t, s, p)

	if r := s.cli("reprotect", "disk", "--to", m.url()); r.code != 1 || !strings.Contains(r.out(), "not failed over") {
		t.Fatalf("reprotect of a volume that is not failed over: want exit 1 naming it\n%v", r)
	}
	st := s.recovery("failover", "start", "disk", "--point", "latest")
	if r := s.cli("failback", "disk"); r.code != 1 || !strings.Contains(r.out(), "not reprotected") {
		t.Fatalf("failback without reprotect: want exit 1\n%v", r)
	}

	// 1 % of the volume written at the site, in 4 KiB blocks of random
	// bytes (no dedupe, no compression).
	rng := rand.New(rand.NewPCG(7, 7))
	var cmds []string
	srcs := t.TempDir()
	for i := range size / 100 / 4096 {
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
	qemuScript(t, st.URL, cmds)
	failed := filepath.Join(t.TempDir(), "failover.img")
	run(t, "nbdcopy", st.URL, failed)
	differ := differingBlocks(t, p.img, failed) * 4096
	t.Logf("blocks that differ between the primary disk and the failover volume: %d bytes", differ)

	r := s.cli("reprotect", "disk", "--to", m.url(), "--verify")
	if r.code != 1 || !strings.Contains(r.out(), "524288 bytes of writes") || !strings.Contains(r.out(), "--force") {
		t.Fatalf("reprotect with unshipped source writes and no --force: want exit 1 naming 524288 bytes and --force\n%v", r)
	}
	_, list := s.recoveryList()
	if f := failoverOf(list, "disk"); f == nil || f.Reprotect != nil || f.Committed {
		t.Fatalf("a refused reprotect changed the failover: %+v", f)
	}
	st = s.recovery("reprotect", "disk", "--to", m.url(), "--verify", "--force")
	if st.Reprotect == nil || st.Reprotect.RolledBackBytes != 512<<10 || !st.Committed {
		t.Fatalf("reprotect: %+v", st.Reprotect)
	}
	t.Logf("reprotect: %d candidate bytes", st.Reprotect.CandidateBytes)
	var sh *pipeline.ShipperStatus
	waitFor(t, 2*time.Minute, "the reprotect's first sync", func() bool {
		_, list := s.recoveryList()
		f := failoverOf(list, "disk")
		sh = f.Reprotect.Shipper
		return sh != nil && sh.Tracker.Resync == "" && sh.Tracker.NextSeq-1 == sh.AckedSeq
	})
	t.Logf("first sync: %d segment bytes sent (%d on the wire), %d bytes differ", sh.BytesRaw, sh.BytesWire, differ)
	if float64(sh.BytesRaw) > 1.1*float64(differ) {
		t.Fatalf("reprotect --verify sent %d bytes; the blocks that differ are %d bytes (bound 1.1x)", sh.BytesRaw, differ)
	}
	want := sha256File(t, failed)
	for _, l := range strings.Split(m.proc.Output()+s.log(), "\n") {
		if strings.Contains(l, "ready for reverse") || strings.Contains(l, "reprotect started") {
			t.Log(l)
		}
	}

	// Failback.
	fb := s.recovery("failback", "disk")
	if fb.Reprotect == nil || fb.Reprotect.Failback == nil {
		t.Fatalf("failback: %+v", fb)
	}
	if got := sha256File(t, p.img); got != want {
		t.Fatalf("after failback the primary disk has sha256 %s; the failover volume %s", got, want)
	}
	if _, list := s.recoveryList(); failoverOf(list, "disk") != nil {
		t.Fatal("the failover volume is still there after the failback")
	}
	if got := s.export("disk", fmt.Sprint(fb.Reprotect.Failback.Seq)); got != want {
		t.Fatalf("the failback's point on the site has sha256 %s; the failover volume %s", got, want)
	}
	m.proc.stop(t, syscall.SIGTERM)

	// Forward replication again: only the new writes are shipped.
	p.a = startAgent(t, append(p.args, s.agentArgs()...)...)
	p.uri = p.a.uri["disk"]
	start = time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x99 200M 1M", "-c", "flush", p.uri)
	p.checkLatest(start)
	ss := shipperStatus(t, p.jroot, "disk")
	if ss.BytesRaw > 2<<20 || ss.Resync != nil {
		t.Fatalf("after the failback the agent shipped %d bytes (resync %+v); want only its 1 MiB of new writes", ss.BytesRaw, ss.Resync)
	}
	b, _ := json.Marshal(ss)
	t.Logf("agent after failback: %s", b)
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
