package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// Map file layout (overlay.map), little-endian:
//
//	+----------------------------- 4096-byte header page -----------------------------+
//	| 0  magic "LBOVMAP1"    | 8  version u32  | 12 block size u32 | 16 volume size u64 |
//	| 24 point seq u64       | 32 blocks u64   | 40 xxhash64 of bytes 0..40           |
//	| 48 zero padding to 4096                                                          |
//	+----------------------------------------------------------------------------------+
//	| bit pages, 4096 bytes each (32768 blocks, 128 MiB of volume per page):           |
//	| bit i%64 of u64 word i/64 set = block i is in the overlay data file              |
//	| the last page is zero-padded; the file is 4096 + pages*4096 bytes                |
//	+----------------------------------------------------------------------------------+
//
// The header is written once, when the overlay is created, and never again.
// Bit pages are rewritten in place by Flush; bits only ever go from 0 to 1.
var le = binary.LittleEndian

const (
	mapMagic      = "LBOVMAP1"
	mapVersion    = 1
	mapHeaderPage = 4096
	mapHeaderLen  = 48
	mapPage       = 4096
	mapPageWords  = mapPage / 8
	mapPageBlocks = mapPage * 8
)

// mapHeader is the decoded header of a map file.
type mapHeader struct {
	Version    uint32
	BlockSize  int64
	VolumeSize int64
	PointSeq   uint64
	Blocks     int64
}

func blockCount(size, bs int64) int64 { return (size + bs - 1) / bs }

// mapFileSize is the length of a map file for h: the header page and the
// bit pages.
func mapFileSize(blocks int64) int64 {
	return mapHeaderPage + (blocks+mapPageBlocks-1)/mapPageBlocks*mapPage
}

func encodeMapHeader(h mapHeader) []byte {
	b := make([]byte, mapHeaderPage)
	copy(b, mapMagic)
	le.PutUint32(b[8:], h.Version)
	le.PutUint32(b[12:], uint32(h.BlockSize))
	le.PutUint64(b[16:], uint64(h.VolumeSize))
	le.PutUint64(b[24:], h.PointSeq)
	le.PutUint64(b[32:], uint64(h.Blocks))
	le.PutUint64(b[40:], xxhash.Sum64(b[:40]))
	return b
}

// decodeMapHeader decodes and checks a map header. The error says what is
// wrong with it; the caller names the file and what to do.
func decodeMapHeader(b []byte) (mapHeader, error) {
	if len(b) < mapHeaderLen {
		return mapHeader{}, fmt.Errorf("header is %d bytes, want %d", len(b), mapHeaderLen)
	}
	if string(b[:8]) != mapMagic {
		return mapHeader{}, fmt.Errorf("bad magic %q, want %q", b[:8], mapMagic)
	}
	h := mapHeader{
		Version:    le.Uint32(b[8:]),
		BlockSize:  int64(le.Uint32(b[12:])),
		VolumeSize: int64(le.Uint64(b[16:])),
		PointSeq:   le.Uint64(b[24:]),
		Blocks:     int64(le.Uint64(b[32:])),
	}
	if h.Version != mapVersion {
		return mapHeader{}, fmt.Errorf("format version %d, this lifeboat reads version %d", h.Version, mapVersion)
	}
	if got, want := le.Uint64(b[40:]), xxhash.Sum64(b[:40]); got != want {
		return mapHeader{}, fmt.Errorf("header checksum %016x, computed %016x", got, want)
	}
	switch {
	case h.BlockSize < 512 || h.BlockSize&(h.BlockSize-1) != 0:
		return mapHeader{}, fmt.Errorf("block size %d is not a power of two of at least 512", h.BlockSize)
	case h.VolumeSize < 0 || h.VolumeSize%512 != 0:
		return mapHeader{}, fmt.Errorf("volume size %d is not a multiple of 512", h.VolumeSize)
	case h.Blocks != blockCount(h.VolumeSize, h.BlockSize):
		return mapHeader{}, fmt.Errorf("%d blocks recorded for %d bytes of %d-byte blocks", h.Blocks, h.VolumeSize, h.BlockSize)
	}
	return h, nil
}

// blockMap is the in-memory copy of the map's bits, and the bookkeeping of
// the pages Flush must write. Bits are set with atomic ORs, so writers of
// different blocks that share a word need no common lock; a block's bit is
// stable while its stripe lock is held.
type blockMap struct {
	f       hrl.File
	bs      int64
	size    int64
	blocks  int64
	words   []atomic.Uint64
	dirty   []atomic.Uint64 // bit p set: bit page p has bits not yet written
	written atomic.Int64    // bytes of the volume held by the overlay
}

