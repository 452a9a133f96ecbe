package tracker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// Intercepting volume benchmarks (BENCHMARKS.md, "Journal and intercepting
// volume"). Run them side by side with the baseline:
//
//	go test -run '^$' -bench 'VolumeWriteAt|BaselineWriteAt' -benchmem -count 5 ./tracker
//
// or bench/journal.sh, which also prints the ratios.

const (
	// benchVolumeBytes is the size of the backing file; writes walk it
	// sequentially and wrap around.
	benchVolumeBytes = 1 << 30
	// benchPoolBytes of random source data, walked cyclically. It is larger
	// than a segment (DefaultSegmentBytes), so no block repeats inside a
	// segment and dedupe finds nothing to skip.
	benchPoolBytes = 2 * tracker.DefaultSegmentBytes
)

var benchSizes = []struct {
	name string
	n    int
}{
	{"4KiB", 4 << 10},
	{"1MiB", 1 << 20},
}

var (
	poolOnce sync.Once
	poolData []byte
	poolErr  error
)

// benchPool returns random, incompressible data in which no 4 KiB block
// is all zeros and no two blocks are equal.
func benchPool(b *testing.B) []byte {
	poolOnce.Do(func() { poolData, poolErr = hrltest.UniqueBlocks(benchPoolBytes, "tracker") })
	if poolErr != nil {
		b.Fatal(poolErr)
	}
	return poolData
}

// backingFile creates a sparse file of benchVolumeBytes in b.TempDir() and
// then writes every byte of it once with random data and fsyncs it, outside
// any timer. The sub-benchmarks share it, so each of them overwrites blocks
// that are allocated and in the page cache: the steady state of a protected
// volume. (Filling holes costs the file system far more per write than
// overwriting; a benchmark that fills holes only at the start of its run
// would mix the two in proportions that depend on its speed, and bias the
// ratio to the baseline.)
func backingFile(b *testing.B) string {
	p := benchPool(b)
	path := filepath.Join(b.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(benchVolumeBytes); err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < benchVolumeBytes; off += int64(len(p)) {
		if _, err := f.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkVolumeWriteAt measures tracker.Volume.WriteAt (bitmap mark,
// journal append, backing write) with default settings except SegmentAge 0
// (segments roll by size only, at DefaultSegmentBytes) and
// CheckpointInterval 0 (see below). A consumer goroutine acknowledges every
// segment as soon as it is sealed, as the shipper would, so the journal
// directory stays small; sealing (in the volume's sealer goroutine) and
// acknowledging happen concurrently with the timed writes and are part of
// the steady state.
//
// The bitmap stays dirty throughout: a new volume starts with every region
// dirty, and with CheckpointInterval 0 no checkpoint runs during the loop to
// clear acknowledged regions, so Mark never has to write the bitmap. The
// cost of re-dirtying cleared regions is not measured here.
func BenchmarkVolumeWriteAt(b *testing.B) {
	backing := backingFile(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			p := benchPool(b)
			v := tracker.NewVolume(backing, filepath.Join(b.TempDir(), "journal"))
			v.SegmentAge = 0
			v.CheckpointInterval = 0
			v.Logger = slog.New(slog.DiscardHandler)
			if err := v.Open(context.Background()); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var ackErr error
			acked := 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				var after uint64
				for {
					info, err := v.NextSegment(ctx, after)
					if err != nil {
						if !errors.Is(err, context.Canceled) && !errors.Is(err, tracker.ErrClosed) {
							ackErr = err
						}
						return
					}
					if err := v.Ack(info.FirstSeq); err != nil {
						ackErr = err
						return
					}
					after = info.FirstSeq
					acked++
				}
			}()

			timedWrites(b, v, p, sz.n)

			cancel()
			wg.Wait()
			if ackErr != nil {
				b.Fatal(ackErr)
			}
			// A journal failure switches the volume to bitmap mode, where
			// writes are not journaled and would look cheap: refuse that.
			if st := v.Status(); st.Mode != tracker.ModeJournal {
				b.Fatalf("volume left journal mode: %s (%s)", st.Mode, st.ModeReason)
			}
			b.ReportMetric(float64(acked)/float64(b.N), "acks/op")
			if err := v.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkBaselineWriteAt is the reference for BenchmarkVolumeWriteAt:
// plain os.File.WriteAt of the same data at the same offsets on a file of
// the same size, prepared the same way (backingFile).
func BenchmarkBaselineWriteAt(b *testing.B) {
	backing := backingFile(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			p := benchPool(b)
			f, err := os.OpenFile(backing, os.O_RDWR, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			timedWrites(b, f, p, sz.n)
			// Leave the pages clean, as Volume.Close does, so that every
			// run of either benchmark starts from the same state.
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// timedWrites is the timed loop of both benchmarks, so that the volume and
// its baseline are measured by exactly the same code: b.N writes of n bytes
// from p, walking the volume sequentially and wrapping.
func timedWrites(b *testing.B, w io.WriterAt, p []byte, n int) {
	b.SetBytes(int64(n))
	b.ReportAllocs()
	m0 := hrltest.Mallocs()
	b.ResetTimer()
	off, pos := int64(0), 0
	for range b.N {
		if _, err := w.WriteAt(p[pos:pos+n], off); err != nil {
			b.Fatal(err)
		}
		if off += int64(n); off == benchVolumeBytes {
			off = 0
		}
		if pos += n; pos == len(p) {
			pos = 0
		}
	}
	b.StopTimer()
	hrltest.ReportMallocs(b, m0)
}
