package targettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// testSize is the replica size: a multiple of 512, not of 4096.
const testSize = 320<<10 + 1536

var ctx = context.Background()

// env is one subtest's target, replica and reference model.
type env struct {
	t      *testing.T
	open   func(t *testing.T) targets.Target
	tg     targets.Target
	rep    targets.Replica
	info   targets.VolumeInfo
	model  []byte            // the latest content
	points map[uint64][]byte // content of each retained point
	seq    uint64            // seq of the last applied change
	rng    *rand.Rand
}

func volumeInfo(id string, size int64) targets.VolumeInfo {
	return targets.VolumeInfo{ID: id, Name: "vol-" + id[:4], Size: size, BlockSize: 4096}
}

func newEnv(t *testing.T, open func(t *testing.T) targets.Target, seed uint64) *env {
	t.Helper()
	e := &env{t: t, open: open, info: volumeInfo("9b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b", testSize),
		model: make([]byte, testSize), points: map[uint64][]byte{}, rng: rand.New(rand.NewPCG(seed, 0x7a26))}
	e.tg = open(t)
	rep, err := e.tg.Open(ctx, e.info)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	e.rep = rep
	t.Cleanup(func() {
		if e.rep != nil {
			e.rep.Close()
		}
		if e.tg != nil {
			e.tg.Close()
		}
	})
	return e
}

// reopen closes the replica and the target and opens both again.
func (e *env) reopen() {
	e.t.Helper()
	if err := e.rep.Close(); err != nil {
		e.t.Fatalf("Replica.Close: %v", err)
	}
	if err := e.tg.Close(); err != nil {
		e.t.Fatalf("Target.Close: %v", err)
	}
	e.rep, e.tg = nil, nil
	e.tg = e.open(e.t)
	rep, err := e.tg.Open(ctx, e.info)
	if err != nil {
		e.t.Fatalf("Open after reopen: %v", err)
	}
	e.rep = rep
}

// applyModel applies extents to a model.
func applyModel(m []byte, exts []targets.Extent) {
	for _, x := range exts {
		if x.Data != nil {
			copy(m[x.Off:], x.Data)
		} else {
			clear(m[x.Off : x.Off+x.Len])
		}
	}
}

// randomExtents returns n extents: whole 4 KiB blocks (as the pipeline
// sends), unaligned data, zero and trim ranges, some overlapping.
func randomExtents(r *rand.Rand, size int64, n int) []targets.Extent {
	var exts []targets.Extent
	for range n {
		var off, l int64
		switch r.IntN(3) {
		case 0, 1: // whole blocks
			blocks := size / 4096
			b := r.Int64N(blocks)
			off, l = b*4096, min(r.Int64N(8)+1, blocks-b)*4096
		default: // anywhere, any length, up to the last byte
			off = r.Int64N(size)
			l = min(r.Int64N(20<<10)+1, size-off)
		}
		if len(exts) > 0 && r.IntN(4) == 0 { // overlap the previous one
			p := exts[len(exts)-1]
			off = min(p.Off+p.Length()/2, size-1)
			l = min(l, size-off)
		}
		switch k := r.IntN(10); {
		case k < 7:
			d := make([]byte, l)
			fill(r, d)
			exts = append(exts, targets.Extent{Off: off, Data: d})
		default:
			exts = append(exts, targets.Extent{Off: off, Len: l, Trim: k == 9})
		}
	}
	return exts
}

func fill(r *rand.Rand, p []byte) {
	for i := 0; i < len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// apply applies extents as the records of one new seq.
func (e *env) apply(exts []targets.Extent) {
	e.t.Helper()
	if err := e.rep.Apply(ctx, exts); err != nil {
		e.t.Fatalf("Apply: %v", err)
	}
	applyModel(e.model, exts)
	e.seq++
}

func (e *env) randomApply(n int) []targets.Extent {
	e.t.Helper()
	exts := randomExtents(e.rng, e.info.Size, n)
	e.apply(exts)
	return exts
}

// point creates a crash-consistent point at the current seq.
func (e *env) point() targets.Point {
	e.t.Helper()
	e.seq++
	p := targets.Point{Seq: e.seq, Generation: 1, Kind: hrl.TagCrash, Name: fmt.Sprintf("p%d", e.seq),
		Time: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(e.seq) * time.Second)}
	if err := e.rep.CreatePoint(ctx, p); err != nil {
		e.t.Fatalf("CreatePoint %d: %v", p.Seq, err)
	}
	e.points[p.Seq] = bytes.Clone(e.model)
	return p
}

