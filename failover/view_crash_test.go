package failover_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"lifeboat/failover"
	"lifeboat/hrl/hrltest"
)

const crashSize = 256<<10 + 512 // 65 blocks, the last one short

var crashModes = []hrltest.CrashMode{hrltest.DropUnsynced, hrltest.KeepPrefix, hrltest.KeepRandom}

// TestViewCrashDuringFlush writes and flushes (P0), writes each of some
// blocks once more (P1), then crashes the overlay's file system at every
// operation of the next Flush, keeping any mix of the unsynced changes.
// After the crash, a block not written since P0 reads as in P0, a block
// written since reads each byte from P0 or P1 (a write may be torn, as on
// a disk), and all of P1 once that Flush returned. The point is filled
// with non-zero bytes, so a map bit pointing at a block the view never
// wrote (a hole) is seen; the map's bits are also checked directly.
func TestViewCrashDuringFlush(t *testing.T) {
	for _, mode := range crashModes {
		for seed := range uint64(4) {
			for k := 0; ; k++ {
				var flushed bool
				t.Run(fmt.Sprintf("%v/seed-%d/after-%d-ops", mode, seed, k), func(t *testing.T) {
					flushed = crashFlush(t, mode, seed, k)
				})
				if flushed || t.Failed() {
					break
				}
			}
		}
	}
}

func crashFlush(t *testing.T, mode hrltest.CrashMode, seed uint64, k int) (flushed bool) {
	r := rand.New(rand.NewPCG(uint64(mode)<<8|seed, uint64(k)))
	src := newSource(t, "memory", "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", crashSize)
	src.fillAll(r)
	seq := src.point()
	fsys := hrltest.New()
	v, err := failover.OpenViewFS(fsys, src.open(seq), "/ov")
	if err != nil {
		t.Fatal(err)
	}
	// P0 holds blocks of the first half only, so P1 writes blocks new to
	// the overlay (their map bits change) as well as blocks it holds.
	p0 := writeSome(t, v, r, src.points[seq], 6, crashSize/2)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// P1: some blocks written once each, whole or in part.
	p1 := append([]byte(nil), p0...)
	touched := map[int64]bool{}
	for _, b := range r.Perm(int(blocksOf(crashSize)))[:30] {
		start, end := int64(b)*bs, min(int64(b+1)*bs, crashSize)
		off, n := start, end-start
		if r.IntN(2) == 0 {
			off = start + r.Int64N(end-start)
			n = 1 + r.Int64N(end-off)
		}
		p := randBytes(r, int(n))
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(p1[off:], p)
		touched[int64(b)] = true
	}
	fsys.CrashAfter(k)
	flushed = v.Flush() == nil
	fsys.Crash(mode, r)
	v.Close() // its files are gone with the crash; this closes the point

	v, err = failover.OpenViewFS(fsys, src.open(seq), "/ov")
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer v.Close()
	got := readAll(t, v)
	for b := range blocksOf(crashSize) {
		s, e := b*bs, min((b+1)*bs, crashSize)
		switch {
		case flushed || !touched[b]:
			want := p0
			if flushed {
				want = p1
			}
			checkContent(t, fmt.Sprintf("block %d (flushed %v, written since %v)", b, flushed, touched[b]), got[s:e], want[s:e])
		default:
			for i := s; i < e; i++ {
				if got[i] != p0[i] && got[i] != p1[i] {
					t.Fatalf("block %d byte %d after crash = %#x, neither %#x (flushed) nor %#x (written since)", b, i, got[i], p0[i], p1[i])
				}
			}
		}
	}
	checkMapBits(t, fsys, src.points[seq], p1, touched)
	return flushed
}

// checkMapBits checks that every bit set in the map on disk is a block the
// view changed: one written since P0 or one that differs from the point.
func checkMapBits(t *testing.T, fsys *hrltest.CrashFS, point, p1 []byte, touched map[int64]bool) {
	t.Helper()
	m, err := fsys.ReadFile("/ov/" + failover.MapName)
	if err != nil {
		t.Fatal(err)
	}
	for b := range blocksOf(crashSize) {
		if m[failover.MapHeaderSize+b/8]&(1<<(b%8)) == 0 {
			continue
		}
		s, e := b*bs, min((b+1)*bs, crashSize)
		if !touched[b] && firstDiff(p1[s:e], point[s:e]) < 0 {
			t.Fatalf("map marks block %d, which the view never changed", b)
		}
	}
}

func blocksOf(size int64) int64 { return (size + bs - 1) / bs }

// TestViewCrashDuringCreate crashes the file system at every operation of
// creating an overlay: the next open finds a new overlay or a whole one,
// never a damaged one.
func TestViewCrashDuringCreate(t *testing.T) {
	src := newSource(t, "memory", "6f7a8b9c-0d1e-4f2a-9b3c-4d5e6f7a8b9c", crashSize)
	src.fillAll(rand.New(rand.NewPCG(8, 8)))
	seq := src.point()
	for _, mode := range crashModes {
		for k := 0; ; k++ {
			fsys := hrltest.New()
			fsys.CrashAfter(k)
			v, err := failover.OpenViewFS(fsys, src.open(seq), "/ov")
			if err == nil {
				v.Close()
			}
			fsys.Crash(mode, rand.New(rand.NewPCG(9, uint64(k))))
			v2, err2 := failover.OpenViewFS(fsys, src.open(seq), "/ov")
			if err2 != nil {
				t.Fatalf("%v, crash after %d ops: open after crash: %v", mode, k, err2)
			}
			checkContent(t, "view after a crash at creation", readAll(t, v2), src.points[seq])
			v2.Close()
			if err == nil {
				break
			}
		}
	}
}
