package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/targets/azure/azuritetest"
)

// The pipeline's end-to-end test with the Azure target on Azurite; then
// the newest point's snapshot, downloaded as it is, is a fixed VHD that
// qemu-img reads with the volume's size and content at that tag.
func TestAzureReplicationPointsEqualSourceAtTags(t *testing.T) {
	need(t, "fio", "nbdcopy", "qemu-io", "qemu-img")
	az := azuritetest.Start(t)
	s, cc := azureSite(t, az, nil)
	p := pointsEqualSourceAtTags(t, s)
	vs, ok := s.volume("disk")
	if !ok || vs.LatestPoint == nil {
		t.Fatal("no latest point")
	}
	src := copyFile(t, p.img) // writes are paused: this is the source at that tag
	checkVHD(t, downloadBlob(t, cc, vs.LatestPoint.Seq), src)
	t.Logf("point %d downloaded from its snapshot is a VHD equal to the source", vs.LatestPoint.Seq)
}

// Encryption at rest end to end: the points read through the server equal
// the plaintext; the blob holds none of the plaintext's 512-byte blocks;
// the server refuses to start with a wrong key or none.
func TestAzureEncryptedReplication(t *testing.T) {
	need(t, "nbdcopy", "qemu-io")
	az := azuritetest.Start(t)
	key := writeKey(t)
	s, cc := azureSite(t, az, nil, "--encryption-key", key)
	p := protect(t, s, 64<<20, 8<<20)
	src := filepath.Join(t.TempDir(), "src.bin")
	buf := make([]byte, 12<<20)
	rand.Read(buf)
	copy(buf[4<<20:], bytes.Repeat([]byte("plaintext block "), 1<<16)) // compressible, easy to spot
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run(t, "nbdcopy", "--flush", src, p.uri)
	seq, _ := p.checkLatest(start)

	raw := downloadBlob(t, cc, 0)
	plain := blockSums(t, p.img)
	leaked, nonzero := 0, 0
	for sum := range blockSums(t, raw) {
		nonzero++
		if plain[sum] {
			leaked++
		}
	}
	if leaked > 0 || nonzero < len(plain)/2 {
		t.Fatalf("raw blob: %d of the source's %d distinct non-zero 512-byte blocks appear in it; %d distinct non-zero blocks in all",
			leaked, len(plain), nonzero)
	}
	t.Logf("point %d equals the source; the raw blob holds %d distinct non-zero blocks and none of the source's %d", seq, nonzero, len(plain))

	s.stop(syscall.SIGTERM)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--encryption-key", writeKey(t)}, "encryption key does not match"},
		{nil, "is encrypted"},
	} {
		s.args = append([]string{"--target", s.args[1]}, tc.args...)
		cmd := exec.Command(binary, append([]string{"server", "--data-dir", s.dir, "--listen", s.addr}, s.args...)...)
		cmd.Env = append(os.Environ(), s.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Fatalf("server with key flags %q: err %v, want a refusal at start saying %q:\n%s", tc.args, err, tc.want, out)
		}
		t.Logf("refused at start: %s", lastLine(string(out)))
	}
	s.args = []string{"--target", s.args[1], "--encryption-key", key, "--recovery-nbd", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"}
	s.start()
	start = time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 2M 1M", "-c", "flush", p.uri)
	p.checkLatest(start) // and replication goes on with the right key
}

// kill -9 of the process server while it applies to Azure: it restarts at
// once (it takes its own blob lease back) and the replica equals the
// source, no segment applied twice.
func TestAzureServerKill9MidApply(t *testing.T) {
	need(t, "nbdcopy")
	az := azuritetest.Start(t)
	s, _ := azureSite(t, az, nil)
	serverKill9MidApply(t, s)
}

