package failover_test

import (
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/failover"
	"lifeboat/hrl"
	"lifeboat/tracker"
)

// bytesReplayer applies journal records to a byte slice.
type bytesReplayer []byte

func (b bytesReplayer) WriteAt(p []byte, off int64) (int, error) { return copy(b[off:], p), nil }
func (b bytesReplayer) Zero(off, n int64, trim bool) error {
	clear(b[off : off+n])
	return nil
}

// TestTrackerOverView runs a real tracker.Volume with a View as its
// backing store, as a failover volume does: writes are journaled from the
// first one, and the journal replayed over the point gives the view.
func TestTrackerOverView(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	src := newSource(t, "file", "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d", 4<<20)
	src.randomApply(r, 50)
	seq := src.point()
	dir := t.TempDir()
	ovDir, journal := filepath.Join(dir, "overlay"), filepath.Join(dir, "journal")
	path := filepath.Join(dir, "recovery-volume") // no such file: the view is the volume
	v := src.openView(seq, ovDir)
	vol := tracker.NewVolume(path, journal)
	vol.FS = failover.ViewFS{Path: path, View: v}
	vol.Logger = slog.New(slog.DiscardHandler)
	if err := vol.Open(ctx); err != nil {
		t.Fatalf("tracker Open over a view: %v", err)
	}
	if vol.Size() != v.Size() {
		t.Fatalf("tracker volume size %d, view %d", vol.Size(), v.Size())
	}
	want := append([]byte(nil), src.points[seq]...)
	for range 200 {
		off, n := randomRange(r, vol.Size())
		switch r.IntN(5) {
		case 0:
			if err := vol.Trim(off, n); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+n])
		case 1:
			if err := vol.WriteZeroes(off, n); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+n])
		default:
			p := randBytes(r, int(n))
			if _, err := vol.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], p)
		}
	}
	if err := vol.Flush(); err != nil {
		t.Fatal(err)
	}
	checkContent(t, "tracker volume", readAll(t, vol), want)
	checkContent(t, "view under the tracker", readAll(t, v), want)
	if _, err := vol.Tag(hrl.TagCrash, "after failover"); err != nil {
		t.Fatal(err)
	}
	// The journal holds every write: replayed over the point it gives
	// the volume's content.
	segs := vol.Segments()
	if len(segs) == 0 {
		t.Fatal("no journal segments after writes and a tag")
	}
	replayed := append(bytesReplayer(nil), src.points[seq]...)
	var records uint64
	for _, s := range segs {
		f, err := os.Open(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		info, err := hrl.Replay(f, s.Size, s.Path, replayed, nil)
		f.Close()
		if err != nil {
			t.Fatalf("replay %s: %v", s.Path, err)
		}
		records += info.Count
	}
	if records < 200 {
		t.Fatalf("journal has %d records for 200 writes", records)
	}
	checkContent(t, "journal replayed over the point", replayed, want)
	if err := vol.Close(); err != nil {
		t.Fatalf("tracker Close: %v", err)
	}
	// Closing the volume closed the view; its writes are in the overlay.
	if _, err := v.ReadAt(make([]byte, 1), 0); !errors.Is(err, failover.ErrClosed) {
		t.Fatalf("view after the tracker closed it: %v, want ErrClosed", err)
	}
	v = src.openView(seq, ovDir)
	defer v.Close()
	checkContent(t, "view reopened after the tracker closed", readAll(t, v), want)
	src.checkPoint(seq)
}

// TestViewFile checks the hrl.File and hrl.FS adapters beyond what the
// tracker uses.
func TestViewFile(t *testing.T) {
	src := newSource(t, "memory", "8b9c0d1e-2f3a-4b4c-9d5e-6f7a8b9c0d1e", 64<<10)
	src.fillAll(rand.New(rand.NewPCG(11, 11)))
	seq := src.point()
	v := src.openView(seq, filepath.Join(t.TempDir(), "ov"))
	f := v.File("vol")
	if n, err := f.Size(); n != 64<<10 || err != nil {
		t.Fatalf("Size = %d, %v", n, err)
	}
	if err := f.Truncate(64 << 10); err != nil {
		t.Fatalf("Truncate to the same size: %v", err)
	}
	if err := f.Truncate(32 << 10); err == nil {
		t.Fatal("Truncate to another size succeeded")
	}
	if err := f.ZeroRange(100, 5000); err != nil {
		t.Fatal(err)
	}
	if err := f.PunchHole(8192, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16384)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), src.points[seq][:16384]...)
	clear(want[100:5100])
	clear(want[8192:16384])
	checkContent(t, "file", got, want)
	if f.Name() != "vol" {
		t.Fatalf("Name = %q", f.Name())
	}

	dir := t.TempDir()
	fsys := failover.ViewFS{Path: filepath.Join(dir, "vol"), View: v}
	if _, err := fsys.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR|os.O_TRUNC, 0); err == nil {
		t.Fatal("OpenFile of the view with O_TRUNC succeeded")
	}
	g, err := fsys.OpenFile(filepath.Join(dir, "./vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.ReadAt(got[:10], 64<<10-5); err != io.EOF {
		t.Fatalf("read across the end: %v, want io.EOF", err)
	}
	// Other names reach the real file system.
	other := filepath.Join(dir, "other")
	h, err := fsys.OpenFile(other, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if names, err := fsys.ReadDir(dir); err != nil || len(names) != 1 || names[0] != "other" {
		t.Fatalf("ReadDir = %v, %v; want [other]", names, err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
}
