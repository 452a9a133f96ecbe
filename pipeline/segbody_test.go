package pipeline

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// segmentFile writes n bytes, half random and half repeated, to a file.
func segmentFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n/2; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n / 2; i < n; i++ {
		data[i] = byte(i / 4096)
	}
	path := filepath.Join(t.TempDir(), "0000000000000001.hrl")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, data
}

// TestSegmentBodyStreamsWithoutHoldingTheSegment sends a 32 MiB segment
// through the shipper's hash pass and compressed body, and checks that the
// bytes decode to the file, the frame names its size, and the heap
// allocated on the way is far below the segment's size: memory per busy
// volume does not grow with SegmentBytes.
func TestSegmentBodyStreamsWithoutHoldingTheSegment(t *testing.T) {
	const size = 32 << 20
	f, data := segmentFile(t, size)
	enc, err := newEncoder(zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	s := &lane{enc: enc}
	var wire bytes.Buffer
	wire.Grow(size + size/8) // outside the measurement: the server's side
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 2 { // the second send reuses the encoder
		wire.Reset()
		sum, err := s.segmentSum(f, size)
		if err != nil {
			t.Fatal(err)
		}
		if want := xxhash.Sum64(data); sum != want {
			t.Fatalf("segmentSum = %016x, want %016x", sum, want)
		}
		body := openSegmentBody(f, size, enc)
		if _, err := io.Copy(&wire, body); err != nil {
			t.Fatal(err)
		}
		body.Close()
		if n := body.finish(context.Background()); n != int64(wire.Len()) {
			t.Fatalf("finish counted %d wire bytes, the body had %d", n, wire.Len())
		}
	}
	runtime.ReadMemStats(&after)
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(12<<20); got > limit {
		t.Errorf("sending a %d MiB segment twice allocated %d MiB, want at most %d MiB", size>>20, got>>20, limit>>20)
	}
	var zh zstd.Header
	if err := zh.Decode(wire.Bytes()); err != nil || !zh.HasFCS || zh.FrameContentSize != size {
		t.Fatalf("frame header %+v (err %v): want the content size %d", zh, err, size)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := dec.DecodeAll(wire.Bytes(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("decoded %d bytes that differ from the %d bytes of the segment", len(got), len(data))
	}
}

// TestSegmentBodyClosedEarlyStopsTheEncoder is the transport giving up on
// the body half way (the server answered 503 first): finish returns, and
// the encoder works for the next segment.
func TestSegmentBodyClosedEarlyStopsTheEncoder(t *testing.T) {
	const size = 4 << 20
	f, data := segmentFile(t, size)
	enc, err := newEncoder(zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	body := openSegmentBody(f, size, enc)
	if _, err := io.ReadFull(body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	body.Close()
	body.finish(context.Background())
	body = openSegmentBody(f, size, enc)
	wire, err := io.ReadAll(body)
	body.Close()
	body.finish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := zstdDecode(wire)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the next segment after an abandoned one: err %v, equal %v", err, bytes.Equal(got, data))
	}
}

func zstdDecode(b []byte) ([]byte, error) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return dec.DecodeAll(b, nil)
}
