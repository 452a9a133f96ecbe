package hrl_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

// Journal append benchmarks (BENCHMARKS.md, "Journal and intercepting
// volume"). Run them side by side with the baseline:
//
//	go test -run '^$' -bench 'Append|Baseline' -benchmem -count 5 ./hrl
//
// or bench/journal.sh, which also prints the ratios.

// benchSegmentBytes is where an append benchmark seals its segment and
// starts the next one. The roll (Seal: two fsyncs of the segment and one of
// the directory; Create; removal of the sealed file so the disk does not
// fill) happens inside the timed loop: it is part of the real cost of
// journaling. Its share is reported as the seal-ns/op metric.
const benchSegmentBytes = 64 << 20

// benchPoolBytes is the size of the random source data. Writes walk it
// cyclically; a segment holds fewer than benchPoolBytes of payload, so no
// block repeats inside a segment and a dedupe window finds nothing to skip.
const benchPoolBytes = benchSegmentBytes

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
	poolOnce.Do(func() { poolData, poolErr = hrltest.UniqueBlocks(benchPoolBytes, "lifeboat") })
	if poolErr != nil {
		b.Fatal(poolErr)
	}
	return poolData
}

// appendBench journals size-byte writes into segments in a fresh directory.
type appendBench struct {
	b       *testing.B
	dir     string
	cfg     hrl.WriterConfig
	w       *hrl.Writer
	sealDur time.Duration
	m0      uint64
}

func (a *appendBench) create(firstSeq uint64) {
	w, err := hrl.Create(hrl.OSFS{}, a.dir, hrl.Header{VolumeID: [16]byte{0xbe, 0x4c}, Generation: 1, FirstSeq: firstSeq}, a.cfg)
	if err != nil {
		a.b.Fatal(err)
	}
	a.w = w
}

// roll seals the open segment, removes it (nothing ships it here) and
// opens the next one.
func (a *appendBench) roll() {
	t0 := time.Now()
	info, err := a.w.Seal()
	if err != nil {
		a.b.Fatal(err)
	}
	if err := a.w.Close(); err != nil {
		a.b.Fatal(err)
	}
	if err := os.Remove(info.Path); err != nil {
		a.b.Fatal(err)
	}
	a.create(info.LastSeq + 1)
	a.sealDur += time.Since(t0)
}

func (a *appendBench) finish() {
	a.b.StopTimer()
	hrltest.ReportMallocs(a.b, a.m0)
	if a.sealDur > 0 { // no roll, no metric (the dup case rarely rolls)
		a.b.ReportMetric(float64(a.sealDur.Nanoseconds())/float64(a.b.N), "seal-ns/op")
	}
	if err := a.w.Close(); err != nil {
		a.b.Fatal(err)
	}
}

// BenchmarkAppend measures Writer.AppendData of one write of each size:
//
//   - nodedupe: no dedupe window; every block is a WRITE payload.
//   - dedupe: a window, but random data: every block is hashed, looked up,
//     missed and inserted, then written (the cost of dedupe when it finds
//     nothing).
//   - dup: a window and the same write repeated: after the first write of a
//     segment every block matches, is read back and compared byte for
//     byte, and the write becomes one REF record (the REF path cost).
//
// b.SetBytes is the logical write size in every case.
func BenchmarkAppend(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			for _, mode := range []string{"dedupe", "nodedupe", "dup"} {
				b.Run(mode, func(b *testing.B) { benchAppend(b, sz.n, mode) })
			}
		})
	}
}

func benchAppend(b *testing.B, size int, mode string) {
	p := benchPool(b)
	a := &appendBench{b: b, dir: b.TempDir()}
	if mode != "nodedupe" {
		a.cfg.Dedupe = hrl.NewWindow(0)
	}
	a.create(1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	a.m0 = hrltest.Mallocs()
	b.ResetTimer()
	pos := 0
	for range b.N {
		if _, _, err := a.w.AppendData(hrl.TypeWrite, uint64(pos), p[pos:pos+size]); err != nil {
			b.Fatal(err)
		}
		if mode != "dup" {
			if pos += size; pos == len(p) {
				pos = 0
			}
		}
		if a.w.Size() >= benchSegmentBytes {
			a.roll()
		}
	}
	a.finish()
}

// BenchmarkBaselineWriteAt is the reference for BenchmarkAppend: plain
// os.File.WriteAt of the same data and sizes to one file in b.TempDir(),
// offsets cycling through benchSegmentBytes, no fsync.
func BenchmarkBaselineWriteAt(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			p := benchPool(b)
			f, err := os.Create(filepath.Join(b.TempDir(), "baseline"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(int64(sz.n))
			b.ReportAllocs()
			m0 := hrltest.Mallocs()
			b.ResetTimer()
			pos := 0
			for range b.N {
				if _, err := f.WriteAt(p[pos:pos+sz.n], int64(pos)); err != nil {
					b.Fatal(err)
				}
				if pos += sz.n; pos == len(p) {
					pos = 0
				}
			}
			b.StopTimer()
			hrltest.ReportMallocs(b, m0)
		})
	}
}

// BenchmarkBaselineAppendFile is a second reference with the journal's file
// pattern but not its format: os.File.WriteAt appending to a new file, which
// at benchSegmentBytes is fsynced (file and directory), closed, removed and
// replaced, as BenchmarkAppend rolls a segment. The difference to
// BenchmarkAppend/nodedupe is the cost of the record format (header,
// checksums, copy) rather than of the file system and disk.
func BenchmarkBaselineAppendFile(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			p := benchPool(b)
			dir := b.TempDir()
			var sealDur time.Duration
			seg := 0
			create := func() *os.File {
				seg++
				f, err := os.OpenFile(filepath.Join(dir, hrl.SegmentName(uint64(seg))), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					b.Fatal(err)
				}
				return f
			}
			f := create()
			b.SetBytes(int64(sz.n))
			b.ReportAllocs()
			m0 := hrltest.Mallocs()
			b.ResetTimer()
			pos, off := 0, int64(0)
			for range b.N {
				if _, err := f.WriteAt(p[pos:pos+sz.n], off); err != nil {
					b.Fatal(err)
				}
				off += int64(sz.n)
				if pos += sz.n; pos == len(p) {
					pos = 0
				}
				if off >= benchSegmentBytes {
					t0 := time.Now()
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
					if err := (hrl.OSFS{}).SyncDir(dir); err != nil {
						b.Fatal(err)
					}
					f.Close()
					if err := os.Remove(f.Name()); err != nil {
						b.Fatal(err)
					}
					f, off = create(), 0
					sealDur += time.Since(t0)
				}
			}
			b.StopTimer()
			hrltest.ReportMallocs(b, m0)
			if sealDur > 0 {
				b.ReportMetric(float64(sealDur.Nanoseconds())/float64(b.N), "seal-ns/op")
			}
			f.Close()
		})
	}
}
