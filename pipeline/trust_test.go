package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/memory"
)

// fakeSite is a server of the site's CA that answers what a test wants:
// a site that claims more than an agent sent, or acknowledges another
// segment than the one sent.
func fakeSite(t *testing.T, status func() (int, any), segment func(gen, first, last uint64) any) *site {
	t.Helper()
	s := &site{t: t, dir: t.TempDir()}
	if _, err := pki.Init(s.dir, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ServerTLS(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes/{id}", func(w http.ResponseWriter, r *http.Request) {
		code, body := status()
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("POST /v1/volumes/{id}/segments", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		var n [3]uint64
		for i, h := range []string{"Generation", "First-Seq", "Last-Seq"} {
			fmt.Sscan(r.Header.Get("X-Lifeboat-"+h), &n[i])
		}
		json.NewEncoder(w).Encode(segment(n[0], n[1], n[2]))
	})
	ts := httptest.NewUnstartedServer(mux)
	ts.TLS = conf
	ts.StartTLS()
	t.Cleanup(ts.Close)
	s.url = ts.URL
	return s
}

// The shipper deletes a local segment only on an acknowledgement of that
// very segment from a site that has no more of the volume than the agent
// wrote; otherwise it keeps its journal, stops, and says why.
func TestShipperKeepsJournalOnAnswersItCannotCheck(t *testing.T) {
	const far = uint64(1) << 40
	notFound := func() (int, any) { return http.StatusNotFound, pipeline.SegmentReply{Error: "no such volume"} }
	cases := []struct {
		name    string
		status  func() (int, any)
		segment func(gen, first, last uint64) any
		want    string
	}{
		{"site claims a seq never sent", func() (int, any) {
			return http.StatusOK, pipeline.VolumeStatus{SpooledGeneration: 1, SpooledSeq: far}
		}, nil, "has written only up to seq"},
		{"site claims a generation never reached", func() (int, any) {
			return http.StatusOK, pipeline.VolumeStatus{SpooledGeneration: 7, SpooledSeq: 1}
		}, nil, "generation 7"},
		{"another segment acknowledged", notFound, func(gen, first, last uint64) any {
			return pipeline.SegmentReply{AckedGeneration: gen, AckedFirstSeq: first, AckedLastSeq: last + 5,
				SpooledGeneration: gen, SpooledSeq: last}
		}, "answered with an acknowledgement"},
		{"the segment acknowledged, a far seq spooled", notFound, func(gen, first, last uint64) any {
			return pipeline.SegmentReply{AckedGeneration: gen, AckedFirstSeq: first, AckedLastSeq: last,
				SpooledGeneration: gen + 3, SpooledSeq: far}
		}, "has written only up to seq"},
		{"an old-style answer without the acknowledged segment", notFound, func(gen, first, last uint64) any {
			return pipeline.SegmentReply{SpooledGeneration: gen, SpooledSeq: last}
		}, "upgrade the site's servers first"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := fakeSite(t, tc.status, tc.segment)
			a := newAgentVol(t, s, 1<<20, 0, s.client("web01", pki.RoleAgent))
			a.writeRandom(rand.New(rand.NewPCG(1, 2)), 8)
			msg := waitStopped(t, a, tc.want)
			t.Logf("stopped: %s", msg)
			time.Sleep(200 * time.Millisecond) // a wrong ack would have deleted by now
			if st := a.vol.Status(); st.AckedSeq != 0 {
				t.Fatalf("the agent acknowledged up to seq %d on an answer it cannot check", st.AckedSeq)
			}
			files, _ := filepath.Glob(filepath.Join(a.journal, "*.hrl"))
			if len(files) == 0 {
				t.Fatal("the journal has no segments left")
			}
		})
	}
}

// limited is a target that holds volumes of at most max bytes, and whose
// point readers fail after failAfter bytes when that is set.
type limited struct {
	targets.Target
	max       int64
	failAfter int64
}

func (l *limited) Properties() targets.Properties {
	p := l.Target.Properties()
	p.MaxSize = l.max
	return p
}

func (l *limited) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	r, err := l.Target.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	return &failingPoints{Replica: r, failAfter: l.failAfter}, nil
}

type failingPoints struct {
	targets.Replica
	failAfter int64
}

func (f *failingPoints) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	pr, err := f.Replica.OpenPoint(ctx, seq)
	if err != nil || f.failAfter == 0 {
		return pr, err
	}
	return &failingReader{PointReader: pr, failAfter: f.failAfter}, nil
}

type failingReader struct {
	targets.PointReader
	failAfter int64
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAfter {
		return 0, errors.New("injected read error")
	}
	return f.PointReader.ReadAt(p, off)
}

// A volume larger than the target holds is refused (400) before anything
// of it is stored: no replica, no spool directory.
func TestOversizedVolumeIsRefused(t *testing.T) {
	mem := memory.New()
	s := newSite(t, &limited{Target: mem, max: 1 << 20})
	a := newAgentVol(t, s, 2<<20, 0, s.client("web01", pki.RoleAgent))
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.ship.Status().LastError, "at most 1048576 bytes") {
		if time.Now().After(deadline) {
			t.Fatalf("agent status: %+v", a.ship.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if vols, _ := mem.Volumes(context.Background()); len(vols) != 0 || len(s.srv.Status()) != 0 {
		t.Fatalf("the oversized volume was stored: target %v, server %v", vols, s.srv.Status())
	}
	if _, err := os.Stat(filepath.Join(s.dir, "spool", a.vol.VolumeID())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool directory of the refused volume: %v", err)
	}
}

// A point whose read fails midway is an aborted download, never a short
// one that looks complete.
func TestPointDownloadAbortsOnReadError(t *testing.T) {
	s := newSite(t, &limited{Target: memory.New(), failAfter: 5 << 20})
	a := newAgentVol(t, s, 16<<20, 0, s.client("web01", pki.RoleAgent))
	a.waitSynced()
	a.writeRandom(rand.New(rand.NewPCG(5, 6)), 20)
	seq, _ := a.tag("t")
	s.waitApplied(a.vol.VolumeID(), seq)
	admin := s.client("admin", pki.RoleAdmin)
	d, err := pipeline.GetPoint(context.Background(), admin, s.url+"/v1/volumes/"+a.vol.VolumeID(), fmt.Sprint(seq))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	n, err := io.Copy(sha256.New(), d)
	if err == nil || n >= d.Size {
		t.Fatalf("download of a point whose read fails: %d of %d bytes, err %v; want an error", n, d.Size, err)
	}
	t.Logf("download: %d of %d bytes: %v", n, d.Size, err)
	// A raw client sees a broken body too, not a clean short one.
	resp, err := admin.Get(fmt.Sprintf("%s/v1/volumes/%s/points/%d", s.url, a.vol.VolumeID(), seq))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if m, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Fatalf("raw download ended cleanly after %d of %s bytes", m, resp.Header.Get("Content-Length"))
	}
}
