package failover_test

import (
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"lifeboat/failover"
)

// modelSize is not a multiple of the 4 KiB block: the last block is short.
const modelSize = 512<<10 + 1536

// viewModel is what a view must read, and which blocks it must hold.
type viewModel struct {
	data    []byte
	written map[int64]bool
}

func (m *viewModel) mark(off, n int64) {
	for b := off / bs; b <= (off+n-1)/bs; b++ {
		m.written[b] = true
	}
}

func (m *viewModel) writtenBytes() int64 {
	var n int64
	for b := range m.written {
		n += min(bs, int64(len(m.data))-b*bs)
	}
	return n
}

// randomRange returns a block-aligned or an unaligned range inside the
// volume (an aligned one that reaches the end ends at the short last block).
func randomRange(r *rand.Rand, size int64) (off, n int64) {
	if r.IntN(2) == 0 {
		blocks := (size + bs - 1) / bs
		b := r.Int64N(blocks)
		return b * bs, min((r.Int64N(40)+1)*bs, size-b*bs)
	}
	off = r.Int64N(size)
	return off, min(r.Int64N(20000)+1, size-off)
}

func TestViewModel(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) { testViewModel(t, kind) })
	}
}

func testViewModel(t *testing.T, kind string) {
	r := rand.New(rand.NewPCG(1, uint64(len(kind))))
	src := newSource(t, kind, "3f0c2a54-9e1b-4d7a-8c6f-5b2e1d0a9f83", modelSize)
	src.randomApply(r, 40)
	seq := src.point()
	dir := filepath.Join(t.TempDir(), "overlay")
	v := src.openView(seq, dir)
	m := &viewModel{data: src.points[seq], written: map[int64]bool{}}
	m.data = append([]byte(nil), m.data...)
	for i := range 3000 {
		off, n := randomRange(r, modelSize)
		switch k := r.IntN(100); {
		case k < 35:
			p := randBytes(r, int(n))
			if got, err := v.WriteAt(p, off); err != nil || got != len(p) {
				t.Fatalf("op %d: WriteAt(%d, %d) = %d, %v", i, off, n, got, err)
			}
			copy(m.data[off:], p)
			m.mark(off, n)
		case k < 65:
			got := make([]byte, n)
			if c, err := v.ReadAt(got, off); err != nil || c != len(got) {
				t.Fatalf("op %d: ReadAt(%d, %d) = %d, %v", i, off, n, c, err)
			}
			checkContent(t, "read", got, m.data[off:off+n])
		case k < 85:
			op, name := v.WriteZeroes, "WriteZeroes"
			if k >= 75 {
				op, name = v.Trim, "Trim"
			}
			if err := op(off, n); err != nil {
				t.Fatalf("op %d: %s(%d, %d): %v", i, name, off, n, err)
			}
			clear(m.data[off : off+n])
			m.mark(off, n)
		case k < 90:
			if err := v.Flush(); err != nil {
				t.Fatalf("op %d: Flush: %v", i, err)
			}
		case k < 97:
			// The replica goes on: the view's point must not change.
			src.randomApply(r, 5)
			if r.IntN(3) == 0 {
				src.point()
			}
		default:
			if err := v.Close(); err != nil {
				t.Fatalf("op %d: Close: %v", i, err)
			}
			v = src.openView(seq, dir)
		}
		if got, want := v.Written(), m.writtenBytes(); got != want {
			t.Fatalf("op %d: Written() = %d, want %d", i, got, want)
		}
	}
	checkContent(t, "whole view", readAll(t, v), m.data)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Point isolation: the point reads as it was made, and the replica's
	// latest content is only what was applied to it.
	src.checkPoint(seq)
	src.checkPoint(src.point())
}

func TestViewRanges(t *testing.T) {
	src := newSource(t, "memory", "5d8e1f2a-0b3c-4e6d-9f7a-1c2b3d4e5f60", 64<<10+512)
	src.fillAll(rand.New(rand.NewPCG(2, 2)))
	seq := src.point()
	v := src.openView(seq, filepath.Join(t.TempDir(), "ov"))
	defer v.Close()
	size := v.Size()
	for _, c := range []struct {
		name string
		err  error
	}{
		{"write past end", func() error { _, err := v.WriteAt(make([]byte, 1024), size-512); return err }()},
		{"write negative", func() error { _, err := v.WriteAt(make([]byte, 1), -1); return err }()},
		{"zero past end", v.WriteZeroes(size, 1)},
		{"trim past end", v.Trim(0, size+1)},
		{"trim negative length", v.Trim(0, -1)},
		{"read negative", func() error { _, err := v.ReadAt(make([]byte, 1), -5); return err }()},
	} {
		if !errors.Is(c.err, failover.ErrOutOfRange) {
			t.Errorf("%s: err = %v, want ErrOutOfRange", c.name, c.err)
		}
	}
	if v.Written() != 0 {
		t.Fatalf("refused requests wrote %d bytes", v.Written())
	}
	// A read that passes the end returns what is before it and io.EOF.
	p := make([]byte, 1024)
	n, err := v.ReadAt(p, size-512)
	if n != 512 || err != io.EOF {
		t.Fatalf("ReadAt across the end = %d, %v; want 512, EOF", n, err)
	}
	checkContent(t, "tail", p[:512], src.points[seq][size-512:])
	if n, err := v.ReadAt(p, size+4096); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end = %d, %v; want 0, EOF", n, err)
	}
	// The short last block: write it partially, then whole.
	if _, err := v.WriteAt([]byte{7}, size-1); err != nil {
		t.Fatal(err)
	}
	if got, want := v.Written(), int64(512); got != want {
		t.Fatalf("Written after a write into the 512-byte last block = %d, want %d", got, want)
	}
}
