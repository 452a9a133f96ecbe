package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/internal/backendtest"
	"lifeboat/internal/testenv"
	"lifeboat/nbd"
	"lifeboat/tracker"
)

var quiet = slog.New(slog.DiscardHandler)

// tracker.Volume is the backend this package exists for.
var _ nbd.Backend = (*tracker.Volume)(nil)

// requireTool skips the test when an NBD client is not installed, unless
// LIFEBOAT_REQUIRE_INTEGRATION=1 turns the skip into a failure.
func requireTool(t testing.TB, names ...string) {
	t.Helper()
	testenv.Tools(t, names...)
}

// volume is a tracker.Volume over a sparse file in a temporary directory.
type volume struct {
	*tracker.Volume
	path    string
	initial string // copy of the backing file before the volume was opened
}

// newVolume creates a sparse backing file of size bytes, optionally filled
// by fill, keeps a copy as the replay base and opens a tracker.Volume on it.
func newVolume(t testing.TB, size int64, fill func(f *os.File)) *volume {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if fill != nil {
		fill(f)
	}
	f.Close()
	initial := filepath.Join(dir, "initial.img")
	copyFile(t, path, initial)
	v := tracker.NewVolume(path, filepath.Join(dir, "journal"))
	v.SegmentAge = 0
	v.CheckpointInterval = 0
	v.Logger = quiet
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("open volume: %v", err)
	}
	vol := &volume{Volume: v, path: path, initial: initial}
	t.Cleanup(func() { v.Close() })
	return vol
}

func (v *volume) export(name string) nbd.Export {
	return nbd.Export{Name: name, Description: "test volume " + name, Backend: nbd.WithExtents(v.Volume, v.Extents)}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	// Keep holes: qemu-img and nbdinfo see the same allocation.
	out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// image receives a journal replay.
type image []byte

func (m image) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m image) Zero(off, n int64, _ bool) error          { clear(m[off : off+n]); return nil }

// checkJournal closes the volume and replays its journal onto the initial
// image: the result must equal the backing file byte for byte, which
// proves every write went through tracker.Volume.
func (v *volume) checkJournal(t testing.TB) {
	t.Helper()
	if err := v.Close(); err != nil {
		t.Fatalf("close volume: %v", err)
	}
	img, err := os.ReadFile(v.initial)
	if err != nil {
		t.Fatal(err)
	}
	segs := v.Segments()
	if len(segs) == 0 {
		t.Fatal("journal is empty")
	}
	for _, s := range segs {
		f, err := os.Open(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hrl.Replay(f, s.Size, s.Path, image(img), nil); err != nil {
			t.Fatalf("replay %s: %v", s.Path, err)
		}
		f.Close()
	}
	backing, err := os.ReadFile(v.path)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(img, backing); i >= 0 {
		t.Fatalf("journal replay differs from the backing file at byte %d (%d segments)", i, len(segs))
	}
}

func firstDiff(a, b []byte) int { return backendtest.FirstDiff(a, b) }

// serve starts a server on 127.0.0.1:0 and stops it with the test.
func serve(t testing.TB, srv *nbd.Server) string {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = quiet
	}
	return backendtest.Serve(t, srv)
}

func serveExports(t testing.TB, exports ...nbd.Export) string {
	t.Helper()
	srv := nbd.NewServer()
	srv.Exports = exports
	return serve(t, srv)
}

func uri(addr, name string) string { return fmt.Sprintf("nbd://%s/%s", addr, name) }

// run runs a client tool and returns its standard output; a failure ends
// the test with everything the tool printed.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// writeImage writes a raw image of size bytes: 1 MiB chunks that are
// random, zero (left as holes) or a repeated pattern.
func writeImage(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 7))
	src := rand.NewChaCha8([32]byte{byte(seed), 42})
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		switch r.IntN(4) {
		case 0: // hole
			continue
		case 1:
			for i := range chunk {
				chunk[i] = byte(off>>20) ^ byte(i>>9)
			}
		default:
			io.ReadFull(src, chunk)
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
}
