package targettest

import (
	"bytes"
	"testing"

	"lifeboat/targets"
)

// overwriteBlocks writes new random data over the given 4 KiB blocks, so
// points share some blocks and differ in others.
func (e *env) overwriteBlocks(blocks ...int64) {
	e.t.Helper()
	var exts []targets.Extent
	for _, b := range blocks {
		d := make([]byte, 4096)
		fill(e.rng, d)
		exts = append(exts, targets.Extent{Off: b * 4096, Data: d})
	}
	e.apply(exts)
}

func (e *env) deletePoint(seq uint64) {
	e.t.Helper()
	if err := e.rep.DeletePoint(ctx, seq); err != nil {
		e.t.Fatalf("DeletePoint %d: %v", seq, err)
	}
	delete(e.points, seq)
}

func testDelete(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 20)
	e.randomApply(30)
	var seqs []uint64
	for i := range 6 {
		seqs = append(seqs, e.point().Seq)
		// Block 0 changes after every point, block i after point i only,
		// plus random changes.
		e.overwriteBlocks(0, int64(i+1), int64(i+2))
		e.randomApply(4)
	}
	readers := map[uint64]targets.PointReader{}
	for _, s := range seqs {
		pr, err := e.rep.OpenPoint(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		readers[s] = pr
	}
	for _, victim := range []uint64{seqs[2], seqs[0], seqs[5], seqs[3]} { // middle, oldest, newest, middle
		e.deletePoint(victim)
		_, err := readers[victim].ReadAt(make([]byte, 512), 0)
		wantErr(t, "ReadAt of a deleted point", err, targets.ErrNotFound)
		_, err = e.rep.OpenPoint(ctx, victim)
		wantErr(t, "OpenPoint of a deleted point", err, targets.ErrNotFound)
		err = e.rep.DeletePoint(ctx, victim)
		wantErr(t, "DeletePoint of a deleted point", err, targets.ErrNotFound)
		e.checkAllPoints()
		for s, pr := range readers {
			if _, alive := e.points[s]; alive {
				checkReader(t, pr, e.points[s], e.rng)
			}
		}
		e.overwriteBlocks(0, 3, 4)
		e.randomApply(3)
		e.checkAllPoints()
	}
	e.checkLatest()
}

// testDeleteRandom deletes points in random order with writes between.
func testDeleteRandom(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 21)
	for round := range 3 {
		for range 5 {
			e.randomApply(1 + e.rng.IntN(8))
			e.point()
		}
		for len(e.points) > 2-round%2 {
			ps, err := e.rep.Points(ctx)
			if err != nil {
				t.Fatal(err)
			}
			e.deletePoint(ps[e.rng.IntN(len(ps))].Seq)
			e.randomApply(e.rng.IntN(4))
			e.checkAllPoints()
		}
	}
	e.checkLatest()
}

func testUsage(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 22)
	size := e.info.Size
	full := func() {
		d := make([]byte, size)
		fill(e.rng, d)
		e.apply([]targets.Extent{{Off: 0, Data: d}})
	}
	usage := func() int64 {
		t.Helper()
		u, err := e.rep.Usage(ctx)
		if err != nil {
			t.Fatalf("Usage: %v", err)
		}
		return u
	}
	full()
	e.point()
	u0 := usage()
	if u0 < size/2 {
		t.Fatalf("Usage %d after writing %d bytes of random data", u0, size)
	}
	var seqs []uint64
	for range 50 {
		seqs = append(seqs, e.point().Seq)
	}
	if u := usage(); u-u0 > 50*4096 {
		t.Fatalf("50 points without changes between them grew usage from %d to %d", u0, u)
	}
	full()
	seqs = append(seqs, e.point().Seq)
	full()
	seqs = append(seqs, e.point().Seq)
	full()
	u1 := usage()
	if u1 < 3*size {
		t.Fatalf("Usage %d with 4 versions of %d bytes retained", u1, size)
	}
	for _, s := range seqs[:len(seqs)-1] {
		e.deletePoint(s)
	}
	ps, _ := e.rep.Points(ctx)
	for _, p := range ps[:len(ps)-1] {
		e.deletePoint(p.Seq)
	}
	u2 := usage()
	if u2 > u1-3*size/2 {
		t.Fatalf("Usage %d after deleting the points whose data was overwritten, %d before", u2, u1)
	}
	e.checkAllPoints()
	e.checkLatest()
}

// testResize opens the replica again with a larger, then a smaller size:
// points keep their size and content, the grown range reads zeros.
func testResize(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 23)
	e.randomApply(20)
	p1 := e.point()
	e.randomApply(10)
	reopenSize := func(size int64) {
		t.Helper()
		if err := e.rep.Close(); err != nil {
			t.Fatal(err)
		}
		e.info.Size = size
		rep, err := e.tg.Open(ctx, e.info)
		if err != nil {
			t.Fatalf("Open with size %d: %v", size, err)
		}
		e.rep = rep
		if got := rep.Info().Size; got != size {
			t.Fatalf("Info().Size = %d after Open with size %d", got, size)
		}
		m := make([]byte, size)
		copy(m, e.model)
		e.model = m
	}
	big := e.info.Size + 64<<10 + 512
	reopenSize(big)
	e.checkAllPoints()
	e.checkLatest() // the grown range reads zeros
	e.randomApply(20)
	p2 := e.point()
	small := int64(testSize - 100<<10 - 1024)
	reopenSize(small)
	e.checkAllPoints() // p1 and p2 keep the bytes beyond the new size
	e.checkLatest()
	e.randomApply(10)
	reopenSize(testSize)
	e.checkLatest() // grown back: zeros, not the old bytes
	e.checkPoint(p1.Seq)
	e.checkPoint(p2.Seq)
	if len(e.points[p2.Seq]) != int(big) || bytes.Equal(e.points[p1.Seq], e.points[p2.Seq]) {
		t.Fatal("test setup: points do not differ in size and content")
	}
}
