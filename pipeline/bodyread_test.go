package pipeline

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"

	"lifeboat/hrl"
	"lifeboat/targets"
)

func TestClassOf(t *testing.T) {
	for _, c := range []struct {
		n     int64
		class int
		size  int64
	}{
		{1, 0, 64 << 10},
		{64 << 10, 0, 64 << 10},
		{64<<10 + 1, 1, 72 << 10},
		{128 << 10, 8, 128 << 10},
		{128<<10 + 1, 9, 144 << 10},
		{32 << 20, 9 * 8, 32 << 20},
		{32<<20 + 4096, 9*8 + 1, 36 << 20},
		{1 << 30, numClasses - 1, 1 << 30},
	} {
		k, size, ok := classOf(c.n)
		if !ok || k != c.class || size != c.size {
			t.Errorf("classOf(%d) = %d, %d, %v; want %d, %d", c.n, k, size, ok, c.class, c.size)
		}
	}
	if _, _, ok := classOf(1<<30 + 1); ok {
		t.Errorf("classOf(1 GiB + 1) has a class")
	}
	// Every class is at most 1/8 larger than what it holds.
	for n := int64(64<<10 + 1); n <= 1<<30; n = n*9/8 + 1 {
		if _, size, _ := classOf(n); size < n || size > n+n/8+1 {
			t.Fatalf("classOf(%d) = %d", n, size)
		}
	}
}

// segmentFor returns headers for a body of n bytes announced as size.
func headersFor(size int64, encoding string) segmentHeaders {
	return segmentHeaders{info: targets.VolumeInfo{ID: uuid.NewString(), Name: "v", Size: 1 << 30, BlockSize: 4096},
		generation: 1, first: 1, last: 1, size: size, encoding: encoding}
}

func TestSegmentBufferGrowsWithTheBytesThatArrive(t *testing.T) {
	for _, c := range []struct {
		arrive  int
		maxHeld int64
	}{
		{4096, 64 << 10},
		{3 << 20, 4 << 20},
	} {
		s := &Server{}
		bp, _, err := s.readSegment(bytes.NewReader(make([]byte, c.arrive)), headersFor(1<<30, contentEncodingPlain))
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "ended early") {
			t.Fatalf("%d bytes of an announced 1 GiB: %v, want a short body refused", c.arrive, err)
		}
		if held := s.recvMem.held.Load(); held != int64(cap(*bp)) || held > c.maxHeld {
			t.Fatalf("%d bytes of an announced 1 GiB: the buffer holds %d bytes (%d counted); want at most %d",
				c.arrive, cap(*bp), held, c.maxHeld)
		}
		s.releaseBuf(bp)
		if held := s.recvMem.held.Load(); held != 0 {
			t.Fatalf("%d bytes still counted after release", held)
		}
	}
}

func TestSegmentBodyMustBeTheAnnouncedSize(t *testing.T) {
	id := uuid.New()
	seg := sealedSegment(t, id, func(w *hrl.Writer) error {
		_, _, err := w.AppendData(hrl.TypeWrite, 0, bytes.Repeat([]byte("lifeboat"), 1<<14))
		return err
	})
	enc, _ := zstd.NewWriter(nil)
	wire := enc.EncodeAll(seg, nil)
	n := int64(len(seg))
	for _, c := range []struct {
		name, encoding string
		body           []byte
		size           int64
		want           string
	}{
		{"exact", contentEncodingPlain, seg, n, ""},
		{"exact zstd", contentEncodingZstd, wire, n, ""},
		{"longer", contentEncodingPlain, append(seg[:n:n], 0), n, "longer than the announced"},
		{"shorter", contentEncodingPlain, seg[:n-1], n, "ended early"},
		{"zstd frame of another size", contentEncodingZstd, wire, n + 4096, "the zstd frame holds"},
		{"zstd, two frames", contentEncodingZstd, append(wire[:len(wire):len(wire)], wire...), n, "zstd"},
		{"not zstd", contentEncodingZstd, seg, n, "zstd"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{}
			h := headersFor(c.size, c.encoding)
			h.info.ID, h.sum = id.String(), xxhash.Sum64(seg)
			bp, data, err := s.readSegment(bytes.NewReader(c.body), h)
			defer s.releaseBuf(bp)
			if c.want == "" {
				if err != nil || !bytes.Equal(data, seg) {
					t.Fatalf("err %v, %d bytes; want the segment", err, len(data))
				}
				return
			}
			if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want a refusal (422) saying %q", err, c.want)
			}
		})
	}
}

// The receive buffers of all uploads stay within ReceiveMemory, except
// that an upload alone may pass it (one segment of any size goes
// through).
func TestReceiveMemoryBudget(t *testing.T) {
	s := &Server{ReceiveMemory: 1 << 20}
	other, err := s.takeBuf(512<<10, 0)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 2<<20)
	bp, _, err := s.readSegment(bytes.NewReader(body), headersFor(int64(len(body)), contentEncodingPlain))
	s.releaseBuf(bp)
	if !errors.Is(err, errBusy) || !errors.Is(err, ErrSlowDown) {
		t.Fatalf("2 MiB with 512 KiB of a 1 MiB budget held elsewhere: %v, want a slow-down", err)
	}
	s.releaseBuf(other)
	bp, data, err := s.readSegment(bytes.NewReader(body), headersFor(int64(len(body)), contentEncodingPlain))
	if err != nil || len(data) != len(body) {
		t.Fatalf("2 MiB alone: %v", err)
	}
	s.releaseBuf(bp)
	if held := s.recvMem.held.Load(); held != 0 {
		t.Fatalf("%d bytes still counted", held)
	}
}

// A reader that fails mid-body is a refusal, and what it held is counted
// until released.
func TestSegmentBodyReadError(t *testing.T) {
	s := &Server{}
	r := io.MultiReader(bytes.NewReader(make([]byte, 100<<10)), errReader{})
	bp, _, err := s.readSegment(r, headersFor(1<<20, contentEncodingPlain))
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "after 102400 bytes") {
		t.Fatalf("err %v", err)
	}
	s.releaseBuf(bp)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
