package failover_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"lifeboat/failover"
	"lifeboat/hrl"
	"lifeboat/targets"
	"lifeboat/targets/file"
	"lifeboat/targets/memory"
)

var ctx = context.Background()

const bs = 4096

// kinds are the targets whose points the tests read.
var kinds = []string{"memory", "file"}

// source is a replica on a real target and the model of its content.
type source struct {
	t       testing.TB
	tg      targets.Target
	rep     targets.Replica
	content []byte            // the replica's latest content
	points  map[uint64][]byte // content of each point
	seq     uint64
}

func newSource(t testing.TB, kind string, id string, size int64) *source {
	t.Helper()
	var tg targets.Target
	switch kind {
	case "memory":
		tg = memory.New()
	case "file":
		tg = file.New(t.TempDir())
	default:
		t.Fatalf("unknown target %q", kind)
	}
	rep, err := tg.Open(ctx, targets.VolumeInfo{ID: id, Name: "vol", Size: size, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	s := &source{t: t, tg: tg, rep: rep, content: make([]byte, size), points: map[uint64][]byte{}}
	t.Cleanup(func() {
		s.rep.Close()
		s.tg.Close()
	})
	return s
}

// apply applies extents as one seq.
func (s *source) apply(exts ...targets.Extent) {
	s.t.Helper()
	if err := s.rep.Apply(ctx, exts); err != nil {
		s.t.Fatalf("Apply: %v", err)
	}
	for _, x := range exts {
		if x.Data != nil {
			copy(s.content[x.Off:], x.Data)
		} else {
			clear(s.content[x.Off : x.Off+x.Len])
		}
	}
	s.seq++
}

// randomApply applies n random extents (data, zero, trim) as one seq.
func (s *source) randomApply(r *rand.Rand, n int) {
	size := int64(len(s.content))
	var exts []targets.Extent
	for range n {
		off := r.Int64N(size)
		l := min(r.Int64N(64<<10)+1, size-off)
		switch r.IntN(8) {
		case 0:
			exts = append(exts, targets.Extent{Off: off, Len: l, Trim: r.IntN(2) == 0})
		default:
			exts = append(exts, targets.Extent{Off: off, Data: randBytes(r, int(l))})
		}
	}
	s.apply(exts...)
}

// fillAll writes random bytes over the whole replica (no zero blocks).
func (s *source) fillAll(r *rand.Rand) {
	s.apply(targets.Extent{Off: 0, Data: randBytes(r, len(s.content))})
}

// point records the current content as a recovery point and returns its seq.
func (s *source) point() uint64 {
	s.t.Helper()
	p := targets.Point{Seq: s.seq, Generation: 1, Kind: hrl.TagCrash, Name: "p", Time: time.Unix(int64(s.seq), 0)}
	if err := s.rep.CreatePoint(ctx, p); err != nil {
		s.t.Fatalf("CreatePoint: %v", err)
	}
	s.points[s.seq] = bytes.Clone(s.content)
	return s.seq
}

func (s *source) open(seq uint64) targets.PointReader {
	s.t.Helper()
	pr, err := s.rep.OpenPoint(ctx, seq)
	if err != nil {
		s.t.Fatalf("OpenPoint(%d): %v", seq, err)
	}
	return pr
}

// openView opens a view of point seq with its overlay in dir.
func (s *source) openView(seq uint64, dir string) *failover.View {
	s.t.Helper()
	v, err := failover.OpenView(s.open(seq), dir)
	if err != nil {
		s.t.Fatalf("OpenView: %v", err)
	}
	return v
}

// checkPoint reads point seq from the replica and compares it with the
// content recorded when it was made.
func (s *source) checkPoint(seq uint64) {
	s.t.Helper()
	pr := s.open(seq)
	defer pr.Close()
	got := make([]byte, len(s.content))
	if _, err := pr.ReadAt(got, 0); err != nil {
		s.t.Fatalf("read point %d: %v", seq, err)
	}
	if i := firstDiff(got, s.points[seq]); i >= 0 {
		s.t.Fatalf("point %d changed at byte %d: got %#x, want %#x", seq, i, got[i], s.points[seq][i])
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			p[i+j] = byte(v>>(8*j)) | 1 // never zero: a hole is told apart
		}
	}
	return p
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// readAll reads the whole view.
func readAll(t testing.TB, v interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatalf("ReadAt whole view: %v", err)
	}
	return b
}

func checkContent(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s differs at byte %d (block %d): got %#x, want %#x", what, i, i/bs, got[i], want[i])
	}
}
