package file_test

import (
	"math/rand/v2"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/file"
)

// BenchmarkApply applies 32 MiB of incompressible 4 KiB-aligned writes per
// op, in Apply calls of 4 MiB (1024 extents of one block, as the pipeline
// sends them), over a 256 MiB replica written round-robin.
//
//   - no-points: the initial replication; one pwrite per extent.
//   - point-every-32MiB: a point before each op, so every block's
//     before-image goes to the undo log first; the point before the
//     previous one is deleted, so storage stays bounded.
func BenchmarkApply(b *testing.B) {
	for _, withPoints := range []bool{false, true} {
		name := "no-points"
		if withPoints {
			name = "point-every-32MiB"
		}
		b.Run(name, func(b *testing.B) {
			const (
				opBytes   = 32 << 20
				callBytes = 4 << 20
				size      = 256 << 20
			)
			tg := file.New(b.TempDir())
			tg.Logger = quiet
			defer tg.Close()
			rep, err := tg.Open(ctx, targets.VolumeInfo{ID: "bench", Size: size, BlockSize: 4096})
			if err != nil {
				b.Fatal(err)
			}
			data := make([]byte, callBytes)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			exts := make([]targets.Extent, callBytes/4096)
			var off int64
			var seq uint64
			var points []uint64
			b.SetBytes(opBytes)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if withPoints {
					seq++
					if err := rep.CreatePoint(ctx, targets.Point{Seq: seq, Generation: 1}); err != nil {
						b.Fatal(err)
					}
					points = append(points, seq)
					if len(points) > 2 {
						if err := rep.DeletePoint(ctx, points[0]); err != nil {
							b.Fatal(err)
						}
						points = points[1:]
					}
				}
				for range opBytes / callBytes {
					for i := range exts {
						exts[i] = targets.Extent{Off: off, Data: data[i*4096 : (i+1)*4096]}
						off = (off + 4096) % size
					}
					if err := rep.Apply(ctx, exts); err != nil {
						b.Fatal(err)
					}
				}
				seq++
			}
			b.StopTimer()
			if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: seq}); err != nil {
				b.Fatal(err)
			}
		})
	}
}
