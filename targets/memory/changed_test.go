package memory_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"lifeboat/targets"
	"lifeboat/targets/memory"
)

// TestChangedSince: the blocks whose content differs from the point's,
// not those written back to it; the grown part of a volume whole.
func TestChangedSince(t *testing.T) {
	ctx := context.Background()
	tg := memory.New()
	info := targets.VolumeInfo{ID: "v", Name: "v", Size: 16*4096 + 512, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	apply := func(exts ...targets.Extent) {
		t.Helper()
		if err := rep.Apply(ctx, exts); err != nil {
			t.Fatal(err)
		}
	}
	point := func(seq uint64) {
		t.Helper()
		if err := rep.CreatePoint(ctx, targets.Point{Seq: seq, Generation: 1, Time: time.Unix(int64(seq), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(seq uint64, want ...targets.Range) {
		t.Helper()
		got, err := rep.(targets.ChangeLister).ChangedSince(ctx, seq)
		if err != nil {
			t.Fatalf("ChangedSince(%d): %v", seq, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ChangedSince(%d) = %v, want %v", seq, got, want)
		}
	}
	blk := func(first, n int64) targets.Range { return targets.Range{Off: first * 4096, Len: n * 4096} }

	apply(targets.Extent{Off: 0, Data: fill(1, 8*4096)})
	point(1)
	apply(targets.Extent{Off: 2 * 4096, Data: fill(1, 4096)}, // same content
		targets.Extent{Off: 3*4096 + 10, Data: fill(2, 10)},
		targets.Extent{Off: 4 * 4096, Data: fill(2, 4096)},
		targets.Extent{Off: 5 * 4096, Data: fill(2, 4096)},
		targets.Extent{Off: 5 * 4096, Data: fill(1, 4096)}, // back to the point's
		targets.Extent{Off: 7 * 4096, Len: 4096},
		targets.Extent{Off: 16 * 4096, Data: fill(3, 512)})
	point(2)
	apply(targets.Extent{Off: 10 * 4096, Data: fill(4, 4096)})
	tail := targets.Range{Off: 16 * 4096, Len: 512}
	check(1, blk(3, 2), blk(7, 1), blk(10, 1), tail)
	check(2, blk(10, 1))
	if _, err := rep.(targets.ChangeLister).ChangedSince(ctx, 3); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("ChangedSince of no point: %v, want ErrNotFound", err)
	}
	if err := rep.DeletePoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	check(2, blk(10, 1))

	rep.Close()
	info.Size = 20 * 4096
	if rep, err = tg.Open(ctx, info); err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	check(2, blk(10, 1), targets.Range{Off: 16*4096 + 512, Len: 4*4096 - 512})
}
