package fusefs_test

import (
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"lifeboat/fusefs"
)

// TestReadWriteModel writes and reads at odd offsets and sizes through the
// mount, concurrently in disjoint stripes, and compares with a reference
// byte slice, through the mount and through the backend.
func TestReadWriteModel(t *testing.T) {
	requireFUSE(t)
	const volSize = 8 << 20
	v, _ := openVolume(t, volSize)
	fake := newFake(3<<20 + 777) // a size that is no multiple of anything
	_, dir := mountFiles(t,
		fusefs.File{Name: "volume", Backend: v},
		fusefs.File{Name: "fake", Backend: fake})
	for _, tc := range []struct {
		name    string
		size    int
		backend fusefs.Backend
	}{{"volume", volSize, v}, {"fake", int(fake.Size()), fake}} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(filepath.Join(dir, tc.name), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			model := make([]byte, tc.size)
			const workers = 4
			stripe := tc.size / workers
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					lo, hi := w*stripe, (w+1)*stripe
					if w == workers-1 {
						hi = tc.size
					}
					randomIO(t, f, model, lo, hi, rand.New(rand.NewPCG(uint64(w), 7)))
				})
			}
			wg.Wait()
			if i := firstDiff(readAll(t, f.Name()), model); i >= 0 {
				t.Errorf("whole file through the mount differs from the model at %d", i)
			}
			got := make([]byte, tc.size)
			if _, err := tc.backend.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, model); i >= 0 {
				t.Errorf("backend differs from the model at %d", i)
			}
		})
	}
}

// randomIO does random writes and reads inside [lo, hi) of f, keeping
// model[lo:hi] up to date.
func randomIO(t *testing.T, f *os.File, model []byte, lo, hi int, r *rand.Rand) {
	src := rand.NewChaCha8([32]byte{byte(lo), byte(hi)})
	buf := make([]byte, 600<<10)
	for range 150 {
		off := lo + r.IntN(hi-lo)
		n := min(1+r.IntN(len(buf)), hi-off)
		if r.IntN(8) == 0 {
			n = min(1+r.IntN(7), hi-off) // a few bytes
		}
		p := buf[:n]
		if r.IntN(2) == 0 {
			src.Read(p)
			if _, err := f.WriteAt(p, int64(off)); err != nil {
				t.Errorf("write %d@%d: %v", n, off, err)
				return
			}
			copy(model[off:], p)
			continue
		}
		if _, err := f.ReadAt(p, int64(off)); err != nil {
			t.Errorf("read %d@%d: %v", n, off, err)
			return
		}
		if i := firstDiff(p, model[off:off+n]); i >= 0 {
			t.Errorf("read %d@%d: differs from the model at %d", n, off, off+i)
			return
		}
	}
}

// TestEndOfFile checks that the file never grows: a write across the end
// is cut short, one at the end fails with ENOSPC, a read past the end is
// short.
func TestEndOfFile(t *testing.T) {
	requireFUSE(t)
	const size = 1<<20 + 3
	b := newFake(size)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: b})
	f, err := os.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 8192)
	for i := range p {
		p[i] = byte(i%251 + 1)
	}
	if n, err := unix.Pwrite(int(f.Fd()), p, size-100); n != 100 || err != nil {
		t.Errorf("pwrite across the end: got %d, %v; want 100, nil", n, err)
	}
	if n, err := unix.Pwrite(int(f.Fd()), p, size); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("pwrite at the end: got %d, %v; want ENOSPC", n, err)
	}
	if n, err := unix.Pwrite(int(f.Fd()), p, 5*size); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("pwrite past the end: got %d, %v; want ENOSPC", n, err)
	}
	got := make([]byte, 8192)
	if n, err := f.ReadAt(got, size-100); n != 100 || err != io.EOF {
		t.Errorf("read across the end: got %d, %v; want 100, EOF", n, err)
	}
	if firstDiff(got[:100], p[:100]) >= 0 {
		t.Errorf("read across the end: wrong content")
	}
	if n, err := f.ReadAt(got, size+4096); n != 0 || err != io.EOF {
		t.Errorf("read past the end: got %d, %v; want 0, EOF", n, err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Errorf("size: got %v, %v; want %d", st.Size(), err, size)
	}
	if b.Size() != size {
		t.Errorf("backend size changed to %d", b.Size())
	}
}