// latest checks the latest content through a new point.
func (e *env) checkLatest() {
	e.t.Helper()
	p := e.point()
	e.checkPoint(p.Seq)
}

// checkPoint opens point seq and compares it with its model.
func (e *env) checkPoint(seq uint64) {
	e.t.Helper()
	pr, err := e.rep.OpenPoint(ctx, seq)
	if err != nil {
		e.t.Fatalf("OpenPoint %d: %v", seq, err)
	}
	defer pr.Close()
	if pr.Point().Seq != seq {
		e.t.Fatalf("OpenPoint %d: reader of point %d", seq, pr.Point().Seq)
	}
	want, ok := e.points[seq]
	if !ok {
		e.t.Fatalf("no model for point %d", seq)
	}
	checkReader(e.t, pr, want, e.rng)
}

func (e *env) checkAllPoints() {
	e.t.Helper()
	ps, err := e.rep.Points(ctx)
	if err != nil {
		e.t.Fatalf("Points: %v", err)
	}
	if len(ps) != len(e.points) {
		e.t.Fatalf("Points: %d points, the model has %d", len(ps), len(e.points))
	}
	for _, p := range ps {
		e.checkPoint(p.Seq)
	}
}

// checkReader reads pr whole in chunks of random size, then at random
// unaligned ranges, and checks the os.File-like behaviour at the end.
func checkReader(t *testing.T, pr targets.PointReader, want []byte, r *rand.Rand) {
	t.Helper()
	if err := compareReader(pr, want, r); err != nil {
		t.Fatalf("point %d: %v", pr.Point().Seq, err)
	}
}

// compareReader is checkReader that returns the first difference.
func compareReader(pr targets.PointReader, want []byte, r *rand.Rand) error {
	size := int64(len(want))
	if pr.Size() != size {
		return fmt.Errorf("Size() = %d, want %d", pr.Size(), size)
	}
	got := make([]byte, size)
	for off := int64(0); off < size; {
		n := min(r.Int64N(48<<10)+1, size-off)
		k, err := pr.ReadAt(got[off:off+n], off)
		if err != nil && !(errors.Is(err, io.EOF) && off+int64(k) == size) {
			return fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v", n, off, k, err)
		}
		if int64(k) != n {
			return fmt.Errorf("ReadAt(%d bytes at %d) read %d", n, off, k)
		}
		off += n
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		return fmt.Errorf("content differs from the model at byte %d (block %d)", i, i/4096)
	}
	for range 8 {
		off := r.Int64N(size)
		n := min(r.Int64N(9000)+1, size-off)
		p := make([]byte, n)
		if k, err := pr.ReadAt(p, off); int64(k) != n || err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v", n, off, k, err)
		}
		if !bytes.Equal(p, want[off:off+n]) {
			return fmt.Errorf("ReadAt(%d bytes at %d) differs from the model", n, off)
		}
	}
	// At the end: a read across it is short with io.EOF, one at it is
	// (0, io.EOF).
	p := make([]byte, 1000)
	if k, err := pr.ReadAt(p, size-10); k != 10 || !errors.Is(err, io.EOF) || !bytes.Equal(p[:10], want[size-10:]) {
		return fmt.Errorf("ReadAt across the end = %d, %v; want 10, io.EOF", k, err)
	}
	if k, err := pr.ReadAt(p, size); k != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("ReadAt at the end = %d, %v; want 0, io.EOF", k, err)
	}
	return nil
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}
