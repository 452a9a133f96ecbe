package failback

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// logBuf is a slog destination tests read.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// masterFixture is a master target over one primary volume with 1 MiB of
// writes its agent never shipped, and clients with the site's, another
// machine's and an admin's certificates.
type masterFixture struct {
	m                  *MasterTarget
	img, jdir          string
	site, other, admin *Client
	log                *logBuf
	id                 string
}

func newMasterFixture(t *testing.T, setup func(f *masterFixture)) *masterFixture {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "master"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	f := &masterFixture{img: filepath.Join(dir, "disk.img"), jdir: filepath.Join(dir, "journal", "disk"), log: &logBuf{}}
	if err := os.WriteFile(f.img, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	v := tracker.NewVolume(f.img, f.jdir)
	if err := v.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 2<<20); err != nil {
		t.Fatal(err)
	}
	f.id = v.VolumeID()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	f.m = &MasterTarget{DataDir: filepath.Join(dir, "master"), Volumes: []Primary{{Name: "disk", Path: f.img, JournalDir: f.jdir}},
		Logger: slog.New(slog.NewTextHandler(f.log, nil))}
	if setup != nil {
		setup(f)
	}
	if err := f.m.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.m.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; f.m.Close() })
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	client := func(name string, role pki.Role) *Client {
		id, err := ca.Issue(name, role, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		conf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}, RootCAs: pool}
		return &Client{URL: "https://" + ln.Addr().String(), HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}}
	}
	f.site, f.other, f.admin = client(SiteName, pki.RoleAgent), client("web02", pki.RoleAgent), client("alice", pki.RoleAdmin)
	return f
}

// The master target reports what the primary never shipped, hashes its
// disk's blocks, and refuses (and logs) every other certificate than the
// site's; an admin may read only.
func TestMasterTargetAPI(t *testing.T) {
	f := newMasterFixture(t, nil)
	ctx := context.Background()
	v, err := f.site.Volume(ctx, f.id)
	if err != nil {
		t.Fatal(err)
	}
	if v.Info.Size != 8<<20 || v.Info.Machine != SiteName || v.Unshipped.Bytes != 1<<20 || v.Unshipped.DirtyBytes == 0 {
		t.Fatalf("volume: %+v", v)
	}
	if _, err := f.site.Volume(ctx, "3fa85f64-5717-4562-b3fc-2c963f66afa6"); !errors.Is(err, targets.ErrNotFound) || !strings.Contains(err.Error(), "disk (id "+f.id) {
		t.Fatalf("another volume id: %v, want ErrNotFound naming the primary volume", err)
	}
	hs, err := f.site.Hashes(ctx, f.id, HashRequest{Ranges: []targets.Range{{Off: 2 << 20, Len: 8192}, {Off: 0, Len: 4096}}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hashBlocks(bytes.NewReader(append(bytes.Repeat([]byte{7}, 8192), make([]byte, 4096)...)), 0, 12288, 4096, make([]byte, 1<<20), nil)
	if !bytes.Equal(hs, want) {
		t.Fatal("block hashes differ from the disk's")
	}
	if _, err := f.site.Hashes(ctx, f.id, HashRequest{Ranges: []targets.Range{{Off: 8 << 20, Len: 4096}}}); !errors.Is(err, pipeline.ErrPermanent) {
		t.Fatalf("hashes past the end: %v", err)
	}
	if _, err := f.other.Volume(ctx, f.id); !errors.Is(err, pipeline.ErrForbidden) {
		t.Fatalf("another machine's certificate: %v, want 403", err)
	}
	if _, err := f.admin.Volume(ctx, f.id); err != nil {
		t.Fatalf("admin read: %v", err)
	}
	if _, err := f.admin.Adopt(ctx, f.id, AdoptRequest{Generation: 5, NextSeq: 10, TagSeq: 1}); !errors.Is(err, pipeline.ErrForbidden) {
		t.Fatalf("admin adopt: %v, want 403", err)
	}
	if n := strings.Count(f.log.String(), "master target request refused"); n != 2 {
		t.Fatalf("%d refusals logged, want 2:\n%s", n, f.log)
	}
	if _, err := tracker.LockJournal(f.jdir); !errors.Is(err, tracker.ErrLocked) {
		t.Fatalf("the agent's journal is not locked while the master target runs: %v", err)
	}
}

// Adopt rebases the agent's journal (its unshipped writes are dropped,
// nothing is dirty, the next seq is the failback's) and no segment is
// applied to the disk afterwards.
func TestMasterTargetAdopt(t *testing.T) {
	f := newMasterFixture(t, func(f *masterFixture) { // as if reverse replication had applied seq 7
		os.MkdirAll(filepath.Join(f.m.DataDir, "disks"), 0o700)
		os.WriteFile(filepath.Join(f.m.DataDir, "disks", f.id+".json"), []byte(`{"id":"`+f.id+`","generation":2,"seq":7}`), 0o600)
	})
	ctx := context.Background()
	if _, err := f.site.Adopt(ctx, f.id, AdoptRequest{Generation: 3, NextSeq: 50, TagSeq: 8}); !errors.Is(err, pipeline.ErrRecoveryState) {
		t.Fatalf("adopt before the tag reached the disk: %v, want ErrRecoveryState", err)
	}
	v, err := f.site.Adopt(ctx, f.id, AdoptRequest{Generation: 3, NextSeq: 50, TagSeq: 7})
	if err != nil {
		t.Fatalf("adopt: %v (master log:\n%s)", err, f.log)
	}
	if v.Adopted == nil || v.Adopted.NextSeq != 50 {
		t.Fatalf("after adopt: %+v", v)
	}
	if _, err := f.site.Adopt(ctx, f.id, AdoptRequest{Generation: 3, NextSeq: 50, TagSeq: 7}); err != nil {
		t.Fatalf("adopt again: %v", err)
	}
	if _, err := f.site.Adopt(ctx, f.id, AdoptRequest{Generation: 4, NextSeq: 60, TagSeq: 7}); !errors.Is(err, pipeline.ErrRecoveryState) {
		t.Fatalf("a different adopt after one: %v", err)
	}
	sv, err := f.m.Server.Volume(ctx, f.id)
	if err != nil {
		t.Fatal(err)
	}
	if err := sv.Replica().Apply(ctx, []targets.Extent{{Off: 0, Len: 4096, Data: make([]byte, 4096)}}); !errors.Is(err, targets.ErrClosed) {
		t.Fatalf("a segment applied after the disk was handed back: %v, want ErrClosed", err)
	}
	f.m.Close()
	a := tracker.NewVolume(f.img, f.jdir)
	if err := a.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if s := a.Status(); s.Generation != 3 || s.NextSeq != 50 || s.DirtyRegions != 0 || s.Resync != "" {
		t.Fatalf("the agent's journal after adopt: %+v", s)
	}
}
