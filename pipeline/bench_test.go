package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/targets"
	"lifeboat/targets/file"
)

const benchSegment = 32 << 20

// benchData returns 32 MiB of volume content: "incompressible" (random)
// or "typical" (half zero blocks, half text-like).
func benchData(b *testing.B, kind string) []byte {
	b.Helper()
	if kind == "incompressible" {
		d, err := hrltest.UniqueBlocks(benchSegment, "bench")
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	rng := rand.New(rand.NewPCG(1, 1))
	words := strings.Fields("the quick brown fox jumps over the lazy dog replication journal segment block volume recovery point")
	d := make([]byte, 0, benchSegment)
	for len(d) < benchSegment {
		if rng.IntN(2) == 0 {
			d = append(d, make([]byte, 4096)...)
			continue
		}
		var blk []byte
		for len(blk) < 4096 {
			blk = append(blk, words[rng.IntN(len(words))]...)
			blk = append(blk, ' ')
		}
		d = append(d, blk[:4096]...)
	}
	return d
}

// benchSegmentBytes journals data as 1 MiB WRITE records and returns the
// sealed segment's bytes.
func benchSegmentBytes(b *testing.B, data []byte, id uuid.UUID) []byte {
	return sealedSegment(b, id, func(w *hrl.Writer) error {
		for off := 0; off < len(data); off += 1 << 20 {
			if _, _, err := w.AppendData(hrl.TypeWrite, uint64(off), data[off:off+1<<20]); err != nil {
				return err
			}
		}
		return nil
	})
}

// sealedSegment writes generation 1 of volume id from seq 1 with fill and
// returns the sealed segment's bytes.
func sealedSegment(tb testing.TB, id uuid.UUID, fill func(w *hrl.Writer) error) []byte {
	tb.Helper()
	return hrltest.Segment(tb, hrl.Header{VolumeID: id, Generation: 1, FirstSeq: 1}, fill)
}

// BenchmarkReceive measures the process server's receive stage: zstd
// decode, whole-segment and per-record checksums, spool write and fsync.
func BenchmarkReceive(b *testing.B) {
	for _, kind := range []string{"incompressible", "typical"} {
		b.Run(kind, func(b *testing.B) {
			id := uuid.New()
			seg := benchSegmentBytes(b, benchData(b, kind), id)
			enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			wire := enc.EncodeAll(seg, nil)
			info, _ := hrl.Scan(bytes.NewReader(seg), int64(len(seg)), "bench")
			h := segmentHeaders{info: targets.VolumeInfo{ID: id.String(), Name: "bench", Size: benchSegment, BlockSize: 4096},
				generation: 1, first: info.FirstSeq, last: info.LastSeq, size: int64(len(seg)), sum: xxhash.Sum64(seg),
				encoding: contentEncodingZstd}
			s := &Server{spool: spool{fs: hrl.OSFS{}, dir: b.TempDir()}}
			s.FS = hrl.OSFS{}
			if err := s.spool.fs.MkdirAll(s.spool.volDir(id.String()), 0o700); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(wire))/float64(len(seg)), "wire/raw")
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				bp, data, err := s.readSegment(bytes.NewReader(wire), h)
				if err == nil {
					err = verifySegment(data, h)
				}
				if err != nil {
					b.Fatal(err)
				}
				sg, err := s.spool.put(id.String(), spooledSeg{generation: 1, first: h.first, last: h.last}, data)
				if err != nil {
					b.Fatal(err)
				}
				s.releaseBuf(bp)
				s.spool.remove(sg)
			}
		})
	}
}

// BenchmarkReceiveBody measures the part of the receive stage that holds
// the segment in memory: read the body into the pooled buffers (growing
// with the bytes that arrive), zstd decode, verify every checksum; no
// spool write, so that disk noise does not hide it.
func BenchmarkReceiveBody(b *testing.B) {
	for _, kind := range []string{"incompressible", "typical"} {
		for _, encoding := range []string{contentEncodingZstd, contentEncodingPlain} {
			b.Run(kind+"/"+encoding, func(b *testing.B) {
				id := uuid.New()
				seg := benchSegmentBytes(b, benchData(b, kind), id)
				body := seg
				if encoding == contentEncodingZstd {
					enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
					body = enc.EncodeAll(seg, nil)
				}
				info, _ := hrl.Scan(bytes.NewReader(seg), int64(len(seg)), "bench")
				h := segmentHeaders{info: targets.VolumeInfo{ID: id.String(), Name: "bench", Size: benchSegment, BlockSize: 4096},
					generation: 1, first: info.FirstSeq, last: info.LastSeq, size: int64(len(seg)), sum: xxhash.Sum64(seg),
					encoding: encoding}
				s := &Server{}
				b.SetBytes(int64(len(seg)))
				b.ReportAllocs()
				for b.Loop() {
					bp, data, err := s.readSegment(bytes.NewReader(body), h)
					if err == nil {
						err = verifySegment(data, h)
					}
					if err != nil {
						b.Fatal(err)
					}
					s.releaseBuf(bp)
				}
			})
		}
	}
}

// BenchmarkApply measures the apply stage into the file target as a
// running server does it: take the receive buffer kept for the applier,
// decode every record, write the replica, commit (fsync).
func BenchmarkApply(b *testing.B) { benchApply(b, "memory") }

// BenchmarkApplySpool is BenchmarkApply reading the spooled segment back
// first, as the applier does after a restart.
func BenchmarkApplySpool(b *testing.B) { benchApply(b, "spool") }

func benchApply(b *testing.B, source string) {
	for _, kind := range []string{"incompressible", "typical"} {
		b.Run(kind, func(b *testing.B) {
			id := uuid.New()
			seg := benchSegmentBytes(b, benchData(b, kind), id)
			dir := b.TempDir()
			sp := spool{fs: hrl.OSFS{}, dir: filepath.Join(dir, "spool")}
			if err := sp.fs.MkdirAll(sp.volDir(id.String()), 0o700); err != nil {
				b.Fatal(err)
			}
			sg, err := sp.put(id.String(), spooledSeg{generation: 1, first: 1, last: 32}, seg)
			if err != nil {
				b.Fatal(err)
			}
			target := file.New(filepath.Join(dir, "replicas"))
			defer target.Close()
			info := targets.VolumeInfo{ID: id.String(), Name: "bench", Size: benchSegment, BlockSize: 4096}
			rep, err := target.Open(context.Background(), info)
			if err != nil {
				b.Fatal(err)
			}
			defer rep.Close()
			if source == "memory" {
				sg.mem = &keptBuf{bp: &seg, data: seg}
			}
			s := &Server{Target: target, spool: sp}
			v := &volume{info: info, rep: rep, srv: s}
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				v.applied = targets.State{} // apply the whole segment each time
				if _, err := v.applySegment(context.Background(), sg); err != nil {
					b.Fatal(fmt.Errorf("apply: %w", err))
				}
			}
		})
	}
}
