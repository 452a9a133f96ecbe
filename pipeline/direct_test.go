package pipeline_test

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/file"
)

// spoolWatch is a spool's file system that records every segment file it
// makes durable (the rename of its temporary file).
type spoolWatch struct {
	hrl.FS
	mu   sync.Mutex
	segs []string
}

func (w *spoolWatch) Rename(oldname, newname string) error {
	err := w.FS.Rename(oldname, newname)
	if err == nil && strings.HasSuffix(newname, ".hrl") {
		w.mu.Lock()
		w.segs = append(w.segs, filepath.Base(newname))
		w.mu.Unlock()
	}
	return err
}

func (w *spoolWatch) spooled() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.segs)
}

// An initial replication is applied without a spool copy: no segment file
// is ever written to the spool before the volume's first point, every
// acknowledged seq is committed, and the point equals the source. After
// the point, segments go through the spool again, after a restart too.
func TestDirectApplyBeforeTheFirstPoint(t *testing.T) {
	watch := &spoolWatch{FS: hrl.OSFS{}}
	s := configuredSite(t, file.New(t.TempDir()), func(srv *pipeline.Server) { srv.FS = watch })
	rng := rand.New(rand.NewPCG(21, 22))
	fill := func(f *os.File) { // data, zeros and holes, all before the initial replication's point
		for range 40 {
			b := make([]byte, 4096*(1+rng.IntN(64)))
			for i := range b[len(b)/4:] {
				b[len(b)/4+i] = byte(rng.Uint32())
			}
			if _, err := f.WriteAt(b, rng.Int64N(8<<20-int64(len(b)))&^511); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := newAgentVolFrom(t, s, 8<<20, fill, 0, s.client("agent1", pki.RoleAgent))
	a.waitResyncAcked() // its point is created and acknowledged
	sum := fileSum(t, a.path)
	id := a.vol.VolumeID()
	st := s.status(id)
	if got := watch.spooled(); len(got) != 0 {
		t.Fatalf("segments spooled before the first point: %v", got)
	}
	if st.DirectApplied == 0 || st.AppliedSeq != st.SpooledSeq || st.SpoolBytes != 0 {
		t.Fatalf("after the initial replication: %+v, want segments applied directly and everything acknowledged applied", st)
	}
	admin := s.client("admin", pki.RoleAdmin)
	pts := s.points(admin, "vol")
	if len(pts) != 1 {
		t.Fatalf("points %+v, want the initial replication's", pts)
	}
	if got := s.pointSum(admin, "vol", pts[0].Seq); got != sum {
		t.Fatalf("first point %s, source %s", got, sum)
	}

	a.writeRandom(rng, 20)
	seq, sum2 := a.tag("after the first point")
	s.checkPoints(a, map[uint64]string{seq: sum2})
	if got := watch.spooled(); len(got) == 0 {
		t.Fatal("no segment went through the spool after the first point")
	}
	if got := s.status(id).DirectApplied; got != st.DirectApplied {
		t.Fatalf("%d segments applied directly after the first point", got-st.DirectApplied)
	}

	// A restarted server learns from the replica that it has a point.
	spooled := len(watch.spooled())
	s.restart()
	a.writeRandom(rng, 10)
	seq, sum3 := a.tag("after a restart")
	s.checkPoints(a, map[uint64]string{seq: sum3})
	if got := len(watch.spooled()); got == spooled {
		t.Fatal("no segment went through the spool after a restart")
	}
	if got := s.status(id).DirectApplied; got != 0 {
		t.Fatalf("%d segments applied directly after a restart, with a point on the replica", got)
	}
}

// A direct apply that fails (the target's writes fail) falls back to the
// spool: the 200 comes once the segment is in the spool, the applier
// applies it when the target is back, and the next segment is applied
// directly again.
func TestDirectApplyFailureFallsBackToTheSpool(t *testing.T) {
	fs := hrltest.New()
	var logs logBuffer
	s := configuredSite(t, fileTarget(fs), func(srv *pipeline.Server) { srv.Logger = logs.logger() })
	c := s.client("agent1", pki.RoleAgent)
	id := uuid.New()
	fs.FailPath("write", "replica.img", syscall.EIO)
	seg1 := oneRecordSegment(t, id, 1)
	if code, msg := postSegment(t, c, s.url, id, 1, seg1, bytes.NewReader(seg1)); code != http.StatusOK {
		t.Fatalf("segment 1 with the target failing: %d %s, want 200 from the spool", code, msg)
	}
	spooled, err := os.ReadFile(filepath.Join(s.dir, "spool", id.String(), "0000000000000001-0000000000000001.hrl"))
	if err != nil || !bytes.Equal(spooled, seg1) {
		t.Fatalf("segment 1 acknowledged, spool file: %d bytes, %v; want the segment", len(spooled), err)
	}
	if st := s.status(id.String()); st.SpooledSeq != 1 || st.AppliedSeq != 0 || st.DirectApplied != 0 {
		t.Fatalf("status with the target failing: %+v", st)
	}
	if !strings.Contains(logs.String(), "direct apply failed") {
		t.Fatalf("the failed direct apply is not logged:\n%s", logs.String())
	}
	fs.ClearFaults()
	s.waitApplied(id.String(), 1)
	s.waitSpoolEmpty(id.String())
	img := replicaImage(t, fs, id)
	if !bytes.Equal(img[:4096], seg1Data(1)) {
		t.Fatal("segment 1 is not in the replica after the target came back")
	}

	seg2 := oneRecordSegment(t, id, 2)
	if code, msg := postSegment(t, c, s.url, id, 2, seg2, bytes.NewReader(seg2)); code != http.StatusOK {
		t.Fatalf("segment 2: %d %s", code, msg)
	}
	if st := s.status(id.String()); st.AppliedSeq != 2 || st.DirectApplied != 1 {
		t.Fatalf("status right after segment 2's 200: %+v, want it applied directly", st)
	}
	if img := replicaImage(t, fs, id); !bytes.Equal(img[:4096], seg1Data(2)) {
		t.Fatal("segment 2 is not in the replica")
	}
}

// seg1Data is the data of oneRecordSegment(_, _, seq).
func seg1Data(seq uint64) []byte { return bytes.Repeat([]byte{byte(seq)}, 4096) }

// replicaImage reads replica.img of volume id of fileTarget(fs).
func replicaImage(t *testing.T, fs *hrltest.CrashFS, id uuid.UUID) []byte {
	t.Helper()
	b, err := fs.ReadFile(filepath.Join("/replicas", id.String(), "replica.img"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The site crashes at every point of a direct apply (the spool and the
// replica share its file system, so nothing after the crash reaches
// either; the writes not synced are lost, all or some): the agent gets no
// 200, the replica comes back at its last commit, and the segment sent
// again leaves the replica equal to the source.
func TestDirectApplyCrashThenResend(t *testing.T) {
	id := uuid.New()
	const size = 8 << 20
	src := make([]byte, size)
	rng := rand.New(rand.NewPCG(23, 24))
	segment := func(first uint64, offs ...uint64) []byte {
		return hrltest.Segment(t, hrl.Header{VolumeID: id, Generation: 1, FirstSeq: first}, func(w *hrl.Writer) error {
			for _, off := range offs {
				b := make([]byte, 8192)
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
				copy(src[off:], b)
				if _, _, err := w.AppendData(hrl.TypeWrite, off, b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	segA := segment(1, 0, 1<<20, 2<<20)       // seqs 1..3
	segB := segment(4, 512<<10, 1<<20, 3<<20) // seqs 4..6: one overwrites A
	crashes := 0
	for n := 0; ; n++ {
		fs := hrltest.New()
		s := configuredSite(t, fileTarget(fs), func(srv *pipeline.Server) { srv.FS = fs })
		c := s.client("agent1", pki.RoleAgent)
		if code, msg := postSegmentRange(t, c, s.url, id, 1, 3, segA, bytes.NewReader(segA)); code != http.StatusOK {
			t.Fatalf("segment 1..3: %d %s", code, msg)
		}
		fs.CrashAfter(n)
		code, msg := postSegmentRange(t, c, s.url, id, 4, 6, segB, bytes.NewReader(segB))
		if code == http.StatusOK {
			// n is past every mutation of the apply: nothing crashed.
			if crashes < 5 {
				t.Fatalf("the apply finished after %d crash points, want more (its writes and commit)", crashes)
			}
			if img := replicaImage(t, fs, id); !bytes.Equal(img, src) {
				t.Fatal("replica differs from the source without a crash")
			}
			s.stop()
			return
		}
		crashes++
		if !fs.Crashed() {
			t.Fatalf("crash after %d operations: segment 4..6 refused without a crash: %d %s", n, code, msg)
		}
		s.stop()
		fs.Crash(hrltest.CrashMode(n%3), rng) // unsynced writes dropped, or some kept
		s.start(s.addr)
		c.CloseIdleConnections() // to the server that crashed
		if st := s.status(id.String()); st.AppliedSeq != 3 && st.AppliedSeq != 6 {
			// 6: the crash came after the commit's last durable step.
			t.Fatalf("crash after %d operations: replica at seq %d after the restart, want its last commit (3 or 6)", n, st.AppliedSeq)
		}
		for range 2 { // the resend, then a resend of an acknowledged segment
			if code, msg := postSegmentRange(t, c, s.url, id, 4, 6, segB, bytes.NewReader(segB)); code != http.StatusOK {
				t.Fatalf("crash after %d operations: segment 4..6 sent again: %d %s", n, code, msg)
			}
		}
		if st := s.status(id.String()); st.AppliedSeq != 6 || st.SpooledSeq != 6 {
			t.Fatalf("crash after %d operations: status after the resend %+v", n, st)
		}
		if img := replicaImage(t, fs, id); !bytes.Equal(img, src) {
			t.Fatalf("crash after %d operations: replica differs from the source after the resend", n)
		}
		s.stop()
	}
}
