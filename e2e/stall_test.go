package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/pipeline/pki"
)

// rssBound is what the server may use, at its peak, while 20 uploads that
// announce 1 GiB each hold their volumes with 4 KiB bodies: its receive
// buffers grow with the bytes that arrive, not with the announcement.
// vmBound bounds its peak virtual size: untouched pages do not count in
// the RSS, so a server that allocated the announced 20 GiB up front (as
// it once did: VmPeak 22 GiB, VmHWM 42 MiB) is caught by this one.
const (
	rssBound = 150 << 20
	vmBound  = 8 << 30
)

// upload is one segment upload with the web01 agent certificate.
type upload struct {
	id, name   string
	first      uint64
	size       int64  // announced segment size
	sum        uint64 // announced xxhash64
	body       io.Reader
	status     int
	answer     string
	err        error
	finishedAt time.Time
}

func (s *site) agentClient(t *testing.T) *http.Client {
	t.Helper()
	conf, err := pki.ClientTLS(filepath.Join(s.certs, "web01.crt"), filepath.Join(s.certs, "web01.key"), filepath.Join(s.certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf, MaxConnsPerHost: 64}, Timeout: 3 * time.Minute}
}

func (u *upload) send(c *http.Client, url string) {
	req, err := http.NewRequest(http.MethodPost, url+"/v1/volumes/"+u.id+"/segments", u.body)
	if err != nil {
		u.err = err
		return
	}
	h := req.Header
	h.Set("Content-Type", "application/x-lifeboat-segment")
	h.Set("Content-Encoding", "identity")
	h.Set("X-Lifeboat-Volume-Name", u.name)
	h.Set("X-Lifeboat-Volume-Size", strconv.Itoa(1<<30))
	h.Set("X-Lifeboat-Block-Size", "4096")
	h.Set("X-Lifeboat-Generation", "1")
	h.Set("X-Lifeboat-First-Seq", strconv.FormatUint(u.first, 10))
	h.Set("X-Lifeboat-Last-Seq", strconv.FormatUint(u.first, 10))
	h.Set("X-Lifeboat-Segment-Size", strconv.FormatInt(u.size, 10))
	h.Set("X-Lifeboat-Segment-Sum", fmt.Sprintf("%016x", u.sum))
	resp, err := c.Do(req)
	u.finishedAt = time.Now()
	if err != nil {
		u.err = err
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	u.status, u.answer = resp.StatusCode, strings.TrimSpace(string(b))
}

// stalledBody sends 4 KiB of a body that announced far more, then nothing
// until the test ends.
func stalledBody(t *testing.T) io.Reader {
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go pw.Write(bytes.Repeat([]byte{0xa5}, 4096))
	return pr
}

// trickleBody sends b in 200-byte pieces 300 ms apart: slower in total
// than a 3 s stall timeout, but never 3 s without a byte.
func trickleBody(b []byte) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		for len(b) > 0 {
			time.Sleep(300 * time.Millisecond)
			n := min(len(b), 200)
			if _, err := pw.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
		pw.Close()
	}()
	return pr
}

// oneWriteSegment is a sealed segment of volume id: generation 1, seq 1, a
// 4 KiB WRITE at offset 0.
func oneWriteSegment(t *testing.T, id string) []byte {
	t.Helper()
	data := make([]byte, 4096)
	rand.Read(data)
	return hrltest.WriteSegment(t, hrl.Header{VolumeID: uuid.MustParse(id), Generation: 1, FirstSeq: 1}, data)
}

// procStatus reads a field of /proc/PID/status in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n << 10
}

// 20 concurrent uploads announce 1 GiB segments, send 4 KiB and stall: the
// server's memory stays under rssBound, each stalled upload is aborted
// after --stall-timeout without progress (408, logged) and releases its
// volume, and a normal segment for that volume, sent while the stalled one
// held it, is accepted afterwards. An upload slower in total than the
// stall timeout, but moving, is accepted.
func TestStalledUploadsAreBoundedAndReleaseTheirVolume(t *testing.T) {
	s := newSiteWith(t, nil, []string{"--stall-timeout", "3s"})
	c := s.agentClient(t)
	pid := s.srv.cmd.Process.Pid
	base := procStatus(t, pid, "VmRSS")

	var wg sync.WaitGroup
	stalled := make([]*upload, 20)
	for i := range stalled {
		u := &upload{id: uuid.NewString(), name: fmt.Sprintf("stall%02d", i), first: 1, size: 1 << 30, sum: 1, body: stalledBody(t)}
		stalled[i] = u
		wg.Add(1)
		go func() { defer wg.Done(); u.send(c, s.url()) }()
	}
	// The first volume is open, so its stalled upload holds it; a normal
	// segment for it waits until the server lets the stalled one go.
	waitFor(t, time.Minute, "the server to open volume stall00", func() bool { _, ok := s.volume("stall00"); return ok })
	time.Sleep(500 * time.Millisecond) // let the stalled upload take the volume's receive lock first
	seg := oneWriteSegment(t, stalled[0].id)
	normal := &upload{id: stalled[0].id, name: "stall00", first: 1, size: int64(len(seg)), sum: xxhash.Sum64(seg), body: bytes.NewReader(seg)}
	start := time.Now()
	normal.send(c, s.url())
	if normal.err != nil || normal.status != http.StatusOK {
		t.Fatalf("normal segment after a stalled one: %v %d %s", normal.err, normal.status, normal.answer)
	}
	// Generous: the flag's 3 s, not the 60 s default, released it.
	if took := time.Since(start); took > 45*time.Second {
		t.Fatalf("the normal segment waited %v for the stalled upload's volume", took)
	}
	wg.Wait()
	for _, u := range stalled {
		if u.err == nil && u.status != http.StatusRequestTimeout {
			t.Errorf("stalled upload %s: %d %s, want 408", u.name, u.status, u.answer)
		}
	}
	if st, _ := s.volume("stall00"); st.SpooledSeq != 1 {
		t.Fatalf("stall00 after the normal segment: spooled seq %d, want 1", st.SpooledSeq)
	}
	if n := strings.Count(s.log(), "segment upload stalled"); n != len(stalled) {
		t.Fatalf("%d stall lines in the server log, want %d:\n%s", n, len(stalled), s.log())
	}
	seg = oneWriteSegment(t, stalled[1].id)
	slow := &upload{id: stalled[1].id, name: "stall01", first: 1, size: int64(len(seg)), sum: xxhash.Sum64(seg), body: trickleBody(seg)}
	start = time.Now()
	slow.send(c, s.url())
	if slow.err != nil || slow.status != http.StatusOK {
		t.Fatalf("slow upload (%v for %d bytes, never 3 s without one): %v %d %s", time.Since(start).Round(time.Millisecond),
			len(seg), slow.err, slow.status, slow.answer)
	}
	t.Logf("a %d-byte segment trickled in over %v and was accepted", len(seg), time.Since(start).Round(time.Millisecond))
	hwm, rss, vm := procStatus(t, pid, "VmHWM"), procStatus(t, pid, "VmRSS"), procStatus(t, pid, "VmPeak")
	t.Logf("server memory: RSS %d MiB before, peak %d MiB, now %d MiB; peak virtual %d MiB", base>>20, hwm>>20, rss>>20, vm>>20)
	if hwm > rssBound || vm > vmBound {
		t.Fatalf("server peak RSS %d MiB, peak virtual size %d MiB with 20 uploads announcing 1 GiB each; want under %d MiB and %d MiB",
			hwm>>20, vm>>20, rssBound>>20, vmBound>>20)
	}
}
