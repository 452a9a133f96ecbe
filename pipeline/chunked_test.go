package pipeline

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// countingReaderAt counts the ReadAt calls made on a bytes.Reader.
type countingReaderAt struct {
	*bytes.Reader
	calls int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.calls++
	return c.Reader.ReadAt(p, off)
}

func TestChunkedReader(t *testing.T) {
	data := make([]byte, 3*pointChunk+12345)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	src := &countingReaderAt{Reader: bytes.NewReader(data)}
	c := newChunkedReader(src, int64(len(data)))
	var out bytes.Buffer
	if _, err := io.CopyBuffer(&out, struct{ io.Reader }{c}, make([]byte, 32<<10)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("sequential read differs")
	}
	if src.calls != 4 {
		t.Fatalf("%d ReadAt calls for %d bytes read in 32 KiB pieces; want 4 (one per chunk)", src.calls, len(data))
	}
	for _, off := range []int64{0, 5, pointChunk - 3, 2 * pointChunk, int64(len(data)) - 7} {
		if _, err := c.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 10)
		n, err := io.ReadFull(c, got)
		want := data[off:min(off+10, int64(len(data)))]
		if !bytes.Equal(got[:n], want) || (n < 10) != (err != nil) {
			t.Fatalf("at %d: got %d bytes %x, %v; want %x", off, n, got[:n], err, want)
		}
	}
	if _, err := c.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("negative seek accepted")
	}
	if end, _ := c.Seek(0, io.SeekEnd); end != int64(len(data)) {
		t.Fatalf("SeekEnd: %d", end)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: %d, %v", n, err)
	}
}

// shortReaderAt is a ReaderAt whose data ends before the size it claims.
type shortReaderAt struct{ n int64 }

func (s shortReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.n {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.n-off)
	clear(p[:n])
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// A source shorter than the size is an error, never a quiet short download.
func TestChunkedReaderShortSource(t *testing.T) {
	c := newChunkedReader(shortReaderAt{n: pointChunk + 100}, 2*pointChunk)
	_, err := io.Copy(io.Discard, struct{ io.Reader }{c})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("copy of a short source: %v, want io.ErrUnexpectedEOF", err)
	}
}
