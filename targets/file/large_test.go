package file_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/file"
)

// TestLargeExtents applies extents larger than the undo chunk with a point
// retained, overlapping inside one Apply.
func TestLargeExtents(t *testing.T) {
	tg := file.New(t.TempDir())
	tg.Logger = quiet
	defer tg.Close()
	const size = 9<<20 + 512
	rep, err := tg.Open(ctx, targets.VolumeInfo{ID: "large", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 9))
	random := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	orig := random(size)
	apply(t, rep, targets.Extent{Off: 0, Data: orig})
	if err := rep.CreatePoint(ctx, targets.Point{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	model := bytes.Clone(orig)
	exts := []targets.Extent{
		{Off: 0, Data: random(size)},
		{Off: 1 << 20, Len: 5 << 20},
		{Off: 3<<20 + 100, Data: random(2 << 20)},
	}
	for _, e := range exts {
		if e.Data != nil {
			copy(model[e.Off:], e.Data)
		} else {
			clear(model[e.Off : e.Off+e.Len])
		}
	}
	apply(t, rep, exts...)
	if err := rep.CreatePoint(ctx, targets.Point{Seq: 2}); err != nil {
		t.Fatal(err)
	}
	for seq, want := range map[uint64][]byte{1: orig, 2: model} {
		pr, err := rep.OpenPoint(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := pr.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("point %d: %v, equal %v", seq, err, bytes.Equal(got, want))
		}
	}
}
