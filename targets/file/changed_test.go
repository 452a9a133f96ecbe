package file_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/file"
)

// blocks is the range of n 4 KiB blocks from block first.
func blocks(first, n int64) targets.Range { return targets.Range{Off: first * 4096, Len: n * 4096} }

func checkChanged(t *testing.T, rep targets.Replica, seq uint64, want ...targets.Range) {
	t.Helper()
	got, err := rep.(targets.ChangeLister).ChangedSince(ctx, seq)
	if err != nil {
		t.Fatalf("ChangedSince(%d): %v", seq, err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ChangedSince(%d) = %v, want %v", seq, got, want)
	}
}

// TestChangedSince: the ranges changed since a point are the blocks written
// after it (merged, the last clamped to the volume size), applied changes
// without a point or a commit included, after a reopen and after points
// are deleted (the oldest, and one in the middle, merged into the older).
func TestChangedSince(t *testing.T) {
	const size = 64*4096 + 1536
	info := targets.VolumeInfo{ID: "6c1d2e3f-changed", Name: "changed", Size: size, BlockSize: 4096}
	dir := t.TempDir()
	open := func() (*file.Target, targets.Replica) {
		tg := file.New(dir)
		tg.Logger = quiet
		rep, err := tg.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		return tg, rep
	}
	tg, rep := open()
	data := func(n int) []byte { return bytes.Repeat([]byte{7}, n) }
	apply(t, rep, targets.Extent{Off: 0, Data: data(16 * 4096)})
	if err := rep.CreatePoint(ctx, pointOf(10)); err != nil {
		t.Fatal(err)
	}
	apply(t, rep,
		targets.Extent{Off: 2 * 4096, Data: data(2 * 4096)},       // blocks 2, 3
		targets.Extent{Off: 5*4096 - 50, Data: data(100)},         // blocks 4 and 5, partly
		targets.Extent{Off: 10*4096 + 100, Data: data(10)},        // block 10, partly
		targets.Extent{Off: 20 * 4096, Len: 3 * 4096, Trim: true}) // blocks 20-22
	if err := rep.CreatePoint(ctx, pointOf(20)); err != nil {
		t.Fatal(err)
	}
	apply(t, rep,
		targets.Extent{Off: 3 * 4096, Data: data(4096)},  // again, and in P2's log
		targets.Extent{Off: 30 * 4096, Data: data(4096)}, // block 30
		targets.Extent{Off: 64 * 4096, Data: data(1536)}) // the partial last block
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 25}); err != nil {
		t.Fatal(err)
	}
	tail := targets.Range{Off: 64 * 4096, Len: 1536}
	since10 := []targets.Range{blocks(2, 4), blocks(10, 1), blocks(20, 3), blocks(30, 1), tail}
	checkChanged(t, rep, 10, since10...)
	checkChanged(t, rep, 20, blocks(3, 1), blocks(30, 1), tail)
	for _, seq := range []uint64{0, 15, 25} {
		if _, err := rep.(targets.ChangeLister).ChangedSince(ctx, seq); !errors.Is(err, targets.ErrNotFound) {
			t.Fatalf("ChangedSince(%d) of no point: %v, want ErrNotFound", seq, err)
		}
	}

	// Applied, not committed: included.
	apply(t, rep, targets.Extent{Off: 40 * 4096, Data: data(4096)})
	since10 = []targets.Range{blocks(2, 4), blocks(10, 1), blocks(20, 3), blocks(30, 1), blocks(40, 1), tail}
	checkChanged(t, rep, 10, since10...)
	checkChanged(t, rep, 20, blocks(3, 1), blocks(30, 1), blocks(40, 1), tail)

	// After a reopen (closed logs come from their indexes).
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 26}); err != nil {
		t.Fatal(err)
	}
	rep.Close()
	tg.Close()
	tg, rep = open()
	defer tg.Close()
	checkChanged(t, rep, 10, since10...)
	checkChanged(t, rep, 20, blocks(3, 1), blocks(30, 1), blocks(40, 1), tail)

	// P3, block 50 after it; then P2 is deleted: its log is merged into
	// P1's, which must still list everything since P1.
	if err := rep.CreatePoint(ctx, pointOf(30)); err != nil {
		t.Fatal(err)
	}
	apply(t, rep, targets.Extent{Off: 50 * 4096, Data: data(4096)})
	if err := rep.DeletePoint(ctx, 20); err != nil {
		t.Fatal(err)
	}
	since10 = []targets.Range{blocks(2, 4), blocks(10, 1), blocks(20, 3), blocks(30, 1), blocks(40, 1), blocks(50, 1), tail}
	checkChanged(t, rep, 10, since10...)
	checkChanged(t, rep, 30, blocks(50, 1))
	// The oldest deleted: the newer point is unaffected.
	if err := rep.DeletePoint(ctx, 10); err != nil {
		t.Fatal(err)
	}
	checkChanged(t, rep, 30, blocks(50, 1))
	if _, err := rep.(targets.ChangeLister).ChangedSince(ctx, 10); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("ChangedSince of a deleted point: %v, want ErrNotFound", err)
	}
	rep.Close()
	if _, err := rep.(targets.ChangeLister).ChangedSince(ctx, 30); !errors.Is(err, targets.ErrClosed) {
		t.Fatalf("ChangedSince after Close: %v, want ErrClosed", err)
	}
}

// TestChangedSinceResize: a volume grown since the point lists the grown
// part whole; a shrunk one lists nothing past its new size.
func TestChangedSinceResize(t *testing.T) {
	dir := t.TempDir()
	info := targets.VolumeInfo{ID: "7d2e3f40-resize", Name: "resize", Size: 16 * 4096, BlockSize: 4096}
	reopen := func(size int64) (*file.Target, targets.Replica) {
		tg := file.New(dir)
		tg.Logger = quiet
		info.Size = size
		rep, err := tg.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		return tg, rep
	}
	tg, rep := reopen(16 * 4096)
	apply(t, rep, targets.Extent{Off: 0, Data: bytes.Repeat([]byte{1}, 16*4096)})
	if err := rep.CreatePoint(ctx, pointOf(1)); err != nil {
		t.Fatal(err)
	}
	rep.Close()
	tg.Close()

	tg, rep = reopen(24*4096 + 512)
	apply(t, rep, targets.Extent{Off: 1 * 4096, Data: bytes.Repeat([]byte{2}, 4096)},
		targets.Extent{Off: 20 * 4096, Data: bytes.Repeat([]byte{2}, 4096)})
	checkChanged(t, rep, 1, blocks(1, 1), targets.Range{Off: 16 * 4096, Len: 8*4096 + 512})
	rep.Close()
	tg.Close()

	tg, rep = reopen(8 * 4096)
	defer tg.Close()
	defer rep.Close()
	checkChanged(t, rep, 1, blocks(1, 1))
}
