package failover_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/failover"
	"lifeboat/targets"
)

const benchSize = 64 << 20

// benchView opens a view of a 64 MiB point of the file target, full of
// data, with every other 64 KiB already in the overlay when half is set
// (so reads alternate between the point and the overlay).
func benchView(b *testing.B, half bool) *failover.View {
	b.Helper()
	src := newSource(b, "file", "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f", benchSize)
	r := rand.New(rand.NewPCG(12, 12))
	chunk := randBytes(r, 4<<20)
	var exts []targets.Extent
	for off := int64(0); off < benchSize; off += int64(len(chunk)) {
		exts = append(exts, targets.Extent{Off: off, Data: chunk})
	}
	src.apply(exts...)
	seq := src.point()
	v := src.openView(seq, filepath.Join(b.TempDir(), "ov"))
	b.Cleanup(func() { v.Close() })
	if half {
		for off := int64(0); off < benchSize; off += 128 << 10 {
			if _, err := v.WriteAt(chunk[:64<<10], off); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	return v
}

type rw func(p []byte, off int64) (int, error)

func runRandom(b *testing.B, op rw, n int) {
	r := rand.New(rand.NewPCG(13, 13))
	p := randBytes(r, n)
	b.SetBytes(int64(n))
	b.ResetTimer()
	for b.Loop() {
		if _, err := op(p, r.Int64N(benchSize/int64(n))*int64(n)); err != nil {
			b.Fatal(err)
		}
	}
}

func runSequential(b *testing.B, op rw, n int) {
	p := randBytes(rand.New(rand.NewPCG(14, 14)), n)
	b.SetBytes(int64(n))
	var off int64
	b.ResetTimer()
	for b.Loop() {
		if _, err := op(p, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(n)) % benchSize
	}
}

func BenchmarkViewWrite(b *testing.B) {
	b.Run("4KiB-random", func(b *testing.B) { runRandom(b, benchView(b, false).WriteAt, 4096) })
	b.Run("4KiB-random-parallel", func(b *testing.B) {
		v := benchView(b, false)
		p := randBytes(rand.New(rand.NewPCG(15, 15)), 4096)
		b.SetBytes(4096)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(rand.Uint64(), 16))
			for pb.Next() {
				if _, err := v.WriteAt(p, r.Int64N(benchSize/4096)*4096); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("1MiB-sequential", func(b *testing.B) { runSequential(b, benchView(b, false).WriteAt, 1<<20) })
	// The same writes to a plain file: what the view's locks and map cost.
	b.Run("1MiB-sequential-plainfile", func(b *testing.B) {
		f, err := os.OpenFile(filepath.Join(b.TempDir(), "plain"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(benchSize); err != nil {
			b.Fatal(err)
		}
		runSequential(b, f.WriteAt, 1<<20)
	})
}

func BenchmarkViewRead(b *testing.B) {
	b.Run("4KiB-random", func(b *testing.B) { runRandom(b, benchView(b, true).ReadAt, 4096) })
	b.Run("1MiB-sequential", func(b *testing.B) { runSequential(b, benchView(b, true).ReadAt, 1<<20) })
}