func newBlockMap(f hrl.File, bs, size int64) *blockMap {
	n := blockCount(size, bs)
	pages := (n + mapPageBlocks - 1) / mapPageBlocks
	return &blockMap{f: f, bs: bs, size: size, blocks: n,
		words: make([]atomic.Uint64, (n+63)/64), dirty: make([]atomic.Uint64, (pages+63)/64)}
}

// blockLen is the length of block b (the last one may be short).
func (m *blockMap) blockLen(b int64) int64 { return min(m.bs, m.size-b*m.bs) }

// load reads the bit pages of a map file whose header has been checked.
func (m *blockMap) load() error {
	raw := make([]byte, len(m.words)*8)
	if n, err := m.f.ReadAt(raw, mapHeaderPage); n != len(raw) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	var count int64
	for i := range m.words {
		w := le.Uint64(raw[i*8:])
		if i == len(m.words)-1 && m.blocks%64 != 0 {
			w &= 1<<(m.blocks%64) - 1 // bits past the last block mean nothing
		}
		m.words[i].Store(w)
		count += int64(bits.OnesCount64(w))
	}
	m.written.Store(count * m.bs)
	if count > 0 && m.has(m.blocks-1) {
		m.written.Add(m.blockLen(m.blocks-1) - m.bs)
	}
	return nil
}

func (m *blockMap) has(b int64) bool { return m.words[b/64].Load()&(1<<(b%64)) != 0 }

// set marks blocks [b0, b1) as held by the overlay.
func (m *blockMap) set(b0, b1 int64) {
	for b := b0; b < b1; {
		w := b / 64
		hi := min(b1, (w+1)*64)
		mask := ^uint64(0) >> (64 - (hi - b)) << (b % 64)
		if old := m.words[w].Or(mask); old&mask != mask {
			added := int64(bits.OnesCount64(mask &^ old))
			bytes := added * m.bs
			if last := m.blocks - 1; last/64 == w && (mask&^old)&(1<<(last%64)) != 0 {
				bytes -= m.bs - m.blockLen(last)
			}
			m.written.Add(bytes)
			p := b / mapPageBlocks
			m.dirty[p/64].Or(1 << (p % 64))
		}
		b = hi
	}
}

// run returns the end of the run of blocks from b (below limit) that are
// all in the overlay (in true) or all not.
func (m *blockMap) run(b, limit int64) (end int64, in bool) {
	in = m.has(b)
	for b < limit {
		x := m.words[b/64].Load()
		if in {
			x = ^x
		}
		x >>= b % 64 // bits now mark blocks of the other state
		if x != 0 {
			return min(limit, b+int64(bits.TrailingZeros64(x))), in
		}
		b = (b/64 + 1) * 64
	}
	return limit, in
}

// mapPageImage is one bit page as Flush will write it.
type mapPageImage struct {
	page int64
	data []byte
}

// takeDirty clears the dirty marks and copies the pages they marked. Every
// bit in the copies was set after its block's data write returned, so an
// fsync of the data file that starts after takeDirty covers them all.
func (m *blockMap) takeDirty() []mapPageImage {
	var out []mapPageImage
	for i := range m.dirty {
		d := m.dirty[i].Swap(0)
		for d != 0 {
			p := int64(i)*64 + int64(bits.TrailingZeros64(d))
			d &= d - 1
			buf := make([]byte, mapPage)
			w0 := p * mapPageWords
			for j := w0; j < min(w0+mapPageWords, int64(len(m.words))); j++ {
				le.PutUint64(buf[(j-w0)*8:], m.words[j].Load())
			}
			out = append(out, mapPageImage{page: p, data: buf})
		}
	}
	return out
}

// redirty marks pages dirty again after a failed flush.
func (m *blockMap) redirty(pages []mapPageImage) {
	for _, pg := range pages {
		m.dirty[pg.page/64].Or(1 << (pg.page % 64))
	}
}

// writePages writes page images in place and syncs the map file.
func (m *blockMap) writePages(pages []mapPageImage) error {
	for _, pg := range pages {
		if _, err := m.f.WriteAt(pg.data, mapHeaderPage+pg.page*mapPage); err != nil {
			return err
		}
	}
	if len(pages) == 0 {
		return nil
	}
	return m.f.Sync()
}
