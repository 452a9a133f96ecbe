package hrl

import (
	"bytes"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// DefaultDedupeBlocks bounds a dedupe window: 65536 blocks of 4 KiB cover
// 256 MiB of distinct data, more than one segment holds.
const DefaultDedupeBlocks = 1 << 16

var zeroBlock [1 << 20]byte

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Window remembers where the blocks already written to the current segment
// are, by xxhash64 of their bytes. A hash match is only a candidate: the
// writer reads the earlier block back and compares every byte before it
// writes a REF, because a 64-bit hash alone is no proof of equality.
type Window struct {
	max  int
	m    map[uint64]blockLoc
	cand []byte
}

type blockLoc struct {
	off uint64 // segment file offset of the block's first byte
	seq uint64 // record holding it
}

// NewWindow returns a window holding up to maxBlocks blocks
// (DefaultDedupeBlocks when maxBlocks <= 0).
func NewWindow(maxBlocks int) *Window {
	if maxBlocks <= 0 {
		maxBlocks = DefaultDedupeBlocks
	}
	return &Window{max: maxBlocks, m: make(map[uint64]blockLoc, min(maxBlocks, 4096))}
}

func (d *Window) reset(blockSize uint32) {
	clear(d.m)
	if len(d.cand) != int(blockSize) {
		d.cand = make([]byte, blockSize)
	}
}

func (d *Window) insert(sum uint64, loc blockLoc) {
	if len(d.m) >= d.max {
		return
	}
	if _, ok := d.m[sum]; !ok {
		d.m[sum] = loc
	}
}

// run kinds of the splitter
const (
	runNone = iota
	runData
	runZero
	runRef
)

// splitter cuts the data of one AppendData call into runs of literal,
// all-zero and duplicate blocks and appends one record per run.
type splitter struct {
	w      *Writer
	typ    RecordType
	base   uint64
	data   []byte
	kind   int
	start  int
	end    int
	src    uint64 // REF run: segment offset of the source of data[start]
	srcSeq uint64
}

func (s *splitter) init(w *Writer, typ RecordType, base uint64, data []byte) {
	*s = splitter{w: w, typ: typ, base: base, data: data}
	if w.win != nil {
		n := (len(data) + int(w.hdr.BlockSize) - 1) / int(w.hdr.BlockSize)
		if cap(w.buf.sums) < n {
			w.buf.sums = make([]uint64, n)
		}
		w.buf.sums = w.buf.sums[:n]
		clear(w.buf.sums)
	}
}

// add classifies the block data[i:end] and extends or flushes the current run.
func (s *splitter) add(i, end int) error {
	blk := s.data[i:end]
	kind, src, srcSeq := runData, uint64(0), uint64(0)
	switch {
	case IsZero(blk):
		kind = runZero
	case s.w.win != nil && len(blk) == int(s.w.hdr.BlockSize):
		sum := xxhash.Sum64(blk)
		s.w.buf.sums[i/len(blk)] = sum // reused by the payload checksum
		if s.w.hash != nil {
			sum = s.w.hash(blk)
		}
		if loc, ok := s.w.win.m[sum]; ok {
			same, err := s.w.confirm(loc.off, blk)
			if err != nil {
				return err
			}
			if same {
				kind, src, srcSeq = runRef, loc.off, loc.seq
			}
		}
	}
	if kind == s.kind && (kind != runRef || (src == s.src+uint64(i-s.start) && srcSeq == s.srcSeq)) {
		s.end = end
		return nil
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.kind, s.start, s.end, s.src, s.srcSeq = kind, i, end, src, srcSeq
	return nil
}

// flush appends the record for the current run.
func (s *splitter) flush() error {
	w := s.w
	off, n := s.base+uint64(s.start), uint64(s.end-s.start)
	switch s.kind {
	case runNone:
		return nil
	case runZero:
		_, err := w.AppendZero(off, n, false)
		return err
	case runRef:
		p := w.small[:refPayloadSize]
		Ref{SourceSeq: s.srcSeq, SegmentOffset: s.src, Sum: xxhash.Sum64(s.data[s.start:s.end])}.marshal(p)
		h := RecordHeader{Type: TypeRef, Offset: off, Length: n}
		return w.append(&h, p, nil)
	}
	payloadOff := uint64(w.off) + RecordHeaderSize
	h := RecordHeader{Type: s.typ, Offset: off, Length: n}
	var sums []uint64
	if w.win != nil {
		bs := int(w.hdr.BlockSize)
		sums = w.buf.sums[s.start/bs : (s.end+bs-1)/bs]
	}
	if err := w.append(&h, s.data[s.start:s.end], sums); err != nil {
		return err
	}
	if w.win != nil {
		bs := int(w.hdr.BlockSize)
		for i := s.start; i+bs <= s.end; i += bs {
			key := w.buf.sums[i/bs]
			if w.hash != nil {
				key = w.hash(s.data[i : i+bs])
			}
			w.win.insert(key, blockLoc{off: payloadOff + uint64(i-s.start), seq: h.Seq})
		}
	}
	return nil
}

// confirm compares blk with the block at segment offset off, byte for byte.
func (w *Writer) confirm(off uint64, blk []byte) (bool, error) {
	if p, ok := w.pendingBlock(off, len(blk)); ok {
		return bytes.Equal(p, blk), nil
	}
	c := w.win.cand[:len(blk)]
	if _, err := w.f.ReadAt(c, int64(off)); err != nil {
		return false, fmt.Errorf("dedupe: read back %s at %d: %w", w.path, off, err)
	}
	return bytes.Equal(c, blk), nil
}

func hashSum(b []byte) uint64 { return xxhash.Sum64(b) }
