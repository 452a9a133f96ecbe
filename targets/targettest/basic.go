package targettest

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"lifeboat/targets"
)

func testProperties(t *testing.T, open func(t *testing.T) targets.Target) {
	tg := open(t)
	defer tg.Close()
	p := tg.Properties()
	if p.Alignment < 1 || p.Alignment > 4096 || p.Alignment&(p.Alignment-1) != 0 {
		t.Fatalf("Alignment %d: want a power of two from 1 to 4096", p.Alignment)
	}
	if p.MaxExtent < 0 || p.MaxExtent > 0 && p.MaxExtent < 4096 {
		t.Fatalf("MaxExtent %d: want 0 (no limit) or at least one block", p.MaxExtent)
	}
}

func testEmpty(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 1)
	if got := e.rep.Info(); got != e.info {
		t.Fatalf("Info() = %+v, want %+v", got, e.info)
	}
	st, err := e.rep.State(ctx)
	if err != nil || st != (targets.State{}) {
		t.Fatalf("State of a new replica = %+v, %v; want zero", st, err)
	}
	ps, err := e.rep.Points(ctx)
	if err != nil || len(ps) != 0 {
		t.Fatalf("Points of a new replica = %v, %v; want none", ps, err)
	}
	_, err = e.rep.OpenPoint(ctx, 1)
	wantErr(t, "OpenPoint of a new replica", err, targets.ErrNotFound)
	e.checkLatest() // all zeros
}

func testApplyCommit(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 2)
	e.randomApply(5)
	if st, err := e.rep.State(ctx); err != nil || st != (targets.State{}) {
		t.Fatalf("State before Commit = %+v, %v; want zero", st, err)
	}
	for _, want := range []targets.State{{Generation: 1, Seq: 3}, {Generation: 1, Seq: 9}, {Generation: 2, Seq: 10}} {
		e.randomApply(3)
		if err := e.rep.Commit(ctx, want); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if st, err := e.rep.State(ctx); err != nil || st != want {
			t.Fatalf("State = %+v, %v; want %+v", st, err, want)
		}
	}
	e.seq = 10
	e.checkLatest()
}

func testWrites(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 3)
	size := e.info.Size
	// Edges: first and last byte, the partial last block, a whole-replica
	// zero, and overlaps inside one Apply (the later extent wins).
	d := make([]byte, 8192)
	fill(e.rng, d)
	e.apply([]targets.Extent{{Off: 0, Data: bytes.Repeat([]byte{0xaa}, int(size))}})
	e.apply([]targets.Extent{
		{Off: 0, Data: d[:1]},
		{Off: size - 1, Data: d[1:2]},
		{Off: size - 3000, Data: d[:3000]},
		{Off: 4096, Len: 100},
		{Off: 4000, Data: d[:200]},          // overlaps the zero range
		{Off: 4050, Len: 20, Trim: true},    // inside the write just before
		{Off: 10000, Data: d},               // unaligned, spans blocks
		{Off: 12288, Data: d[100:4196]},     // aligned, inside the previous
		{Off: 12300, Len: 8000, Trim: true}, // unaligned trim over both
	})
	e.checkLatest()
	for range 10 {
		e.randomApply(12)
	}
	e.checkLatest()
	e.apply([]targets.Extent{{Off: 0, Len: size}})
	e.apply([]targets.Extent{{Off: 5, Data: []byte{}}, {Off: 9, Len: 0}}) // empty extents change nothing
	e.checkLatest()
	e.randomApply(20)
	e.checkLatest()
}

func testOutOfRange(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 4)
	size := e.info.Size
	for _, x := range []targets.Extent{
		{Off: size - 4095, Data: make([]byte, 4096)},
		{Off: size, Data: make([]byte, 1)},
		{Off: -512, Data: make([]byte, 512)},
		{Off: size - 512, Len: 1024},
		{Off: 1 << 62, Len: 1 << 62},
	} {
		err := e.rep.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte{1}}, x})
		wantErr(t, "Apply beyond the replica", err, targets.ErrOutOfRange)
	}
	e.checkLatest() // nothing was applied: all zeros
}

func testInUse(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 5)
	_, err := e.tg.Open(ctx, e.info)
	wantErr(t, "second Open of an open replica", err, targets.ErrInUse)
	if err := e.rep.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.tg.Open(ctx, e.info)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	e.rep = rep
	e.randomApply(3)
	e.checkLatest()
}

func testVolumes(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 6)
	other := volumeInfo("0d4c2a18-7e5b-4c9a-9f21-6b8e3d5a7c90", 1<<20)
	r2, err := e.tg.Open(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	vols, err := e.tg.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(vols, func(a, b targets.VolumeInfo) int { return strings.Compare(a.ID, b.ID) })
	want := []targets.VolumeInfo{other, e.info}
	if !slices.Equal(vols, want) {
		t.Fatalf("Volumes() = %+v, want %+v", vols, want)
	}
}

func testClosed(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 7)
	e.randomApply(2)
	p := e.point()
	pr, err := e.rep.OpenPoint(ctx, p.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.rep.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	err = e.rep.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte{1}}})
	wantErr(t, "Apply after Close", err, targets.ErrClosed)
	err = e.rep.Commit(ctx, targets.State{Seq: 1})
	wantErr(t, "Commit after Close", err, targets.ErrClosed)
	_, err = e.rep.State(ctx)
	wantErr(t, "State after Close", err, targets.ErrClosed)
	if _, err := pr.ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("ReadAt of a point of a closed replica succeeded")
	}
	e.rep = nil
}
