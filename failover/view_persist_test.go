package failover_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"lifeboat/failover"
)

// writeSome writes a mix of aligned, unaligned, zero and trim requests
// below limit and returns what the view must read afterwards.
func writeSome(t *testing.T, v *failover.View, r *rand.Rand, base []byte, n int, limit int64) []byte {
	t.Helper()
	want := append([]byte(nil), base...)
	for range n {
		off, l := randomRange(r, limit)
		switch r.IntN(4) {
		case 0:
			if err := v.Trim(off, l); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+l])
		default:
			p := randBytes(r, int(l))
			if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], p)
		}
	}
	return want
}

func TestViewReopenKeepsWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	src := newSource(t, "file", "0e1d2c3b-4a59-4687-9a6b-5c4d3e2f1a0b", modelSize)
	src.randomApply(r, 30)
	seq := src.point()
	dir := filepath.Join(t.TempDir(), "ov")
	v := src.openView(seq, dir)
	want := writeSome(t, v, r, src.points[seq], 200, v.Size())
	written := v.Written()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt([]byte{1}, 0); !errors.Is(err, failover.ErrClosed) {
		t.Fatalf("WriteAt after Close: %v, want ErrClosed", err)
	}
	src.randomApply(r, 30) // the replica moves on meanwhile
	v = src.openView(seq, dir)
	checkContent(t, "view after reopen", readAll(t, v), want)
	if v.Written() != written {
		t.Fatalf("Written after reopen = %d, want %d", v.Written(), written)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// The overlay is private, like the journal.
	for name, want := range map[string]os.FileMode{"": 0o700, failover.MapName: 0o600, failover.DataName: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", filepath.Join(dir, name), fi.Mode().Perm(), want)
		}
	}
	if err := failover.RemoveOverlay(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("overlay directory after RemoveOverlay: %v", err)
	}
	if err := failover.RemoveOverlay(dir); err != nil {
		t.Fatalf("RemoveOverlay of a removed overlay: %v", err)
	}
	// A new overlay in its place reads the point.
	v = src.openView(seq, dir)
	defer v.Close()
	if v.Written() != 0 {
		t.Fatalf("new overlay holds %d bytes", v.Written())
	}
	checkContent(t, "new view", readAll(t, v), src.points[seq])
}

func TestViewRefusesOtherOverlay(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	src := newSource(t, "memory", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", modelSize)
	src.randomApply(r, 10)
	p1 := src.point()
	src.randomApply(r, 10)
	p2 := src.point()
	dir := filepath.Join(t.TempDir(), "ov")
	v := src.openView(p1, dir)
	writeSome(t, v, r, src.points[p1], 10, v.Size())
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := failover.OpenView(src.open(p2), dir)
	want := "overlay " + dir + " was made for point 1, not 2; remove it or open point 1"
	if !errors.Is(err, failover.ErrMismatch) || !strings.Contains(err.Error(), want) {
		t.Fatalf("open for another point: %v\nwant ErrMismatch containing %q", err, want)
	}
	// Same seq, another size.
	other := newSource(t, "memory", "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", modelSize+512)
	other.randomApply(r, 1)
	_, err = failover.OpenView(other.open(other.point()), dir)
	if !errors.Is(err, failover.ErrMismatch) || !strings.Contains(err.Error(), "was made for a volume of 525824 bytes, not 526336") {
		t.Fatalf("open for another size: %v, want ErrMismatch naming both sizes", err)
	}
	// The overlay is unharmed by the refusals.
	v = src.openView(p1, dir)
	if v.Written() == 0 {
		t.Fatal("refused opens emptied the overlay")
	}
	// A second open of an open overlay is refused.
	if _, err := failover.OpenView(src.open(p1), dir); !errors.Is(err, failover.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	v.Close()
}

func TestViewDamagedMap(t *testing.T) {
	damage := []struct {
		name string
		do   func(t *testing.T, dir string)
		why  string
	}{
		{"magic", flipAt(failover.MapName, 0), "bad magic"},
		{"version", flipAt(failover.MapName, 8), "format version"},
		{"block size", flipAt(failover.MapName, 13), "checksum"},
		{"point seq", flipAt(failover.MapName, 24), "checksum"},
		{"checksum", flipAt(failover.MapName, 41), "checksum"},
		{"short header", truncate(failover.MapName, 20), "header"},
		{"no bit pages", truncate(failover.MapName, failover.MapHeaderSize), "want"},
		{"empty map", truncate(failover.MapName, 0), "header"},
		{"data file missing", remove(failover.DataName), "no such file"},
		{"data file short", truncate(failover.DataName, 4096), "want"},
	}
	for _, c := range damage {
		t.Run(c.name, func(t *testing.T) {
			src := newSource(t, "memory", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", modelSize)
			src.randomApply(rand.New(rand.NewPCG(6, 6)), 5)
			seq := src.point()
			dir := filepath.Join(t.TempDir(), "ov")
			v := src.openView(seq, dir)
			if _, err := v.WriteAt(make([]byte, 3*bs), bs); err != nil {
				t.Fatal(err)
			}
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
			c.do(t, dir)
			_, err := failover.OpenView(src.open(seq), dir)
			if !errors.Is(err, failover.ErrDamaged) {
				t.Fatalf("open damaged overlay: %v, want ErrDamaged", err)
			}
			msg := err.Error()
			for _, want := range []string{dir + "/", c.why, "remove the overlay directory " + dir} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
		})
	}
}

func flipAt(name string, off int64) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := []byte{0}
		f.ReadAt(b, off)
		b[0] ^= 0x10
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

func truncate(name string, size int64) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Truncate(filepath.Join(dir, name), size); err != nil {
			t.Fatal(err)
		}
	}
}

func remove(name string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestViewTrimPunchesHoles checks that trimmed whole blocks give their
// space back in the overlay data file.
func TestViewTrimPunchesHoles(t *testing.T) {
	src := newSource(t, "file", "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a", 8<<20)
	src.fillAll(rand.New(rand.NewPCG(7, 7)))
	seq := src.point()
	dir := filepath.Join(t.TempDir(), "ov")
	v := src.openView(seq, dir)
	defer v.Close()
	if _, err := v.WriteAt(randBytes(rand.New(rand.NewPCG(7, 8)), 4<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, filepath.Join(dir, failover.DataName))
	if err := v.Trim(1<<20+100, 4<<20-200); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	after := allocated(t, filepath.Join(dir, failover.DataName))
	if before < 4<<20 || after > 2*bs {
		t.Fatalf("overlay data allocated %d bytes before the trim, %d after; want >= 4 MiB, then <= 2 blocks", before, after)
	}
	got := make([]byte, 4<<20)
	if _, err := v.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got[100:len(got)-100], make([]byte, len(got)-200)); i >= 0 {
		t.Fatalf("trimmed range reads non-zero at %d", i)
	}
	if got, want := v.Written(), int64(4<<20); got != want {
		t.Fatalf("Written = %d, want %d (trimmed blocks are the view's too)", got, want)
	}
}

func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
