package pipeline_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/file"
	"lifeboat/targets/memory"
)

// logBuffer is a logger whose output a test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// configuredSite is a site whose server configure adjusts before it opens.
func configuredSite(t *testing.T, target targets.Target, configure func(*pipeline.Server)) *site {
	t.Helper()
	s := &site{t: t, dir: t.TempDir(), target: target, configure: configure}
	s.open()
	return s
}

// countStatus counts the answers with a status code, as a middleware.
func countStatus(code int, n *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&statusWriter{ResponseWriter: w, code: code, n: n}, r)
		})
	}
}

type statusWriter struct {
	http.ResponseWriter
	code int
	n    *atomic.Int64
}

func (w *statusWriter) WriteHeader(code int) {
	if code == w.code {
		w.n.Add(1)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A disk of the site below --min-free: segments get 503 "site disk full",
// the agent keeps its journal and says so, the episode is logged once
// however many segments it refuses, and shown in the volume's status;
// once there is room, replication catches up without a restart and the
// end of the episode is logged.
func TestSiteDiskFullThrottlesOnceAnEpisodeAndHeals(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 40)
	var logs logBuffer
	var refused atomic.Int64
	s := &site{t: t, dir: t.TempDir(), target: memory.New(), wrap: countStatus(http.StatusServiceUnavailable, &refused),
		configure: func(srv *pipeline.Server) {
			srv.MinFree = 64 << 20
			srv.Logger = logs.logger()
			srv.DiskSpace = func(string) (pipeline.DiskSpace, error) {
				return pipeline.DiskSpace{Dev: 1, Free: free.Load(), Size: 1 << 40}, nil
			}
		}}
	s.open()
	a := newAgentVol(t, s, 8<<20, 0, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	id := a.vol.VolumeID()

	free.Store(48 << 20) // less than the reserve
	rng := rand.New(rand.NewPCG(3, 4))
	want := map[uint64]string{}
	for range 3 {
		a.writeRandom(rng, 10)
		seq, sum := a.tag("disk full")
		want[seq] = sum
	}
	waitUntil(t, "the agent to show the site's full disk and the server to refuse it repeatedly", func() bool {
		return strings.Contains(a.ship.Status().SiteDiskFull, "site disk full") && refused.Load() >= 3
	})
	if st := s.status(id); !strings.Contains(st.Throttled, "site disk full") || !strings.Contains(st.Throttled, "--min-free") {
		t.Fatalf("volume status while the disk is full: throttled %q", st.Throttled)
	}
	if st := a.vol.Status(); st.JournalBytes == 0 {
		t.Fatalf("the agent's journal is empty while the site refuses segments: %+v", st)
	}
	if n := strings.Count(logs.String(), "throttling agents"); n != 1 {
		t.Fatalf("%d 'throttling agents' lines for one episode of %d refusals:\n%s", n, refused.Load(), logs.String())
	}

	free.Store(1 << 40)
	s.checkPoints(a, want)
	waitUntil(t, "the statuses to clear", func() bool { return a.ship.Status().SiteDiskFull == "" && s.status(id).Throttled == "" })
	if !strings.Contains(logs.String(), "throttling ended") {
		t.Fatalf("no end of the episode in the log:\n%s", logs.String())
	}
}

// The spool's own write fails with ENOSPC (the check before it did not see
// the disk fill): the agent gets the same 503 "site disk full", nothing is
// acknowledged, and replication goes on once the write succeeds. (The
// volume has its first point before the disk fills: until then segments
// are applied without the spool, direct.go.)
func TestSpoolWriteOnAFullDiskIsAThrottle(t *testing.T) {
	fs := hrltest.New()
	s := configuredSite(t, memory.New(), func(srv *pipeline.Server) { srv.FS = fs })
	a := newAgentVol(t, s, 4<<20, 0, s.client("agent1", pki.RoleAgent))
	a.waitResyncAcked()
	acked := a.ship.Status().AckedSeq
	fs.FailPath("write", spoolSuffix, syscall.ENOSPC)
	rng := rand.New(rand.NewPCG(5, 6))
	a.writeRandom(rng, 10)
	waitUntil(t, "the agent to show the site's full disk", func() bool {
		return strings.Contains(a.ship.Status().SiteDiskFull, "no space left on device")
	})
	if st := a.ship.Status(); st.AckedSeq != acked {
		t.Fatalf("acknowledged seq %d, was %d: acknowledged though the spool could not write it", st.AckedSeq, acked)
	}
	fs.ClearFaults()
	seq, sum := a.tag("after")
	s.checkPoints(a, map[uint64]string{seq: sum})
}

// spoolSuffix ends the temporary name of a spooled segment.
const spoolSuffix = ".hrl.tmp"

// An apply that fails on a full disk leaves the file replica refusing
// writes; the applier reopens it once writes succeed again and catches
// up, without a restart, and every point equals the source.
func TestApplyRecoversFromAFullDiskWithoutRestart(t *testing.T) {
	for _, name := range []string{"replica.img", ".undo"} {
		t.Run(name, func(t *testing.T) {
			fs := hrltest.New()
			var logs logBuffer
			s := configuredSite(t, fileTarget(fs), func(srv *pipeline.Server) { srv.Logger = logs.logger() })
			a := newAgentVol(t, s, 8<<20, 0, s.client("agent1", pki.RoleAgent))
			a.waitSynced() // its point makes applies write undo logs too
			id := a.vol.VolumeID()
			fs.FailPath("write", name, syscall.ENOSPC)
			rng := rand.New(rand.NewPCG(7, 8))
			want := map[uint64]string{}
			a.writeRandom(rng, 20)
			seq, sum := a.tag("disk full")
			want[seq] = sum
			waitUntil(t, "the apply to fail on the full disk", func() bool {
				return strings.Contains(s.status(id).ApplyError, "no space left on device")
			})
			a.writeRandom(rng, 20)
			seq, sum = a.tag("still full")
			want[seq] = sum
			fs.ClearFaults()
			s.checkPoints(a, want)
			if st := s.status(id); st.ApplyError != "" {
				t.Fatalf("apply error after recovery: %q", st.ApplyError)
			}
			if !strings.Contains(logs.String(), "replica reopened after a storage failure") {
				t.Fatalf("no reopen in the log:\n%s", logs.String())
			}
		})
	}
}

func fileTarget(fs *hrltest.CrashFS) targets.Target {
	t := file.New("/replicas")
	t.FS = fs
	return t
}

// An upload that sends part of its body and stops is aborted after
// StallTimeout (408) and releases its volume: the next upload for it is
// accepted. One slower in total than StallTimeout but moving is not cut.
func TestStalledUploadIsAbortedAndASlowOneIsNot(t *testing.T) {
	s := configuredSite(t, memory.New(), func(srv *pipeline.Server) { srv.StallTimeout = time.Second })
	c := s.client("agent1", pki.RoleAgent)
	id := uuid.New()
	seg := oneRecordSegment(t, id, 1)
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(seg[:len(seg)/2])
	if code, msg := postSegment(t, c, s.url, id, 1, seg, pr); code != http.StatusRequestTimeout || !strings.Contains(msg, "no progress") {
		t.Fatalf("stalled upload: %d %s, want 408", code, msg)
	}
	if code, msg := postSegment(t, c, s.url, id, 1, seg, bytes.NewReader(seg)); code != http.StatusOK {
		t.Fatalf("segment after the stalled upload: %d %s", code, msg)
	}
	next := oneRecordSegment(t, id, 2)
	start := time.Now()
	code, msg := postSegment(t, c, s.url, id, 2, next, trickle(next, 20, 100*time.Millisecond))
	if code != http.StatusOK {
		t.Fatalf("slow upload (%v): %d %s", time.Since(start), code, msg)
	}
}

// trickle sends b in n pieces, gap apart.
func trickle(b []byte, n int, gap time.Duration) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		step := (len(b) + n - 1) / n
		for len(b) > 0 {
			time.Sleep(gap)
			k := min(step, len(b))
			if _, err := pw.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
		pw.Close()
	}()
	return pr
}

// oneRecordSegment is a sealed segment of volume id, generation 1, with
// one 4 KiB WRITE at seq.
func oneRecordSegment(t *testing.T, id uuid.UUID, seq uint64) []byte {
	t.Helper()
	return hrltest.WriteSegment(t, hrl.Header{VolumeID: id, Generation: 1, FirstSeq: seq}, bytes.Repeat([]byte{byte(seq)}, 4096))
}

// postSegment sends seg's headers with body and returns the answer.
func postSegment(t *testing.T, c *http.Client, url string, id uuid.UUID, seq uint64, seg []byte, body io.Reader) (int, string) {
	t.Helper()
	return postSegmentRange(t, c, url, id, seq, seq, seg, body)
}

// postSegmentRange is postSegment for a segment of seqs first..last.
func postSegmentRange(t *testing.T, c *http.Client, url string, id uuid.UUID, first, last uint64, seg []byte, body io.Reader) (int, string) {
	t.Helper()
	return postSegmentWith(t, c, url, id, first, last, seg, body, nil)
}

// postSegmentWith is postSegmentRange with extra headers.
func postSegmentWith(t *testing.T, c *http.Client, url string, id uuid.UUID, first, last uint64, seg []byte, body io.Reader, extra map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/v1/volumes/%s/segments", url, id), body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"Content-Encoding": "identity", "X-Lifeboat-Volume-Name": "vol", "X-Lifeboat-Volume-Size": strconv.Itoa(8 << 20),
		"X-Lifeboat-Block-Size": "4096", "X-Lifeboat-Generation": "1", "X-Lifeboat-First-Seq": strconv.FormatUint(first, 10),
		"X-Lifeboat-Last-Seq": strconv.FormatUint(last, 10), "X-Lifeboat-Segment-Size": strconv.Itoa(len(seg)),
		"X-Lifeboat-Segment-Sum": fmt.Sprintf("%016x", xxhash.Sum64(seg)),
	} {
		req.Header.Set(k, v)
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