// Azurite down for 30 s while fio writes: the process server keeps
// receiving and spooling, retries the apply with backoff and catches up
// when the storage is back, without a resync; the replica then equals the
// source, and the tags taken during the outage became points.
func TestAzuriteOutage30s(t *testing.T) {
	need(t, "fio")
	az := azuritetest.Start(t)
	s, _ := azureSite(t, az, nil)
	p := protect(t, s, 256<<20, 8<<20)
	fioWait := churn(t, p.uri)
	time.Sleep(3 * time.Second)
	down := time.Now()
	restarted, err := az.StopFor(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.waitLog("apply failed; the segment stays spooled and is retried", 30*time.Second)
	if err := <-restarted; err != nil {
		t.Fatalf("restart Azurite: %v", err)
	}
	back := time.Now()
	t.Logf("Azurite was down %v", back.Sub(down).Round(time.Second))
	fioWait()
	seq, _ := p.checkLatest(back)
	if st := p.status(); st.Generation != 1 || strings.Count(p.a.Output(), "resync started") != 1 {
		t.Fatalf("generation %d, %d resyncs: the storage outage caused a resync", st.Generation, strings.Count(p.a.Output(), "resync started"))
	}
	during := 0
	for _, pt := range s.points("disk") {
		if pt.Time.After(down.Add(time.Second)) && pt.Time.Before(back) {
			during++
		}
	}
	if during < 10 {
		t.Fatalf("%d points tagged while Azurite was down: the tags taken during the outage were lost", during)
	}
	if strings.Contains(s.log(), "spool full") {
		t.Fatal("the spool filled during a 30 s outage")
	}
	t.Logf("caught up to point %d; %d points were tagged during the outage and applied after it", seq, during)
}

// A second process server pointed at the same container: the first holds
// the replica's lease, so the second refuses the volume's segments with a
// clear message and applies nothing; the first's replica is intact and
// replication goes on there.
func TestAzureSecondProcessServerIsRefused(t *testing.T) {
	need(t, "qemu-io")
	az := azuritetest.Start(t)
	s, _ := azureSite(t, az, nil)
	p := protect(t, s, 64<<20, 8<<20)
	first, want := p.checkLatest(time.Time{})

	// A scale-out process server with the site's CA (DATA-DIR/pki, as
	// its --help says) and the same target.
	ps2 := filepath.Join(t.TempDir(), "ps2")
	os.MkdirAll(ps2, 0o700)
	if out, err := exec.Command("cp", "-a", filepath.Join(s.dir, "pki"), ps2).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr2 := ln.Addr().String()
	ln.Close()
	srv2, err := startProc(t, s.env, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "process server listening on")
	}, append([]string{"process-server", "--data-dir", ps2, "--listen", addr2}, s.targetArgs()...)...)
	if err != nil {
		t.Fatal(err)
	}
	p.a.stop(t, syscall.SIGTERM)
	other := *s
	other.addr = addr2
	p.a = startAgent(t, slices.Concat(p.args, other.agentArgs())...)
	waitFor(t, time.Minute, "the second process server to refuse the volume", func() bool {
		return strings.Contains(srv2.Output(), "leased by another process server")
	})
	time.Sleep(3 * time.Second) // the agent retries; it must stay refused
	if n := len(appliedSegments(srv2.Output())); n != 0 {
		t.Fatalf("the second process server applied %d segments to a replica it does not hold", n)
	}
	if !strings.Contains(p.a.Output(), "423 Locked") {
		t.Fatalf("the agent does not show the refusal:\n%s", p.a.Output())
	}
	if got := s.export("disk", fmt.Sprint(first)); got != want {
		t.Fatalf("point %d has sha256 %s after the second server tried, want %s", first, got, want)
	}
	t.Logf("second process server refused: %s", lastMatch(srv2.Output(), "leased by another process server"))

	// Back to the first server: replication goes on where it was (the
	// second server answered 423, not "no replica", so the agent did not
	// take the replica for lost and resync it).
	p.a.stop(t, syscall.SIGTERM)
	p.a = startAgent(t, slices.Concat(p.args, s.agentArgs())...)
	p.uri = p.a.uri["disk"]
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 2M", "-c", "flush", p.uri)
	p.checkLatest(start)
	if st := p.status(); st.Generation != 1 {
		t.Fatalf("generation %d: meeting the second server made the agent resync", st.Generation)
	}
}

// writeKey writes a fresh 64-byte key file (chmod 600) and returns its path.
func writeKey(t *testing.T) string {
	t.Helper()
	key := make([]byte, 64)
	rand.Read(key)
	path := filepath.Join(t.TempDir(), "replica.key")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// blockSums are the sha256 sums of a file's distinct non-zero 512-byte
// blocks.
func blockSums(t *testing.T, path string) map[[32]byte]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[[32]byte]bool{}
	zero := make([]byte, 512)
	buf := make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(f, buf)
		for off := 0; off+512 <= n; off += 512 {
			if b := buf[off : off+512]; !bytes.Equal(b, zero) {
				sums[sha256.Sum256(b)] = true
			}
		}
		if err != nil {
			return sums
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func lastMatch(s, sub string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return lines[i]
		}
	}
	return ""
}

// The agent killed (-9) in the middle of the initial replication to Azure:
// restarted, it goes on from what the site acknowledged instead of copying
// the volume again, and the replica equals the source.
func TestAzureInitialReplicationResumesAfterAgentKill(t *testing.T) {
	az := azuritetest.Start(t)
	s, _ := azureSite(t, az, nil)
	initialReplicationResumesAfterAgentKill(t, s, 512<<20, 192<<20, 32<<20)
}
