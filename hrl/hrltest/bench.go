package hrltest

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// UniqueBlocks returns n bytes (a multiple of 4 KiB) of ChaCha8 output
// seeded with seed, checked to hold no all-zero and no repeated 4 KiB block,
// so that neither zero detection nor dedupe can skip any of it.
func UniqueBlocks(n int, seed string) ([]byte, error) {
	var key [32]byte
	copy(key[:], seed)
	p := make([]byte, n)
	rand.NewChaCha8(key).Read(p)
	seen := make(map[uint64]struct{}, n/hrl.DefaultBlockSize)
	for i := 0; i+hrl.DefaultBlockSize <= n; i += hrl.DefaultBlockSize {
		blk := p[i : i+hrl.DefaultBlockSize]
		if hrl.IsZero(blk) {
			return nil, fmt.Errorf("random data has an all-zero block at %d", i)
		}
		sum := xxhash.Sum64(blk)
		if _, dup := seen[sum]; dup {
			return nil, fmt.Errorf("random data repeats a block at %d", i)
		}
		seen[sum] = struct{}{}
	}
	return p, nil
}

// Mallocs returns the number of heap allocations so far.
func Mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// ReportMallocs reports heap allocations per op since m0 as a fraction:
// -benchmem's allocs/op is rounded down to an integer, which hides an
// allocation made once per segment.
func ReportMallocs(b *testing.B, m0 uint64) {
	if b.N > 0 {
		b.ReportMetric(float64(Mallocs()-m0)/float64(b.N), "mallocs/op")
	}
}
